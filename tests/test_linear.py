"""ops.linear and its few-rows kernel (forced with kernel=True, whatever the
shape) against NumPy in float64."""

import importlib

import numpy as np
import pytest

from ssl_core import ops
from ssl_core.ops.linear import KERNEL_ROWS


def reference(x, weight, bias=None):
    y = x.astype(np.float64) @ weight.astype(np.float64).T
    return y if bias is None else y + bias


def assert_close(got, want, K):
    """float32 dot products of length K: rounding grows like sqrt(K) times the operands' scale."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.sqrt(K) * max(np.abs(want).max(), 1.0))


# Rows around every tile width (1..7 covers AVX2's 3 and AVX-512's 6), out
# features not a multiple of the 4-row weight tile, in features not a
# multiple of any vector width.
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 8, 13, KERNEL_ROWS[1]])
@pytest.mark.parametrize("K,N", [(1, 1), (5, 3), (64, 257), (771, 130)])
def test_matches_float64(cpu_isa, rng, M, K, N):
    x = rng.standard_normal((M, K), dtype=np.float32)
    weight = rng.standard_normal((N, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    assert_close(ops.linear(x, weight, bias, kernel=True), reference(x, weight, bias), K)
    y = ops.linear(x, weight, kernel=True)
    assert y.shape == (M, N) and y.dtype == np.float32
    assert_close(y, reference(x, weight), K)


def test_large_weights_split_over_threads(cpu_isa, rng, num_threads):
    """Enough weights for both threads; results do not depend on the thread count."""
    x = rng.standard_normal((5, 300), dtype=np.float32)
    weight = rng.standard_normal((2003, 300), dtype=np.float32)
    results = []
    for threads in (1, 2):
        num_threads(threads)
        results.append(ops.linear(x, weight, kernel=True))
    assert_close(results[0], reference(x, weight), 300)
    np.testing.assert_array_equal(results[0], results[1])


def test_leading_axes_strides_and_out(cpu_isa, rng):
    """x (B, T, K) and strided views of x and weight (rows one stride apart),
    written into a given out."""
    x = rng.standard_normal((2, 3, 40), dtype=np.float32)
    weight = rng.standard_normal((50, 45), dtype=np.float32)[:, :40]  # rows 45 floats apart
    out = np.empty((2, 3, 50), np.float32)
    for kernel in (True, False):
        assert ops.linear(x, weight, out=out, kernel=kernel) is out
        assert_close(out, reference(x.reshape(6, 40), weight).reshape(2, 3, 50), 40)
        wide = rng.standard_normal((4, 9, 40), dtype=np.float32)
        assert_close(ops.linear(wide[:, 0], weight, kernel=kernel), reference(wide[:, 0], weight), 40)


def test_the_kernel_serves_two_to_32_rows(rng, monkeypatch):
    """By default ops.linear calls the kernel for 2..32 rows of x, BLAS
    otherwise; both agree with float64."""
    calls = []
    native = importlib.import_module("ssl_core.ops.linear")._C  # (ops.linear is the function)
    kernel = native.linear_forward
    monkeypatch.setattr(native, "linear_forward", lambda *args: calls.append(args[0].shape) or kernel(*args))
    weight = rng.standard_normal((300, 64), dtype=np.float32)
    bias = rng.standard_normal(weight.shape[0], dtype=np.float32)
    for rows, expect_kernel in ((1, False), (2, True), (KERNEL_ROWS[1], True), (KERNEL_ROWS[1] + 1, False)):
        x = rng.standard_normal((rows, 64), dtype=np.float32)
        before = len(calls)
        assert_close(ops.linear(x, weight, bias), reference(x, weight, bias), 64)
        assert (len(calls) > before) == expect_kernel, rows


def test_special_values_propagate(cpu_isa):
    x = np.float32([[1.0, np.inf, 0.0], [np.nan, 1.0, 1.0]])
    weight = np.float32([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    y = ops.linear(x, weight, kernel=True)
    assert y[0, 0] == np.inf and np.isnan(y[0, 1])  # inf * 0 is nan, as in IEEE arithmetic
    assert np.isnan(y[1]).all()  # nan * 0 is nan too
    assert ops.linear(np.float32([[2.0, 3.0, -1.0]]), weight, kernel=True)[0].tolist() == [4.0, -1.0]


def test_rejects_bad_arguments(rng):
    x = rng.standard_normal((2, 8), dtype=np.float32)
    weight = rng.standard_normal((3, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        ops.linear(x.tolist(), weight)
    with pytest.raises(TypeError, match="weight"):
        ops.linear(x, weight.astype(np.float64))
    with pytest.raises(ValueError, match="x has 7 features"):
        ops.linear(x[:, :7], weight)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ops.linear(x, weight[None])
    with pytest.raises(ValueError, match="bias"):
        ops.linear(x, weight, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.linear(x, weight, out=np.empty((2, 4), np.float32))
    with pytest.raises(TypeError, match="out must be"):
        ops.linear(x, weight, out=np.empty((2, 3), np.float64))
    with pytest.raises(ValueError, match="weight"):
        ops.linear(x, np.asfortranarray(weight), kernel=True)
    with pytest.raises(ValueError, match="shares memory"):
        buffer = np.zeros((2, 8), np.float32)
        ops.linear(buffer, weight, out=buffer[:, :3], kernel=True)
