"""CUDA arrays: recognising them, and the few things the ops need from the
framework that owns them (new arrays beside them, their current stream).

An op given arrays with ``__cuda_array_interface__`` runs the CUDA kernels of
``ssl_core._C.cuda`` on the array's own memory (no copies) and on the
framework's current stream, and returns arrays of the same framework. CuPy
arrays and CUDA ``torch.Tensor`` are known; ``register_array_type`` adds others.
"""

from typing import Callable, NamedTuple

import numpy as np


class ArrayType(NamedTuple):
    """How to work with one framework's CUDA arrays."""

    empty: Callable  #: (like, shape, numpy dtype) -> a new array on like's device
    from_numpy: Callable  #: (like, ndarray) -> a copy on like's device
    to_numpy: Callable  #: (array) -> ndarray (copies to the host)
    stream: Callable  #: (like) -> the integer cudaStream_t its framework currently uses


_ARRAY_TYPES = {}
_kernels = None  # the module whose functions run on device arrays; None: ssl_core._C.cuda


def register_array_type(cls, array_type):
    """Teach the ops a framework's CUDA array class (``cls`` and subclasses)."""
    _ARRAY_TYPES[cls] = array_type


def is_device_array(x):
    return hasattr(x, "__cuda_array_interface__")


def kernels():
    """The CUDA kernel module; RuntimeError if this build has none."""
    if _kernels is not None:
        return _kernels
    from ssl_core import _C

    if not hasattr(_C, "cuda"):
        raise RuntimeError(
            "ssl_core was built without CUDA kernels, so CUDA arrays cannot be used; reinstall it on a "
            "machine with nvcc on the PATH (pip install --force-reinstall --no-deps ssl-core)"
        )
    return _C.cuda


def array_type(x, name):
    """The ArrayType of device array ``x``; TypeError naming ``name`` if unknown."""
    _register_known_frameworks()
    for cls in type(x).__mro__:
        if cls in _ARRAY_TYPES:
            return _ARRAY_TYPES[cls]
    raise TypeError(
        f"{name} is a CUDA array of {type(x).__module__}.{type(x).__qualname__}, which ssl_core cannot allocate "
        "results for; pass CuPy arrays or CUDA torch tensors, or call ssl_core.ops._device.register_array_type"
    )


def on_device(**arrays):
    """True if the given arrays (None ignored) are CUDA arrays, False if none
    is; TypeError naming the first that differs from the first array's kind."""
    first_name, first = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        if first is None:
            first_name, first = name, is_device_array(value)
        elif is_device_array(value) != first:
            kinds = ("a CUDA array", "a host array")
            raise TypeError(
                f"{name} is {kinds[not is_device_array(value)]} but {first_name} is {kinds[not first]}; "
                "pass all arrays on the same device"
            )
    return bool(first)


def as_device_int64(value, like, name):
    """``value`` (None, a device array or host integers) as an int64 array on ``like``'s device."""
    if value is None:
        return None
    if is_device_array(value):
        return value
    host = np.asarray(value)
    if host.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got {host.dtype}")
    return array_type(like, "q").from_numpy(like, np.ascontiguousarray(host, dtype=np.int64))


def _register_known_frameworks():
    """CuPy and PyTorch, registered on first use if they are imported."""
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is not None and cupy.ndarray not in _ARRAY_TYPES:
        register_array_type(cupy.ndarray, ArrayType(
            empty=lambda like, shape, dtype: cupy.empty(shape, dtype),
            from_numpy=lambda like, a: cupy.asarray(a),
            to_numpy=cupy.asnumpy,
            stream=lambda like: cupy.cuda.get_current_stream().ptr,
        ))
    torch = sys.modules.get("torch")
    if torch is not None and torch.Tensor not in _ARRAY_TYPES:
        dtypes = {np.dtype(np.float32): torch.float32, np.dtype(np.int64): torch.int64,
                  np.dtype(np.bool_): torch.bool, np.dtype(np.float16): torch.float16,
                  np.dtype(np.uint16): torch.uint16}
        register_array_type(torch.Tensor, ArrayType(
            empty=lambda like, shape, dtype: torch.empty(shape, dtype=dtypes[np.dtype(dtype)], device=like.device),
            from_numpy=lambda like, a: torch.from_numpy(a).to(like.device),
            to_numpy=lambda a: a.detach().cpu().numpy(),
            stream=lambda like: torch.cuda.current_stream(like.device).cuda_stream,
        ))
