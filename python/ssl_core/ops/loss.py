"""The loss of a masked-LM or LM head, fused with its output projection."""

from typing import NamedTuple, Optional

import numpy as np

from ssl_core import _C
from ssl_core.ops import _device_ops
from ssl_core.ops._device import array_type, is_device_array, on_device
from ssl_core.ops._dispatch import require_numpy, split_out
from ssl_core.ops._dlpack import accepts_dlpack


class MaskedLMLoss(NamedTuple):
    """What ``masked_lm_loss`` returns; the gradients are None unless asked for."""

    loss: float  #: mean (or summed) cross-entropy over the labelled positions
    n_valid: int  #: labelled positions (labels != ignore_index)
    n_correct: int  #: labelled positions whose largest logit (first, on ties) is the label
    d_hidden: Optional[np.ndarray] = None  #: (..., C), zero at unlabelled positions
    d_weight: Optional[np.ndarray] = None  #: (V, C)
    d_bias: Optional[np.ndarray] = None  #: (V,), None when bias is None


@accepts_dlpack
def masked_lm_loss(
    hidden,
    weight,
    bias,
    labels,
    *,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    normalizer=None,
    return_grad=False,
    grads=None,
    accumulate=False,
):
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, fused.

    The output layer and the loss in one pass that never holds the logits of
    the whole batch: only the labelled positions are computed (with BERT's 15%
    masking, about 1/7 of the work of computing every position), a chunk of
    them at a time (csrc/cpu/linear_cross_entropy.cpp explains the design).
    Label smoothing follows ``torch.nn.functional.cross_entropy``: the target
    is ``(1 - label_smoothing) * onehot(label) + label_smoothing / V``.

    Args:
        hidden: float32 (..., C), the final hidden states. The last axis must
            be contiguous; rows may be any fixed stride apart.
        weight: float32 (V, C), the output embedding (often the tied input
            embedding), with a contiguous last axis.
        bias: float32 (V,) or None.
        labels: integer array shaped like ``hidden`` without its last axis;
            classes in [0, V), or ``ignore_index`` where there is no label.
        ignore_index: the label value that marks unlabelled positions.
        label_smoothing: in [0, 1].
        reduction: ``"mean"`` over the labelled positions, or ``"sum"``.
        normalizer: with ``"mean"``, divide the summed loss by this count
            instead of this call's labelled positions: for gradient
            accumulation, the labelled positions of all the micro-batches of
            one optimizer step, so that every token weighs the same.
        return_grad: also return the gradients of the reduced loss with
            respect to hidden, weight and bias, computed in the same call.
        grads: optional ``(d_hidden, d_weight, d_bias)`` arrays (each may be
            None) to write the gradients into.
        accumulate: add d_weight and d_bias to the arrays given in ``grads``
            instead of overwriting them (a tied embedding matrix gathers
            gradient from the input side too); d_hidden is always written.

    Returns:
        ``MaskedLMLoss(loss, n_valid, n_correct, d_hidden, d_weight, d_bias)``.
        When no position is labelled, the loss is 0.0 and the gradients are
        zero (or left unchanged under ``accumulate``), not NaN.

    Raises:
        ValueError: a label outside [0, V) other than ``ignore_index`` (the
            message names its position), mismatched shapes, a bad
            ``label_smoothing`` or ``reduction``; TypeError: wrong array types.

    CUDA arrays run the CUDA kernel (labels may be on the device or the host;
    they are checked on the host) and give gradients of their framework.
    """
    device = on_device(hidden=hidden, weight=weight, bias=bias)
    if device and is_device_array(labels):
        labels = array_type(labels, "labels").to_numpy(labels)
    if not device:
        require_numpy(hidden=hidden, weight=weight, bias=bias)
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a numpy.ndarray of integers, got {_describe(labels)}")
    if hidden.ndim < 1 or labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have the shape of hidden without its last axis, {hidden.shape[:-1]}, got {labels.shape}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if normalizer is not None and (reduction != "mean" or not normalizer > 0):
        raise ValueError(f"normalizer must be a positive count, with reduction='mean'; got {normalizer!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if grads is not None and not return_grad:
        raise ValueError("grads (output arrays for the gradients) needs return_grad=True")
    d_hidden, d_weight, d_bias = split_out(grads, ("d_hidden", "d_weight", "d_bias"), arg="grads")
    if not device:
        require_numpy(d_hidden=d_hidden, d_weight=d_weight, d_bias=d_bias)

    rows, targets = _labelled_positions(labels, ignore_index, weight.shape[0] if weight.ndim == 2 else None)
    count = len(rows)
    if reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / normalizer if normalizer is not None else 1.0 / count if count else 1.0
    if device:
        result = _device_ops.linear_cross_entropy(hidden, weight, bias, rows, targets, float(label_smoothing),
                                                  scale, bool(return_grad), grads, bool(accumulate))
    else:
        result = _C.linear_cross_entropy(
            hidden, weight, bias, rows, targets, float(label_smoothing), scale, bool(return_grad),
            d_hidden, d_weight, d_bias, bool(accumulate),
        )
    loss = result[0] * scale if count else 0.0  # no labelled position: 0, not 0/0
    return MaskedLMLoss(float(loss), count, int(result[1]), *result[2:])


def _labelled_positions(labels, ignore_index, vocab):
    """Flat row numbers of the labelled positions and their int64 classes;
    ValueError naming the first label outside [0, vocab)."""
    flat = labels.reshape(-1)
    rows = np.flatnonzero(flat != ignore_index)
    values = flat[rows]
    if vocab is not None:
        bad = (values < 0) | (values >= vocab)  # compared before any cast can wrap
        if bad.any():
            first = int(np.argmax(bad))
            where = ", ".join(str(int(i)) for i in np.unravel_index(rows[first], labels.shape))
            raise ValueError(
                f"labels[{where}] = {values[first]} is outside [0, {vocab}), the vocabulary (weight rows); "
                f"mark positions without a label with ignore_index={ignore_index}"
            )
    return rows.astype(np.int64), values.astype(np.int64)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    return f"{type(value).__module__}.{type(value).__qualname__}"
