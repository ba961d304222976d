"""Training a Hugging Face model before and after ``apply_ssl_core`` (issue 10).

One training step (forward, backward, global-norm clipping, torch's AdamW) of
transformers' ``BertForPreTraining`` (masked LM + next-sentence prediction)
and ``GPT2LMHeadModel``, 4 layers of width 256, batch 32 x 128 with right
padding on a quarter of the rows (bench_train's batch), timed as Hugging Face
wrote them and after ``apply_ssl_core`` has swapped in our attention,
LayerNorm, GELU and fused language-model loss; same weights, same batch, same
threads, in one run. Peak memory is the peak RSS growth of one step in a
fresh process: the fused loss never holds the (tokens x vocabulary) logits,
which for BERT here are 32 x 128 x 30,522 floats, 500 MB, and as much again
for their gradient.
"""

import copy
import json

import ssl_core

from benchmarks.bench_train import (BATCH, MATMUL_N, SEQ, batch, bert_config, gpt_config, model_flops,
                                    torch_training_step)
from benchmarks.common import Result, compare, matmul_flops, median_seconds, peak_memory_in_new_process

PEAK_MEMORY = """
import json, sys, time
kind, patched, threads, B, T, overrides = sys.argv[1:]
from benchmarks.bench_hf_patch import make_step
state = {}

def call():
    if not state:
        state["step"] = make_step(kind, patched == "1", int(threads), json.loads(overrides), (int(B), int(T)))
    state["step"]()
"""


def hf_model(kind, overrides=None):
    """A freshly initialised transformers model, seeded, in training mode."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        model = transformers.BertForPreTraining(transformers.BertConfig(**bert_config(**(overrides or {})).to_hf()))
    else:
        hf = gpt_config(**(overrides or {})).to_hf()
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf, bos_token_id=0, eos_token_id=0))
    return model.train()


def make_step(kind, patched, threads, overrides=None, shape=(BATCH, SEQ), model=None):
    """One training step of the model (``hf_model``'s unless given), patched by ``apply_ssl_core`` or not
    (torch's AdamW, no decay on biases and norms, as bench_train)."""
    import torch

    from ssl_core.integrations.torch.huggingface import apply_ssl_core

    torch.set_num_threads(threads)
    ssl_core.set_num_threads(threads)
    model = model if model is not None else hf_model(kind, overrides)
    if patched:
        apply_ssl_core(model)
    return torch_training_step(model, batch(kind, *shape, V=model.config.vocab_size))


def run(torch, copy_bps, repeats, shape=(BATCH, SEQ), config_overrides=None, matmul_n=MATMUL_N, memory=True):
    """Rows of the unpatched and the patched model's step, the model FLOPs
    counted as bench_train counts them (% of the matmul peak of this run)."""
    if torch is None:
        print("the hf_patch suite compares transformers models and needs torch; skipped")
        return []
    repeats = min(repeats, 5)
    threads = ssl_core.get_num_threads()
    peak = matmul_flops(torch, matmul_n, repeats)
    mm_flops = 2 * matmul_n**3
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch", "@", mm_flops / peak * 1e3, 0,
                      mm_flops / peak * 1e3, flops=mm_flops)]
    for kind, name in (("bert", "BertForPreTraining"), ("gpt", "GPT2LMHeadModel")):
        op, label = f"{name} train step", f"B{shape[0]} T{shape[1]}"
        model = hf_model(kind, config_overrides)
        config = (bert_config if kind == "bert" else gpt_config)(**(config_overrides or {}))
        flops = model_flops(kind, batch(kind, *shape, V=config.vocab_size), config)
        for patched in (False, True):
            step = make_step(kind, patched, threads, config_overrides, shape, copy.deepcopy(model))
            ms = median_seconds(step, repeats, warmup=2) * 1e3
            impl, variant = ("ssl_core", "apply_ssl_core") if patched else ("torch", "transformers")
            row = Result(op, label, impl, variant, ms, 0, flops / peak * 1e3, flops=flops)
            row.note = f"{shape[0] * shape[1] / ms * 1e3:,.0f} tokens/s"
            if memory:
                args = [kind, int(patched), threads, *shape, json.dumps(config_overrides or {})]
                row.peak_rss_mb, _ = peak_memory_in_new_process(PEAK_MEMORY, args)
                row.note += f", peak RSS +{row.peak_rss_mb:.0f} MB"
            results.append(row)
        compare(results, op, "ssl_core/apply_ssl_core", "torch/transformers")
    return results
