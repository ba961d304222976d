"""Other frameworks' CPU arrays (torch tensors, JAX arrays, anything with
``__dlpack__``) on the CPU kernels, through DLPack.

``accepts_dlpack`` wraps a public op. Each argument, or element of a tuple
argument such as ``out=``, that is not a NumPy array, has no
``__cuda_array_interface__`` (CUDA arrays have their own path, ``_device.py``)
and is on the CPU by its ``__dlpack_device__`` is replaced by
``np.from_dlpack`` of it: a view of the same memory with the same strides, so
layouts the kernels reject raise their usual errors instead of being copied.
The op's NumPy results, also inside tuples, come back as arrays of the
framework of the first such argument: an array given in ``out=`` or ``grads=``
is returned as that very object; new results are wrapped with
``torch.from_dlpack`` (no copy) or the Array API ``from_dlpack`` of the
framework (JAX: ``jax.numpy.from_dlpack``, which copies unless the buffer is
64-byte aligned).

Read-only views (JAX exports its immutable arrays read-only) are fine as
inputs; the kernels never write to their inputs.
"""

import functools
import inspect

import numpy as np

_CPU = 1  # kDLCPU
_DEVICE_NAMES = {2: "CUDA", 3: "CUDA host", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 10: "ROCm", 11: "ROCm host",
                 13: "CUDA managed", 14: "oneAPI", 15: "WebGPU"}
_OUTPUTS = ("out", "grads")  # the arguments the kernels write into


def accepts_dlpack(op):
    """Decorator: ``op`` also takes CPU arrays of other frameworks and returns
    results of the same framework (see the module docstring)."""
    names = tuple(inspect.signature(op).parameters)

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        if not any(map(_maybe_foreign, args)) and not any(map(_maybe_foreign, kwargs.values())):
            return op(*args, **kwargs)  # NumPy arrays and scalars only: no cost beyond this check
        imported = _Imported()
        args = tuple(imported.view(names[i] if i < len(names) else f"argument {i}", value)
                     for i, value in enumerate(args))
        kwargs = {name: imported.view(name, value) for name, value in kwargs.items()}
        return imported.export(op(*args, **kwargs))

    return wrapper


def _maybe_foreign(value):
    if isinstance(value, (tuple, list)):  # out=, grads=
        return any(map(_maybe_foreign, value))
    return type(value) is not np.ndarray and hasattr(type(value), "__dlpack_device__")


def _describe(value):
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _from_numpy(value, name):
    """(framework name, function ndarray -> array of that framework) for ``value``."""
    torch = _torch_module(value)
    if torch is not None:
        return "torch", torch.from_dlpack
    if hasattr(value, "__array_namespace__"):
        namespace = value.__array_namespace__()
        return namespace.__name__, namespace.from_dlpack
    raise TypeError(
        f"{name} is a {_describe(value)}, which ssl_core.ops can read through DLPack but cannot make results "
        f"of (it has no __array_namespace__); pass np.from_dlpack({name}) and convert the results yourself"
    )


def _torch_module(value):
    """The torch module if ``value`` is a torch.Tensor (torch imported only if the caller did)."""
    import sys

    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(value, torch.Tensor) else None


class _Imported:
    """The foreign arrays of one call: their NumPy views, and what the results become."""

    def __init__(self):
        self.framework = None  # (name, from_numpy, the argument that set it)
        self.originals = {}  # id(view) -> (view, the argument it views); the view kept alive for its id

    def view(self, name, value):
        """``value`` with every foreign CPU array in it replaced by its NumPy view."""
        if isinstance(value, (tuple, list)):
            items = [self.view(f"{name}[{i}]", item) for i, item in enumerate(value)]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        if isinstance(value, np.ndarray) or not hasattr(type(value), "__dlpack_device__"):
            return value
        if getattr(value, "requires_grad", False) is True:  # before __cuda_array_interface__, which raises
            raise TypeError(
                f"{name} is a torch.Tensor that requires grad, but ssl_core.ops record no autograd graph: use "
                f"the differentiable ops of ssl_core.integrations.torch, or pass {name}.detach()"
            )
        if hasattr(value, "__cuda_array_interface__"):
            return value  # the CUDA kernels' path
        try:
            device_type = int(value.__dlpack_device__()[0])
            device = f"{_DEVICE_NAMES.get(device_type, f'DLPack type {device_type}')} device"
        except (BufferError, RuntimeError, TypeError, ValueError) as error:  # e.g. torch's "meta" device
            device_type, device = None, f"device DLPack does not know ({error})"
        if device_type != _CPU:
            raise TypeError(
                f"{name} is a {_describe(value)} on a {device} without __cuda_array_interface__; ssl_core.ops "
                "run CPU arrays (NumPy, or any framework's through DLPack) on the CPU kernels and CUDA arrays "
                "with __cuda_array_interface__ (CuPy arrays, CUDA torch tensors) on the CUDA kernels"
            )
        framework = _from_numpy(value, name)
        if self.framework is None:
            self.framework = (*framework, name)
        elif framework[0] != self.framework[0]:
            raise TypeError(
                f"{name} is a {framework[0]} array but {self.framework[2]} is a {self.framework[0]} array; pass "
                "arrays of one framework (NumPy arrays may be mixed with any)"
            )
        try:
            array = np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            dtype = getattr(value, "dtype", "unknown")
            raise TypeError(
                f"{name} ({_describe(value)} of dtype {dtype}) cannot be viewed as a NumPy array through DLPack "
                f"({error}); the kernels take float32 arrays, integer lengths and labels, bool masks"
            ) from None
        if name.split("[")[0] in _OUTPUTS and not array.flags.writeable:
            raise TypeError(
                f"{name} is a read-only {_describe(value)} (JAX arrays are immutable), which the kernels cannot "
                f"write into; leave {name.split('[')[0]}=None and use the returned arrays"
            )
        self.originals[id(array)] = (array, value)
        return array

    def export(self, result):
        """``result`` with its NumPy arrays as arrays of the call's framework."""
        if self.framework is None:
            return result
        if isinstance(result, np.ndarray):
            view_and_original = self.originals.get(id(result))
            if view_and_original is not None and view_and_original[0] is result:
                return view_and_original[1]
            return self.framework[1](result)
        if isinstance(result, tuple):
            items = [self.export(item) for item in result]
            return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
        return result
