"""ssl_core's kernels as differentiable functions of torch tensors.

Each function checks its arguments (a clear TypeError or ValueError naming the
argument), then calls the custom operator registered in ``_library.py``, so it
works under autograd, ``torch.compile`` and ``torch.export``. CPU tensors run
the CPU kernels, CUDA tensors the CUDA kernels. The kernels compute in
float32 (CUDA attention also float16 and bfloat16; inside ``torch.autocast``
16-bit inputs are widened to float32); inputs need a contiguous last
axis, and are otherwise read where they are, strides and all, without copies.
"""

import math
import operator

import torch

from ssl_core.integrations.torch import _library
from ssl_core.integrations.torch._tensors import check_last_axis_contiguous, check_tensor, widened_by_autocast

_FLOAT = (torch.float32,)
_INTEGER = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _number(name, value):
    """``value`` as a float; TypeError naming ``name`` if it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r:.80}") from None


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last axis, as ``torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)``.

    Args:
        x: float32 (..., C). weight, bias: float32 (C,) or None.
        eps: added to the variance; finite and >= 0.

    Returns:
        y, float32 (..., C).
    """
    check_tensor("x", x, _FLOAT)
    for name, param in (("weight", weight), ("bias", bias)):
        check_tensor(name, param, _FLOAT, optional=True, like=x)
        if param is not None and tuple(param.shape) != tuple(x.shape[-1:]):
            raise ValueError(f"{name} must have shape {tuple(x.shape[-1:])} (x's last axis), got {tuple(param.shape)}")
    check_last_axis_contiguous("x", x)
    for name, param in (("weight", weight), ("bias", bias)):
        check_last_axis_contiguous(name, param)
    eps = _number("eps", eps)
    if not 0 <= eps < math.inf:  # not math.isfinite: torch.compile(dynamic=True) makes eps a symbolic float
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return _library.layer_norm(x, weight, bias, eps)[0]


