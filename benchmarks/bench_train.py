"""One full training step (forward, backward, global-norm clipping, AdamW) of
BERT pretraining and GPT language modelling, against Hugging Face
transformers on torch (CPU) with the same config, batch and threads.

Targets (issue 5):
- BERT, 4 layers, hidden 256, 4 heads, vocab 30,522, batch 32 x 128, masked
  LM (15%) + next-sentence prediction: at least 3x the tokens/s of
  BertForPreTraining;
- GPT, 4 layers, hidden 256, 4 heads, vocab 50,257, batch 32 x 128: at least
  1.5x the tokens/s of GPT2LMHeadModel;
- model FLOPs utilization against the matmul peak measured in the same run,
  and peak memory (peak RSS growth from before the model is built through its
  first step, each in a fresh process).

Model FLOPs count what the model needs, the same for both: 6 x tokens x the
parameters of the blocks (and BERT's pooler and MLM transform, at the masked
positions only), the attention scores (FlashAttention's 3.5 x 4·B·T²·C per
layer) and the output layer at the positions that carry a loss. Hugging Face
computes the BERT output layer at every position; that work is not counted.
"""

import json

import numpy as np

import ssl_core

from benchmarks.common import Result, compare, matmul_flops, median_seconds, peak_memory_in_new_process

BATCH, SEQ = 32, 128
MATMUL_N = 2048

# The fresh-process step (common.peak_memory_in_new_process):
# argv = impl kind threads B T config-overrides-as-JSON.
PEAK_MEMORY = """
import json, sys, time
impl, kind, threads, B, T, overrides = sys.argv[1:]
from benchmarks.bench_train import make_step
state = {}

def call():
    if not state:
        state["step"] = make_step(impl, kind, int(threads), json.loads(overrides), (int(B), int(T)))
    state["step"]()
"""


def bert_config(**overrides):
    from ssl_core.models import BertConfig

    return BertConfig(**{**dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=1024, max_position_embeddings=512), **overrides})


def gpt_config(**overrides):
    from ssl_core.models import GPTConfig

    return GPTConfig(**{**dict(vocab_size=50257, n_embd=256, n_layer=4, n_head=4, n_positions=1024), **overrides})


def batch(kind, B=BATCH, T=SEQ, V=None, seed=0):
    """A synthetic batch: token ids, right padding on a quarter of the rows,
    and for BERT 15% masked-LM labels and next-sentence labels."""
    rng = np.random.default_rng(seed)
    V = V or (30522 if kind == "bert" else 50257)
    ids = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[: B // 4, T // 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        out["token_type_ids"] = (np.arange(T) >= T // 2).astype(np.int64)[None].repeat(B, 0)
        out["labels"] = np.where((rng.random((B, T)) < 0.15) & (mask == 1), ids, -100)
        out["next_sentence_label"] = rng.integers(0, 2, B)
    else:
        out["labels"] = np.where(mask == 1, ids, -100)
    return out


def make_step(impl, kind, threads, config_overrides=None, shape=(BATCH, SEQ)):
    """A function that runs one training step of `impl` ("ssl_core" or
    "torch") on a fixed batch."""
    overrides = config_overrides or {}
    data = batch(kind, *shape, V=overrides.get("vocab_size"))
    if impl == "ssl_core":
        from ssl_core.models import GPT, Bert
        from ssl_core.train import AdamW, clip_grad_norm

        ssl_core.set_num_threads(threads)
        model = Bert(bert_config(**overrides)) if kind == "bert" else GPT(gpt_config(**overrides))
        optimizer = AdamW(model.params, lr=1e-4, weight_decay=0.01)

        def step():
            model.params.zero_grad()
            model.loss_and_backward(data)
            _, scale = clip_grad_norm(model.params, 1.0)
            optimizer.step(grad_scale=scale)

        return step

    import torch
    import transformers

    torch.set_num_threads(threads)
    if kind == "bert":
        config = transformers.BertConfig(**bert_config(**overrides).to_hf())
        model = transformers.BertForPreTraining(config)
    else:
        hf = gpt_config(**overrides).to_hf()
        config = transformers.GPT2Config(**hf, bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
    return torch_training_step(model.train(), data)


def torch_training_step(model, data):
    """One training step of a transformers model on the batch ``data``
    (NumPy arrays): the loss it returns, backward, clipping to norm 1, and
    torch's AdamW with ours' settings (no decay on biases and norms)."""
    import torch

    no_decay = {n for n, _ in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "ln_" in n}
    groups = [{"params": [p for n, p in model.named_parameters() if (n in no_decay) == skip],
               "weight_decay": 0.0 if skip else 0.01} for skip in (False, True)]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}

    def step():
        optimizer.zero_grad()
        model(**tensors).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def model_flops(kind, data, config):
    """Training FLOPs of one step by the count in the module docstring."""
    B, T = data["input_ids"].shape
    if kind == "bert":
        C, L, V, inner = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
        masked = int((data["labels"] != -100).sum())
        dense = B * T * L * (4 * C * C + 2 * C * inner) + masked * (C * C + C * V) + B * (C * C + 2 * C)
    else:
        C, L, V, inner = config.n_embd, config.n_layer, config.vocab_size, config.inner_size
        dense = B * T * L * (4 * C * C + 2 * C * inner) + int((data["labels"][:, 1:] != -100).sum()) * C * V
    return 6 * dense + L * 3.5 * 4 * B * T * T * C


def run(torch, copy_bps, repeats, shape=(BATCH, SEQ), config_overrides=None, matmul_n=MATMUL_N, memory=True):
    repeats = min(repeats, 5)
    threads = ssl_core.get_num_threads()
    peak = matmul_flops(torch, matmul_n, repeats)
    mm_flops = 2 * matmul_n**3
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch" if torch else "numpy", "@",
                      mm_flops / peak * 1e3, 0, mm_flops / peak * 1e3, flops=mm_flops)]
    for kind, config in (("bert", bert_config(**(config_overrides or {}))),
                         ("gpt", gpt_config(**(config_overrides or {})))):
        op = "BERT pretrain step" if kind == "bert" else "GPT LM step"
        label = f"B{shape[0]} T{shape[1]}"
        flops = model_flops(kind, batch(kind, *shape, V=config.vocab_size), config)
        first = len(results)
        for impl in ("ssl_core", "torch") if torch else ("ssl_core",):
            step = make_step(impl, kind, threads, config_overrides, shape)
            ms = median_seconds(step, repeats, warmup=2) * 1e3
            variant = "AdamW" if impl == "ssl_core" else "transformers, AdamW"
            row = Result(op, label, impl, variant, ms, 0, flops / peak * 1e3, flops=flops)
            row.note = f"{shape[0] * shape[1] / ms * 1e3:,.0f} tokens/s"
            if memory:
                args = [impl, kind, threads, *shape, json.dumps(config_overrides or {})]
                row.peak_rss_mb, _ = peak_memory_in_new_process(PEAK_MEMORY, args)
                row.note += f", peak RSS +{row.peak_rss_mb:.0f} MB"
            results.append(row)
        compare(results[first:], op, "ssl_core/AdamW", "torch/transformers, AdamW")
    return results
