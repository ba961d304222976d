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
spin only briefly before sleeping (GNU OpenMP's default is 300,000 spins, or
more), so they leave the cores to the BLAS (NumPy's matmul) that the layers
call between kernels. Measured on a 2-core machine: a 4096x256x768 matmul
right after a kernel ran at 58-82 GFLOP/s with the default and 109-142 with
10,000-100,000 spins, while a LayerNorm backward (two parallel regions) took
4.8 ms with the default, 4.6-5.0 ms with 30,000-100,000 and 5.9-6.4 ms with
10,000. A whole BERT training step (benchmarks/bench_train.py) took 1.15-1.25 s
with 10,000 and 1.30-1.38 s with 50,000, so 10,000 it is.
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
