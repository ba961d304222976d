"""Parameters that live in one flat buffer, and their gradients in another.

Layers declare their parameters on a ``ParameterStore`` as they are built; a
model then calls ``allocate()`` once, which gives every parameter a view into
one float32 data buffer and one gradient buffer. The optimizer (one fused
kernel over the whole buffer) and a data-parallel all-reduce then act on one
array each, and tied weights are simply the same ``Parameter`` object used by
two layers.
"""

import numpy as np

_ALIGN = 16  # floats: every parameter starts on a 64-byte boundary


class Parameter:
    """A named parameter. ``data`` and ``grad`` are views into the store's
    flat buffers (None until the store is allocated)."""

    __slots__ = ("name", "shape", "init", "std", "decay", "embedding", "offset", "data", "grad")

    def __init__(self, name, shape, init, std, decay, embedding):
        self.name, self.shape, self.init, self.std, self.decay = name, tuple(shape), init, std, decay
        self.embedding = embedding
        self.offset = None
        self.data = self.grad = None

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape})"


class ParameterStore:
    """Collects named parameters, then backs them with two flat buffers."""

    def __init__(self):
        self._params = {}
        self.data = self.grad = None

    def add(self, name, shape, init="normal", std=0.02, decay=True, embedding=False):
        """Declare a parameter. ``init`` is "normal" (mean 0, ``std``), "zeros"
        or "ones"; ``decay`` says whether weight decay applies to it (not to
        biases and LayerNorm parameters); ``embedding`` marks lookup tables,
        which an optimizer may exempt from decay too."""
        if self.data is not None:
            raise RuntimeError(f"cannot add {name!r}: the store is already allocated")
        if name in self._params:
            raise ValueError(f"parameter {name!r} is declared twice")
        if init not in ("normal", "zeros", "ones"):
            raise ValueError(f"init must be 'normal', 'zeros' or 'ones', got {init!r}")
        if any(int(d) < 1 for d in shape):
            raise ValueError(f"parameter {name!r} must have a positive shape, got {tuple(shape)}")
        param = Parameter(name, shape, init, std, decay, embedding)
        self._params[name] = param
        return param

    def allocate(self, seed=0):
        """Create the flat buffers, point every parameter into them and
        initialize the data (gradients start at zero). Each parameter draws from
        its own generator, seeded by (seed, its position), so the values of one
        do not depend on the shapes of the others."""
        offset = 0
        for param in self._params.values():
            param.offset = offset
            offset += -(-param.size // _ALIGN) * _ALIGN
        self.data = np.zeros(offset, np.float32)
        self.grad = np.zeros(offset, np.float32)
        for index, param in enumerate(self._params.values()):
            param.data = self.data[param.offset:param.offset + param.size].reshape(param.shape)
            param.grad = self.grad[param.offset:param.offset + param.size].reshape(param.shape)
            if param.init == "normal":
                rng = np.random.default_rng([seed, index])
                param.data[...] = rng.standard_normal(param.shape, dtype=np.float32) * np.float32(param.std)
            elif param.init == "ones":
                param.data[...] = 1.0
        return self

    def zero_grad(self):
        self.grad[...] = 0.0

    def __getitem__(self, name):
        return self._params[name]

    def __iter__(self):
        return iter(self._params.values())

    def __len__(self):
        return len(self._params)

    def num_parameters(self):
        """Number of scalar parameters (tied ones counted once)."""
        return sum(p.size for p in self._params.values())
