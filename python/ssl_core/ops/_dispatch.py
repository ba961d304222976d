"""Which backend runs an op, decided from the types of its array arguments."""

import numpy as np


def require_numpy(**arrays):
    """Raise TypeError naming the first argument that is not a NumPy array.

    The CPU kernels take NumPy arrays; other frameworks' CPU arrays have been
    turned into NumPy views by ``_dlpack.accepts_dlpack`` before this, so what
    is left (lists, scalars, arrays without DLPack) gets a clear error rather
    than a silent copy.
    """
    for name, value in arrays.items():
        if value is not None and not isinstance(value, np.ndarray):
            raise TypeError(
                f"{name} must be a numpy.ndarray of float32 (or a CPU array with __dlpack__, e.g. a torch tensor "
                f"or a JAX array), got {type(value).__module__}.{type(value).__qualname__}"
            )


def split_out(out, names, arg="out"):
    """The output arrays of an op that returns several: ``out`` (the argument
    called ``arg``) is None or a tuple with one array (or None) per name."""
    if out is None:
        return (None,) * len(names)
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise TypeError(f"{arg} must be a tuple ({', '.join(names)}) of arrays or None, got {out!r:.80}")
    return tuple(out)
