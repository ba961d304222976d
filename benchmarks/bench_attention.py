"""Attention forward and forward+backward at BERT-base shapes, against torch's
scaled_dot_product_attention (CPU, autograd), in the same run and threads.

Targets:
- forward+backward at B=8, H=12, T=512, D=64 at least 1.5x faster than torch's,
  and causal at least 1.5x faster than torch's causal (is_causal=True);
- with key_lengths where half the batch is half padding, the time falls with
  the unpadded work: its ratio to the unpadded time near the work ratio, 0.75;
- extra memory beyond inputs and outputs O(B·H·T) plus per-thread working
  memory, never O(T²): the peak RSS growth of one forward+backward at T=4096
  in a fresh process (timed by a single second call), beside the 805 MB of
  one T×T float32 score matrix per head. (Each thread holds a contiguous
  copy of the head it works on, O(T·D), besides its tiles.);
- BERT's attention dropout (p = 0.1) at the first shape, for its cost, and
  the causal mask given as an explicit bool array (the path for any other
  mask) beside causal=True;
- GFLOP/s by FlashAttention's count (4·B·H·Tq·Tk·D forward, 2.5x that backward,
  halved when causal; padded keys not counted) beside the float32 matmul peak
  measured in the same run.

Torch is called as a user of our (B, T, H, D) layout would: the arrays viewed
as (B, H, T, D) by transpose; padding becomes a boolean attn_mask, since torch
cannot skip it. For the first shape torch is also timed on contiguous
(B, H, T, D) tensors, its own best layout. Its CPU SDPA is flash-style too, so
its memory is only context.
"""

import numpy as np

import ssl_core
from ssl_core import ops

from benchmarks.common import Result, compare, matmul_flops, median_seconds, peak_memory_in_new_process

SHAPES = [(8, 512, 12, 64), (8, 512, 24, 32), (8, 512, 6, 128)]  # (B, T, H, D); causal and padding at the first
MEMORY_SHAPE = (1, 4096, 12, 64)
MATMUL_N = 2048

# One forward+backward in a fresh process (common.peak_memory_in_new_process):
# argv = impl B T H D causal threads; inputs and ssl_core's outputs allocated before.
PEAK_MEMORY = """
import sys, time
import numpy as np

impl, (B, T, H, D, causal, threads) = sys.argv[1], map(int, sys.argv[2:])
rng = np.random.default_rng(0)
q, k, v, dout = (rng.standard_normal((B, T, H, D), dtype=np.float32) for _ in range(4))
if impl == "ssl_core":
    import ssl_core
    from ssl_core import ops
    ssl_core.set_num_threads(threads)
    out, dq, dk, dv = (np.ones_like(q) for _ in range(4))  # ones, not zeros: pages touched now
    lse = np.ones((B, H, T), np.float32)

    def call():
        ops.attention_forward(q, k, v, causal=bool(causal), out=(out, lse))
        ops.attention_backward(dout, q, k, v, out, lse, causal=bool(causal), grads=(dq, dk, dv))
else:
    import torch
    torch.set_num_threads(threads)
    leaves, tdout = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)], torch.from_numpy(dout)

    def call():
        for t in leaves:
            t.grad = None
        bhtd = [t.transpose(1, 2) for t in leaves]
        torch.nn.functional.scaled_dot_product_attention(*bhtd, is_causal=bool(causal)).transpose(1, 2).backward(tdout)

"""


