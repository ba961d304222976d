"""GELU activation (Hendrycks & Gimpel, 2016)."""

from ssl_core import _C
from ssl_core.ops import _device_ops
from ssl_core.ops._device import on_device
from ssl_core.ops._dispatch import require_numpy
from ssl_core.ops._dlpack import accepts_dlpack


@accepts_dlpack
def gelu(x, approximate="none", *, bias=None, out=None):
    """GELU(x) = x * Φ(x), elementwise; GELU(x + bias) with a bias.

    Args:
        x: float32 array of any shape with a contiguous last axis (rows may be
            strided, as for ``layer_norm_forward``).
        approximate: ``"none"`` for the exact erf form (BERT) or ``"tanh"`` for
            ``0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`` (GPT-2), as in
            ``torch.nn.functional.gelu``.
        bias: optional float32 (C,), added to every row of x first, in the same
            pass: the bias of the linear layer before, fused.
        out: optional float32 array shaped like x to write into; may be x itself.

    Returns:
        float32 array shaped like x. The fast path is within 3e-7 absolute of the
        float64 result for |x| <= 10; GELU(+inf) = +inf, GELU(-inf) = -0, NaN stays NaN.
        CUDA arrays run the CUDA kernel and give arrays of their framework.
    """
    if on_device(x=x, bias=bias, out=out):
        return _device_ops.gelu(x, approximate, bias, out)
    require_numpy(x=x, bias=bias, out=out)
    return _C.gelu_forward(x, approximate, bias, out)


@accepts_dlpack
def gelu_backward(dy, x, approximate="none", *, bias=None, out=None):
    """dx = dy * GELU'(x + bias), elementwise (bias None: GELU'(x)).

    Args:
        dy: float32, gradient of the loss with respect to GELU(x); shape of x.
        x: float32, the forward input.
        approximate: ``"none"`` or ``"tanh"``, as in the forward.
        bias: the forward's bias, or None. (Its gradient is dx summed over rows.)
        out: optional float32 array shaped like x to write into; may be dy itself.

    Returns:
        dx, float32 shaped like x.
    """
    if on_device(dy=dy, x=x, bias=bias, out=out):
        return _device_ops.gelu_backward(dy, x, approximate, bias, out)
    require_numpy(dy=dy, x=x, bias=bias, out=out)
    return _C.gelu_backward(dy, x, approximate, bias, out)
