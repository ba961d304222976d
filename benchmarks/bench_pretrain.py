"""``ssl-core pretrain`` against a Hugging Face ``Trainer`` run of
``BertForPreTraining``: the same corpus (the embedded one), tokenizer, model
config, batches (masked LM 15% + next-sentence prediction), optimizer
settings and thread count, in one process.

Our side is the real training loop (ssl_core.train.Pretraining) building
its batches as it goes; the Trainer gets the very same batches, built
beforehand, through a pass-through collator, so its data loading costs
nothing. A step's time is the interval between the ends of consecutive
steps; the first ``warmup`` steps are not counted. Rows give the median step
time, tokens/s (real tokens, padding excluded) and model FLOPs utilization
against the float32 matmul peak measured in the same run (FLOPs as
bench_train counts them, averaged over the timed batches).

Target (issue 6): report the tokens/s of both; no ratio was asked for.
"""

import statistics
import tempfile

import numpy as np


from benchmarks.bench_train import model_flops
from benchmarks.common import Result, compare, matmul_flops
from benchmarks.loops import step_times, trainer_step_times

OP = "pretrain loop (mlm+nsp)"


def run(torch, copy_bps, repeats, size="mini", seq_len=128, batch_size=32, steps=None, warmup=3, matmul_n=2048,
        cache_dir=None, corpus=None):
    from ssl_core.train import PretrainConfig, Pretraining

    steps = steps or max(repeats, 12) + warmup
    peak = matmul_flops(torch, matmul_n, min(repeats, 5))
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch" if torch else "numpy", "@",
                      2 * matmul_n**3 / peak * 1e3, 0, 2 * matmul_n**3 / peak * 1e3, flops=2 * matmul_n**3)]
    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(model="bert", size=size, objective="mlm+nsp", seq_len=seq_len, batch_size=batch_size,
                                steps=steps, eval_every=0, save_every=0, out=out, cache_dir=cache_dir,
                                corpus=corpus, lr=1e-3, warmup_steps=1)
        ours = Pretraining(config, progress=False, echo=lambda message: None)
        batches = [ours.data.batch(0, i) for i in range(steps)]  # what our loop will draw, in order
        times = step_times(ours)
    shape = f"{size} B{batch_size} T<={seq_len}"
    flops = float(np.mean([model_flops("bert", b, ours.model.config) for b in batches[warmup:]]))
    tokens = float(np.mean([b["attention_mask"].sum() for b in batches[warmup:]]))
    results.append(_row(shape, "ssl_core", "ssl-core pretrain", times[warmup:], flops, tokens, peak))
    if torch is not None:
        import transformers

        model = transformers.BertForPreTraining(transformers.BertConfig(**ours.model.config.to_hf()))
        times = trainer_step_times(torch, model, batches, config)
        results.append(_row(shape, "torch", "HF Trainer", times[warmup:], flops, tokens, peak))
        compare(results, OP, "ssl_core/ssl-core pretrain", "torch/HF Trainer")
    return results


def _row(shape, impl, variant, seconds, flops, tokens, peak):
    ms = statistics.median(seconds) * 1e3
    row = Result(OP, shape, impl, variant, ms, 0, flops / peak * 1e3, flops=flops)
    row.note = f"{tokens / ms * 1e3:,.0f} tokens/s"
    return row
