"""Generation speed: ``GPT.generate`` against ``transformers`` ``generate`` on
torch (CPU), the same weights, prompts and thread count, in one process.

Models: GPT-2 small (124M parameters, GPT-2's vocabulary of 50,257) and the
tiny preset (2 layers, 128 wide, a vocabulary of 8,192 as ``ssl-core
pretrain --size tiny`` trains). Prompts of 32 tokens, 64 new tokens each
(no stop token, so every call makes all of them), greedy, at batch 1 and 8,
with float32 weights and with the bfloat16 copy (GPT.bfloat16_copy), and
with ops.linear's other path (its kernel at batch 1, BLAS at batch 8), which
shows what its choice by row count is worth.
A row's time is the median over calls of one generate call's time divided by
the tokens each row made: ms per decoding step. Also timed: decoding without
the cache (the whole sequence through the model at every step, batch 1), and
sampling with top-p 0.9; and the attention of one decoding step alone (one
query per row over 512 cached positions), against torch's
scaled_dot_product_attention.

A decoding step must read every weight once, so "x bound" is the step's
time over the time the weights take to stream at the copy bandwidth measured
at the start of the run.

Target (issue 8): at least 2x the tokens/s of transformers.
"""

import contextlib
import importlib

import numpy as np

from ssl_core import ops

from benchmarks.common import Result, compare, median_seconds

OP = "generate"
MODELS = {"gpt2-small": ("base", 50257), "tiny": ("tiny", 8192)}


def run(torch, copy_bps, repeats, models=("gpt2-small", "tiny"), batches=(1, 8), prompt_len=32, new_tokens=64,
        uncached=True):
    from ssl_core.models import GPT, GPTConfig

    results = []
    for name in models:
        preset, vocab = MODELS[name]
        model = GPT(GPTConfig.preset(preset, vocab_size=vocab), seed=0).eval()
        half = model.bfloat16_copy()
        weight_bytes = model.params.data.nbytes
        hf = _hf_model(torch, model) if torch is not None else None
        calls = max(2, min(repeats, 5 if preset == "base" else repeats))
        for batch in batches:
            ids = np.random.default_rng(batch).integers(0, vocab, (batch, prompt_len))
            shape = f"{name} B{batch} {prompt_len}+{new_tokens}"

            def row(impl, variant, fn, n_calls=calls, tokens=new_tokens):
                ms = median_seconds(fn, n_calls, warmup=1) * 1e3 / tokens
                result = Result(OP, shape, impl, variant, ms, weight_bytes, weight_bytes / copy_bps * 1e3)
                result.note = f"{batch / ms * 1e3:,.0f} tokens/s"
                results.append(result)

            row("ssl_core", "greedy", lambda: model.generate(ids, max_new_tokens=new_tokens))
            # ops.linear's choice at this batch against the other: BLAS at one row, the kernel at 2-32
            other = "kernel linear" if batch == 1 else "BLAS linear"
            with _linear_path(kernel=batch == 1):
                row("ssl_core", f"greedy, {other}", lambda: model.generate(ids, max_new_tokens=new_tokens))
            compare(results, OP, f"ssl_core/greedy, {other}", "ssl_core/greedy", shape)
            row("ssl_core", "greedy, bfloat16", lambda: half.generate(ids, max_new_tokens=new_tokens))
            results[-1].bytes_moved = _bfloat16_bytes(model)
            results[-1].bound_ms = results[-1].bytes_moved / copy_bps * 1e3
            if hf is not None:
                tids = torch.from_numpy(ids)
                with torch.inference_mode():
                    row("torch", "HF greedy", lambda: hf.generate(tids, max_new_tokens=new_tokens,
                                                                   min_new_tokens=new_tokens, do_sample=False,
                                                                   pad_token_id=0))
                compare(results, OP, "ssl_core/greedy", "torch/HF greedy", shape)
                compare(results, OP, "ssl_core/greedy, bfloat16", "torch/HF greedy", shape)
            if uncached and batch == 1:
                row("ssl_core", "greedy, no cache", lambda: _uncached_greedy(model, ids, new_tokens), n_calls=1)
                compare(results, OP, "ssl_core/greedy, no cache", "ssl_core/greedy", shape)
            if name == "tiny":
                row("ssl_core", "sample top-p 0.9", lambda: model.generate(ids, max_new_tokens=new_tokens,
                                                                           strategy="sample", top_p=0.9, seed=0))
                if hf is not None:
                    with torch.inference_mode():
                        row("torch", "HF sample top-p 0.9", lambda: hf.generate(
                            tids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_p=0.9,
                            top_k=0, pad_token_id=0))
                    compare(results, OP, "ssl_core/sample top-p 0.9", "torch/HF sample top-p 0.9", shape)
    results += _attention_rows(torch, copy_bps, repeats)
    return results


def _attention_rows(torch, copy_bps, repeats, batches=(1, 8), keys=512, heads=12, dim=64):
    """One decoding step's attention, one query per row over a cache of
    ``keys`` positions (GPT-2 small's heads), against torch's
    scaled_dot_product_attention given its own (B, H, T, D) layout."""
    rows = []
    for batch in batches:
        rng = np.random.default_rng(0)
        cache = rng.standard_normal((2, batch, keys + 64, heads, dim), dtype=np.float32)
        k, v = cache[0, :, :keys], cache[1, :, :keys]  # views of a larger cache, as decoding reads them
        q = rng.standard_normal((batch, 1, heads, dim), dtype=np.float32)
        lengths = np.full(batch, keys)
        shape = f"B{batch} H{heads} D{dim} 1x{keys}"
        nbytes = 2 * batch * keys * heads * dim * 4
        ms = median_seconds(lambda: ops.attention(q, k, v, key_lengths=lengths), repeats) * 1e3
        rows.append(Result("attention, 1 query", shape, "ssl_core", "cache views", ms, nbytes,
                           nbytes / copy_bps * 1e3))
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3))) for a in (q, k, v))
            sdpa = torch.nn.functional.scaled_dot_product_attention
            with torch.inference_mode():
                ms = median_seconds(lambda: sdpa(tq, tk, tv), repeats) * 1e3
            rows.append(Result("attention, 1 query", shape, "torch", "sdpa", ms, nbytes, nbytes / copy_bps * 1e3))
            compare(rows, "attention, 1 query", "ssl_core/cache views", "torch/sdpa", shape)
    return rows


@contextlib.contextmanager
def _linear_path(kernel):
    """ops.linear's kernel for every row count up to 32 (kernel=True), or for none."""
    module = importlib.import_module("ssl_core.ops.linear")  # ops.linear is the function
    saved = module.KERNEL_ROWS
    module.KERNEL_ROWS = (1, 32) if kernel else (33, 32)
    try:
        yield
    finally:
        module.KERNEL_ROWS = saved


def _bfloat16_bytes(model):
    """Bytes of weights a step reads with bfloat16 matrices: half of theirs."""
    matrices = sum(p.size for p in model.params if p.name.startswith("layers.") and len(p.shape) == 2)
    return model.params.data.nbytes - matrices * 2 - model.wte.weight.size * 2


def _uncached_greedy(model, ids, new_tokens):
    """Greedy decoding the way a model without a cache must: the whole
    sequence through the model for every new token."""
    for _ in range(new_tokens):
        ids = np.concatenate([ids, model.logits(ids)[:, -1].argmax(axis=1)[:, None]], axis=1)
    return ids


def _hf_model(torch, model):
    import tempfile

    import transformers

    from ssl_core.models import save_pretrained

    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
