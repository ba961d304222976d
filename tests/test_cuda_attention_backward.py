"""The CUDA attention backward kernel (csrc/cuda/attention_backward.cu) on the
CPU emulator (ssl_core._simt): dq, dk, dv against the CPU op
ssl_core.ops.attention_backward given the same forward results (out, lse from
the CPU forward), for every mask kind alone and combined, dropout, partial
tiles, Tq != Tk, T = 1, fully masked rows and several head dims; the
deterministic dq path against itself (bit for bit, both schedules) and the
atomic one; the gradient against central differences of a float64 NumPy
forward; bad arguments.

The kernel tiles 32 keys x 32 queries: lengths 1, 31, 33, 37, 40, 73, 100, 130
leave partial tiles, Tk - Tq = 1 (mod 32) puts the causal diagonal one query
into a tile, and head dims 1, 5, 16, 24, 33, 100, 128 exercise every padded
width (16, 32, 64, 128).
Shapes stay small: every CUDA thread is an emulated fiber.
"""

import numpy as np
import pytest

from ssl_core import ops

import reference

TOL = 1e-4  # float32 gradients: sums of Tq or Tk products of D-term dot products


def make_inputs(rng, B, Tq, Tk, H, D, magnitude=1.0):
    q = (magnitude * rng.standard_normal((B, Tq, H, D))).astype(np.float32)
    k = (magnitude * rng.standard_normal((B, Tk, H, D))).astype(np.float32)
    v = rng.standard_normal((B, Tk, H, D)).astype(np.float32)
    dout = rng.standard_normal((B, Tq, H, D)).astype(np.float32)
    return q, k, v, dout


def assert_close(got, want, tol=TOL, name=""):
    """float32 results against each other: errors grow with the largest value."""
    size = max(np.abs(want[np.isfinite(want)]).max(initial=0.0), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * size, err_msg=name)


def four_d(options):
    """Options for the device binding: integer lengths as int64, the mask as a
    4-D bool array (length-1 axes broadcast), what the CPU op accepts too."""
    out = dict(options)
    for name in ("key_lengths", "prefix_lengths"):
        if out.get(name) is not None:
            out[name] = np.ascontiguousarray(out[name], dtype=np.int64)
    if out.get("mask") is not None:
        mask = np.asarray(out["mask"])
        out["mask"] = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return out


def device_backward(simt, dout, q, k, v, out, lse, scale=None, grads=None, deterministic=False, **options):
    """simt.attention_backward into fresh NaN-filled gradients (or `grads`)."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    if grads is None:
        grads = tuple(np.full(x.shape, np.nan, np.float32) for x in (q, k, v))
    simt.attention_backward(*grads, dout, q, k, v, out, lse, scale, deterministic=deterministic, **options)
    return grads


def check(simt, rng, B, Tq, Tk, H, D, deterministic=False, magnitude=1.0, **options):
    """The device gradients against the CPU op's, fed the same out and lse."""
    options = four_d(options)
    q, k, v, dout = make_inputs(rng, B, Tq, Tk, H, D, magnitude)
    out, lse = ops.attention_forward(q, k, v, **options)
    want = ops.attention_backward(dout, q, k, v, out, lse, **options)
    got = device_backward(simt, dout, q, k, v, out, lse, deterministic=deterministic, **options)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert np.isfinite(g).all(), name
        assert_close(g, w, name=name)
    return got, (q, k, v, dout, out, lse, options)


def lengths(rng, B, Tk):
    """Per-batch lengths in [0, Tk]: one full, one empty, the rest random."""
    return np.concatenate([[Tk, 0], rng.integers(0, Tk + 1, B - 2)]).astype(np.int64)


