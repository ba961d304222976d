"""The fused masked-LM / LM loss (ops.masked_lm_loss) at BERT-base and GPT-2
shapes, against torch in the same run and threads.

Targets:
- loss + gradients at least 1.3x faster than torch doing the same work: a
  linear layer on the labelled rows, cross_entropy, backward (the "valid rows"
  rows below), at both shapes;
- at least 10x lower peak memory for the loss computation: the growth of peak
  RSS during one call in a fresh process, inputs allocated before (and our
  gradient buffers, as a model's flat gradient buffer would be; torch's
  backward allocates its own, which its note states);
- GFLOP/s (6·M·C·V for loss and gradients of M labelled rows, 2·M·C·V for the
  loss alone) beside the float32 matmul peak measured in the same run.

Torch is also timed as Hugging Face models compute the loss: logits for every
position, then cross_entropy with ignore_index ("all positions"). Its GFLOP/s
count only the labelled rows' work, like ours.
"""

import numpy as np

import ssl_core
from ssl_core import ops

from benchmarks.common import Result, compare, matmul_flops, median_seconds, peak_memory_in_new_process

# (name, positions, labelled fraction, C, V)
SHAPES = [("BERT", 8 * 512, 0.15, 768, 30522), ("GPT-2", 4096, 1.0, 768, 50257)]
MATMUL_N = 2048

# One loss+gradients call in a fresh process (common.peak_memory_in_new_process):
# argv = impl N fraction C V threads.
PEAK_MEMORY = """
import sys, time
import numpy as np

impl, N, fraction, C, V, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *map(int, sys.argv[4:])
from benchmarks.bench_loss import inputs

hidden, weight, bias, labels = inputs(N, fraction, C, V)
if impl == "ssl_core":
    import ssl_core
    from ssl_core import ops
    ssl_core.set_num_threads(threads)
    grads = tuple(np.ones_like(a) for a in (hidden, weight, bias))  # ones: pages touched now

    def call():
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=grads)
else:
    import torch
    torch.set_num_threads(threads)
    from benchmarks.bench_loss import torch_loss_and_backward
    call = torch_loss_and_backward(torch, hidden, weight, bias, labels, all_positions=False)

"""


def inputs(N, fraction, C, V, seed=0):
    """hidden (N, C), weight (V, C) ~ N(0, 0.02) as initialized, zero bias, and
    labels with `fraction` of positions labelled (the rest -100)."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((N, C), dtype=np.float32)
    weight = rng.standard_normal((V, C), dtype=np.float32) * np.float32(0.02)
    bias = np.zeros(V, np.float32)
    labels = rng.integers(0, V, N)
    if fraction < 1:
        labels[rng.random(N) >= fraction] = -100
    return hidden, weight, bias, labels


def torch_loss_and_backward(torch, hidden, weight, bias, labels, all_positions):
    """torch's loss and gradients: a linear layer on the labelled rows (or on
    every row, as Hugging Face models do), cross_entropy, backward."""
    h = torch.from_numpy(hidden).requires_grad_()
    w, b = torch.from_numpy(weight).requires_grad_(), torch.from_numpy(bias).requires_grad_()
    t = torch.from_numpy(labels)
    rows = torch.nonzero(t != -100)[:, 0]

    def call():
        for leaf in (h, w, b):
            leaf.grad = None
        if all_positions:
            loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), t, ignore_index=-100)
        else:
            loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h[rows], w, b), t[rows])
        loss.backward()

    return call


def torch_op_loss_and_backward(torch, hidden, weight, bias, labels):
    """ssl_core's loss as a torch model calls it: the custom operator under autograd."""
    from ssl_core.integrations.torch import masked_lm_loss

    h, w, b = (torch.from_numpy(a).requires_grad_() for a in (hidden, weight, bias))
    t = torch.from_numpy(labels)

    def call():
        h.grad = w.grad = b.grad = None
        masked_lm_loss(h, w, b, t).backward()

    return call


