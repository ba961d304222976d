"""The CUDA LayerNorm, GELU and AdamW kernels (csrc/cuda/layer_norm.cu, gelu.cu,
adamw.cu) on the CPU SIMT emulator (the `simt` fixture), against the CPU ops and
float64 NumPy. Shapes reach every kernel variant: rows in registers (C <= 1024)
and long rows, float4 and scalar access (C or the row stride not a multiple of
4, a misaligned pointer), several rows per warp and several blocks of partial
sums in the backward."""

import numpy as np
import pytest

from ssl_core import _C, ops

import reference

# (shape, what it exercises)
LN_SHAPES = [
    (1, 1),          # one column
    (1, 7),          # one row, scalar access, most lanes idle
    (5, 128),        # float4, one chunk a lane
    (2, 3, 768),     # float4, 6 chunks a lane, 3-d leading axes
    (6, 300),        # float4, 3 chunks a lane
    (3, 771),        # scalar, 32 chunks a lane
    (40, 1030),      # scalar long rows; backward: several rows a warp, 3 blocks
    (2, 1500),       # forward float4 in registers (12 chunks), backward float4 long rows
    (2, 2100),       # float4 long rows
]


def make_inputs(rng, shape, loc=0.0, scale=1.0):
    x = (rng.standard_normal(shape) * scale + loc).astype(np.float32)
    C = shape[-1]
    return x, rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)


def device_layer_norm(simt, x, weight, bias, eps=1e-5, y=None):
    y = np.empty_like(x) if y is None else y
    mean = np.empty(x.shape[:-1], np.float32)
    rstd = np.empty(x.shape[:-1], np.float32)
    assert simt.layer_norm_forward(y, mean, rstd, x, weight, bias, eps) is None
    return y, mean, rstd


def device_layer_norm_backward(simt, dy, x, weight, mean, rstd, dweight=None, dbias=None, accumulate=False):
    dx = np.empty_like(x)
    C = x.shape[-1]
    dweight = np.full(C, np.nan, np.float32) if dweight is None else dweight
    dbias = np.full(C, np.nan, np.float32) if dbias is None else dbias
    simt.layer_norm_backward(dx, dweight, dbias, dy, x, weight, mean, rstd, accumulate=accumulate)
    return dx, dweight, dbias


def both_schedules(simt_schedule, run):
    """run() under the forward and the reverse schedule: the results must be
    bit-identical (no races, a fixed reduction order)."""
    results = []
    for schedule in ("forward", "reverse"):
        simt_schedule(schedule)
        results.append(run())
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b)
    return results[0]


# ---------------------------------------------------------------- layer norm --

@pytest.mark.parametrize("shape", LN_SHAPES)
def test_layer_norm_forward_matches_cpu_and_float64(simt, simt_schedule, rng, shape):
    x, weight, bias = make_inputs(rng, shape)
    y, mean, rstd = both_schedules(simt_schedule, lambda: device_layer_norm(simt, x, weight, bias))
    cpu_y, cpu_mean, cpu_rstd = ops.layer_norm_forward(x, weight, bias, eps=1e-5)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    for got, cpu, ref in ((y, cpu_y, ref_y), (mean, cpu_mean, ref_mean), (rstd, cpu_rstd, ref_rstd)):
        assert got.shape == cpu.shape
        np.testing.assert_allclose(got, cpu, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("C", [96, 1100])
def test_layer_norm_without_weight_and_bias(simt, rng, C):
    x, _, _ = make_inputs(rng, (3, C))
    y, mean, rstd = device_layer_norm(simt, x, None, None, eps=1e-6)
    ref_y, _, _ = reference.layer_norm(x, np.ones(C), np.zeros(C), 1e-6)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(y, ops.layer_norm(x, None, None, eps=1e-6), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("loc,scale", [(1e4, 1.0), (-3e3, 1e-2), (0.0, 1e3)])
def test_layer_norm_rows_with_large_mean(simt, rng, loc, scale):
    x, weight, bias = make_inputs(rng, (4, 771), loc, scale)
    y, mean, rstd = device_layer_norm(simt, x, weight, bias)
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    resolution = np.abs(x).max() * 2.0**-23 * ref_rstd.max() * np.abs(weight).max()
    np.testing.assert_allclose(y, ref_y, rtol=0, atol=4 * resolution + 1e-5)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=np.abs(x).max() * 2.0**-22)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-5)


