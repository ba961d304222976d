"""The ops on CUDA arrays: allocate the results beside the inputs, then call
the CUDA kernels on the framework's current stream. The public functions in
ssl_core.ops check the scalars and come here when their arrays are CUDA
arrays; the kernels' bindings check the arrays."""

import numpy as np

from ssl_core.ops._device import array_type, as_device_int64, is_device_array, kernels
from ssl_core.ops._dispatch import split_out


def _empty(like, shape, dtype=np.float32):
    return array_type(like, "the first array").empty(like, tuple(shape), dtype)


def _stream(like):
    return array_type(like, "the first array").stream(like)


def _known(x, name):
    """Checks up front that ``x`` (argument ``name``) is of a framework we can allocate for."""
    array_type(x, name)


def layer_norm_forward(x, weight, bias, eps, out):
    _known(x, "x")
    y, mean, rstd = split_out(out, ("y", "mean", "rstd"))
    y = _empty(x, x.shape) if y is None else y
    mean = _empty(x, x.shape[:-1]) if mean is None else mean
    rstd = _empty(x, x.shape[:-1]) if rstd is None else rstd
    kernels().layer_norm_forward(y, mean, rstd, x, weight, bias, float(eps), stream=_stream(x))
    return y, mean, rstd


def layer_norm_backward(dy, x, weight, mean, rstd, out, accumulate):
    _known(dy, "dy")
    dx, dweight, dbias = split_out(out, ("dx", "dweight", "dbias"))
    columns = (x.shape[-1],)
    if accumulate and (dweight is None or dbias is None):
        raise ValueError("accumulate=True needs the dweight and dbias arrays to add to, in out")
    dx = _empty(x, x.shape) if dx is None else dx
    dweight = _empty(x, columns) if dweight is None else dweight
    dbias = _empty(x, columns) if dbias is None else dbias
    kernels().layer_norm_backward(dx, dweight, dbias, dy, x, weight, mean, rstd, bool(accumulate),
                                  stream=_stream(x))
    return dx, dweight, dbias


def gelu(x, approximate, bias, out):
    _known(x, "x")
    y = _empty(x, x.shape) if out is None else out
    kernels().gelu_forward(y, x, bias, approximate, stream=_stream(x))
    return y


def gelu_backward(dy, x, approximate, bias, out):
    _known(dy, "dy")
    dx = _empty(x, x.shape) if out is None else out
    kernels().gelu_backward(dx, dy, x, bias, approximate, stream=_stream(x))
    return dx


def _mask_arguments(q, key_lengths, prefix_lengths, mask):
    """The masks as device arrays on q's device (host ones are copied there);
    an explicit mask of fewer than 4 dimensions gets leading axes of length 1,
    as broadcasting to (B, H, Tq, Tk) would give it."""
    if mask is not None and not is_device_array(mask):
        mask = array_type(q, "q").from_numpy(q, np.ascontiguousarray(mask, dtype=np.bool_))
    if mask is not None and len(mask.shape) < 4:
        mask = mask.reshape((1,) * (4 - len(mask.shape)) + tuple(mask.shape))
    return (as_device_int64(key_lengths, q, "key_lengths"), as_device_int64(prefix_lengths, q, "prefix_lengths"),
            mask)


def _typestr(x):
    return x.__cuda_array_interface__["typestr"]


# The 16-bit arrays of the tensor-core kernels, by typestr: float16, and uint16
# holding bfloat16 bits (as ops.to_bfloat16 makes; few frameworks export a
# bfloat16 typestr, and torch tensors are viewed as uint16).
_HALF_TYPES = {"<f2": ("float16", np.float16), "<u2": ("bfloat16", np.uint16)}


def attention_forward(q, k, v, causal, key_lengths, prefix_lengths, mask, scale, dropout_p, seed, out):
    """float32 arrays run the float32 kernel; float16 and uint16 (bfloat16
    bits) ones the tensor-core kernel, whose out has their dtype."""
    _known(q, "q")
    out_array, lse = split_out(out, ("out", "lse"))
    if len(q.shape) != 4:
        raise ValueError(f"q must have 4 dimensions (batch, seq, heads, head_dim), got shape {tuple(q.shape)}")
    B, Tq, H, D = q.shape
    half = _HALF_TYPES.get(_typestr(q))
    out_array = _empty(q, (B, Tq, H, D), half[1] if half else np.float32) if out_array is None else out_array
    lse = _empty(q, (B, H, Tq)) if lse is None else lse
    key_lengths, prefix_lengths, mask = _mask_arguments(q, key_lengths, prefix_lengths, mask)
    masks = dict(causal=bool(causal), key_lengths=key_lengths, prefix_lengths=prefix_lengths, mask=mask,
                 dropout_p=dropout_p, seed=seed, stream=_stream(q))
    if half:
        kernels().attention_forward_16bit(out_array, lse, q, k, v, half[0], scale, **masks)
    else:
        kernels().attention_forward(out_array, lse, q, k, v, scale, **masks)
    return out_array, lse


def attention_backward(dout, q, k, v, out, lse, causal, key_lengths, prefix_lengths, mask, scale, dropout_p,
                       seed, grads, deterministic):
    """float32 arrays run the float32 kernel; float16 and uint16 (bfloat16
    bits) ones the tensor-core kernel (dq, dk, dv of their dtype)."""
    _known(dout, "dout")
    half = _HALF_TYPES.get(_typestr(q))
    dtype = half[1] if half else np.float32
    dq, dk, dv = split_out(grads, ("dq", "dk", "dv"), arg="grads")
    dq = _empty(q, q.shape, dtype) if dq is None else dq
    dk = _empty(q, k.shape, dtype) if dk is None else dk
    dv = _empty(q, v.shape, dtype) if dv is None else dv
    key_lengths, prefix_lengths, mask = _mask_arguments(q, key_lengths, prefix_lengths, mask)
    options = dict(causal=bool(causal), key_lengths=key_lengths, prefix_lengths=prefix_lengths, mask=mask,
                   dropout_p=dropout_p, seed=seed, deterministic=bool(deterministic), stream=_stream(q))
    if half:
        kernels().attention_backward_16bit(dq, dk, dv, dout, q, k, v, out, lse, half[0], scale, **options)
    else:
        kernels().attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale, **options)
    return dq, dk, dv


def linear_cross_entropy(hidden, weight, bias, rows, targets, label_smoothing, scale, return_grad, grads,
                         accumulate):
    """The CUDA form of _C.linear_cross_entropy: rows and targets are host
    int64 arrays (the labels were checked on the host), copied to the device."""
    kind = array_type(hidden, "hidden")
    d_hidden = d_weight = d_bias = None
    if return_grad:
        d_hidden, d_weight, d_bias = split_out(grads, ("d_hidden", "d_weight", "d_bias"), arg="grads")
        if accumulate and (d_weight is None or (bias is not None and d_bias is None)):
            raise ValueError("accumulate=True needs the d_weight (and d_bias) arrays to add to, in grads")
        d_hidden = _empty(hidden, hidden.shape) if d_hidden is None else d_hidden
        d_weight = _empty(hidden, weight.shape) if d_weight is None else d_weight
        if bias is not None and d_bias is None:
            d_bias = _empty(hidden, (weight.shape[0],))
    loss_sum, correct = kernels().linear_cross_entropy(
        d_hidden, d_weight, d_bias, hidden, weight, bias, kind.from_numpy(hidden, rows),
        kind.from_numpy(hidden, targets), label_smoothing=label_smoothing, grad_scale=scale,
        accumulate=bool(accumulate), stream=_stream(hidden))
    return loss_sum, correct, d_hidden, d_weight, d_bias
