"""A linear layer for few rows: y = x Wᵀ + b, the matrix products of
incremental decoding (one token per sequence per step)."""

from ssl_core import _C
from ssl_core.ops._dispatch import require_numpy

# Rows of x up to which the kernel runs; above, the array library's BLAS,
# which packs its operands for large products. (benchmarks/bench_linear.py)
FEW_ROWS = 32


def linear(x, weight, bias=None, *, out=None):
    """y = x weightᵀ + bias.

    Args:
        x: float32 (..., K) with a contiguous last axis (rows may be strided).
        weight: float32 (N, K), the torch.nn.Linear layout, contiguous last axis.
        bias: optional float32 (N,).
        out: optional float32 (..., N) to write into (must not overlap the inputs).

    Returns:
        float32 (..., N). When x has at most FEW_ROWS rows (its leading axes
        flattened), the kernel reads weight from memory once, which is what
        decoding's time is made of; larger x goes to NumPy's matmul.
    """
    require_numpy(x=x, weight=weight, bias=bias, out=out)
    rows = x.size // x.shape[-1] if getattr(x, "ndim", 0) and x.shape[-1] else 0
    if rows > FEW_ROWS and getattr(weight, "ndim", 0) == 2 and x.dtype == weight.dtype:
        y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
        if bias is not None:
            y += bias
        if out is not None:
            out[...] = y
            return out
        return y
    return _C.linear_forward(x, weight, bias, out)