MASK_CASES = {
    "none": lambda rng, B, H, Tq, Tk: dict(),
    "causal": lambda rng, B, H, Tq, Tk: dict(causal=True),
    "key_lengths": lambda rng, B, H, Tq, Tk: dict(key_lengths=lengths(rng, B, Tk)),
    "prefix": lambda rng, B, H, Tq, Tk: dict(prefix_lengths=lengths(rng, B, Tk)),
    "prefix_causal": lambda rng, B, H, Tq, Tk: dict(causal=True, prefix_lengths=lengths(rng, B, Tk)),
    "mask_full": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((B, H, Tq, Tk)) < 0.7),
    "mask_2d": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((Tq, Tk)) < 0.5),
    "mask_per_key": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((B, 1, 1, Tk)) < 0.8),
    "mask_per_query": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((1, H, Tq, 1)) < 0.8),
    "mask_transposed_view": lambda rng, B, H, Tq, Tk: dict(
        mask=(rng.random((H, B, Tk, Tq)) < 0.6).transpose(1, 0, 3, 2)),
    "causal_lengths_mask": lambda rng, B, H, Tq, Tk: dict(
        causal=True, key_lengths=lengths(rng, B, Tk), mask=rng.random((B, 1, Tq, Tk)) < 0.9),
    "prefix_lengths_mask": lambda rng, B, H, Tq, Tk: dict(
        prefix_lengths=lengths(rng, B, Tk), key_lengths=lengths(rng, B, Tk)[::-1].copy(),
        mask=rng.random((B, H, 1, Tk)) < 0.9),
}


@pytest.mark.parametrize("deterministic", [False, True])
# Tk - Tq = 1 mod 32: the diagonal one query into a tile.
@pytest.mark.parametrize("Tq,Tk", [(40, 73), (64, 33), (1, 37)])
@pytest.mark.parametrize("case", MASK_CASES)
def test_masks_match_cpu(simt, rng, case, Tq, Tk, deterministic):
    B, H, D = 3, 2, 16
    check(simt, rng, B, Tq, Tk, H, D, deterministic, **MASK_CASES[case](rng, B, H, Tq, Tk))


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("D", [1, 5, 33, 100, 128])
def test_head_dims(simt, rng, D, deterministic):
    check(simt, rng, 1, 40, 35, 2, D, deterministic, causal=True, key_lengths=np.array([30], np.int64))


@pytest.mark.parametrize("B,Tq,Tk,H", [(1, 1, 1, 1), (2, 1, 50, 2), (1, 50, 1, 2), (1, 31, 33, 1), (2, 64, 64, 1),
                                       (1, 130, 100, 1)])
def test_shapes(simt, rng, B, Tq, Tk, H):
    check(simt, rng, B, Tq, Tk, H, 24)
    check(simt, rng, B, Tq, Tk, H, 24, causal=True)
    check(simt, rng, B, Tq, Tk, H, 24, True, causal=True)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("case", ["none", "causal_lengths_mask", "prefix_lengths_mask"])
def test_dropout_matches_cpu(simt, rng, case, deterministic):
    """The same seed drops the same weights as the CPU op (philox.h)."""
    B, H, Tq, Tk = 3, 2, 37, 45
    options = MASK_CASES[case](rng, B, H, Tq, Tk)
    check(simt, rng, B, Tq, Tk, H, 16, deterministic, dropout_p=0.3, seed=2**40 + 7, **options)


