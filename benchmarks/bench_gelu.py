"""GELU forward and forward+backward at the BERT-base FFN shape, against torch.

Target (issue 2): forward+backward at N=4096, C=3072 at least 3x faster than
torch on the CPU, and within 1.3x of its memory traffic at copy bandwidth.
"""

import numpy as np

from ssl_core import ops

from benchmarks.common import Result, compare, median_seconds

SHAPES = [(4096, 3072)]


def run(torch, copy_bps, repeats, shapes=SHAPES):
    results = []
    for N, C in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C), dtype=np.float32) * 3
        dy = rng.standard_normal((N, C), dtype=np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        array_bytes = N * C * 4
        shape = f"{N}x{C}"
        for approximate in ("none", "tanh"):
            fwd, fwd_bwd = f"gelu[{approximate}] fwd", f"gelu[{approximate}] fwd+bwd"
            traffic = {fwd: 2 * array_bytes, fwd_bwd: 5 * array_bytes}
            first = len(results)

            def add(op, impl, variant, fn):
                ms = median_seconds(fn, repeats) * 1e3
                results.append(Result(op, shape, impl, variant, ms, traffic[op], traffic[op] / copy_bps * 1e3))

            def forward_backward_out():
                ops.gelu(x, approximate, out=y)
                ops.gelu_backward(dy, x, approximate, out=dx)

            def forward_backward_allocating():
                ops.gelu(x, approximate)
                ops.gelu_backward(dy, x, approximate)

            add(fwd, "ssl_core", "out=", lambda: ops.gelu(x, approximate, out=y))
            add(fwd_bwd, "ssl_core", "out=", forward_backward_out)
            add(fwd_bwd, "ssl_core", "allocating", forward_backward_allocating)

            if torch is not None:
                from ssl_core.integrations.torch import functional as ssl_torch

                tx, tdy, ty, tdx = (torch.from_numpy(a) for a in (x, dy, y, dx))
                x_leaf = tx.clone().requires_grad_()

                def torch_autograd():
                    x_leaf.grad = None
                    torch.nn.functional.gelu(x_leaf, approximate=approximate).backward(tdy)

                def ours_autograd():  # ssl_core's custom operator, as a torch model calls it
                    x_leaf.grad = None
                    ssl_torch.gelu(x_leaf, approximate).backward(tdy)

                def torch_kernels():  # ATen kernels writing into preallocated outputs
                    torch._C._nn.gelu(tx, approximate=approximate, out=ty)
                    torch.ops.aten.gelu_backward.grad_input(tdy, tx, approximate=approximate, grad_input=tdx)

                with torch.no_grad():
                    add(fwd, "torch", "out=", lambda: torch._C._nn.gelu(tx, approximate=approximate, out=ty))
                add(fwd_bwd, "torch", "autograd", torch_autograd)
                add(fwd_bwd, "torch", "aten kernels, out=", torch_kernels)
                add(fwd_bwd, "ssl_core", "torch op, autograd", ours_autograd)
                rows = results[first:]
                compare(rows, fwd, "ssl_core/out=", "torch/out=")
                compare(rows, fwd_bwd, "ssl_core/allocating", "torch/autograd")
                compare(rows, fwd_bwd, "ssl_core/out=", "torch/aten kernels, out=")
                compare(rows, fwd_bwd, "ssl_core/torch op, autograd", "torch/autograd")
    return results
