import numpy as np
import pytest

from ssl_core import ops

import reference

SHAPES = [(1, 1), (1, 7), (3, 16), (5, 17), (2, 3, 768), (33, 1000), (4, 1031), (129, 64)]


def make_inputs(rng, shape, loc=0.0, scale=1.0):
    x = (rng.standard_normal(shape) * scale + loc).astype(np.float32)
    C = shape[-1]
    weight = rng.standard_normal(C).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64(cpu_isa, rng, shape):
    x, weight, bias = make_inputs(rng, shape)
    y, mean, rstd = ops.layer_norm_forward(x, weight, bias, eps=1e-5)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    assert y.shape == x.shape and y.dtype == np.float32
    assert mean.shape == x.shape[:-1] and rstd.shape == x.shape[:-1]
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-5)


@pytest.mark.parametrize("loc,scale", [(1e4, 1.0), (-3e3, 1e-2), (0.0, 1e3)])
def test_forward_rows_with_large_mean(cpu_isa, rng, loc, scale):
    x, weight, bias = make_inputs(rng, (16, 771), loc, scale)
    y, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    # The float32 input itself only resolves |x| to 2^-24 |x|; y can be no
    # closer than that resolution, normalized.
    resolution = np.abs(x).max() * 2.0**-23 * ref_rstd.max() * np.abs(weight).max()
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=4 * resolution + 1e-5)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=np.abs(x).max() * 2.0**-22)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-5)


def test_layer_norm_returns_y_only(rng):
    x, weight, bias = make_inputs(rng, (6, 40))
    np.testing.assert_array_equal(ops.layer_norm(x, weight, bias), ops.layer_norm_forward(x, weight, bias)[0])


def test_weight_and_bias_may_be_none(cpu_isa, rng):
    x, _, _ = make_inputs(rng, (7, 50))
    y = ops.layer_norm(x, None, None, eps=1e-6)
    ref_y, _, _ = reference.layer_norm(x, np.ones(50), np.zeros(50), 1e-6)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_float64(cpu_isa, rng, shape):
    x, weight, bias = make_inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    dx, dweight, dbias = ops.layer_norm_backward(dy, x, weight, mean, rstd)
    ref_dx, ref_dweight, ref_dbias = reference.layer_norm_backward(dy, x, weight, 1e-5)
    rows = int(np.prod(shape[:-1]))
    # dx is rstd * (g - mean(g) - ...): its rounding scales with rstd * |g|.
    scale = rstd.max() * np.abs(dy * weight).max()
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(dweight, ref_dweight, rtol=1e-4, atol=1e-5 * np.sqrt(rows))
    np.testing.assert_allclose(dbias, ref_dbias, rtol=1e-4, atol=1e-5 * np.sqrt(rows))


def test_backward_matches_finite_differences(cpu_isa, rng):
    """Gradients of L = sum(dy * LayerNorm(x; w, b)) against central differences
    of the float64 forward, one coordinate at a time."""
    x, weight, bias = make_inputs(rng, (3, 5))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    dx, dweight, dbias = ops.layer_norm_backward(dy, x, weight, mean, rstd)

    def loss(x64, w64, b64):
        return float((dy * reference.layer_norm(x64, w64, b64, 1e-5)[0]).sum())

    args = [x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64)]
    for got, numeric in zip((dx, dweight, dbias), reference.central_differences(loss, args)):
        np.testing.assert_allclose(got, numeric, rtol=1e-4, atol=1e-4)


def test_backward_accumulates_parameter_gradients(cpu_isa, rng):
    x, weight, bias = make_inputs(rng, (9, 33))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    dx_fresh, dweight_fresh, dbias_fresh = ops.layer_norm_backward(dy, x, weight, mean, rstd)
    dx = np.full_like(x, 7.0)
    dweight = np.full(33, 0.5, np.float32)
    dbias = np.full(33, -2.0, np.float32)
    out = (dx, dweight, dbias)
    result = ops.layer_norm_backward(dy, x, weight, mean, rstd, out=out, accumulate=True)
    assert all(r is o for r, o in zip(result, out))
    np.testing.assert_allclose(dx, dx_fresh, rtol=1e-6, atol=1e-7)  # dx is written, not added
    np.testing.assert_allclose(dweight, dweight_fresh + 0.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dbias, dbias_fresh - 2.0, rtol=1e-6, atol=1e-6)
    ops.layer_norm_backward(dy, x, weight, mean, rstd, out=out)  # accumulate=False overwrites
    np.testing.assert_array_equal(dweight, dweight_fresh)


def test_parameter_gradients_identical_for_any_thread_count(rng, num_threads):
    x, weight, bias = make_inputs(rng, (1000, 96))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        results.append(ops.layer_norm_backward(dy, x, weight, mean, rstd))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_strided_rows_are_used_without_copy(cpu_isa, rng):
    wide, weight, bias = make_inputs(rng, (4, 6, 80))
    x = wide[:, :, 10:50]  # rows 80 floats apart, last axis contiguous
    weight, bias = weight[:40].copy(), bias[:40].copy()
    y, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    np.testing.assert_allclose(y, reference.layer_norm(x, weight, bias, 1e-5)[0], rtol=1e-5, atol=2e-5)
    dy_wide = rng.standard_normal((4, 6, 80)).astype(np.float32)
    dy = dy_wide[:, :, 5:45]
    dx_out = np.zeros((4, 6, 90), np.float32)
    dx, _, _ = ops.layer_norm_backward(dy, x, weight, mean, rstd, out=(dx_out[:, :, :40], None, None))
    assert np.shares_memory(dx, dx_out)
    np.testing.assert_allclose(dx_out[:, :, :40], reference.layer_norm_backward(dy, x, weight, 1e-5)[0],
                               rtol=1e-4, atol=1e-4)
    assert not dx_out[:, :, 40:].any()  # nothing written outside the view


