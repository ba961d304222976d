"""LayerNorm forward and forward+backward at BERT-base shapes, against torch.

Target (issue 2): forward+backward at N=4096, C=768 at least 2x faster than
torch on the CPU, and within 1.3x of its memory traffic at copy bandwidth.
"""

import numpy as np

from ssl_core import ops

from benchmarks.common import Result, compare, median_seconds

SHAPES = [(4096, 768), (4096, 1024)]


def run(torch, copy_bps, repeats, shapes=SHAPES):
    results = []
    for N, C in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C), dtype=np.float32)
        dy = rng.standard_normal((N, C), dtype=np.float32)
        weight = rng.standard_normal(C, dtype=np.float32)
        bias = rng.standard_normal(C, dtype=np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
        dweight, dbias = np.empty(C, np.float32), np.empty(C, np.float32)
        array_bytes = N * C * 4
        traffic = {"layer_norm fwd": 2 * array_bytes, "layer_norm fwd+bwd": 5 * array_bytes}
        shape = f"{N}x{C}"

        def add(op, impl, variant, fn):
            ms = median_seconds(fn, repeats) * 1e3
            results.append(Result(op, shape, impl, variant, ms, traffic[op], traffic[op] / copy_bps * 1e3))

        def forward_backward_out():
            ops.layer_norm_forward(x, weight, bias, out=(y, mean, rstd))
            ops.layer_norm_backward(dy, x, weight, mean, rstd, out=(dx, dweight, dbias))

        def forward_backward_allocating():
            _, m, r = ops.layer_norm_forward(x, weight, bias)
            ops.layer_norm_backward(dy, x, weight, m, r)

        add("layer_norm fwd", "ssl_core", "out=", lambda: ops.layer_norm_forward(x, weight, bias, out=(y, mean, rstd)))
        add("layer_norm fwd+bwd", "ssl_core", "out=", forward_backward_out)
        add("layer_norm fwd+bwd", "ssl_core", "allocating", forward_backward_allocating)

        if torch is not None:
            from ssl_core.integrations.torch import functional as ssl_torch

            tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, weight, bias))
            x_leaf, w_leaf, b_leaf = (t.clone().requires_grad_() for t in (tx, tw, tb))

            def torch_autograd():
                x_leaf.grad = w_leaf.grad = b_leaf.grad = None
                torch.nn.functional.layer_norm(x_leaf, (C,), w_leaf, b_leaf, 1e-5).backward(tdy)

            def torch_kernels():  # the ATen kernels alone, no autograd bookkeeping
                _, m, r = torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
                torch.ops.aten.native_layer_norm_backward(tdy, tx, [C], m, r, tw, tb, [True, True, True])

            with torch.no_grad():
                add("layer_norm fwd", "torch", "F.layer_norm", lambda: torch.nn.functional.layer_norm(tx, (C,), tw, tb))
            def ours_autograd():  # ssl_core's custom operator, as a torch model calls it
                x_leaf.grad = w_leaf.grad = b_leaf.grad = None
                ssl_torch.layer_norm(x_leaf, w_leaf, b_leaf, 1e-5).backward(tdy)

            add("layer_norm fwd+bwd", "torch", "autograd", torch_autograd)
            add("layer_norm fwd+bwd", "torch", "aten kernels", torch_kernels)
            add("layer_norm fwd+bwd", "ssl_core", "torch op, autograd", ours_autograd)
            compare(results[-7:], "layer_norm fwd", "ssl_core/out=", "torch/F.layer_norm")
            compare(results[-7:], "layer_norm fwd+bwd", "ssl_core/allocating", "torch/autograd")
            compare(results[-7:], "layer_norm fwd+bwd", "ssl_core/out=", "torch/aten kernels")
            compare(results[-7:], "layer_norm fwd+bwd", "ssl_core/torch op, autograd", "torch/autograd")
    return results
