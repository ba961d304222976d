"""The basic layers. Each has ``forward``, which saves what its backward needs,
and ``backward``, which takes the gradient of the output, returns the gradient
of the input and adds its parameters' gradients to their ``.grad`` (a tied
parameter gathers gradient from every layer that uses it). A layer keeps what
one forward saved until its backward: call them in pairs.

``apply``, where a layer has it, is the forward without saving: what
incremental decoding, which never runs a backward, calls.

Shapes: x (..., features); ids (...) integers.
"""

import numpy as np

from ssl_core import ops


class Linear:
    """y = x Wᵀ + b with W (out_features, in_features), the layout of
    torch.nn.Linear and Hugging Face checkpoints. The products go through
    ops.linear: our kernel for a few rows (decoding), else the array
    library's BLAS."""

    def __init__(self, params, name, in_features, out_features, bias=True, std=0.02):
        self.weight = params.add(f"{name}.weight", (out_features, in_features), std=std)
        self.bias = params.add(f"{name}.bias", (out_features,), init="zeros", decay=False) if bias else None
        self._x = None

    def forward(self, x):
        self._x = x
        return self.apply(x)

    def apply(self, x):
        """The forward without saving anything for a backward (inference)."""
        return ops.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, dy):
        x, self._x = self._x, None
        x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        self.weight.grad += dy2.T @ x2
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return (dy2 @ self.weight.data).reshape(x.shape)


def scatter_add_rows(target, ids, rows):
    """target[ids[i]] += rows[i] for every i, correct when ids repeat (which
    ``target[ids] += rows`` is not): rows are sorted by id and each run summed
    once. ids (N,) integers; rows (N, D); target (V, D)."""
    if ids.size == 0:
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    target[sorted_ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)


class Embedding:
    """Rows of a (num_embeddings, dim) table by id; its backward is a scatter-add.
    The row of ``padding_idx`` (if given) gets no gradient, as in torch."""

    def __init__(self, params, name, num_embeddings, dim, std=0.02, decay=True, padding_idx=None):
        self.weight = params.add(f"{name}.weight", (num_embeddings, dim), std=std, decay=decay, embedding=True)
        self.padding_idx = padding_idx
        self._ids = None

    def forward(self, ids):
        if ids.size and (ids.min() < 0 or ids.max() >= self.weight.shape[0]):
            bad = ids[(ids < 0) | (ids >= self.weight.shape[0])].flat[0]
            raise ValueError(f"{self.weight.name}: id {bad} is outside [0, {self.weight.shape[0]})")
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, dy):
        ids, self._ids = self._ids.reshape(-1), None
        rows = dy.reshape(-1, dy.shape[-1])
        if self.padding_idx is not None:
            keep = ids != self.padding_idx
            ids, rows = ids[keep], rows[keep]
        scatter_add_rows(self.weight.grad, ids, rows)


class LayerNorm:
    """LayerNorm over the last axis (ops.layer_norm_*), weight ones and bias zeros at first."""

    def __init__(self, params, name, dim, eps=1e-5):
        self.weight = params.add(f"{name}.weight", (dim,), init="ones", decay=False)
        self.bias = params.add(f"{name}.bias", (dim,), init="zeros", decay=False)
        self.eps = eps
        self._saved = None

    def forward(self, x):
        y, mean, rstd = ops.layer_norm_forward(x, self.weight.data, self.bias.data, self.eps)
        self._saved = (x, mean, rstd)
        return y

    def apply(self, x):
        """The forward without saving anything for a backward (inference)."""
        return ops.layer_norm_forward(x, self.weight.data, self.bias.data, self.eps)[0]

    def backward(self, dy):
        (x, mean, rstd), self._saved = self._saved, None
        dx, _, _ = ops.layer_norm_backward(dy, x, self.weight.data, mean, rstd,
                                           out=(None, self.weight.grad, self.bias.grad), accumulate=True)
        return dx


class GELU:
    """GELU, exact ("none", BERT) or tanh-approximated ("tanh", GPT-2)."""

    def __init__(self, approximate="none"):
        self.approximate = approximate
        self._x = None

    def forward(self, x):
        self._x = x
        return ops.gelu(x, approximate=self.approximate)

    def backward(self, dy):
        x, self._x = self._x, None
        return ops.gelu_backward(dy, x, approximate=self.approximate)


class Dropout:
    """Zeroes each element with probability p while ``training`` and scales the
    rest by 1 / (1 - p). Masks come from the layer's own generator, seeded, so a
    run is reproducible; its state is ``generator.bit_generator.state``."""

    def __init__(self, p, seed=0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.training = True
        self.generator = np.random.default_rng(seed)
        self._keep = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._keep = None
            return x
        self._keep = self.generator.random(x.shape, dtype=np.float32) >= self.p
        return x * self._keep * np.float32(1.0 / (1.0 - self.p))

    def backward(self, dy):
        keep, self._keep = self._keep, None
        return dy if keep is None else dy * keep * np.float32(1.0 / (1.0 - self.p))