def run(torch, copy_bps, repeats, shapes=SHAPES, matmul_n=MATMUL_N, memory=True):
    repeats = min(repeats, 3)  # torch takes 1-12 s a call at these shapes
    peak = matmul_flops(torch, matmul_n, repeats)
    mm_flops = 2 * matmul_n**3
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch" if torch else "numpy", "@",
                      mm_flops / peak * 1e3, 0, mm_flops / peak * 1e3, flops=mm_flops)]
    for name, N, fraction, C, V in shapes:
        hidden, weight, bias, labels = inputs(N, fraction, C, V)
        M = int(np.count_nonzero(labels != -100))
        shape = f"M{M} C{C} V{V}"  # M of N={N} positions labelled
        grads = tuple(np.empty_like(a) for a in (hidden, weight, bias))
        first = len(results)

        def add(op, impl, variant, fn, flops):
            ms = median_seconds(fn, repeats, warmup=1) * 1e3
            results.append(Result(op, shape, impl, variant, ms, 0, flops / peak * 1e3, flops=flops))

        fwd, fwd_bwd = f"{name} loss", f"{name} loss+grads"
        add(fwd, "ssl_core", "", lambda: ops.masked_lm_loss(hidden, weight, bias, labels), 2 * M * C * V)
        add(fwd_bwd, "ssl_core", "grads=",
            lambda: ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=grads), 6 * M * C * V)
        if torch is not None:
            with torch.no_grad():
                h, w, b, t = map(torch.from_numpy, (hidden, weight, bias, labels))
                rows = torch.nonzero(t != -100)[:, 0]
                add(fwd, "torch", "no_grad, valid rows",
                    lambda: torch.nn.functional.cross_entropy(torch.nn.functional.linear(h[rows], w, b), t[rows]),
                    2 * M * C * V)
            add(fwd_bwd, "torch", "autograd, valid rows",
                torch_loss_and_backward(torch, hidden, weight, bias, labels, all_positions=False), 6 * M * C * V)
            if fraction < 1:
                add(fwd_bwd, "torch", "autograd, all positions",
                    torch_loss_and_backward(torch, hidden, weight, bias, labels, all_positions=True), 6 * M * C * V)
            add(fwd_bwd, "ssl_core", "torch op, autograd",
                torch_op_loss_and_backward(torch, hidden, weight, bias, labels), 6 * M * C * V)
            rows_here = results[first:]
            compare(rows_here, fwd, "ssl_core/", "torch/no_grad, valid rows")
            compare(rows_here, fwd_bwd, "ssl_core/grads=", "torch/autograd, valid rows")
            compare(rows_here, fwd_bwd, "ssl_core/torch op, autograd", "torch/autograd, valid rows")
            if fraction < 1:
                ours = next(r for r in rows_here if r.op == fwd_bwd and r.impl == "ssl_core")
                naive = next(r for r in rows_here if r.variant == "autograd, all positions")
                ours.note = f"{naive.ms / ours.ms:.2f}x vs torch on all positions"
        if memory:
            results += peak_memory(torch, fwd_bwd, (N, fraction, C, V), shape, 6 * M * C * V, peak)
    return results


def peak_memory(torch, op, problem, shape, flops, peak):
    """Rows of one loss+gradients call each in a fresh process, with the growth of peak RSS."""
    N, fraction, C, V = problem
    M_V_mb = int(np.count_nonzero(inputs(*problem)[3] != -100)) * V * 4 / 1e6
    results = []
    for impl, variant in [("ssl_core", "grads=, new process"), ("torch", "autograd, new process")][:2 if torch else 1]:
        args = [impl, N, fraction, C, V, ssl_core.get_num_threads()]
        mb, seconds = peak_memory_in_new_process(PEAK_MEMORY, args)
        note = f"peak RSS +{mb:.0f} MB (M×V logits: {M_V_mb:.0f} MB)"
        if impl == "torch":
            note += f", its gradients included: {(N * C + V * C + V) * 4 / 1e6:.0f} MB"
        results.append(Result(op, shape, impl, variant, seconds * 1e3, 0, flops / peak * 1e3,
                              flops=flops, peak_rss_mb=mb, note=note))
    if torch is not None:
        ours, theirs = results
        ours.note += f"; {theirs.peak_rss_mb / ours.peak_rss_mb:.1f}x less than torch"
    return results