def gelu(x, approximate="none", bias=None):
    """GELU(x + bias) elementwise, as ``torch.nn.functional.gelu(x + bias, approximate=approximate)``.

    Args:
        x: float32 (..., C).
        approximate: ``"none"`` (erf, BERT) or ``"tanh"`` (GPT-2's "gelu_new").
        bias: optional float32 (C,): the bias of the linear layer before, added in the same pass.

    Returns:
        float32, shaped like x.
    """
    check_tensor("x", x, _FLOAT)
    check_tensor("bias", bias, _FLOAT, optional=True, like=x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    if bias is not None and tuple(bias.shape) != tuple(x.shape[-1:]):
        raise ValueError(f"bias must have shape {tuple(x.shape[-1:])} (x's last axis), got {tuple(bias.shape)}")
    check_last_axis_contiguous("x", x)
    check_last_axis_contiguous("bias", bias)
    return _library.gelu(x, bias, approximate)


def attention(q, k, v, *, causal=False, key_lengths=None, prefix_lengths=None, mask=None, scale=None,
              dropout_p=0.0, seed=None):
    """softmax(q kᵀ · scale + mask) v, flash-style, differentiable in q, k and v.

    Layout (batch, seq, heads, head_dim), as FlashAttention's: HF's
    (B, H, T, D) tensors are ``.transpose(1, 2)`` of it, a view the kernels
    read in place. The masks are ``ssl_core.ops.attention``'s (its docstring
    has the exact semantics).

    Args:
        q: float32 (B, Tq, H, D); on CUDA also float16 or bfloat16 (tensor
            cores). k, v: (B, Tk, H, D), q's dtype.
        causal: the causal mask, aligned bottom-right when Tq != Tk.
        key_lengths: optional integer (B,): keys at positions >= key_lengths[b] are padding.
        prefix_lengths: optional integer (B,): the prefix-LM (UniLM) mask.
        mask: optional bool, broadcastable to (B, H, Tq, Tk); True = may attend.
        scale: multiplies q·k; None means 1/sqrt(D).
        dropout_p: dropout on the attention weights, in [0, 1).
        seed: the dropout's Philox key, an integer in [0, 2**63); None draws
            one from torch's default generator (so ``torch.manual_seed``
            makes a run repeatable). The backward regenerates the same mask.

    Returns:
        out, shaped and typed like q. A query that may attend to no key gets zeros.
    """
    check_tensor("q", q, (torch.float32, torch.float16, torch.bfloat16))
    autocast = widened_by_autocast(q)  # all three become float32
    for name, tensor in (("k", k), ("v", v)):
        check_tensor(name, tensor, (torch.float32,) if autocast else (q.dtype,), like=q)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k and v must have 4 dimensions (batch, seq, heads, head_dim), got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype != torch.float32 and q.device.type != "cuda" and not autocast:
        raise TypeError(f"q, k and v are {str(q.dtype).replace('torch.', '')} on the CPU; the CPU kernels compute in "
                        "float32 (use .float())")
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_last_axis_contiguous(name, tensor)
    for name, lengths in (("key_lengths", key_lengths), ("prefix_lengths", prefix_lengths)):
        check_tensor(name, lengths, _INTEGER, optional=True, like=q)
    check_tensor("mask", mask, (torch.bool,), optional=True, like=q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else _number("scale", scale)
    dropout_p = _number("dropout_p", dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    lengths = [None if t is None else t.to(torch.int64) for t in (key_lengths, prefix_lengths)]
    out, _ = _library.attention(q, k, v, *lengths, mask, bool(causal), scale, dropout_p,
                                          _seed_tensor(seed, dropout_p))
    return out


def _seed_tensor(seed, dropout_p):
    """The dropout key as a 0-dim int64 tensor (an operator input, so that
    torch.compile need not specialise on its value)."""
    if seed is None:
        if dropout_p == 0.0:
            return torch.zeros((), dtype=torch.int64)
        return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise TypeError(f"seed must be an integer or a 0-dim int64 tensor, got {seed.dtype} of shape "
                            f"{tuple(seed.shape)}")
        return seed.cpu()
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}") from None
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return torch.tensor(seed, dtype=torch.int64)


def masked_lm_loss(hidden, weight, bias, labels, *, ignore_index=-100, label_smoothing=0.0):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, fused.

    The same value as ``F.cross_entropy(hidden @ weight.T + bias, labels,
    ignore_index=ignore_index, label_smoothing=label_smoothing)`` without ever
    holding the logits: only labelled positions are computed, and the
    gradients are computed in the same pass (when autograd will need them)
    and kept for the backward, as Liger-Kernel's fused linear cross-entropy
    does. With no labelled position the loss is 0, not NaN.

    Args:
        hidden: float32 (..., C): final hidden states (any row stride, contiguous last axis).
        weight: float32 (V, C), the output embedding. bias: float32 (V,) or None.
        labels: integer, hidden's shape without the last axis; classes in
            [0, V), or ``ignore_index``.
        label_smoothing: in [0, 1].

    Returns:
        The loss, a 0-dim float32 tensor, differentiable in hidden, weight and bias.
    """
    return masked_lm_loss_and_accuracy(hidden, weight, bias, labels, ignore_index=ignore_index,
                                       label_smoothing=label_smoothing)[0]


def masked_lm_loss_and_accuracy(hidden, weight, bias, labels, *, ignore_index=-100, label_smoothing=0.0):
    """``(loss, n_correct)``: ``masked_lm_loss`` and a 0-dim int64 tensor, how many
    labelled positions the largest logit gets right (their count is
    ``(labels != ignore_index).sum()``)."""
    check_tensor("hidden", hidden, _FLOAT)
    check_tensor("weight", weight, _FLOAT, like=hidden)
    check_tensor("bias", bias, _FLOAT, optional=True, like=hidden)
    check_tensor("labels", labels, _INTEGER, like=hidden)
    check_last_axis_contiguous("hidden", hidden)
    check_last_axis_contiguous("weight", weight)
    check_last_axis_contiguous("bias", bias)
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r:.80}") from None
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, n_correct, *_ = _library.masked_lm_loss(hidden, weight, bias, labels.to(torch.int64),
                                                            ignore_index, _number("label_smoothing", label_smoothing),
                                                            needs_grad)
    return loss, n_correct
