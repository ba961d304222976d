import numpy as np
import pytest

from ssl_core import ops

import reference

APPROXIMATIONS = ["none", "tanh"]


@pytest.fixture(scope="module")
def sweep():
    """Every 2^-18-th float32 step over [-10, 10] (about 5M points) plus the
    exactly representable neighbourhood of 0."""
    x = np.arange(-10, 10, 2.0**-18, dtype=np.float64).astype(np.float32)
    return np.concatenate([x, np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45])])


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_forward_accuracy_over_the_range_that_matters(cpu_isa, sweep, approximate):
    y = ops.gelu(sweep, approximate)
    err = np.abs(y - reference.gelu(sweep, approximate))
    assert err.max() <= 1e-6, f"max abs error {err.max():.3g} at x = {sweep[err.argmax()]}"


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_backward_accuracy_over_the_range_that_matters(cpu_isa, sweep, approximate):
    dy = np.ones_like(sweep)
    dx = ops.gelu_backward(dy, sweep, approximate)
    err = np.abs(dx - reference.gelu_derivative(sweep, approximate))
    assert err.max() <= 1e-6, f"max abs error {err.max():.3g} at x = {sweep[err.argmax()]}"


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_backward_matches_finite_differences(cpu_isa, rng, approximate):
    x = (rng.standard_normal(2000) * 3).astype(np.float32)
    dy = rng.standard_normal(2000).astype(np.float32)
    h = 1e-5
    x64 = x.astype(np.float64)
    numeric = (reference.gelu(x64 + h, approximate) - reference.gelu(x64 - h, approximate)) / (2 * h)
    np.testing.assert_allclose(ops.gelu_backward(dy, x, approximate), dy * numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_tails_and_special_values(cpu_isa, approximate):
    x = np.float32([np.inf, -np.inf, np.nan, 1e30, -1e30, 3e38, -3e38, 50.0, -50.0, -15.0])
    y = ops.gelu(x, approximate)
    assert y[0] == np.inf and y[1] == 0 and np.isnan(y[2])
    np.testing.assert_array_equal(y[[3, 5, 7]], x[[3, 5, 7]])
    np.testing.assert_array_equal(y[[4, 6, 8]], 0)
    assert abs(y[9]) <= 1e-30
    d = ops.gelu_backward(np.ones_like(x), x, approximate)
    np.testing.assert_array_equal(d[[0, 3, 5, 7]], 1)
    np.testing.assert_array_equal(d[[1, 4, 6, 8]], 0)
    assert np.isnan(d[2])


@pytest.mark.parametrize("shape", [(0,), (1,), (17,), (3, 5), (2, 3, 1031), (70000,), (3, 40000)])
def test_shapes(cpu_isa, rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for approximate in APPROXIMATIONS:
        y = ops.gelu(x, approximate)
        assert y.shape == shape and y.dtype == np.float32
        np.testing.assert_allclose(y, reference.gelu(x, approximate), rtol=0, atol=1e-6)
        dx = ops.gelu_backward(dy, x, approximate)
        np.testing.assert_allclose(dx, dy * reference.gelu_derivative(x, approximate), rtol=1e-6, atol=1e-6)


def test_strided_rows_and_in_place(cpu_isa, rng):
    wide = (rng.standard_normal((50, 300)) * 3).astype(np.float32)
    x = wide[:, 7:207]
    expected = reference.gelu(x)
    np.testing.assert_allclose(ops.gelu(x), expected, atol=1e-6, rtol=0)
    y = ops.gelu(x, out=x)  # in place, on a strided view
    assert y is x
    np.testing.assert_allclose(wide[:, 7:207], expected, atol=1e-6, rtol=0)
    assert not np.shares_memory(ops.gelu(wide), wide)
    dy = np.ones_like(wide)
    dx = ops.gelu_backward(dy, wide, out=dy)  # in place into dy
    assert dx is dy
    np.testing.assert_allclose(dy, reference.gelu_derivative(wide), atol=1e-6, rtol=0)


def test_bad_input():
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        ops.gelu(x, "erf")
    with pytest.raises(TypeError, match="approximate must be the string 'none' or 'tanh', got None"):
        ops.gelu(x, None)
    with pytest.raises(TypeError, match="x must have dtype float32, got int64"):
        ops.gelu(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="dy must be a numpy.ndarray"):
        ops.gelu_backward([0.0] * 32, x.ravel())
    with pytest.raises(ValueError, match=r"dy must have the shape of x, \(4, 8\), got \(8, 4\)"):
        ops.gelu_backward(x.reshape(8, 4), x)
    with pytest.raises(ValueError, match="x must have a contiguous last axis"):
        ops.gelu(x.T)
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        ops.gelu(np.zeros((), np.float32))
    with pytest.raises(ValueError, match=r"y must have shape \(4, 8\), got \(32,\)"):
        ops.gelu(x, out=np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="dx partly overlaps input x"):
        buffer = np.zeros(40, np.float32)
        ops.gelu_backward(x.ravel(), buffer[:32], out=buffer[8:])


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_fused_bias(cpu_isa, rng, approximate):
    """gelu(x, bias=b) is GELU(x + b), rows strided or not; its backward is
    dy * GELU'(x + b)."""
    wide = rng.standard_normal((37, 70)).astype(np.float32) * 3
    for x in (wide[:, :53], np.ascontiguousarray(wide[:, :53])):
        b = rng.standard_normal(53).astype(np.float32)
        u = x.astype(np.float64) + b
        np.testing.assert_allclose(ops.gelu(x, approximate, bias=b), reference.gelu(u, approximate),
                                   rtol=0, atol=2e-6)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_allclose(ops.gelu_backward(dy, x, approximate, bias=b),
                                   dy * reference.gelu_derivative(u, approximate), rtol=0, atol=2e-6)
    y = np.ascontiguousarray(x)
    ops.gelu(y, approximate, bias=b, out=y)  # in place
    np.testing.assert_allclose(y, reference.gelu(u, approximate), rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.gelu(x, approximate, bias=b[:5])
    with pytest.raises(TypeError, match="bias"):
        ops.gelu_backward(dy, x, approximate, bias=b.astype(np.float64))
