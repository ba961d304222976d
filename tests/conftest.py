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
