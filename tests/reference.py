"""Independent float64 NumPy references for the kernels."""

import numpy as np
from scipy.special import erfc


def central_differences(loss, args, h=1e-6):
    """Gradients of the scalar loss(*args) with respect to each float64 array
    in args, by central differences, one coordinate at a time."""
    grads = []
    for arg_index, arg in enumerate(args):
        grad = np.zeros(arg.shape)
        for index in np.ndindex(arg.shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[arg_index][index] += h
            minus[arg_index][index] -= h
            grad[index] = (loss(*plus) - loss(*minus)) / (2 * h)
        grads.append(grad)
    return grads


SQRT_2_OVER_PI = np.sqrt(2 / np.pi)


def layer_norm(x, weight, bias, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    return (x - mean) * rstd * weight + bias, mean[..., 0], rstd[..., 0]


def layer_norm_backward(dy, x, weight, eps):
    """Gradients of sum(dy * layer_norm(x)), from the float64 statistics."""
    dy, x = dy.astype(np.float64), x.astype(np.float64)
    _, mean, rstd = layer_norm(x, np.ones(x.shape[-1]), np.zeros(x.shape[-1]), eps)
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * weight
    dx = rstd[..., None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    reduce_axes = tuple(range(x.ndim - 1))
    return dx, (dy * xhat).sum(reduce_axes), dy.sum(reduce_axes)


def gelu(x, approximate="none"):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
        return 0.5 * x * erfc(-x / np.sqrt(2))


def gelu_derivative(x, approximate="none"):
    x = np.asarray(x, dtype=np.float64)
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
    return 0.5 * erfc(-x / np.sqrt(2)) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


# ------------------------------------------------------------------ attention --

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
PHILOX_W0, PHILOX_W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
LOW_32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., 2011): four counter words and two key
    words (array-likes that broadcast together) to four uint32 words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    for _ in range(10):
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2  # exact: both factors < 2^32
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & LOW_32, (p0 >> 32) ^ c3 ^ k1, p0 & LOW_32
        k0, k1 = (k0 + PHILOX_W0) & LOW_32, (k1 + PHILOX_W1) & LOW_32
    return tuple(w.astype(np.uint32) for w in np.broadcast_arrays(c0, c1, c2, c3))


def attention_keep(B, H, Tq, Tk, dropout_p, seed):
    """The dropout keep mask, bool (B, H, Tq, Tk): word >= floor(p * 2^32), where
    word is word j % 4 of Philox4x32-10 at counter (j // 4, i, h, b) and key
    (low, high 32 bits of seed)."""
    threshold = int(np.floor(dropout_p * 2.0**32))
    b, h, i, j4 = np.ix_(np.arange(B), np.arange(H), np.arange(Tq), np.arange((Tk + 3) // 4))
    words = philox4x32_10((j4, i, h, b), (seed & 0xFFFFFFFF, seed >> 32))
    words = np.stack(words, axis=-1).reshape(B, H, Tq, -1)[..., :Tk]
    return words >= threshold


def attention_allowed(B, H, Tq, Tk, causal=False, key_lengths=None, prefix_lengths=None, mask=None):
    """Which keys each query may attend, bool (B, H, Tq, Tk)."""
    i = np.arange(Tq)[:, None]
    j = np.arange(Tk)
    allowed = np.ones((B, H, Tq, Tk), bool)
    if key_lengths is not None:
        allowed &= j < np.asarray(key_lengths)[:, None, None, None]
    if mask is not None:
        allowed &= np.broadcast_to(mask, (B, H, Tq, Tk))
    if causal or prefix_lengths is not None:
        visible = j <= i + (Tk - Tq)  # causal, aligned bottom-right
        if prefix_lengths is not None:
            visible = visible | (j < np.asarray(prefix_lengths)[:, None, None, None])
        allowed &= visible
    return allowed


def _attention_probabilities(q, k, causal, key_lengths, prefix_lengths, mask, scale):
    """Softmax probabilities P (B, H, Tq, Tk) over the allowed keys and lse (B, H, Tq)."""
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = 1 / np.sqrt(D) if scale is None else scale
    s = scale * np.einsum("bihd,bjhd->bhij", q.astype(np.float64), k.astype(np.float64))
    allowed = attention_allowed(B, H, Tq, Tk, causal, key_lengths, prefix_lengths, mask)
    row_max = np.where(allowed, s, -np.inf).max(-1, keepdims=True, initial=-np.inf)
    row_max[np.isinf(row_max)] = 0  # rows with no allowed key
    e = np.exp(np.where(allowed, s - row_max, -np.inf))
    total = e.sum(-1, keepdims=True)
    empty = total == 0
    p = e / np.where(empty, 1, total)
    lse = np.where(empty, np.inf, row_max + np.log(np.where(empty, 1, total)))[..., 0]
    return p, lse


def _dropped(p, dropout_p, seed):
    """P * keep / (1 - dropout_p), and that factor keep / (1 - dropout_p)."""
    factor = attention_keep(*p.shape, dropout_p, seed) / (1 - dropout_p)
    return p * factor, factor


def attention(q, k, v, causal=False, key_lengths=None, prefix_lengths=None, mask=None, scale=None,
              dropout_p=0.0, seed=0):
    """softmax(Q K^T * scale + mask) V with dropout on P, in float64:
    out (B, Tq, H, D) and lse (B, H, Tq)."""
    p, lse = _attention_probabilities(q, k, causal, key_lengths, prefix_lengths, mask, scale)
    p_drop, _ = _dropped(p, dropout_p, seed)
    return np.einsum("bhij,bjhd->bihd", p_drop, v.astype(np.float64)), lse


def _backward_terms(dout, q, k, v, causal=False, key_lengths=None, prefix_lengths=None, mask=None,
                    scale=None, dropout_p=0.0, seed=0):
    """P after dropout, and dS (B, H, Tq, Tk): the gradient of sum(dout * out)
    with respect to the unscaled scores q_i . k_j."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    p, _ = _attention_probabilities(q, k, causal, key_lengths, prefix_lengths, mask, scale)
    p_drop, factor = _dropped(p, dropout_p, seed)
    dp = np.einsum("bihd,bjhd->bhij", dout.astype(np.float64), v.astype(np.float64)) * factor
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) * scale  # softmax backward, then the scale
    return p_drop, ds


def attention_score_gradient(dout, q, k, v, **options):
    """dS (B, H, Tq, Tk) in float64; options are the keyword arguments of attention()."""
    return _backward_terms(dout, q, k, v, **options)[1]


def attention_backward(dout, q, k, v, **options):
    """Gradients (dq, dk, dv) of sum(dout * attention(q, k, v, **options)[0]), in float64."""
    p_drop, ds = _backward_terms(dout, q, k, v, **options)
    dout, q, k = (a.astype(np.float64) for a in (dout, q, k))
    dq = np.einsum("bhij,bjhd->bihd", ds, k)
    dk = np.einsum("bhij,bihd->bjhd", ds, q)
    dv = np.einsum("bhij,bihd->bjhd", p_drop, dout)
    return dq, dk, dv


# --------------------------------------------------------- cross-entropy --

def _cross_entropy_terms(hidden, weight, bias, labels, ignore_index, label_smoothing, reduction):
    """The labelled rows of hidden, flattened to (N, C), and for them in float64:
    targets, first largest logits, per-row losses and dz (M, V), the gradient
    of the reduced loss with respect to the logits. (In-place steps keep two
    (M, V) arrays alive, not seven: M x V is 21M at V = 70000.)"""
    C = hidden.shape[-1]
    V = weight.shape[0]
    h = hidden.astype(np.float64).reshape(-1, C)
    flat = np.asarray(labels).reshape(-1)
    rows = np.flatnonzero(flat != ignore_index)
    targets = flat[rows].astype(np.int64)
    assert ((targets >= 0) & (targets < V)).all()
    eps = float(label_smoothing)
    z = h[rows] @ weight.astype(np.float64).T
    if bias is not None:
        z += bias.astype(np.float64)
    argmax = z.argmax(-1) if z.size else np.zeros(len(rows), np.int64)
    top = z.max(-1, keepdims=True, initial=-np.inf)
    top[~np.isfinite(top)] = 0  # no row, or no logit: nothing to shift
    z -= top                    # z - max: every exponent <= 0
    e = np.exp(z)
    total = e.sum(-1, keepdims=True)
    log_p = z
    log_p -= np.log(total)      # log-softmax
    at = (np.arange(len(rows)), targets)
    losses = -(1 - eps) * log_p[at] - eps * log_p.mean(-1)
    scale = 1.0 / len(rows) if reduction == "mean" and len(rows) else 1.0
    dz = e
    dz /= total                 # softmax
    dz -= eps / V
    dz[at] -= 1 - eps
    dz *= scale
    return h, rows, targets, argmax, losses, dz, scale


def linear_cross_entropy(hidden, weight, bias, labels, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of the logits hidden @ weight.T + bias against labels
    (target (1 - eps) onehot(label) + eps / V, as torch defines label
    smoothing), over the positions whose label is not ignore_index, in
    float64 with every logit materialized. Returns (loss, n_valid, n_correct,
    d_hidden, d_weight, d_bias): the mean (or sum) loss, the labelled count,
    how many of them have the label as first largest logit, and the gradients
    of the reduced loss (d_hidden shaped like hidden, zero at unlabelled rows;
    d_bias None when bias is None)."""
    h, rows, targets, argmax, losses, dz, scale = _cross_entropy_terms(
        hidden, weight, bias, labels, ignore_index, label_smoothing, reduction)
    loss = float(losses.sum() * scale)
    n_correct = int((argmax == targets).sum())
    d_hidden = np.zeros(h.shape)
    d_hidden[rows] = dz @ weight.astype(np.float64)
    d_weight = dz.T @ h[rows]
    d_bias = None if bias is None else dz.sum(0)
    return loss, len(rows), n_correct, d_hidden.reshape(hidden.shape), d_weight, d_bias


def linear_cross_entropy_logit_gradient(hidden, weight, bias, labels, ignore_index=-100, label_smoothing=0.0,
                                        reduction="mean"):
    """dz (M, V): the gradient of the reduced loss with respect to the float64
    logits of the labelled rows, for sizing error bounds."""
    return _cross_entropy_terms(hidden, weight, bias, labels, ignore_index, label_smoothing, reduction)[5]


# ------------------------------------------------ 16-bit floats in NumPy --

def bfloat16_bits(x):
    """float32 -> bfloat16 bits (uint16), rounding to nearest even; NaN stays a quiet NaN."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def to_16bit(x, dtype):
    """(the array a 16-bit kernel takes, its values as float32): float16 arrays
    for "float16", uint16 bfloat16 bits for "bfloat16"."""
    if dtype == "float16":
        h = np.asarray(x, np.float32).astype(np.float16)
        return h, h.astype(np.float32)
    bits = bfloat16_bits(x)
    return bits, from_16bit(bits, dtype)


def from_16bit(a, dtype):
    if dtype == "float16":
        return a.astype(np.float32)
    return (a.astype(np.uint32) << 16).view(np.float32)


def nan_16bit(shape, dtype):
    """A 16-bit array full of NaN, so that anything a kernel leaves unwritten shows."""
    if dtype == "float16":
        return np.full(shape, np.nan, np.float16)
    return np.full(shape, 0x7FC0, np.uint16)
