import numpy as np
import pytest

import ssl_core


@pytest.fixture(params=ssl_core.supported_cpu_isas())
def cpu_isa(request):
    """Runs the test once per CPU code path this machine supports."""
    previous = ssl_core.get_cpu_isa()
    ssl_core.set_cpu_isa(request.param)
    yield request.param
    ssl_core.set_cpu_isa(previous)


@pytest.fixture
def num_threads():
    """Lets a test change the thread count; restores it afterwards."""
    previous = ssl_core.get_num_threads()
    yield ssl_core.set_num_threads
    ssl_core.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def simt():
    """ssl_core._simt: the CUDA kernels compiled for the CPU emulator (csrc/simt/).

    SSL_CORE_SIMT_MODULE=/path/to/_simt....so loads a build of one's own
    instead of the installed module (development of a kernel)."""
    import importlib
    import importlib.util
    import os

    path = os.environ.get("SSL_CORE_SIMT_MODULE")
    if not path:
        return importlib.import_module("ssl_core._simt")
    spec = importlib.util.spec_from_file_location("ssl_core._simt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def simt_schedule(simt):
    """Sets the emulator's schedule for one test; restores 'forward' afterwards."""
    yield simt.set_schedule
    simt.set_schedule("forward")
