"""Scaled dot-product attention, flash-style: softmax(q kᵀ · scale + mask) v.

Tensors are laid out (batch, seq, heads, head_dim) like FlashAttention's, so the
q, k and v slices of a fused QKV projection, shaped (B, T, 3, H, D), are used
in place. The score matrix is never stored: the forward keeps a running
softmax over blocks of keys and returns the log-sum-exp of each query's scores,
from which the backward recomputes the probabilities.

Masks, all optional and combinable (True / inside = may attend):

- ``key_lengths`` (B,): keys at positions >= key_lengths[b] are padding (BERT
  batches). Padded key blocks cost nothing.
- ``causal``: query i sees keys j <= i + (Tk - Tq). The diagonal is aligned
  bottom-right, so with Tq < Tk (decoding against a cache) the last query sees
  every key; with Tq > Tk the first Tq - Tk queries see none.
- ``prefix_lengths`` (B,): the prefix-LM / UniLM sequence-to-sequence mask,
  causal except that every query also sees the first prefix_lengths[b] keys.
  It implies the causal structure, so ``causal`` may be left False.
- ``mask``: a bool array broadcastable to (B, H, Tq, Tk) for anything else.

A query that may attend to no key gets an output of zeros, lse = +inf, and
zero gradients.

Dropout on the attention probabilities uses Philox4x32-10 keyed by ``seed``
(see ``csrc/include/ssl_core/philox.h`` for the exact convention), so the
backward regenerates the forward's mask, and results are the same for any
number of threads.
"""

import math
import operator

from ssl_core import _C
from ssl_core.ops import _device_ops
from ssl_core.ops._device import on_device
from ssl_core.ops._dispatch import require_numpy, split_out
from ssl_core.ops._dlpack import accepts_dlpack

_MASK_DOC = """
        causal: bool, the causal mask (bottom-right aligned when Tq != Tk).
        key_lengths: optional integer array (B,) in [0, Tk]: valid keys per sequence.
        prefix_lengths: optional integer array (B,) in [0, Tk]: prefix-LM mask.
        mask: optional bool array broadcastable to (B, H, Tq, Tk), True = may attend.
        scale: multiplies q.k; None means 1/sqrt(D).
        dropout_p: probability in [0, 1) of dropping each attention weight.
        seed: integer in [0, 2**64), the dropout generator's key."""


def _scalars(q, scale, dropout_p, seed):
    """Checked (scale, dropout_p, seed) for the native call."""
    if scale is None:
        head_dim = q.shape[-1] if getattr(q, "ndim", 0) == 4 else 1
        scale = 1.0 / math.sqrt(max(head_dim, 1))
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a number or None, got {scale!r:.80}") from None
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    try:
        dropout_p = float(dropout_p)
    except (TypeError, ValueError):
        raise TypeError(f"dropout_p must be a number, got {dropout_p!r:.80}") from None
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}") from None
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return scale, dropout_p, seed


@accepts_dlpack
def attention_forward(q, k, v, *, causal=False, key_lengths=None, prefix_lengths=None, mask=None,
                      scale=None, dropout_p=0.0, seed=0, out=None):
    """Attention of queries q over keys k and values v.

    Args:
        q: float32 (B, Tq, H, D). k, v: float32 (B, Tk, H, D). Any strides
            with a contiguous last axis (no copies are made).{mask_doc}
        out: optional ``(out, lse)`` arrays to write into (either may be None).

    Returns:
        ``(out, lse)``: out float32 (B, Tq, H, D); lse float32 (B, H, Tq), the
        natural log of each query's sum of exp(scaled scores) over the keys
        it may attend (+inf where none), which ``attention_backward`` needs.
        CUDA arrays run the CUDA kernel and give arrays of their framework:
        float32, or on tensor cores float16 or bfloat16 (given as uint16
        arrays of its bits, as ``to_bfloat16`` makes), where out has q's
        dtype and lse is float32.
    """
    scale, dropout_p, seed = _scalars(q, scale, dropout_p, seed)
    if on_device(q=q, k=k, v=v):
        return _device_ops.attention_forward(q, k, v, causal, key_lengths, prefix_lengths, mask, scale, dropout_p,
                                             seed, out)
    require_numpy(q=q, k=k, v=v)
    out_array, lse = split_out(out, ("out", "lse"))
    return _C.attention_forward(q, k, v, bool(causal), key_lengths, prefix_lengths, mask, scale, dropout_p,
                                seed, out_array, lse)


@accepts_dlpack
def attention(q, k, v, *, causal=False, key_lengths=None, prefix_lengths=None, mask=None, scale=None,
              dropout_p=0.0, seed=0, out=None):
    """``attention_forward`` without the log-sum-exp: returns out (B, Tq, H, D),
    written into ``out`` if given."""
    scale, dropout_p, seed = _scalars(q, scale, dropout_p, seed)
    if on_device(q=q, k=k, v=v, out=out):
        return _device_ops.attention_forward(q, k, v, causal, key_lengths, prefix_lengths, mask, scale, dropout_p,
                                             seed, (out, None))[0]
    require_numpy(q=q, k=k, v=v, out=out)
    return _C.attention_forward(q, k, v, bool(causal), key_lengths, prefix_lengths, mask, scale, dropout_p,
                                seed, out, None)[0]


@accepts_dlpack
def attention_backward(dout, q, k, v, out, lse, *, causal=False, key_lengths=None, prefix_lengths=None,
                       mask=None, scale=None, dropout_p=0.0, seed=0, grads=None, deterministic=False):
    """Gradients of attention given the upstream gradient ``dout``.

    Pass the same mask, scale and dropout arguments as to the forward.

    Args:
        dout: float32 (B, Tq, H, D), gradient of the loss with respect to out.
        q, k, v: the forward's inputs.
        out, lse: the forward's results.{mask_doc}
        grads: optional ``(dq, dk, dv)`` arrays to write into (any may be
            None), e.g. slices of one (B, T, 3, H, D) gradient array.
        deterministic: on CUDA arrays, accumulate dq in a fixed order (bit-
            identical from run to run, somewhat slower) instead of with
            atomics. The CPU kernel is always deterministic.

    Returns:
        ``(dq, dk, dv)`` shaped like q, k and v.
    """
    scale, dropout_p, seed = _scalars(q, scale, dropout_p, seed)
    if on_device(dout=dout, q=q, k=k, v=v, out=out, lse=lse):
        return _device_ops.attention_backward(dout, q, k, v, out, lse, causal, key_lengths, prefix_lengths, mask,
                                              scale, dropout_p, seed, grads, deterministic)
    require_numpy(dout=dout, q=q, k=k, v=v, out=out, lse=lse)
    dq, dk, dv = split_out(grads, ("dq", "dk", "dv"), arg="grads")
    return _C.attention_backward(dout, q, k, v, out, lse, bool(causal), key_lengths, prefix_lengths, mask,
                                 scale, dropout_p, seed, dq, dk, dv)


attention_forward.__doc__ = attention_forward.__doc__.format(mask_doc=_MASK_DOC)
attention_backward.__doc__ = attention_backward.__doc__.format(mask_doc=_MASK_DOC)
