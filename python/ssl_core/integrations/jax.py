"""ssl_core's kernels as differentiable JAX functions.

``attention``, ``layer_norm``, ``gelu`` and ``masked_lm_loss`` are
``jax.custom_vjp`` functions whose forward and backward run the CPU kernels of
``ssl_core.ops`` through ``jax.pure_callback``, so ``jax.grad``, ``jax.jit`` and
``jax.vmap`` work through them, eagerly or compiled::

    import jax, jax.numpy as jnp
    from ssl_core.integrations import jax as ssl_jax

    def loss_fn(params, x, labels):                    # x (B, T, C), labels (B, T)
        h = ssl_jax.layer_norm(x, params["ln_w"], params["ln_b"])
        q = k = v = h.reshape(*h.shape[:2], 4, -1)     # (B, T, H, D)
        h = h + ssl_jax.attention(q, k, v, causal=True).reshape(h.shape)
        return ssl_jax.masked_lm_loss(h, params["emb"], None, labels)

    grads = jax.jit(jax.grad(loss_fn))(params, x, labels)

Only float32 is supported: other dtypes raise TypeError naming the argument,
when the function is traced, as do shape mismatches. What only the values can
show (a label outside the vocabulary, a length outside [0, Tk]) is found by the
kernel inside the callback and surfaces as ``jax.errors.JaxRuntimeError``,
whose message ends with the kernel's own.

Where the work runs: always on the CPU kernels, on host arrays. On the CPU
backend nothing leaves host memory, though JAX's callback machinery copies
operands and results on the way in and out (a memcpy each, small beside the
kernels). On a GPU backend, eagerly and under ``jit`` alike, each operand is
copied to the host, the CPU kernel runs, and the results are copied back:
correct, but the CUDA kernels are not used (that needs a native XLA FFI
handler, which this module does not provide), and each call costs two
device transfers and a synchronization. Under ``jax.vmap`` the kernels run
once per batch element (``vmap_method="sequential"``), except ``gelu``, which
runs once on the whole batch.
"""

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_core import ops
from ssl_core.ops.attention import _scalars

__all__ = ["attention", "gelu", "layer_norm", "masked_lm_loss"]

_F32 = np.dtype(np.float32)


def _shape(shape):
    return jax.ShapeDtypeStruct(tuple(shape), _F32)


def _host(x):
    """A callback's operand as a NumPy array (JAX hands over its own arrays
    eagerly and NumPy arrays under jit); None stays None."""
    return None if x is None else np.asarray(x)


def _describe(x):
    dtype = getattr(x, "dtype", None)
    return f"dtype {dtype}" if dtype is not None else f"{type(x).__module__}.{type(x).__qualname__}"


def _check_float32(name, x, optional=False):
    if x is None and optional:
        return
    if getattr(x, "dtype", None) != _F32 or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a float32 JAX or NumPy array, got {_describe(x)}")


def _check_integer(name, x, shape):
    if x is None:
        return
    if not hasattr(x, "shape") or not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got {_describe(x)}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def _static_number(name, value):
    """``value`` as a float; TypeError if it is traced (it selects the kernel's behaviour at trace time)."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a Python number, not a traced value: under jax.jit, close over it or "
                        "mark it static (static_argnames)")
    return float(value)


# ---------------------------------------------------------------- attention --

class _AttentionOptions(NamedTuple):
    """The static (hashable) arguments of one attention call."""

    causal: bool
    scale: float
    dropout_p: float


def attention(q, k, v, *, causal=False, key_lengths=None, prefix_lengths=None, mask=None, scale=None,
              dropout_p=0.0, seed=0):
    """softmax(q kᵀ · scale + mask) v with dropout, differentiable in q, k and v.

    Args:
        q: float32 (B, Tq, H, D). k, v: float32 (B, Tk, H, D).
        causal: bool, the causal mask (bottom-right aligned when Tq != Tk).
        key_lengths: optional integer array (B,) in [0, Tk]: valid keys per sequence.
        prefix_lengths: optional integer array (B,) in [0, Tk]: the prefix-LM mask.
        mask: optional bool array broadcastable to (B, H, Tq, Tk), True = may attend.
        scale: a Python number multiplying q.k; None means 1/sqrt(D).
        dropout_p: a Python number in [0, 1), the probability of dropping each
            attention weight; the backward regenerates the same mask.
        seed: the dropout generator's key: a Python int in [0, 2**64), or a
            non-negative integer scalar array (which may be traced, e.g. a step
            counter under jit; int32 gives 32 bits).

    Returns:
        out, float32 (B, Tq, H, D). The masks and seed get no gradient.
        See ``ssl_core.ops.attention`` for the conventions.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float32(name, x)
        if len(x.shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, seq, heads, head_dim), got shape {x.shape}")
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape) != (B, Tk, H, D):
            raise ValueError(f"{name} must have shape {(B, Tk, H, D)} to match q {tuple(q.shape)}, got {x.shape}")
    _check_integer("key_lengths", key_lengths, (B,))
    _check_integer("prefix_lengths", prefix_lengths, (B,))
    if mask is not None:
        if getattr(mask, "dtype", None) != np.bool_:
            raise TypeError(f"mask must be a bool array, got {_describe(mask)}")
        try:
            fits = np.broadcast_shapes(tuple(mask.shape), (B, H, Tq, Tk)) == (B, H, Tq, Tk)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask must be broadcastable to (B, H, Tq, Tk) = {(B, H, Tq, Tk)}, got {mask.shape}")
    traced_seed = not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
    scale = None if scale is None else _static_number("scale", scale)
    scale, dropout_p, _ = _scalars(q, scale, _static_number("dropout_p", dropout_p), 0 if traced_seed else seed)
    options = _AttentionOptions(bool(causal), scale, dropout_p)
    return _attention(options, q, k, v, (key_lengths, prefix_lengths, mask), _seed_words(seed, traced_seed))


