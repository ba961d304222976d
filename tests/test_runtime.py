import os
import subprocess
import sys

import numpy as np
import pytest

import ssl_core
from ssl_core import _C, cli


def run_python(code, **env):
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)


def test_thread_count_setting(num_threads):
    num_threads(3)
    assert ssl_core.get_num_threads() == 3
    with pytest.raises(ValueError, match="num_threads must be >= 1, got 0"):
        ssl_core.set_num_threads(0)
    assert ssl_core.get_num_threads() == 3


def test_thread_count_from_environment():
    done = run_python("import ssl_core; print(ssl_core.get_num_threads())", SSL_CORE_NUM_THREADS="5")
    assert done.stdout.strip() == "5", done.stderr
    bad = run_python("import ssl_core; ssl_core.get_num_threads()", SSL_CORE_NUM_THREADS="many")
    assert bad.returncode != 0 and "SSL_CORE_NUM_THREADS must be a whole number >= 1" in bad.stderr


def test_cpu_isa_selection():
    supported = ssl_core.supported_cpu_isas()
    assert supported[:2] == ["reference", "portable"]
    assert ssl_core.get_cpu_isa() in supported
    with pytest.raises(ValueError, match="unknown CPU code path 'sse9'"):
        ssl_core.set_cpu_isa("sse9")
    done = run_python("import ssl_core; print(ssl_core.get_cpu_isa())", SSL_CORE_CPU_ISA="reference")
    assert done.stdout.strip() == "reference", done.stderr


def test_every_code_path_gives_the_same_answer(rng):
    """The paths are held to float64 separately; this guards the dispatch
    itself: each name really selects a different, working implementation."""
    x = rng.standard_normal((64, 100)).astype(np.float32)
    previous = ssl_core.get_cpu_isa()
    try:
        outputs = {}
        for isa in ssl_core.supported_cpu_isas():
            ssl_core.set_cpu_isa(isa)
            outputs[isa] = ssl_core.ops.gelu(x)
    finally:
        ssl_core.set_cpu_isa(previous)
    for isa, y in outputs.items():
        np.testing.assert_allclose(y, outputs["reference"], atol=1e-6, rtol=0, err_msg=isa)


def test_cuda_flags_are_consistent():
    assert isinstance(ssl_core.WITH_CUDA, bool)
    assert isinstance(ssl_core.cuda_available(), bool)
    if not ssl_core.WITH_CUDA:
        assert not ssl_core.cuda_available()


def test_info_command(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("ssl_core", "compiler", "cpu code path", "threads", "WITH_CUDA", "cuda devices"):
        assert key in out
    assert ssl_core.get_cpu_isa() in out
    if ssl_core.WITH_CUDA:  # built with nvcc: the architectures the kernels were compiled for
        assert f"kernels for {_C.CUDA_ARCHITECTURES}" in out and "80" in _C.CUDA_ARCHITECTURES
        assert hasattr(_C, "cuda") and callable(_C.cuda.attention_forward)
    installed = subprocess.run(["ssl-core", "info"], capture_output=True, text=True)
    assert installed.returncode == 0 and ssl_core.__version__ in installed.stdout