def test_forward_in_place(cpu_isa, rng):
    x, weight, bias = make_inputs(rng, (10, 100))
    expected = ops.layer_norm(x, weight, bias)
    y, _, _ = ops.layer_norm_forward(x, weight, bias, out=(x, None, None))
    assert y is x
    np.testing.assert_array_equal(x, expected)


def test_empty_batch_returns_empty_results(cpu_isa):
    x = np.zeros((0, 8), np.float32)
    y, mean, rstd = ops.layer_norm_forward(x, None, None)
    assert y.shape == (0, 8) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dweight, dbias = ops.layer_norm_backward(x, x, None, mean, rstd)
    assert dx.shape == (0, 8)
    np.testing.assert_array_equal(dweight, np.zeros(8))
    np.testing.assert_array_equal(dbias, np.zeros(8))


def test_nan_and_inf_propagate_to_their_row_only(cpu_isa, rng):
    x, weight, bias = make_inputs(rng, (4, 37))
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    y, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    assert np.isfinite(y[[0, 3]]).all()
    dx, _, _ = ops.layer_norm_backward(np.ones_like(x), x, weight, mean, rstd)
    assert np.isfinite(dx[[0, 3]]).all()


# --------------------------------------------------------------- bad input --

def test_rejects_wrong_dtype_and_type(rng):
    x, weight, bias = make_inputs(rng, (3, 8))
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        ops.layer_norm(x.astype(np.float64), weight, bias)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        ops.layer_norm(x, weight.astype(np.float16), bias)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        ops.layer_norm(x.tolist(), weight, bias)
    with pytest.raises(TypeError, match="mean must have dtype float32"):
        ops.layer_norm_backward(x, x, weight, np.zeros(3), np.zeros(3, np.float32))


def test_rejects_wrong_shapes(rng):
    x, weight, bias = make_inputs(rng, (3, 8))
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(7,\)"):
        ops.layer_norm(x, weight[:7].copy(), bias)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\), got \(1, 8\)"):
        ops.layer_norm(x, weight, bias[None])
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        ops.layer_norm(np.ones((), np.float32), None, None)
    with pytest.raises(ValueError, match="at least one feature"):
        ops.layer_norm(np.zeros((3, 0), np.float32), None, None)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    with pytest.raises(ValueError, match=r"dy must have the shape of x, \(3, 8\), got \(3, 9\)"):
        ops.layer_norm_backward(np.zeros((3, 9), np.float32), x, weight, mean, rstd)
    with pytest.raises(ValueError, match=r"rstd must have shape \(3,\), got \(4,\)"):
        ops.layer_norm_backward(x, x, weight, mean, np.zeros(4, np.float32))


def test_rejects_bad_eps(rng):
    x, weight, bias = make_inputs(rng, (3, 8))
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            ops.layer_norm(x, weight, bias, eps=eps)


def test_rejects_unsupported_layouts(rng):
    x, weight, bias = make_inputs(rng, (8, 8))
    with pytest.raises(ValueError, match="x must have a contiguous last axis"):
        ops.layer_norm(x.T, weight, bias)
    with pytest.raises(ValueError, match="x must have a contiguous last axis"):
        ops.layer_norm(x[:, ::2], weight[:4].copy(), bias[:4].copy())
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        ops.layer_norm(x[:, :4], np.zeros(8, np.float32)[::2], None)
    x3 = np.zeros((4, 5, 8), np.float32)
    with pytest.raises(ValueError, match="leading axes that flatten"):
        ops.layer_norm(x3.transpose(1, 0, 2), weight, bias)


def test_rejects_bad_outputs(rng):
    x, weight, bias = make_inputs(rng, (4, 8))
    with pytest.raises(ValueError, match=r"y must have shape \(4, 8\)"):
        ops.layer_norm(x, weight, bias, out=np.zeros((4, 9), np.float32))
    readonly = np.zeros((4, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="y must be a writable array"):
        ops.layer_norm(x, weight, bias, out=readonly)
    with pytest.raises(ValueError, match="y partly overlaps input x"):
        buffer = np.zeros((5, 8), np.float32)
        buffer[:4] = x
        ops.layer_norm(buffer[:4], weight, bias, out=buffer[1:])
    with pytest.raises(TypeError, match=r"out must be a tuple \(y, mean, rstd\)"):
        ops.layer_norm_forward(x, weight, bias, out=np.zeros_like(x))
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    with pytest.raises(ValueError, match="accumulate=True needs the dweight and dbias"):
        ops.layer_norm_backward(x, x, weight, mean, rstd, accumulate=True)
    shared = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="outputs dweight and dbias share memory"):
        ops.layer_norm_backward(x, x, weight, mean, rstd, out=(None, shared, shared))
    with pytest.raises(ValueError, match="y has rows that overlap"):
        ops.layer_norm(x, weight, bias, out=np.lib.stride_tricks.as_strided(
            np.zeros(16, np.float32), (4, 8), (4, 4)))
