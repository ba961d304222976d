"""The kernels registered as PyTorch custom operators (``torch.ops.ssl_core.*``).

Each forward and backward is a ``torch.library.custom_op`` with a fake
implementation (shapes and dtypes only), so ``torch.compile`` and
``torch.export`` trace through them without running them, and each forward has
its backward attached with ``torch.library.register_autograd``. That is
PyTorch's recommended way to give a custom operator a gradient: its
documentation advises against wrapping registered operators in a hand-written
``torch.autograd.Function``, which can compose incorrectly with
``torch.compile``; ``register_autograd`` builds the autograd.Function itself.

The implementations run on CPU tensors (through NumPy views, zero-copy) and on
CUDA tensors (``ssl_core.ops``' CUDA path, on torch's current stream); the
public wrappers in ``functional.py`` check the arguments first. Under
``torch.autocast`` the forwards take 16-bit inputs and compute in float32
(registered at the end of this file).
"""

from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from ssl_core import ops
from ssl_core.integrations.torch._tensors import dense, kernel_view as _v


_NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def _empty(like, shape=None, dtype=None):
    """A new tensor on ``like``'s device. Real CPU results get NumPy's memory:
    NumPy asks the kernel for transparent huge pages for large arrays and
    torch's CPU allocator does not, so that the first write to a fresh 94 MB
    gradient (BERT's output embedding) costs 17 ms of page faults instead of
    82 ms (measured here)."""
    shape, dtype = like.shape if shape is None else shape, dtype or like.dtype
    if like.device.type == "cpu" and dtype in _NUMPY_DTYPES and not is_fake(like):
        return torch.from_numpy(np.empty(tuple(shape), _NUMPY_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=like.device)


# LayerNorm ------------------------------------------------------------------

@torch.library.custom_op("ssl_core::layer_norm", mutates_args=())
def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y (..., C), mean (...), rstd (...)) of LayerNorm over the last axis."""
    y, mean, rstd = _empty(x), _empty(x, x.shape[:-1]), _empty(x, x.shape[:-1])
    ops.layer_norm_forward(_v(x), _v(weight), _v(bias), eps, out=(_v(y), _v(mean), _v(rstd)))
    return y, mean, rstd


@layer_norm.register_fake
def _(x, weight, bias, eps):
    return _empty(x), _empty(x, x.shape[:-1]), _empty(x, x.shape[:-1])


@torch.library.custom_op("ssl_core::layer_norm_backward", mutates_args=())
def layer_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor,
                        rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx (..., C), dweight (C,), dbias (C,))."""
    dx, dweight, dbias = _empty(x), _empty(x, x.shape[-1:]), _empty(x, x.shape[-1:])
    ops.layer_norm_backward(_v(dy), _v(x), _v(weight), _v(mean), _v(rstd), out=(_v(dx), _v(dweight), _v(dbias)))
    return dx, dweight, dbias


@layer_norm_backward.register_fake
def _(dy, x, weight, mean, rstd):
    return _empty(x), _empty(x, x.shape[-1:]), _empty(x, x.shape[-1:])


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None


def _layer_norm_grad(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.ssl_core.layer_norm_backward(dense(dy), x, weight, mean, rstd)
    return dx, dweight if weight is not None else None, dbias if ctx.has_bias else None, None


layer_norm.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)


# GELU -----------------------------------------------------------------------

@torch.library.custom_op("ssl_core::gelu", mutates_args=())
def gelu(x: Tensor, bias: Optional[Tensor], approximate: str) -> Tensor:
    """GELU(x + bias), elementwise; bias (C,) or None."""
    y = _empty(x)
    ops.gelu(_v(x), approximate, bias=_v(bias), out=_v(y))
    return y


@gelu.register_fake
def _(x, bias, approximate):
    return _empty(x)


@torch.library.custom_op("ssl_core::gelu_backward", mutates_args=())
def gelu_backward(dy: Tensor, x: Tensor, bias: Optional[Tensor], approximate: str) -> Tensor:
    """dx = dy * GELU'(x + bias)."""
    dx = _empty(x)
    ops.gelu_backward(_v(dy), _v(x), approximate, bias=_v(bias), out=_v(dx))
    return dx