def _seed_words(seed, traced):
    """The seed as uint32 (2,): its low and high 32 bits (JAX has no uint64 without x64)."""
    if not traced:
        return np.array([int(seed) & 0xFFFFFFFF, int(seed) >> 32], np.uint32)
    if not hasattr(seed, "dtype") or not jnp.issubdtype(seed.dtype, jnp.integer) or seed.shape != ():
        raise TypeError(f"seed must be a Python int or an integer scalar array, got {_describe(seed)} "
                        f"of shape {getattr(seed, 'shape', None)}")
    high = (seed >> 32).astype(jnp.uint32) if seed.dtype.itemsize == 8 else jnp.uint32(0)
    return jnp.stack([seed.astype(jnp.uint32), high])


def _attention_forward_host(options, q, k, v, masks, seed_words):
    key_lengths, prefix_lengths, mask = map(_host, masks)
    low, high = (int(word) for word in _host(seed_words))
    return ops.attention_forward(_host(q), _host(k), _host(v), causal=options.causal, key_lengths=key_lengths,
                                 prefix_lengths=prefix_lengths, mask=mask, scale=options.scale,
                                 dropout_p=options.dropout_p, seed=low | high << 32)


def _attention_backward_host(options, dout, q, k, v, out, lse, masks, seed_words):
    key_lengths, prefix_lengths, mask = map(_host, masks)
    low, high = (int(word) for word in _host(seed_words))
    return ops.attention_backward(_host(dout), _host(q), _host(k), _host(v), _host(out), _host(lse),
                                  causal=options.causal, key_lengths=key_lengths, prefix_lengths=prefix_lengths,
                                  mask=mask, scale=options.scale, dropout_p=options.dropout_p,
                                  seed=low | high << 32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(options, q, k, v, masks, seed_words):
    return _attention_fwd(options, q, k, v, masks, seed_words)[0]


def _attention_fwd(options, q, k, v, masks, seed_words):
    B, Tq, H, _ = q.shape
    out, lse = jax.pure_callback(functools.partial(_attention_forward_host, options),
                                 (_shape(q.shape), _shape((B, H, Tq))), q, k, v, masks, seed_words,
                                 vmap_method="sequential")
    return out, (q, k, v, out, lse, masks, seed_words)


def _attention_bwd(options, residuals, dout):
    q, k, v, out, lse, masks, seed_words = residuals
    dq, dk, dv = jax.pure_callback(functools.partial(_attention_backward_host, options),
                                   (_shape(q.shape), _shape(k.shape), _shape(v.shape)),
                                   dout, q, k, v, out, lse, masks, seed_words, vmap_method="sequential")
    return dq, dk, dv, None, None  # no gradient for the masks and the seed


_attention.defvjp(_attention_fwd, _attention_bwd)


# --------------------------------------------------------------- layer norm --

class _LayerNormOptions(NamedTuple):
    eps: float
    has_weight: bool
    has_bias: bool


def layer_norm(x, weight, bias, eps=1e-5):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis,
    differentiable in x, weight and bias.

    Args:
        x: float32 (..., C).
        weight: float32 (C,), or None for ones.
        bias: float32 (C,), or None for zeros.
        eps: a Python number >= 0, added to the (biased) variance.

    Returns:
        y, float32 (..., C).
    """
    _check_float32("x", x)
    if len(x.shape) < 1:
        raise ValueError("x must have at least 1 dimension")
    for name, p in (("weight", weight), ("bias", bias)):
        _check_float32(name, p, optional=True)
        if p is not None and tuple(p.shape) != (x.shape[-1],):
            raise ValueError(f"{name} must have shape ({x.shape[-1]},) to match x {tuple(x.shape)}, got {p.shape}")
    eps = _static_number("eps", eps)
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return _layer_norm(_LayerNormOptions(eps, weight is not None, bias is not None), x, weight, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_norm(options, x, weight, bias):
    return _layer_norm_fwd(options, x, weight, bias)[0]


def _layer_norm_fwd(options, x, weight, bias):
    def forward(x, weight, bias):
        return ops.layer_norm_forward(_host(x), _host(weight), _host(bias), options.eps)

    y, mean, rstd = jax.pure_callback(forward, (_shape(x.shape), _shape(x.shape[:-1]), _shape(x.shape[:-1])),
                                      x, weight, bias, vmap_method="sequential")
    return y, (x, weight, mean, rstd)


def _layer_norm_bwd(options, residuals, dy):
    x, weight, mean, rstd = residuals

    def backward(dy, x, weight, mean, rstd):
        return ops.layer_norm_backward(_host(dy), _host(x), _host(weight), _host(mean), _host(rstd))

    columns = _shape(x.shape[-1:])
    dx, dweight, dbias = jax.pure_callback(backward, (_shape(x.shape), columns, columns),
                                           dy, x, weight, mean, rstd, vmap_method="sequential")
    return dx, dweight if options.has_weight else None, dbias if options.has_bias else None


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# --------------------------------------------------------------------- GELU --

def gelu(x, approximate="none"):
    """GELU(x) = x Φ(x), elementwise, differentiable.

    Args:
        x: float32 array of any shape (at least 1 dimension).
        approximate: ``"none"`` (erf, BERT) or ``"tanh"`` (GPT-2), as in
            ``jax.nn.gelu(x, approximate=False / True)``.

    Returns:
        float32 array shaped like x.
    """
    _check_float32("x", x)
    if len(x.shape) < 1:
        raise ValueError("x must have at least 1 dimension")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _gelu(approximate, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gelu(approximate, x):
    return _gelu_fwd(approximate, x)[0]


def _gelu_fwd(approximate, x):
    # Elementwise, so a vmapped batch is one bigger array: broadcast_all gives every operand the batch axis.
    y = jax.pure_callback(lambda x: ops.gelu(_host(x), approximate), _shape(x.shape), x,
                          vmap_method="broadcast_all")
    return y, x


def _gelu_bwd(approximate, x, dy):
    dx = jax.pure_callback(lambda dy, x: ops.gelu_backward(_host(dy), _host(x), approximate), _shape(x.shape),
                           dy, x, vmap_method="broadcast_all")
    return (dx,)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


# --------------------------------------------------------------------- loss --

class _LossOptions(NamedTuple):
    ignore_index: int
    label_smoothing: float
    has_bias: bool


def masked_lm_loss(hidden, weight, bias, labels, *, ignore_index=-100, label_smoothing=0.0):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``
    over the labelled positions, fused (the logits are never all stored),
    differentiable in hidden, weight and bias.

    The forward computes the gradients too, in the same pass over the vocabulary
    (``ssl_core.ops.masked_lm_loss(return_grad=True)``) when JAX differentiates;
    the backward only scales them by the cotangent.

    Args:
        hidden: float32 (..., C).
        weight: float32 (V, C), the output embedding.
        bias: float32 (V,) or None.
        labels: integer array shaped like hidden without its last axis; classes
            in [0, V), or ``ignore_index`` where there is no label.
        ignore_index: a Python int, the label of unlabelled positions.
        label_smoothing: a Python number in [0, 1].

    Returns:
        The loss, a float32 scalar: 0.0 (with zero gradients) when nothing is labelled.
    """
    _check_float32("hidden", hidden)
    _check_float32("weight", weight)
    _check_float32("bias", bias, optional=True)
    if len(hidden.shape) < 1:
        raise ValueError("hidden must have at least 1 dimension")
    if len(weight.shape) != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape (vocab, {hidden.shape[-1]}) to match hidden "
                         f"{tuple(hidden.shape)}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_integer("labels", labels, hidden.shape[:-1])
    label_smoothing = _static_number("label_smoothing", label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be a Python int, got {ignore_index!r:.80}") from None
    return _masked_lm_loss(_LossOptions(ignore_index, label_smoothing, bias is not None),
                           hidden, weight, bias, labels)


def _loss_host(options, return_grad, hidden, weight, bias, labels):
    result = ops.masked_lm_loss(_host(hidden), _host(weight), _host(bias), _host(labels),
                                ignore_index=options.ignore_index, label_smoothing=options.label_smoothing,
                                return_grad=return_grad)
    loss = np.float32(result.loss)
    if not return_grad:
        return loss
    return (loss, result.d_hidden, result.d_weight) + ((result.d_bias,) if options.has_bias else ())


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_lm_loss(options, hidden, weight, bias, labels):
    # Not differentiated: the loss alone, without the gradients' work.
    return jax.pure_callback(functools.partial(_loss_host, options, False), _shape(()),
                             hidden, weight, bias, labels, vmap_method="sequential")


def _masked_lm_loss_fwd(options, hidden, weight, bias, labels):
    shapes = (_shape(()), _shape(hidden.shape), _shape(weight.shape))
    shapes += (_shape(bias.shape),) if options.has_bias else ()
    loss, *grads = jax.pure_callback(functools.partial(_loss_host, options, True), shapes,
                                     hidden, weight, bias, labels, vmap_method="sequential")
    return loss, tuple(grads)


def _masked_lm_loss_bwd(options, grads, g):
    d_hidden, d_weight, d_bias = (*grads, None) if not options.has_bias else grads
    return g * d_hidden, g * d_weight, None if d_bias is None else g * d_bias, None  # labels: no gradient


_masked_lm_loss.defvjp(_masked_lm_loss_fwd, _masked_lm_loss_bwd)
