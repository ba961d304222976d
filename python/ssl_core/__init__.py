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

Unless ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is already set, importing
ssl_core sets ``GOMP_SPINCOUNT=10000``: after a kernel, its OpenMP threads
spin for some microseconds, not GNU OpenMP's default of up to a few hundred
milliseconds, so they leave the cores to the BLAS (NumPy's matmul) that the
layers call between kernels. Measured here: a 4096x256x768 matmul right after
a kernel ran at 82 GFLOP/s with the default and 137 with this setting, and a
0.3 ms kernel took 0.07 ms longer.
"""

import os

if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"  # read once, when libgomp loads with _C below

from ssl_core import _C, ops  # noqa: E402
from ssl_core._C import (  # noqa: E402
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