def run(torch, copy_bps, repeats, shapes=SHAPES, memory_shape=MEMORY_SHAPE, matmul_n=MATMUL_N):
    repeats = min(repeats, 10)  # calls take 50-500 ms
    peak = matmul_flops(torch, matmul_n, repeats)
    mm_flops = 2 * matmul_n**3
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch" if torch else "numpy", "@",
                      mm_flops / peak * 1e3, 0, mm_flops / peak * 1e3, flops=mm_flops)]

    for i, (B, T, H, D) in enumerate(shapes):
        rng = np.random.default_rng(0)
        q, k, v, dout = (rng.standard_normal((B, T, H, D), dtype=np.float32) for _ in range(4))
        out, dq, dk, dv = (np.empty_like(q) for _ in range(4))
        lse = np.empty((B, H, T), np.float32)
        shape = f"B{B} T{T} H{H} D{D}"

        def add(op, impl, variant, fn, flops):
            ms = median_seconds(fn, repeats) * 1e3
            results.append(Result(op, shape, impl, variant, ms, 0, flops / peak * 1e3, flops=flops))

        def time_rows(name, options, torch_options, torch_variant="", work=1.0, forward=True):
            fwd, fwd_bwd = f"attention{name} fwd", f"attention{name} fwd+bwd"
            flops = 4 * B * H * T * T * D * work  # forward; the backward is 2.5x that
            first = len(results)

            def forward_backward():
                ops.attention_forward(q, k, v, out=(out, lse), **options)
                ops.attention_backward(dout, q, k, v, out, lse, grads=(dq, dk, dv), **options)

            if forward:
                add(fwd, "ssl_core", "out=", lambda: ops.attention_forward(q, k, v, out=(out, lse), **options), flops)
            add(fwd_bwd, "ssl_core", "out=, grads=", forward_backward, 3.5 * flops)

            if torch is not None:
                from ssl_core.integrations.torch import functional as ssl_torch

                sdpa = torch.nn.functional.scaled_dot_product_attention
                inputs = [torch.from_numpy(a).transpose(1, 2) for a in (q, k, v)]
                leaves, tdout = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)], torch.from_numpy(dout)

                def torch_autograd():
                    for t in leaves:
                        t.grad = None
                    sdpa(*(t.transpose(1, 2) for t in leaves), **torch_options).transpose(1, 2).backward(tdout)

                our_options = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}

                def ours_autograd():  # ssl_core's custom operator, as a torch model calls it
                    for t in leaves:
                        t.grad = None
                    ssl_torch.attention(*leaves, **our_options).backward(tdout)

                if forward:
                    with torch.no_grad():
                        add(fwd, "torch", "no_grad" + torch_variant, lambda: sdpa(*inputs, **torch_options), flops)
                add(fwd_bwd, "torch", "autograd" + torch_variant, torch_autograd, 3.5 * flops)
                add(fwd_bwd, "ssl_core", "torch op, autograd", ours_autograd, 3.5 * flops)
                rows = results[first:]
                compare(rows, fwd, "ssl_core/out=", "torch/no_grad" + torch_variant)
                compare(rows, fwd_bwd, "ssl_core/out=, grads=", "torch/autograd" + torch_variant)
                compare(rows, fwd_bwd, "ssl_core/torch op, autograd", "torch/autograd" + torch_variant)
            return next(r for r in results[first:] if r.op == fwd_bwd and r.impl == "ssl_core")

        unpadded = time_rows("", {}, {})
        if i == 0 and torch is not None:
            torch_best_layout(torch, results, (q, k, v, dout), shape, 3.5 * 4 * B * H * T * T * D, peak, repeats)
        if i == 0:
            causal = time_rows("[causal]", dict(causal=True), dict(is_causal=True), work=0.5)
            tril = np.tril(np.ones((T, T), bool))
            explicit = time_rows("[mask=tril]", dict(mask=tril), dict(attn_mask=torch and torch.from_numpy(tril)),
                                 ", attn_mask", work=0.5, forward=False)
            explicit.note = f"{explicit.ms / causal.ms:.2f}x the time of causal=True"
            key_lengths = np.full(B, T)
            key_lengths[B // 2:] = T // 2  # half the batch is half padding
            keep = torch and (torch.arange(T) < torch.from_numpy(key_lengths)[:, None])[:, None, None]  # (B, 1, 1, T)
            work = key_lengths.mean() / T
            padded = time_rows("[key_lengths]", dict(key_lengths=key_lengths), dict(attn_mask=keep),
                               ", attn_mask", work=work, forward=False)
            padded.note = f"{padded.ms / unpadded.ms:.2f}x the unpadded time for {work:.2f}x the work"
            dropped = time_rows("[dropout 0.1]", dict(dropout_p=0.1, seed=1), dict(dropout_p=0.1), forward=False)
            dropped.note = f"{dropped.ms / unpadded.ms:.2f}x the time without dropout"

    if memory_shape:
        results += peak_memory(torch, memory_shape, peak)
    return results


def torch_best_layout(torch, results, arrays, shape, flops, peak, repeats):
    """torch fwd+bwd on contiguous (B, H, T, D) copies: its fastest layout, a row to compare with too."""
    q, k, v, dout = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in arrays)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def torch_autograd():
        for t in leaves:
            t.grad = None
        torch.nn.functional.scaled_dot_product_attention(*leaves).backward(dout)

    ms = median_seconds(torch_autograd, repeats) * 1e3
    results.append(Result("attention fwd+bwd", shape, "torch", "autograd, (B,H,T,D) contiguous", ms, 0,
                          flops / peak * 1e3, flops=flops))
    ours = next(r for r in results if r.op == "attention fwd+bwd" and r.shape == shape and r.impl == "ssl_core")
    ours.note = f"{ms / ours.ms:.2f}x vs torch on contiguous (B,H,T,D)"


def peak_memory(torch, shape, peak):
    """Rows of one forward+backward each in a fresh process, with the growth of peak RSS."""
    B, T, H, D = shape
    scores_mb = B * H * T * T * 4 / 1e6
    results = []
    for causal in (False, True):
        op = f"attention{'[causal]' if causal else ''} fwd+bwd"
        flops = 3.5 * 4 * B * H * T * T * D / (2 if causal else 1)
        for impl, variant in [("ssl_core", "new process"), ("torch", "autograd, new process")][:2 if torch else 1]:
            args = [impl, B, T, H, D, int(causal), ssl_core.get_num_threads()]
            mb, seconds = peak_memory_in_new_process(PEAK_MEMORY, args)
            note = f"peak RSS +{mb:.0f} MB (T×T scores: {scores_mb:.0f} MB)"
            if impl == "torch":
                note += f", its out and grads included: {4 * B * T * H * D * 4 / 1e6:.0f} MB"
            results.append(Result(op, f"B{B} T{T} H{H} D{D}", impl, variant, seconds * 1e3, 0, flops / peak * 1e3,
                                  flops=flops, peak_rss_mb=mb, note=note))
        compare(results[-2:], op, "ssl_core/new process", "torch/autograd, new process")
    return results