@pytest.mark.parametrize("offset,C", [(0, 200), (1, 200), (3, 1100)])
def test_layer_norm_strided_rows_and_in_place(simt, rng, offset, C):
    """Rows a stride apart (x[:, a:a+C] of a wider array), misaligned by
    `offset` floats (scalar path), and y = x."""
    wide, weight, bias = make_inputs(rng, (5, C + 9))
    x, weight, bias = wide[:, offset:offset + C], weight[:C], bias[:C]
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    y, mean, rstd = device_layer_norm(simt, x, weight, bias)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)
    before = wide.copy()
    device_layer_norm(simt, x, weight, bias, y=x)
    np.testing.assert_array_equal(x, y)
    untouched = np.ones(wide.shape, bool)
    untouched[:, offset:offset + C] = False
    np.testing.assert_array_equal(wide[untouched], before[untouched])


@pytest.mark.parametrize("shape", LN_SHAPES + [(1100, 8), (700, 33)])
def test_layer_norm_backward_matches_cpu_and_float64(simt, simt_schedule, rng, shape):
    # (1100, 8) and (700, 33): several rows per warp and 128 blocks of partials.
    x, weight, bias = make_inputs(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    dx, dweight, dbias = both_schedules(
        simt_schedule, lambda: device_layer_norm_backward(simt, dy, x, weight, mean, rstd))
    cpu_dx, cpu_dweight, cpu_dbias = ops.layer_norm_backward(dy, x, weight, mean, rstd)
    ref_dx, ref_dweight, ref_dbias = reference.layer_norm_backward(dy, x, weight, 1e-5)
    rows = x.size // x.shape[-1]
    for got, cpu, ref, atol in ((dx, cpu_dx, ref_dx, 1e-4), (dweight, cpu_dweight, ref_dweight, 1e-5 * rows),
                                (dbias, cpu_dbias, ref_dbias, 1e-5 * rows)):
        np.testing.assert_allclose(got, cpu, rtol=1e-4, atol=atol)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("C", [64, 1030])
def test_layer_norm_backward_accumulates_in_place_without_weight(simt, rng, C):
    x, _, _ = make_inputs(rng, (9, C))
    dy = rng.standard_normal((9, C)).astype(np.float32)
    _, mean, rstd = ops.layer_norm_forward(x, None, None)
    start_w = rng.standard_normal(C).astype(np.float32)
    start_b = rng.standard_normal(C).astype(np.float32)
    cpu_dx, cpu_dweight, cpu_dbias = ops.layer_norm_backward(dy, x, None, mean, rstd)
    dweight, dbias = start_w.copy(), start_b.copy()
    # dx written over dy (in place), dweight and dbias added to.
    dy_in_place = dy.copy()
    simt.layer_norm_backward(dy_in_place, dweight, dbias, dy_in_place, x, None, mean, rstd, accumulate=True)
    np.testing.assert_allclose(dy_in_place, cpu_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dweight, start_w + cpu_dweight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbias, start_b + cpu_dbias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("C", [64, 1030])
def test_layer_norm_threads_reach_every_barrier(simt, rng, C):
    """Strict barriers: no thread exits while others wait at __syncthreads."""
    x, weight, bias = make_inputs(rng, (70, C))
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    simt.set_strict_barriers(True)
    try:
        dx, dweight, dbias = device_layer_norm_backward(simt, x, x, weight, mean, rstd)
    finally:
        simt.set_strict_barriers(False)
    np.testing.assert_allclose(dbias, x.sum(0), rtol=1e-4, atol=1e-4)


def test_layer_norm_zero_rows(simt):
    x = np.zeros((0, 12), np.float32)
    weight = np.ones(12, np.float32)
    y, mean, rstd = device_layer_norm(simt, x, weight, None)
    assert y.shape == (0, 12) and mean.shape == (0,)
    dx, dweight, dbias = device_layer_norm_backward(simt, x, x, weight, mean, rstd)
    np.testing.assert_array_equal(dweight, 0)
    np.testing.assert_array_equal(dbias, 0)
    dweight, dbias = np.full(12, 2.0, np.float32), np.full(12, 3.0, np.float32)
    device_layer_norm_backward(simt, x, x, weight, mean, rstd, dweight, dbias, accumulate=True)
    np.testing.assert_array_equal(dweight, 2.0)
    np.testing.assert_array_equal(dbias, 3.0)


def test_layer_norm_bad_arguments(simt, rng):
    x, weight, bias = make_inputs(rng, (4, 8))
    y, mean, rstd = np.empty_like(x), np.empty(4, np.float32), np.empty(4, np.float32)
    with pytest.raises(TypeError, match="x"):
        simt.layer_norm_forward(y, mean, rstd, x.astype(np.float64), weight, bias, 1e-5)
    with pytest.raises(TypeError, match="x"):
        simt.layer_norm_forward(y, mean, rstd, [[1.0]], weight, bias, 1e-5)
    with pytest.raises(ValueError, match="y"):
        simt.layer_norm_forward(np.empty((4, 9), np.float32), mean, rstd, x, weight, bias, 1e-5)
    with pytest.raises(ValueError, match="mean"):
        simt.layer_norm_forward(y, np.empty(5, np.float32), rstd, x, weight, bias, 1e-5)
    with pytest.raises(ValueError, match="weight"):
        simt.layer_norm_forward(y, mean, rstd, x, weight[:7], bias, 1e-5)
    with pytest.raises(ValueError, match="x"):
        simt.layer_norm_forward(y, mean, rstd, np.asfortranarray(x), weight, bias, 1e-5)
    with pytest.raises(ValueError, match="eps"):
        simt.layer_norm_forward(y, mean, rstd, x, weight, bias, -1.0)
    with pytest.raises(ValueError, match="eps"):
        simt.layer_norm_forward(y, mean, rstd, x, weight, bias, float("nan"))
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="y"):
        simt.layer_norm_forward(read_only, mean, rstd, x, weight, bias, 1e-5)
    with pytest.raises(ValueError, match="feature"):
        simt.layer_norm_forward(np.empty((4, 0), np.float32), mean, rstd, np.empty((4, 0), np.float32), None, None,
                                1e-5)
    wide = np.zeros((4, 9), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        simt.layer_norm_forward(wide[:, 1:], mean, rstd, wide[:, :8], None, None, 1e-5)
    _, mean, rstd = ops.layer_norm_forward(x, weight, bias)
    dw, db = np.empty(8, np.float32), np.empty(8, np.float32)
    with pytest.raises(ValueError, match="dy"):
        simt.layer_norm_backward(np.empty_like(x), dw, db, x[:3], x, weight, mean, rstd)
    with pytest.raises(TypeError, match="dweight"):
        simt.layer_norm_backward(np.empty_like(x), None, db, x, x, weight, mean, rstd)
    with pytest.raises(ValueError, match="share memory"):
        simt.layer_norm_backward(np.empty_like(x), dw, dw, x, x, weight, mean, rstd)
    with pytest.raises(TypeError, match="rstd"):
        simt.layer_norm_backward(np.empty_like(x), dw, db, x, x, weight, mean, rstd.astype(np.float64))


# ---------------------------------------------------------------------- GELU --

@pytest.mark.parametrize("approximate", ["none", "tanh"])
# Contiguous without a bias: one long row; with a bias: rows sharing a block
# (C = 21, 12), rows over several blocks (C = 2052 float4, 2050 scalar).
@pytest.mark.parametrize("shape,with_bias", [((3, 37), False), ((4, 64), True), ((2, 5, 12), False),
                                             ((3, 21), True), ((300, 12), True), ((2, 2052), True),
                                             ((2, 2050), True)])
def test_gelu_matches_cpu_and_float64(simt, simt_schedule, rng, approximate, shape, with_bias):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32) if with_bias else None

    def run():
        y, dx = np.empty_like(x), np.empty_like(x)
        assert simt.gelu_forward(y, x, bias, approximate) is None
        assert simt.gelu_backward(dx, dy, x, bias, approximate) is None
        return y, dx

    y, dx = both_schedules(simt_schedule, run)
    np.testing.assert_allclose(y, ops.gelu(x, approximate, bias=bias), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, ops.gelu_backward(dy, x, approximate, bias=bias), rtol=1e-5, atol=1e-6)
    v = x.astype(np.float64) + (0 if bias is None else bias)
    np.testing.assert_allclose(y, reference.gelu(v, approximate), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dy * reference.gelu_derivative(v, approximate), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_special_values(simt, approximate):
    x = np.array([0.0, -0.0, 1e-30, -5.0, 5.0, -19.0, 19.0, -25.0, 25.0, -1e30, 1e30, np.inf, -np.inf, np.nan],
                 np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    dy = np.ones_like(x)
    simt.gelu_forward(y, x, None, approximate)
    simt.gelu_backward(dx, dy, x, None, approximate)
    np.testing.assert_allclose(y, ops.gelu(x, approximate), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, ops.gelu_backward(dy, x, approximate), rtol=1e-5, atol=1e-6)
    assert y[11] == np.inf and y[12] == 0 and np.signbit(y[12]) and np.isnan(y[13])
    assert dx[11] == 1 and dx[12] == 0 and np.isnan(dx[13])


@pytest.mark.parametrize("offset", [0, 1])
def test_gelu_strided_rows_and_in_place(simt, rng, offset):
    wide = (rng.standard_normal((6, 50)) * 3).astype(np.float32)
    x = wide[:, offset:offset + 40]
    bias = rng.standard_normal(40).astype(np.float32)
    dy = rng.standard_normal((6, 40)).astype(np.float32)
    expected_y = ops.gelu(x, "tanh", bias=bias)
    expected_dx = ops.gelu_backward(dy, x, "tanh", bias=bias)
    simt.gelu_backward(dy, dy, x, bias, "tanh")  # dx = dy in place
    np.testing.assert_allclose(dy, expected_dx, rtol=1e-5, atol=1e-6)
    before = wide.copy()
    simt.gelu_forward(x, x, bias, "tanh")  # y = x in place
    np.testing.assert_allclose(x, expected_y, rtol=1e-5, atol=1e-6)
    untouched = np.ones(wide.shape, bool)
    untouched[:, offset:offset + 40] = False
    np.testing.assert_array_equal(wide[untouched], before[untouched])


def test_gelu_empty_and_bad_arguments(simt, rng):
    empty = np.zeros((0, 5), np.float32)
    simt.gelu_forward(np.empty_like(empty), empty, None, "none")
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = np.empty_like(x)
    with pytest.raises(ValueError, match="approximate"):
        simt.gelu_forward(y, x, None, "exact")
    with pytest.raises(TypeError, match="approximate"):
        simt.gelu_forward(y, x, None, None)
    with pytest.raises(TypeError, match="x"):
        simt.gelu_forward(y, x.astype(np.float64), None, "none")
    with pytest.raises(ValueError, match="y"):
        simt.gelu_forward(np.empty((3, 7), np.float32), x, None, "none")
    with pytest.raises(ValueError, match="bias"):
        simt.gelu_forward(y, x, np.zeros(7, np.float32), "none")
    with pytest.raises(ValueError, match="x"):
        simt.gelu_forward(np.empty((8, 3), np.float32), x.T, None, "none")
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="dx"):
        simt.gelu_backward(read_only, x, x, None, "none")
    with pytest.raises(ValueError, match="dy"):
        simt.gelu_backward(y, x[:2], x, None, "none")


# --------------------------------------------------------------------- AdamW --

def cpu_adamw(params, m, v, grads, *args):
    params, m, v = params.copy(), m.copy(), v.copy()
    _C.adamw_update(params, grads, m, v, *args)
    return params, m, v


def float64_adamw(params, m, v, grads, lr, beta1, beta2, eps, weight_decay, grad_scale, step):
    """reference_optimizer.cpp: float64 arithmetic on the float32 options."""
    lr, beta1, beta2, eps, weight_decay, grad_scale = (float(np.float32(a)) for a in
                                                       (lr, beta1, beta2, eps, weight_decay, grad_scale))
    p, m, v, g = (a.astype(np.float64) for a in (params, m, v, grads))
    g = g * grad_scale
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - beta2**step) + eps
    return p * (1 - lr * weight_decay) - lr / (1 - beta1**step) * m / denom, m, v


@pytest.mark.parametrize("n,offset", [(1, 0), (1027, 0), (1027, 1), (4096, 0)])
def test_adamw_matches_cpu_and_float64(simt, simt_schedule, rng, n, offset):
    def buffer(scale=1.0, positive=False):
        a = (rng.standard_normal(n + offset) * scale).astype(np.float32)
        return (np.abs(a) if positive else a)[offset:]

    params, m, v, grads = buffer(), buffer(0.1), buffer(0.01, positive=True), buffer()
    for step, decay, grad_scale in ((1, 0.0, 1.0), (7, 0.01, 0.5)):
        args = (1e-3, 0.9, 0.999, 1e-8, decay, grad_scale, step)

        def run():
            p, mm, vv = params.copy(), m.copy(), v.copy()
            if offset:  # keep the misalignment of the views (scalar path)
                p, mm, vv = (np.concatenate([np.zeros(offset, np.float32), a])[offset:] for a in (p, mm, vv))
            assert simt.adamw_update(p, mm, vv, grads, *args) is None
            return p, mm, vv

        got = both_schedules(simt_schedule, run)
        for g, c, r in zip(got, cpu_adamw(params, m, v, grads, *args), float64_adamw(params, m, v, grads, *args)):
            np.testing.assert_allclose(g, c, rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(g, r, rtol=2e-6, atol=1e-7)


def test_adamw_bad_arguments(simt):
    p, m, v, g = (np.zeros(8, np.float32) for _ in range(4))
    good = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0, step=1)
    simt.adamw_update(p, m, v, g, **good)
    simt.adamw_update(*(np.zeros(0, np.float32) for _ in range(4)), **good)
    for name, value in (("step", 0), ("lr", -1.0), ("beta1", 1.0), ("beta2", -0.1), ("eps", 0.0),
                        ("weight_decay", -1.0), ("grad_scale", float("inf"))):
        with pytest.raises(ValueError, match=name):
            simt.adamw_update(p, m, v, g, **{**good, name: value})
    with pytest.raises(TypeError, match="grads"):
        simt.adamw_update(p, m, v, g.astype(np.float64), **good)
    with pytest.raises(ValueError, match="m"):
        simt.adamw_update(p, np.zeros(7, np.float32), v, g, **good)
    with pytest.raises(ValueError, match="params"):
        simt.adamw_update(np.zeros((2, 4), np.float32), m, v, g, **good)
    with pytest.raises(ValueError, match="grads"):
        simt.adamw_update(p, m, v, p, **good)
    read_only = np.zeros(8, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="v"):
        simt.adamw_update(p, m, read_only, g, **good)