@gelu_backward.register_fake
def _(dy, x, bias, approximate):
    return _empty(x)


def _gelu_setup(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _gelu_grad(ctx, dy):
    x, bias = ctx.saved_tensors
    dx = torch.ops.ssl_core.gelu_backward(dense(dy), x, bias, ctx.approximate)
    dbias = dx.reshape(-1, x.shape[-1]).sum(0) if bias is not None and ctx.needs_input_grad[1] else None
    return dx, dbias, None


gelu.register_autograd(_gelu_grad, setup_context=_gelu_setup)


# Attention ------------------------------------------------------------------

@torch.library.custom_op("ssl_core::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, key_lengths: Optional[Tensor], prefix_lengths: Optional[Tensor],
              mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
              seed: Tensor) -> tuple[Tensor, Tensor]:
    """(out (B, Tq, H, D), lse (B, H, Tq) float32); ``seed`` a 0-dim int64 tensor."""
    out, lse = _empty(q), _lse(q)
    ops.attention_forward(_v(q), _v(k), _v(v), causal=causal, key_lengths=_v(key_lengths),
                          prefix_lengths=_v(prefix_lengths), mask=_v(mask), scale=scale, dropout_p=dropout_p,
                          seed=int(seed), out=(_v(out), _v(lse)))
    return out, lse


def _lse(q):
    B, Tq, H, _ = q.shape
    return _empty(q, (B, H, Tq), torch.float32)


@attention.register_fake
def _(q, k, v, key_lengths, prefix_lengths, mask, causal, scale, dropout_p, seed):
    return _empty(q), _lse(q)


@torch.library.custom_op("ssl_core::attention_backward", mutates_args=())
def attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       key_lengths: Optional[Tensor], prefix_lengths: Optional[Tensor], mask: Optional[Tensor],
                       causal: bool, scale: float, dropout_p: float, seed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), shaped like q, k and v."""
    dq, dk, dv = _empty(q), _empty(k), _empty(v)
    ops.attention_backward(_v(dout), _v(q), _v(k), _v(v), _v(out), _v(lse), causal=causal,
                           key_lengths=_v(key_lengths), prefix_lengths=_v(prefix_lengths), mask=_v(mask),
                           scale=scale, dropout_p=dropout_p, seed=int(seed), grads=(_v(dq), _v(dk), _v(dv)))
    return dq, dk, dv


@attention_backward.register_fake
def _(dout, q, k, v, out, lse, key_lengths, prefix_lengths, mask, causal, scale, dropout_p, seed):
    return _empty(q), _empty(k), _empty(v)


def _attention_setup(ctx, inputs, output):
    q, k, v, key_lengths, prefix_lengths, mask, causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, prefix_lengths, mask, seed)
    ctx.options = causal, scale, dropout_p


def _attention_grad(ctx, dout, _dlse):
    q, k, v, out, lse, key_lengths, prefix_lengths, mask, seed = ctx.saved_tensors
    causal, scale, dropout_p = ctx.options
    dq, dk, dv = torch.ops.ssl_core.attention_backward(dense(dout), q, k, v, out, lse, key_lengths,
                                                       prefix_lengths, mask, causal, scale, dropout_p, seed)
    return dq, dk, dv, None, None, None, None, None, None, None


attention.register_autograd(_attention_grad, setup_context=_attention_setup)


# The masked-LM loss -----------------------------------------------------------

@torch.library.custom_op("ssl_core::masked_lm_loss", mutates_args=())
def masked_lm_loss(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], labels: Tensor, ignore_index: int,
                   label_smoothing: float, compute_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, n_correct, d_hidden, d_weight, d_bias): the mean cross-entropy of
    ``hidden @ weight.T + bias`` over the labelled positions (0-dim float32),
    how many of them the largest logit gets right (0-dim int64), and, when
    ``compute_grad``, the loss's gradients (computed in the same pass; empty
    tensors otherwise, and d_bias is empty when bias is None)."""
    d_hidden, d_weight, d_bias = _loss_grads(hidden, weight, bias, compute_grad)
    grads = (_v(d_hidden), _v(d_weight), _v(d_bias) if d_bias.numel() else None) if compute_grad else None
    result = ops.masked_lm_loss(_v(hidden), _v(weight), _v(bias), _v(labels), ignore_index=ignore_index,
                                label_smoothing=label_smoothing, return_grad=compute_grad, grads=grads)
    loss = torch.tensor(result.loss, dtype=torch.float32, device=hidden.device)
    return loss, torch.tensor(result.n_correct, device=hidden.device), d_hidden, d_weight, d_bias


