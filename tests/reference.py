"""Independent float64 NumPy references for the kernels."""

import numpy as np
from scipy.special import erfc

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
