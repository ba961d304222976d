"""A linear layer, y = x Wᵀ + b, with a kernel for the products BLAS does
poorly: a few rows of x against a weight matrix streamed from memory, as in
incremental decoding (one token per sequence per step)."""

import numpy as np

from ssl_core import _C
from ssl_core.ops._dispatch import require_numpy
from ssl_core.ops._dlpack import accepts_dlpack

# When ops.linear picks the kernel: for 2 to 32 rows of x. There OpenBLAS
# packs its operands for a matrix product and streams a weight matrix from
# memory at about 8 GB/s: 18-22 ms for GPT-2's 50257 x 768 output layer at 2
# to 8 rows, against 6-13 ms for the kernel. For one row, BLAS's
# matrix-vector product was as fast or faster. benchmarks/bench_generate.py
# times a GPT-2 small decoding step both ways ("greedy, kernel linear" at
# batch 1, "greedy, BLAS linear" at batch 8): the other path ran at 0.96x of
# this choice at batch 1 and at 0.54x at batch 8.
KERNEL_ROWS = (2, 32)


def to_bfloat16(array):
    """float32 -> bfloat16, as the uint16 bits NumPy can hold (it has no
    bfloat16 type): the high half of each float32, rounded to nearest even.
    NaN stays NaN; values beyond bfloat16's range become inf."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(array)
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def from_bfloat16(bits):
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


@accepts_dlpack
def linear(x, weight, bias=None, *, out=None, kernel=None):
    """y = x weightᵀ + bias.

    Args:
        x: float32 (..., K) with a contiguous last axis (rows may be strided).
        weight: (N, K), the torch.nn.Linear layout, contiguous last axis:
            float32, or bfloat16 as uint16 bits (``to_bfloat16``), which the
            kernel widens to float32 as it reads them: half the memory
            traffic, float32 arithmetic.
        bias: optional float32 (N,).
        out: optional float32 (..., N) to write into.
        kernel: None picks ours for 2 to 32 rows of x (KERNEL_ROWS), NumPy's
            matmul (BLAS) otherwise, and ours for bfloat16 weights up to 32
            rows; True or False forces the choice (BLAS gets bfloat16
            weights widened to a float32 copy). The kernel reads weight from
            memory once per call; its out must not overlap the inputs.

    Returns:
        float32 (..., N).
    """
    require_numpy(x=x, weight=weight, bias=bias, out=out)
    _check(x, weight, bias, out)
    rows = x.size // max(x.shape[-1], 1)
    bf16 = weight.dtype == np.uint16
    if kernel is None:
        kernel = (1 if bf16 else KERNEL_ROWS[0]) <= rows <= KERNEL_ROWS[1]
    if kernel:
        return _C.linear_forward(x, weight, bias, out)
    if bf16:
        weight = from_bfloat16(weight)
    y = (x.reshape(rows, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        y += bias
    if out is None:
        return y
    out[...] = y
    return out


def _check(x, weight, bias, out):
    """The argument errors both paths raise alike."""
    for name, array in (("x", x), ("bias", bias), ("out", out)):
        if array is not None and array.dtype != np.float32:
            raise TypeError(f"{name} must be a numpy.ndarray of float32, got an array of {array.dtype}")
    if weight.dtype not in (np.float32, np.uint16):
        raise TypeError(f"weight must be a numpy.ndarray of float32 (or uint16 bfloat16 bits), got {weight.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has {x.shape[-1] if x.ndim else 0} features in its last axis, weight {weight.shape} "
                         f"expects {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if out is not None and out.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(f"out must have shape {(*x.shape[:-1], weight.shape[0])}, got {out.shape}")
