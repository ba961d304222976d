"""Layer normalization over the last axis (Ba, Kiros & Hinton, 2016)."""

from ssl_core import _C
from ssl_core.ops import _device_ops
from ssl_core.ops._device import on_device
from ssl_core.ops._dispatch import require_numpy, split_out
from ssl_core.ops._dlpack import accepts_dlpack


@accepts_dlpack
def layer_norm_forward(x, weight, bias, eps=1e-5, *, out=None):
    """Normalize each row of ``x`` to zero mean and unit variance, then scale and shift.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance,
    as ``torch.nn.LayerNorm`` computes it.

    Args:
        x: float32 array (..., C); the leading axes are flattened into N rows.
            The last axis must be contiguous; the rows may be any fixed stride
            apart (e.g. ``x[:, :C]`` of a wider array). Other layouts raise
            ValueError rather than being copied silently.
        weight: float32 (C,), or None for ones.
        bias: float32 (C,), or None for zeros.
        eps: added to the variance, finite and >= 0.
        out: optional ``(y, mean, rstd)`` arrays to write into, shaped like the
            results; ``y`` may be ``x`` itself (in place).

    Returns:
        ``(y, mean, rstd)``: y float32 (..., C); mean and rstd (the reciprocal
        standard deviation) float32 (...), what ``layer_norm_backward`` needs.

    CUDA arrays (CuPy, CUDA torch tensors) run the CUDA kernel, on the
    framework's current stream, and give arrays of the same framework.
    """
    if on_device(x=x, weight=weight, bias=bias):
        return _device_ops.layer_norm_forward(x, weight, bias, eps, out)
    require_numpy(x=x, weight=weight, bias=bias)
    y, mean, rstd = split_out(out, ("y", "mean", "rstd"))
    return _C.layer_norm_forward(x, weight, bias, eps, y, mean, rstd)


@accepts_dlpack
def layer_norm(x, weight, bias, eps=1e-5, *, out=None):
    """``layer_norm_forward`` without the saved statistics: returns y (..., C)."""
    if on_device(x=x, weight=weight, bias=bias):
        return _device_ops.layer_norm_forward(x, weight, bias, eps, (out, None, None))[0]
    require_numpy(x=x, weight=weight, bias=bias)
    return _C.layer_norm_forward(x, weight, bias, eps, out, None, None)[0]


@accepts_dlpack
def layer_norm_backward(dy, x, weight, mean, rstd, *, out=None, accumulate=False):
    """Gradients of LayerNorm given the upstream gradient ``dy``.

    Args:
        dy: float32 (..., C), gradient of the loss with respect to y.
        x: float32 (..., C), the forward input.
        weight: float32 (C,), or None if the forward used none (ones).
        mean, rstd: float32 (...), as returned by ``layer_norm_forward``.
        out: optional ``(dx, dweight, dbias)`` arrays to write into; ``dx`` may
            be ``dy`` itself.
        accumulate: if True, dweight and dbias are added to the arrays given in
            ``out`` (parameter gradients accumulating across uses) instead of
            overwriting them; dx is always overwritten.

    Returns:
        ``(dx, dweight, dbias)``: dx float32 (..., C); dweight and dbias float32
        (C,), the gradients of the affine parameters (computed even when the
        forward used None for them). They are summed over rows in a fixed
        order, so they are bit-identical for any thread count (and on CUDA
        arrays, from run to run).
    """
    if on_device(dy=dy, x=x, weight=weight, mean=mean, rstd=rstd):
        return _device_ops.layer_norm_backward(dy, x, weight, mean, rstd, out, accumulate)
    require_numpy(dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    dx, dweight, dbias = split_out(out, ("dx", "dweight", "dbias"))
    return _C.layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias, bool(accumulate))