def test_dropout_changes_the_gradients(simt, rng):
    """Dropout is applied at all, and the seed matters."""
    q, k, v, dout = make_inputs(rng, 1, 20, 20, 1, 8)
    out, lse = ops.attention_forward(q, k, v)
    plain = device_backward(simt, dout, q, k, v, out, lse)
    dropped = device_backward(simt, dout, q, k, v, out, lse, dropout_p=0.5, seed=3)
    other_seed = device_backward(simt, dout, q, k, v, out, lse, dropout_p=0.5, seed=4)
    assert not np.allclose(plain[2], dropped[2]) and not np.allclose(dropped[2], other_seed[2])


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("B,Tq,Tk", [(0, 5, 5), (2, 0, 7), (2, 6, 0)])
def test_empty_dimensions(simt, rng, B, Tq, Tk, deterministic):
    """No batch, no queries or no keys: zeros where there is something to
    fill (no key: dq = 0; no query: dk = dv = 0)."""
    q, k, v, dout = make_inputs(rng, B, Tq, Tk, 2, 16)
    out, lse = ops.attention_forward(q, k, v, causal=True, dropout_p=0.1)
    got = device_backward(simt, dout, q, k, v, out, lse, deterministic=deterministic, causal=True, dropout_p=0.1)
    for g, like in zip(got, (q, k, v)):
        assert g.shape == like.shape and not g.any()


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_fully_masked_rows(simt, rng, dropout_p, deterministic):
    """Rows with no allowed key (lse = +inf) get dq = 0 and add nothing; keys
    no query sees get dk = dv = 0; nothing is NaN, whatever padding holds."""
    B, Tq, Tk, H, D = 3, 50, 33, 2, 16
    mask = np.ones((B, H, Tq, Tk), bool)
    mask[2, 1, ::3] = False
    options = dict(causal=True, key_lengths=np.array([33, 0, 20]), mask=mask, dropout_p=dropout_p, seed=7)
    (dq, dk, dv), (q, k, v, dout, out, lse, options) = check(simt, rng, B, Tq, Tk, H, D, deterministic, **options)
    allowed = reference.attention_allowed(B, H, Tq, Tk, True, options["key_lengths"], None, mask)
    empty_rows, unseen_keys = ~allowed.any(-1), ~allowed.any(-2)
    assert empty_rows.any() and unseen_keys.any()
    assert not dq.transpose(0, 2, 1, 3)[empty_rows].any()
    assert not dk.transpose(0, 2, 1, 3)[unseen_keys].any()
    assert not dv.transpose(0, 2, 1, 3)[unseen_keys].any()
    # Keys past key_lengths are padding, never read: NaN and inf there change no bit.
    k2, v2 = k.copy(), v.copy()
    k2[2, 20:], v2[2, 20:] = np.nan, np.inf
    got = device_backward(simt, dout, q, k2, v2, out, lse, deterministic=deterministic, **options)
    for g, w in zip(got, (dq, dk, dv)):
        np.testing.assert_array_equal(g, w)


def test_lengths_are_clamped_on_the_device(simt, rng):
    """Lengths come from device memory, unchecked by the binding on a GPU: the
    kernel clamps them to [0, Tk], and reads no key past Tk (k and v are views
    of longer arrays whose extra rows are NaN)."""
    B, Tq, Tk, H, D = 2, 20, 30, 1, 8
    q, k, v, dout = make_inputs(rng, B, Tq, Tk, H, D)
    clamped = dict(key_lengths=np.array([0, Tk], np.int64), prefix_lengths=np.array([Tk, 0], np.int64))
    out, lse = ops.attention_forward(q, k, v, **clamped)
    want = ops.attention_backward(dout, q, k, v, out, lse, **clamped)
    k_long, v_long = (np.full((B, Tk + 5, H, D), np.nan, np.float32) for _ in range(2))
    k_long[:, :Tk], v_long[:, :Tk] = k, v
    raw = dict(key_lengths=np.array([-5, Tk + 9], np.int64), prefix_lengths=np.array([Tk + 1, -1], np.int64))
    for deterministic in (False, True):
        try:
            got = device_backward(simt, dout, q, k_long[:, :Tk], v_long[:, :Tk], out, lse,
                                  deterministic=deterministic, **raw)
        except ValueError:
            pytest.skip("the binding rejects out-of-range lengths before the kernel sees them")
        for g, w in zip(got, want):
            assert_close(g, w)


