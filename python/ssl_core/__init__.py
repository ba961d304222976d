"""ssl_core: self-supervised pretraining of Transformer language models on
hand-written CPU (and CUDA) kernels.

Runtime settings of the native kernels:

- ``set_num_threads(n)`` / ``get_num_threads()``: threads the CPU kernels use
  (default: ``SSL_CORE_NUM_THREADS`` or every core the process may use).
- ``set_cpu_isa(name)`` / ``get_cpu_isa()`` / ``supported_cpu_isas()``: the CPU
  code path, ``"reference"``, ``"portable"``, ``"avx2"`` or ``"avx512"``
  (default: ``SSL_CORE_CPU_ISA`` or the fastest this CPU supports).
- ``WITH_CUDA``: compiled with CUDA kernels; ``cuda_available()``: a CUDA
  device can be used now.
"""

from ssl_core import _C, ops
from ssl_core._C import (
    WITH_CUDA,
    get_cpu_isa,
    get_num_threads,
    set_cpu_isa,
    set_num_threads,
    supported_cpu_isas,
)

__version__ = _C.__version__


def cuda_available() -> bool:
    """True when ssl_core was compiled with CUDA and a CUDA device is usable now."""
    return bool(WITH_CUDA) and _C.cuda_device_count() > 0


__all__ = [
    "WITH_CUDA",
    "cuda_available",
    "get_cpu_isa",
    "get_num_threads",
    "ops",
    "set_cpu_isa",
    "set_num_threads",
    "supported_cpu_isas",
]