def _loss_grads(hidden, weight, bias, compute_grad):
    if not compute_grad:
        return _empty(hidden, (0,)), _empty(hidden, (0,)), _empty(hidden, (0,))
    return _empty(hidden), _empty(weight), _empty(hidden, (0,) if bias is None else bias.shape)


@masked_lm_loss.register_fake
def _(hidden, weight, bias, labels, ignore_index, label_smoothing, compute_grad):
    scalar = _empty(hidden, ())
    return scalar, _empty(hidden, (), torch.int64), *_loss_grads(hidden, weight, bias, compute_grad)


@torch.library.custom_op("ssl_core::masked_lm_loss_backward", mutates_args=())
def masked_lm_loss_backward(dloss: Tensor, hidden: Tensor, weight: Tensor, d_hidden: Tensor, d_weight: Tensor,
                            d_bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The forward's gradients scaled by the upstream ``dloss``. An operator
    of its own, without a derivative, that takes ``hidden`` and ``weight``
    (unread) so that autograd sees the gradient depends on them:
    differentiating it again (a gradient penalty) is then an error, where
    scaling saved constants would silently give a wrong second derivative."""
    return dloss * d_hidden, dloss * d_weight, dloss * d_bias


@masked_lm_loss_backward.register_fake
def _(dloss, hidden, weight, d_hidden, d_weight, d_bias):
    return _empty(d_hidden), _empty(d_weight), _empty(d_bias)


def _loss_setup(ctx, inputs, output):
    hidden, weight, bias, _, _, _, compute_grad = inputs
    _, n_correct, d_hidden, d_weight, d_bias = output
    ctx.mark_non_differentiable(n_correct, d_hidden, d_weight, d_bias)
    ctx.save_for_backward(hidden, weight, d_hidden, d_weight, d_bias)
    ctx.compute_grad, ctx.has_bias = compute_grad, bias is not None


def _loss_grad(ctx, dloss, *_):
    if not ctx.compute_grad:
        raise RuntimeError("masked_lm_loss was called with compute_grad=False, so it has no gradient to give; "
                           "call ssl_core.integrations.torch.masked_lm_loss, which sets it when grad is enabled")
    hidden, weight, d_hidden, d_weight, d_bias = ctx.saved_tensors
    if _is_one(dloss):  # loss.backward(): the saved gradients are the answer, no (V, C) multiply
        return d_hidden, d_weight, d_bias if ctx.has_bias else None, None, None, None, None
    d_hidden, d_weight, d_bias = torch.ops.ssl_core.masked_lm_loss_backward(dloss, *ctx.saved_tensors)
    return d_hidden, d_weight, d_bias if ctx.has_bias else None, None, None, None, None


def _is_one(dloss):
    """True if the upstream gradient is a plain 1 the saved gradients need no
    scaling by: on the CPU (reading a CUDA value would synchronise), eagerly
    (not while torch.compile traces), and not under create_graph, where the
    backward operator must stay in the graph to make a second derivative an error."""
    return (dloss.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not is_fake(dloss) and dloss.item() == 1.0)


masked_lm_loss.register_autograd(_loss_grad, setup_context=_loss_setup)


# Under torch.autocast the forwards run in float32, as torch runs its own
# layer_norm and losses: 16-bit inputs are widened on the way in (and their
# gradients narrowed back by autograd), the results are float32.
for _op in (layer_norm, gelu, attention, masked_lm_loss):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(_op, _device, torch.float32)