def test_large_scores(simt, rng):
    """Scores near +-1e4: exp(s - lse) neither overflows nor turns NaN."""
    B, T, H, D = 1, 40, 2, 16
    q = rng.integers(-1, 2, (B, T, H, D)).astype(np.float32)
    k = rng.integers(-1, 2, (B, T, H, D)).astype(np.float32)
    v = rng.standard_normal((B, T, H, D)).astype(np.float32)
    q[..., 0] = rng.choice([-100.0, 100.0], (B, T, H))
    k[..., 0] = 100.0
    k[:, ::5, 1, 0] = -100.0
    dout = rng.standard_normal(q.shape).astype(np.float32)
    options = dict(causal=True, scale=1.0)
    out, lse = ops.attention_forward(q, k, v, **options)
    want = ops.attention_backward(dout, q, k, v, out, lse, **options)
    got = device_backward(simt, dout, q, k, v, out, lse, **options)
    for g, w in zip(got, want):
        assert np.isfinite(g).all()
        assert_close(g, w, tol=1e-3)


def test_strided_inputs_and_outputs(simt, rng):
    """q, k, v slices of one fused (B, T, 3, H, D) array; gradients written
    into slices of one (B, T, 3, H, D) gradient array; untouched elsewhere."""
    B, T, H, D = 2, 40, 2, 16
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dout = rng.standard_normal((B, T, 2, H, D)).astype(np.float32)[:, :, 1]
    options = dict(causal=True, key_lengths=np.array([40, 27], np.int64), dropout_p=0.2, seed=11)
    out, lse = ops.attention_forward(q, k, v, **options)
    want = ops.attention_backward(dout, q, k, v, out, lse, **options)
    dqkv = np.full((B, T, 3, H, D), 7.0, np.float32)
    for deterministic in (False, True):
        grads = (dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2])
        device_backward(simt, dout, q, k, v, out, lse, grads=grads, deterministic=deterministic, **options)
        for g, w in zip(grads, want):
            assert_close(g, w)


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_deterministic_is_bit_identical(simt, simt_schedule, rng, dropout_p):
    """deterministic=True: repeated calls and both schedules give the same
    bits, within tolerance of the atomic path (and of the CPU op)."""
    B, Tq, Tk, H, D = 2, 70, 45, 2, 16
    options = dict(causal=True, prefix_lengths=np.array([10, 3], np.int64), dropout_p=dropout_p, seed=5)
    first, (q, k, v, dout, out, lse, options) = check(simt, rng, B, Tq, Tk, H, D, True, **options)
    again = device_backward(simt, dout, q, k, v, out, lse, deterministic=True, **options)
    simt_schedule("reverse")
    reverse = device_backward(simt, dout, q, k, v, out, lse, deterministic=True, **options)
    atomic_reverse = device_backward(simt, dout, q, k, v, out, lse, **options)
    simt_schedule("forward")
    atomic = device_backward(simt, dout, q, k, v, out, lse, **options)
    for a, b, c, d, e in zip(first, again, reverse, atomic, atomic_reverse):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert_close(d, a)
        assert_close(e, a)
    # dk and dv never use atomics: identical on both paths and schedules.
    for a, d, e in zip(first[1:], atomic[1:], atomic_reverse[1:]):
        np.testing.assert_array_equal(a, d)
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("options", [
    dict(),
    dict(causal=True, scale=0.8),
    dict(key_lengths=np.array([4, 0]), prefix_lengths=np.array([2, 3]), dropout_p=0.3, seed=99),
    dict(mask=np.array([[True, False, True, True], [False, False, False, False], [True, True, False, True]]),
         causal=True, dropout_p=0.5, seed=2**40 + 1),
])
def test_finite_differences(simt, rng, options):
    """The kernel's gradient of sum(dout * attention(q, k, v)) against central
    differences of the float64 NumPy forward (tests/reference.py), fed that
    forward's out and lse."""
    options = four_d(options)
    B, Tq, Tk, H, D = 2, 3, 4, 2, 3
    q, k, v, dout = make_inputs(rng, B, Tq, Tk, H, D)
    scale = options.pop("scale", 1 / np.sqrt(D))
    ref_options = dict(options, scale=scale)
    out, lse = reference.attention(q, k, v, **ref_options)

    def loss(q, k, v):
        return float((dout * reference.attention(q, k, v, **ref_options)[0]).sum())

    numeric = reference.central_differences(loss, [a.astype(np.float64) for a in (q, k, v)], h=1e-6)
    for deterministic in (False, True):
        got = device_backward(simt, dout, q, k, v, out.astype(np.float32), lse.astype(np.float32), scale=scale,
                              deterministic=deterministic, **options)
        for g, n in zip(got, numeric):
            np.testing.assert_allclose(g, n, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------- bad inputs --

@pytest.fixture
def small(rng):
    q, k, v, dout = make_inputs(rng, 2, 5, 6, 2, 8)
    out, lse = ops.attention_forward(q, k, v)
    grads = tuple(np.zeros_like(x) for x in (q, k, v))
    return grads, (dout, q, k, v, out, lse)


def call(simt, grads, inputs, **options):
    simt.attention_backward(*grads, *inputs, 0.5, **options)


def test_rejects_wrong_dtypes(simt, small):
    grads, inputs = small
    with pytest.raises(TypeError, match="dq"):
        call(simt, (grads[0].astype(np.float64),) + grads[1:], inputs)
    with pytest.raises(TypeError, match="q"):
        call(simt, grads, (inputs[0], inputs[1].astype(np.float64)) + inputs[2:])
    with pytest.raises(TypeError, match="lse"):
        call(simt, grads, inputs[:5] + (inputs[5].astype(np.float64),))
    with pytest.raises(TypeError):
        call(simt, grads, ("not an array",) + inputs[1:])
    with pytest.raises(TypeError, match="mask"):
        call(simt, grads, inputs, mask=np.ones((2, 2, 5, 6), np.float32))


def test_rejects_wrong_shapes(simt, small):
    grads, inputs = small
    dout, q, k, v, out, lse = inputs
    with pytest.raises(ValueError, match="dk"):
        call(simt, (grads[0], grads[1][:, :5], grads[2]), inputs)
    with pytest.raises(ValueError, match="dout"):
        call(simt, grads, (dout[:, :4], q, k, v, out, lse))
    with pytest.raises(ValueError, match="lse"):
        call(simt, grads, (dout, q, k, v, out, lse[:, :, :4]))
    with pytest.raises(ValueError, match="v"):
        call(simt, grads, (dout, q, k, v[:, :5], out, lse))
    with pytest.raises(ValueError, match="key_lengths"):
        call(simt, grads, inputs, key_lengths=np.array([1, 2, 3], np.int64))
    with pytest.raises(ValueError, match="mask"):
        call(simt, grads, inputs, mask=np.ones((2, 2, 5, 7), bool))


def test_rejects_head_dim_above_128(simt, rng):
    q, k, v, dout = make_inputs(rng, 1, 2, 2, 1, 129)
    out, lse = np.zeros_like(q), np.zeros((1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="128"):
        device_backward(simt, dout, q, k, v, out, lse)


def test_rejects_non_contiguous_last_axis_and_read_only_outputs(simt, small):
    grads, inputs = small
    dout, q, k, v, out, lse = inputs
    wide = np.zeros(q.shape[:-1] + (16,), np.float32)
    with pytest.raises(ValueError, match="q"):
        call(simt, grads, (dout, wide[..., ::2], k, v, out, lse))
    wide = np.zeros(grads[0].shape[:-1] + (16,), np.float32)
    with pytest.raises(ValueError, match="dq"):
        call(simt, (wide[..., ::2],) + grads[1:], inputs)
    with pytest.raises(ValueError, match="dq"):
        call(simt, (q,) + grads[1:], inputs)  # in place
    read_only = grads[2].copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="dv"):
        call(simt, grads[:2] + (read_only,), inputs)
