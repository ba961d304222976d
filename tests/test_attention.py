import math

import numpy as np
import pytest

import ssl_core
from ssl_core import ops

import reference

# (B, Tq, Tk, H, D). The kernel tiles 64 queries by 64..256 keys: lengths of 1,
# 7, 63, 65, 130, 257 and 300 leave partial blocks, Tq and Tk differ both ways,
# and D = 24 and 72 are not multiples of a SIMD vector of 16 floats.
SHAPES = [
    (1, 1, 1, 1, 16),
    (2, 7, 7, 2, 32),
    (1, 63, 65, 2, 64),
    (2, 65, 63, 1, 80),
    (1, 130, 257, 2, 128),
    (1, 257, 130, 1, 64),
    (2, 1, 300, 2, 32),
    (1, 300, 1, 1, 16),
    (1, 64, 256, 1, 24),
    (2, 129, 192, 1, 72),
]

# out is a convex combination of rows of v (scaled by 1 / (1 - p) under
# dropout), computed in float32 with D-term dot products.
FORWARD_TOL = 1e-5
# Gradients sum Tq or Tk float32 products of D-term dot products, and
# dS = P * (dP - rowsum(P * dP)) cancels, so they carry a few more roundings.
BACKWARD_TOL = 1e-4


def make_inputs(rng, B, Tq, Tk, H, D):
    q = rng.standard_normal((B, Tq, H, D)).astype(np.float32)
    k = rng.standard_normal((B, Tk, H, D)).astype(np.float32)
    v = rng.standard_normal((B, Tk, H, D)).astype(np.float32)
    return q, k, v


def assert_close(got, want, tol):
    """float32 results against float64 ones: rounding errors grow with the largest value."""
    size = max(np.abs(want[np.isfinite(want)]).max(initial=0.0), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * size)


def check_forward(q, k, v, **options):
    """Runs attention_forward and holds out and lse to the float64 reference."""
    out, lse = ops.attention_forward(q, k, v, **options)
    ref_out, ref_lse = reference.attention(q, k, v, **options)
    B, Tq, H, _ = q.shape
    assert out.shape == q.shape and out.dtype == np.float32
    assert lse.shape == (B, H, Tq) and lse.dtype == np.float32 and lse.flags.c_contiguous
    assert_close(out, ref_out, FORWARD_TOL)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)
    return out, lse


def check_backward(rng, q, k, v, **options):
    """Runs forward and backward and holds dq, dk, dv to the float64 reference."""
    out, lse = ops.attention_forward(q, k, v, **options)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = ops.attention_backward(dout, q, k, v, out, lse, **options)
    ref_grads = reference.attention_backward(dout, q, k, v, **options)
    for name, got, want, like in zip(("dq", "dk", "dv"), grads, ref_grads, (q, k, v)):
        assert got.shape == like.shape and got.dtype == np.float32, name
        assert_close(got, want, BACKWARD_TOL)
    return grads


def lengths(rng, B, Tk):
    """Per-batch lengths in [0, Tk]: one full, one empty, the rest random."""
    return np.concatenate([[Tk, 0], rng.integers(0, Tk + 1, B - 2)])


# Every kind of mask, alone and combined; each builds its arguments for (B, H, Tq, Tk).
MASK_CASES = {
    "causal": lambda rng, B, H, Tq, Tk: dict(causal=True),
    "key_lengths": lambda rng, B, H, Tq, Tk: dict(key_lengths=lengths(rng, B, Tk)),
    "key_lengths_int32": lambda rng, B, H, Tq, Tk: dict(key_lengths=lengths(rng, B, Tk).astype(np.int32)),
    "prefix": lambda rng, B, H, Tq, Tk: dict(prefix_lengths=lengths(rng, B, Tk)),
    "prefix_causal": lambda rng, B, H, Tq, Tk: dict(causal=True, prefix_lengths=lengths(rng, B, Tk)),
    "mask_full": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((B, H, Tq, Tk)) < 0.7),
    "mask_2d": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((Tq, Tk)) < 0.5),
    "mask_1d": lambda rng, B, H, Tq, Tk: dict(mask=rng.random(Tk) < 0.5),
    "mask_per_key": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((B, 1, 1, Tk)) < 0.8),
    "mask_per_query": lambda rng, B, H, Tq, Tk: dict(mask=rng.random((1, H, Tq, 1)) < 0.8),
    "mask_scalar": lambda rng, B, H, Tq, Tk: dict(mask=np.array(False)),
    "mask_transposed_view": lambda rng, B, H, Tq, Tk: dict(
        mask=(rng.random((H, B, Tk, Tq)) < 0.6).transpose(1, 0, 3, 2)),
    "causal_lengths_mask": lambda rng, B, H, Tq, Tk: dict(
        causal=True, key_lengths=lengths(rng, B, Tk), mask=rng.random((B, 1, Tq, Tk)) < 0.9),
    "prefix_lengths_mask": lambda rng, B, H, Tq, Tk: dict(
        prefix_lengths=lengths(rng, B, Tk), key_lengths=lengths(rng, B, Tk)[::-1].copy(),
        mask=rng.random((B, H, 1, Tk)) < 0.9),
}


# ------------------------------------------------- the float64 reference --

PHILOX_KNOWN_ANSWERS = [  # Random123's kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    words = reference.philox4x32_10(counter, key)
    assert all(w.dtype == np.uint32 for w in words)
    assert tuple(int(w) for w in words) == expected


def test_philox_vectorizes_over_counters():
    counters = [np.array(c, np.uint32) for c in zip(*(answer[0] for answer in PHILOX_KNOWN_ANSWERS))]
    keys = [np.array(k, np.uint32) for k in zip(*(answer[1] for answer in PHILOX_KNOWN_ANSWERS))]
    words = reference.philox4x32_10(counters, keys)
    np.testing.assert_array_equal(np.stack(words, axis=1), [answer[2] for answer in PHILOX_KNOWN_ANSWERS])


@pytest.mark.parametrize("counter,key,expected", PHILOX_KNOWN_ANSWERS)
def test_kernel_philox_known_answers(counter, key, expected):
    assert tuple(ssl_core._C.philox4x32(counter, key[0] | key[1] << 32)) == expected


def test_kernel_philox_matches_reference(rng):
    counters = rng.integers(0, 2**32, (50, 4), dtype=np.uint64)
    keys = rng.integers(0, 2**64 - 1, 50, dtype=np.uint64, endpoint=True)
    for counter, key in zip(counters.tolist(), keys.tolist()):
        expected = reference.philox4x32_10(counter, (key & 0xFFFFFFFF, key >> 32))
        assert tuple(ssl_core._C.philox4x32(counter, key)) == tuple(int(w) for w in expected)


@pytest.mark.parametrize("seed", [0, 12345, 2**32 + 5, 2**64 - 1])
def test_reference_keep_mask_follows_its_definition(rng, seed):
    B, H, Tq, Tk, p = 2, 3, 5, 11, 0.3
    keep = reference.attention_keep(B, H, Tq, Tk, p, seed)
    assert keep.shape == (B, H, Tq, Tk) and keep.dtype == bool
    threshold = math.floor(p * 2**32)
    for b, h, i, j in np.ndindex(keep.shape):
        word = reference.philox4x32_10((j // 4, i, h, b), (seed % 2**32, seed // 2**32))[j % 4]
        assert keep[b, h, i, j] == (int(word) >= threshold)
    assert reference.attention_keep(B, H, Tq, Tk, 0.0, seed).all()


@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
@pytest.mark.parametrize("case", ["causal_lengths_mask", "prefix_lengths_mask", "prefix_causal"])
def test_reference_matches_the_definition_row_by_row(rng, case, dropout_p):
    """The vectorized reference against a literal, scalar reading of the spec."""
    B, Tq, Tk, H, D, seed = 3, 5, 9, 2, 4, 2**33 + 17
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    options = MASK_CASES[case](rng, B, H, Tq, Tk)
    out, lse = reference.attention(q, k, v, **options, scale=0.7, dropout_p=dropout_p, seed=seed)
    mask = np.broadcast_to(options.get("mask", True), (B, H, Tq, Tk))
    key_lengths = options.get("key_lengths", [Tk] * B)
    prefix_lengths = options.get("prefix_lengths")
    for b, h, i in np.ndindex(B, H, Tq):
        allowed = []
        for j in range(Tk):
            visible = True
            if options.get("causal") or prefix_lengths is not None:
                visible = j <= i + Tk - Tq or (prefix_lengths is not None and j < prefix_lengths[b])
            if j < key_lengths[b] and mask[b, h, i, j] and visible:
                allowed.append(j)
        if not allowed:
            assert lse[b, h, i] == np.inf and not out[b, i, h].any()
            continue
        scores = [0.7 * float(np.dot(q[b, i, h].astype(float), k[b, j, h].astype(float))) for j in allowed]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        expected = np.zeros(D)
        for j, weight in zip(allowed, weights):
            word = reference.philox4x32_10((j // 4, i, h, b), (seed % 2**32, seed // 2**32))[j % 4]
            if int(word) >= math.floor(dropout_p * 2**32):
                expected += weight / sum(weights) / (1 - dropout_p) * v[b, j, h].astype(float)
        np.testing.assert_allclose(out[b, i, h], expected, rtol=1e-12, atol=1e-12)
        assert lse[b, h, i] == pytest.approx(top + math.log(sum(weights)), rel=1e-12)


def numeric_gradients(dout, q, k, v, h=1e-6, **options):
    """Central differences of sum(dout * reference.attention(q, k, v)[0]),
    one input coordinate at a time."""
    args = [a.astype(np.float64) for a in (q, k, v)]

    def loss(q, k, v):
        return float((dout * reference.attention(q, k, v, **options)[0]).sum())

    return reference.central_differences(loss, args, h)


TINY_CASES = [
    dict(),
    dict(causal=True, scale=0.8),
    dict(key_lengths=np.array([4, 0]), prefix_lengths=np.array([2, 3]), dropout_p=0.3, seed=99),
    dict(mask=np.array([[True, False, True, True], [False, False, False, False], [True, True, False, True]]),
         causal=True, dropout_p=0.5, seed=2**40 + 1),
]


@pytest.mark.parametrize("options", TINY_CASES)
def test_reference_backward_matches_finite_differences(rng, options):
    q, k, v = make_inputs(rng, 2, 3, 4, 2, 3)
    dout = rng.standard_normal(q.shape)
    got = reference.attention_backward(dout, q, k, v, **options)
    for g, numeric in zip(got, numeric_gradients(dout, q, k, v, **options)):
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------- forward --

@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64(cpu_isa, rng, shape):
    check_forward(*make_inputs(rng, *shape))


@pytest.mark.parametrize("scale", [0.0, 0.37, -2.0])
def test_forward_and_backward_with_explicit_scale(cpu_isa, rng, scale):
    q, k, v = make_inputs(rng, 2, 33, 70, 2, 16)
    check_forward(q, k, v, scale=scale, causal=True)
    check_backward(rng, q, k, v, scale=scale, causal=True)


def test_attention_returns_out_only(rng):
    q, k, v = make_inputs(rng, 2, 9, 12, 2, 16)
    out, _ = ops.attention_forward(q, k, v, causal=True, dropout_p=0.2, seed=3)
    np.testing.assert_array_equal(ops.attention(q, k, v, causal=True, dropout_p=0.2, seed=3), out)


@pytest.mark.parametrize("Tq,Tk", [(1, 257), (63, 130), (130, 65)])
@pytest.mark.parametrize("case", MASK_CASES)
def test_masks_forward_and_backward(cpu_isa, rng, case, Tq, Tk):
    B, H, D = 3, 2, 32
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    options = MASK_CASES[case](rng, B, H, Tq, Tk)
    check_forward(q, k, v, **options)
    check_backward(rng, q, k, v, **options)


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_masks_mostly_true(cpu_isa, rng, causal):
    """Masks whose tiles are wholly True (no elementwise masking), partly True
    and wholly False side by side, along keys contiguous and strided."""
    B, Tq, Tk, H, D = 2, 150, 300, 2, 32
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    mask = np.ones((B, H, Tq, Tk), bool)
    mask[0, 1, 140, 290] = False           # one pair in a far corner tile
    mask[1, 0, :, 130:260] = False         # whole key blocks
    mask[1, 1, 64:128] = rng.random((64, Tk)) < 0.5
    for m in (mask, np.asfortranarray(mask)):  # keys contiguous, then strided
        options = dict(mask=m, causal=causal, key_lengths=np.array([Tk, 280]))
        check_forward(q, k, v, **options)
        check_backward(rng, q, k, v, **options)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_rows_with_no_allowed_key(cpu_isa, rng, dropout_p):
    """Empty rows give out = 0 and lse = +inf, get dq = 0 and add nothing to
    dk, dv; keys no query may see get dk = dv = 0. Nothing is NaN."""
    B, Tq, Tk, H, D = 3, 70, 40, 2, 32
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    mask = np.ones((B, H, Tq, Tk), bool)
    mask[2, 1, ::3] = False
    # With Tq > Tk the causal diagonal leaves the first Tq - Tk queries no key.
    options = dict(causal=True, key_lengths=np.array([40, 0, 25]), mask=mask, dropout_p=dropout_p, seed=7)
    allowed = reference.attention_allowed(B, H, Tq, Tk, True, options["key_lengths"], None, mask)
    empty_rows = ~allowed.any(-1)  # (B, H, Tq)
    unseen_keys = ~allowed.any(-2)  # (B, H, Tk)
    out, lse = check_forward(q, k, v, **options)
    dq, dk, dv = check_backward(rng, q, k, v, **options)
    for array in (out, dq, dk, dv):
        assert np.isfinite(array).all()
    assert not out.transpose(0, 2, 1, 3)[empty_rows].any()
    assert np.isposinf(lse[empty_rows]).all() and np.isfinite(lse[~empty_rows]).all()
    assert not dq.transpose(0, 2, 1, 3)[empty_rows].any()
    assert not dk.transpose(0, 2, 1, 3)[unseen_keys].any()
    assert not dv.transpose(0, 2, 1, 3)[unseen_keys].any()


@pytest.mark.parametrize("B,Tq,Tk", [(0, 5, 5), (2, 0, 7), (2, 6, 0)])
def test_empty_dimensions(cpu_isa, rng, B, Tq, Tk):
    """No batch, no queries or no keys: empty results, or zeros where there
    is something to fill (no key: out = 0, lse = +inf, dq = 0)."""
    H, D = 2, 16
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    out, lse = ops.attention_forward(q, k, v, causal=True, dropout_p=0.1)
    assert out.shape == q.shape and lse.shape == (B, H, Tq)
    assert not out.any() and np.isposinf(lse).all()
    dout = rng.standard_normal(q.shape).astype(np.float32)
    dq, dk, dv = ops.attention_backward(dout, q, k, v, out, lse, causal=True, dropout_p=0.1)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert not dq.any() and not dk.any() and not dv.any()


def test_large_scores_do_not_overflow(cpu_isa, rng):
    """Scores near +1e4 (exp overflows) and rows whose every score is near -1e4
    (exp underflows). Integer inputs and scale = 1 make every score an exact
    float32 integer, a few units apart within a row."""
    B, T, H, D = 2, 130, 2, 32
    q = rng.integers(-1, 2, (B, T, H, D)).astype(np.float32)
    k = rng.integers(-1, 2, (B, T, H, D)).astype(np.float32)
    v = rng.standard_normal((B, T, H, D)).astype(np.float32)
    q[..., 0] = rng.choice([-100.0, 100.0], (B, T, H))
    k[..., 0] = 100.0
    k[:, ::5, 1, 0] = -100.0  # head 1: keys 2e4 apart in one row
    options = dict(causal=True, scale=1.0)
    out, lse = ops.attention_forward(q, k, v, **options)
    ref_out, ref_lse = reference.attention(q, k, v, **options)
    assert np.abs(ref_lse).max() > 9000 and ref_lse.min() < -9000
    # float32 resolves a score of 1e4 only to 2^-24 * 1e4 = 6e-4, and exp turns
    # that absolute error in a score into a relative error in P.
    resolution = np.abs(ref_lse).max() * 2.0**-24
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=(4 * resolution + FORWARD_TOL) * np.abs(v).max())
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=4 * resolution)

    dout = rng.standard_normal(out.shape).astype(np.float32)
    dq, dk, dv = ops.attention_backward(dout, q, k, v, out, lse, **options)
    ref_dq, ref_dk, ref_dv = reference.attention_backward(dout, q, k, v, **options)
    # The backward recomputes P = exp(s - lse) from the float32 lse, which at
    # |lse| ~ 1e4 is itself rounded by up to that resolution. The relative error
    # in P carries into dS = P * (dP - rowsum(P * dP)), and dq = dS k and
    # dk = dS^T q sum it against |k|, |q| ~ 100 (rows of dS sum to 0, so the
    # large components cancel in the exact result but not in the error).
    ds = np.abs(reference.attention_score_gradient(dout, q, k, v, **options))
    dp_size = np.abs(dout).sum(-1).max() * np.abs(v).max()  # bounds |dP| and rowsum(P * dP)
    ds_size = max(ds.sum(-1).max(), ds.sum(-2).max()) + 2 * dp_size * resolution
    for got, want, other in ((dq, ref_dq, k), (dk, ref_dk, q)):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=BACKWARD_TOL,
                                   atol=(4 * resolution + BACKWARD_TOL) * ds_size * np.abs(other).max())
    dv_size = np.abs(reference.attention_backward(np.abs(dout), q, k, v, **options)[2]).max()
    np.testing.assert_allclose(dv, ref_dv, rtol=BACKWARD_TOL, atol=(4 * resolution + BACKWARD_TOL) * dv_size)


def test_strided_inputs(cpu_isa, rng):
    """q, k, v as slices of one fused (B, T, 3, H, D) projection, and as a
    non-contiguous batch slice of (B, H, T, D) arrays: only the last axis is
    contiguous."""
    B, T, H, D = 2, 65, 3, 32
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    check_forward(q, k, v, causal=True)
    check_backward(rng, q, k, v, causal=True)

    heads_major = rng.standard_normal((3, 2 * B, H, 130, D)).astype(np.float32)
    q, k, v = (x[::2].transpose(0, 2, 1, 3) for x in heads_major)  # (B, T, H, D) views
    q = q[:, 7:70]
    options = dict(key_lengths=np.array([100, 130]), dropout_p=0.1, seed=5)
    out, lse = check_forward(q, k, v, **options)
    dout = rng.standard_normal((B, 63, 2, H, D)).astype(np.float32)[:, :, 1]
    grads = ops.attention_backward(dout, q, k, v, out, lse, **options)
    for got, want in zip(grads, reference.attention_backward(dout, q, k, v, **options)):
        assert_close(got, want, BACKWARD_TOL)


@pytest.mark.parametrize("D", [64, 13])
def test_one_query_against_a_cache(cpu_isa, rng, D):
    """A decoding step: one query per row over the first keys of a larger
    (B, capacity, H, D) cache, read in place, with per-row key lengths (one of
    them 0: no visible key), causal alignment, a prefix, or an explicit mask."""
    B, H, capacity, Tk = 4, 3, 300, 203
    cache = rng.standard_normal((2, B, capacity, H, D)).astype(np.float32)
    k, v = cache[0, :, :Tk], cache[1, :, :Tk]
    q = rng.standard_normal((B, 1, H, D)).astype(np.float32)
    key_lengths = np.array([Tk, 0, 1, 150])
    out, lse = check_forward(q, k, v, key_lengths=key_lengths)
    assert np.all(out[1] == 0) and np.all(np.isinf(lse[1]))
    check_forward(q, k, v, causal=True)
    check_forward(q, k, v, prefix_lengths=np.array([0, 5, Tk, 100]))
    check_forward(q, k, v, mask=rng.random((B, H, 1, Tk)) < 0.3, key_lengths=key_lengths)
    check_forward(q * 40, k, v, key_lengths=key_lengths)  # large scores: the max is subtracted


def test_one_query_with_many_heads(cpu_isa, rng, num_threads):
    """One row of 70 heads: the heads are split into groups (over threads, and
    at most 64 a group), each with its own explicit mask row."""
    for threads in (1, 2):
        num_threads(threads)
        q, k, v = make_inputs(rng, 1, 1, 600, 70, 8)  # enough keys and values (2 x 1.3 MB) for two threads
        check_forward(q, k, v)
        check_forward(q, k, v, mask=rng.random((1, 70, 1, 600)) < 0.5, key_lengths=np.array([577]))


def test_out_buffers_are_filled_in_place(cpu_isa, rng):
    q, k, v = make_inputs(rng, 3, 65, 70, 2, 32)
    options = dict(causal=True, key_lengths=np.array([70, 0, 33]))
    expected_out, expected_lse = ops.attention_forward(q, k, v, **options)
    out, lse = np.full_like(q, np.nan), np.full((3, 2, 65), np.nan, np.float32)
    result = ops.attention_forward(q, k, v, out=(out, lse), **options)
    assert result[0] is out and result[1] is lse
    np.testing.assert_array_equal(out, expected_out)  # every element written, masked ones too
    np.testing.assert_array_equal(lse, expected_lse)
    out = np.full_like(q, np.nan)
    result = ops.attention_forward(q, k, v, out=(out, None), **options)
    assert result[0] is out
    np.testing.assert_array_equal(result[1], expected_lse)
    lse = np.full((3, 2, 65), np.nan, np.float32)
    result = ops.attention_forward(q, k, v, out=(None, lse), **options)
    assert result[1] is lse
    np.testing.assert_array_equal(result[0], expected_out)
    out = np.full_like(q, np.nan)
    assert ops.attention(q, k, v, out=out, **options) is out
    np.testing.assert_array_equal(out, expected_out)

    dout = rng.standard_normal(q.shape).astype(np.float32)
    saved = (expected_out, expected_lse)
    expected = ops.attention_backward(dout, q, k, v, *saved, **options)
    grads = tuple(np.full_like(x, np.nan) for x in (q, k, v))
    result = ops.attention_backward(dout, q, k, v, *saved, grads=grads, **options)
    for got, buffer, want in zip(result, grads, expected):
        assert got is buffer
        np.testing.assert_array_equal(got, want)
    dk = np.full_like(k, np.nan)
    result = ops.attention_backward(dout, q, k, v, *saved, grads=(None, dk, None), **options)
    assert result[1] is dk
    for got, want in zip(result, expected):
        np.testing.assert_array_equal(got, want)


def test_strided_output_buffers(cpu_isa, rng):
    """out and dq, dk, dv written into slices of wider arrays, e.g. one
    (B, T, 3, H, D) gradient for a fused QKV projection; nothing outside them."""
    B, T, H, D = 2, 70, 2, 16
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    options = dict(causal=True, key_lengths=np.array([70, 31]), dropout_p=0.2, seed=11)
    expected_out, expected_lse = ops.attention_forward(q, k, v, **options)
    out_wide = np.zeros((B, T, H, 2 * D), np.float32)
    out, _ = ops.attention_forward(q, k, v, out=(out_wide[..., D:], None), **options)
    assert np.shares_memory(out, out_wide)
    np.testing.assert_array_equal(out_wide[..., D:], expected_out)
    assert not out_wide[..., :D].any()

    dout = rng.standard_normal((B, T, H, D)).astype(np.float32)
    expected = ops.attention_backward(dout, q, k, v, expected_out, expected_lse, **options)
    dqkv = np.zeros((B, T, 4, H, D), np.float32)
    grads = (dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2])
    ops.attention_backward(dout, q, k, v, expected_out, expected_lse, grads=grads, **options)
    for index, want in enumerate(expected):
        np.testing.assert_array_equal(dqkv[:, :, index], want)
    assert not dqkv[:, :, 3].any()


# ------------------------------------------------------------ backward --

@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_float64(cpu_isa, rng, shape):
    check_backward(rng, *make_inputs(rng, *shape))


@pytest.mark.parametrize("options", TINY_CASES)
def test_backward_matches_finite_differences(cpu_isa, rng, options):
    q, k, v = make_inputs(rng, 2, 3, 4, 2, 3)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention_forward(q, k, v, **options)
    got = ops.attention_backward(dout, q, k, v, out, lse, **options)
    for g, numeric in zip(got, numeric_gradients(dout, q, k, v, **options)):
        np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- dropout --

def kernel_keep_mask(B, H, Tq, Tk, dropout_p, seed):
    """The kernel's dropout keep mask, read back through its output: with q = 0
    each of the n allowed keys has P = 1/n, and one-hot rows v_j = e_(j mod D)
    put P_ij keep_ij / (1 - p) in out[b, i, h, j mod D]. A mask lets one window
    of D keys through at a time."""
    D = 128
    q = np.zeros((B, Tq, H, D), np.float32)
    v = np.zeros((B, Tk, H, D), np.float32)
    v[:, np.arange(Tk), :, np.arange(Tk) % D] = 1
    keep = np.zeros((B, H, Tq, Tk), bool)
    for start in range(0, Tk, D):
        window = np.zeros(Tk, bool)
        window[start:start + D] = True
        n = window.sum()
        out = ops.attention(q, np.zeros_like(v), v, mask=window, dropout_p=dropout_p, seed=seed)
        scaled = out.transpose(0, 2, 1, 3)[..., :n].astype(np.float64) * n * (1 - dropout_p)
        assert np.abs(scaled - np.rint(scaled)).max() < 1e-3
        keep[..., start:start + n] = np.rint(scaled) == 1
    return keep


@pytest.mark.parametrize("dropout_p", [0.1, 0.5, 0.9])
def test_dropout_keep_mask_is_philox_and_keeps_1_minus_p(cpu_isa, dropout_p):
    B, H, Tq, Tk = 2, 3, 65, 257
    keep = kernel_keep_mask(B, H, Tq, Tk, dropout_p, seed=2024)
    np.testing.assert_array_equal(keep, reference.attention_keep(B, H, Tq, Tk, dropout_p, 2024))
    sigma = np.sqrt(dropout_p * (1 - dropout_p) / keep.size)
    assert abs(keep.mean() - (1 - dropout_p)) < 5 * sigma
    for word in range(4):  # each of the four Philox output words is unbiased too
        assert abs(keep[..., word::4].mean() - (1 - dropout_p)) < 5 * 2 * sigma


def test_different_seeds_give_different_masks(cpu_isa):
    B, H, Tq, Tk = 1, 2, 40, 100
    masks = [kernel_keep_mask(B, H, Tq, Tk, 0.5, seed) for seed in (0, 1, 2**32, 0)]
    np.testing.assert_array_equal(masks[0], masks[3])  # same seed, same mask
    for a, b in [(0, 1), (0, 2), (1, 2)]:  # 2^32 differs from 0 in the key's high word only
        assert 0.45 < (masks[a] != masks[b]).mean() < 0.55


@pytest.mark.parametrize("dropout_p", [0.2, 0.6])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 16), (2, 65, 130, 2, 32), (1, 257, 63, 1, 80)])
def test_dropout_forward_and_backward_match_float64(cpu_isa, rng, shape, dropout_p):
    q, k, v = make_inputs(rng, *shape)
    for seed in (0, 2**64 - 1):
        out, lse = check_forward(q, k, v, dropout_p=dropout_p, seed=seed)
            # lse ignores dropout (to rounding: one query without dropout takes the single-query path)
        np.testing.assert_allclose(lse, ops.attention_forward(q, k, v)[1], rtol=1e-6, atol=1e-6)
        check_backward(rng, q, k, v, dropout_p=dropout_p, seed=seed)


@pytest.mark.parametrize("case", ["causal_lengths_mask", "prefix_lengths_mask"])
def test_dropout_with_masks(cpu_isa, rng, case):
    B, Tq, Tk, H, D = 3, 70, 130, 2, 64
    q, k, v = make_inputs(rng, B, Tq, Tk, H, D)
    options = dict(MASK_CASES[case](rng, B, H, Tq, Tk), dropout_p=0.25, seed=2**40 + 3)
    check_forward(q, k, v, **options)
    check_backward(rng, q, k, v, **options)


def test_dropout_zero_is_no_dropout(cpu_isa, rng):
    q, k, v = make_inputs(rng, 2, 65, 100, 2, 32)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention_forward(q, k, v, causal=True)
    out0, lse0 = ops.attention_forward(q, k, v, causal=True, dropout_p=0.0, seed=77)
    np.testing.assert_array_equal(out0, out)
    np.testing.assert_array_equal(lse0, lse)
    grads = ops.attention_backward(dout, q, k, v, out, lse, causal=True)
    grads0 = ops.attention_backward(dout, q, k, v, out, lse, causal=True, dropout_p=0.0, seed=77)
    for a, b in zip(grads, grads0):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_identical_for_any_thread_count(cpu_isa, rng, num_threads, dropout_p):
    q, k, v = make_inputs(rng, 2, 130, 257, 3, 64)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    options = dict(causal=True, key_lengths=np.array([257, 190]), dropout_p=dropout_p, seed=42)
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        out, lse = ops.attention_forward(q, k, v, **options)
        results.append((out, lse) + tuple(ops.attention_backward(dout, q, k, v, out, lse, **options)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------- bad input --

@pytest.fixture
def small(rng):
    """Valid arguments: q (2, 5, 3, 8), k and v (2, 6, 3, 8), and the forward's out and lse."""
    q, k, v = make_inputs(rng, 2, 5, 6, 3, 8)
    out, lse = ops.attention_forward(q, k, v)
    return q, k, v, out, lse


def test_rejects_wrong_types_and_dtypes(small):
    q, k, v, out, lse = small
    with pytest.raises(TypeError, match=r"\bq\b"):
        ops.attention_forward(q.tolist(), k, v)
    with pytest.raises(TypeError, match=r"\bk\b"):
        ops.attention_forward(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match=r"\bv\b"):
        ops.attention(q, k, v.astype(np.float16))
    with pytest.raises(TypeError, match="dout"):
        ops.attention_backward(out.astype(np.float64), q, k, v, out, lse)
    with pytest.raises(TypeError, match="lse"):
        ops.attention_backward(out, q, k, v, out, lse.astype(np.float64))


def test_rejects_wrong_shapes(small):
    q, k, v, out, lse = small
    with pytest.raises(ValueError, match=r"\bq\b"):
        ops.attention_forward(q[0], k, v)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.attention_forward(q, k[None], v)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.attention_forward(q, k[:1], v[:1])  # batch
    with pytest.raises(ValueError, match=r"\bv\b"):
        ops.attention_forward(q, k, v[:, :, :2])  # heads
    with pytest.raises(ValueError, match=r"\bv\b"):
        ops.attention_forward(q, k, v[..., :7])  # head dimension
    with pytest.raises(ValueError, match=r"\bk\b"):
        ops.attention_forward(q, k[..., :7], v[..., :7])  # head dimension of q and k
    with pytest.raises(ValueError, match=r"\bv\b"):
        ops.attention_forward(q, k, v[:, :5])  # keys
    with pytest.raises(ValueError, match="dout"):
        ops.attention_backward(out[:, :4], q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"\bout\b"):
        ops.attention_backward(out, q, k, v, out[:, :, :2], lse)
    with pytest.raises(ValueError, match="lse"):
        ops.attention_backward(out, q, k, v, out, lse[:, :, :4])
    with pytest.raises(ValueError, match="lse"):
        ops.attention_backward(out, q, k, v, out, lse.transpose(0, 2, 1).copy())


def test_rejects_bad_lengths(small):
    q, k, v, _, _ = small
    for name in ("key_lengths", "prefix_lengths"):
        # The last would wrap to -1 in int64: the range is checked before any cast.
        huge = np.array([3, 2**64 - 1], np.uint64)
        for bad in (np.array([6, 7]), np.array([-1, 3]), np.array([3]), np.array([[3, 3]]), huge):
            with pytest.raises(ValueError, match=name):
                ops.attention_forward(q, k, v, **{name: bad})
        with pytest.raises(TypeError, match=name):
            ops.attention_forward(q, k, v, **{name: np.array([3.0, 4.0])})


def test_rejects_bad_masks(small):
    q, k, v, _, _ = small
    for bad in (np.ones((2, 3, 5, 6), np.float32), np.ones((5, 6), np.int64)):
        with pytest.raises(TypeError, match="mask"):
            ops.attention_forward(q, k, v, mask=bad)
    for bad in (np.ones((5, 5), bool), np.ones((2, 2, 5, 6), bool), np.ones((1, 2, 3, 5, 6), bool)):
        with pytest.raises(ValueError, match="mask"):
            ops.attention_forward(q, k, v, mask=bad)


def test_rejects_bad_scalars(small):
    q, k, v, out, lse = small
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout_p"):
            ops.attention_forward(q, k, v, dropout_p=p)
        with pytest.raises(ValueError, match="dropout_p"):
            ops.attention_backward(out, q, k, v, out, lse, dropout_p=p)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            ops.attention_forward(q, k, v, dropout_p=0.1, seed=seed)
    for scale in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="scale"):
            ops.attention_forward(q, k, v, scale=scale)
        with pytest.raises(ValueError, match="scale"):
            ops.attention_backward(out, q, k, v, out, lse, scale=scale)


def test_rejects_bad_outputs(small):
    q, k, v, out, lse = small
    with pytest.raises(ValueError, match=r"\bout\b"):
        ops.attention_forward(q, k, v, out=(np.zeros((2, 5, 3, 9), np.float32), None))
    with pytest.raises(ValueError, match="lse"):
        ops.attention_forward(q, k, v, out=(None, np.zeros((2, 5, 3), np.float32)))
    with pytest.raises(ValueError, match=r"\bout\b"):
        ops.attention(q, k, v, out=np.zeros((2, 6, 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"\bdq\b"):
        ops.attention_backward(out, q, k, v, out, lse, grads=(np.zeros_like(k), None, None))
    with pytest.raises(ValueError, match=r"\bdk\b"):
        ops.attention_backward(out, q, k, v, out, lse, grads=(None, np.zeros_like(q), None))
    with pytest.raises(ValueError, match=r"\bdv\b"):
        ops.attention_backward(out, q, k, v, out, lse, grads=(None, None, np.zeros((2, 6, 3, 7), np.float32)))


def test_rejects_non_contiguous_last_axis(small, rng):
    q, k, v, out, lse = small
    wide = rng.standard_normal((2, 5, 3, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\bq\b"):
        ops.attention_forward(wide[..., ::2], k, v)
    with pytest.raises(ValueError, match=r"\bv\b"):
        ops.attention_forward(q, k, np.asfortranarray(v))
    with pytest.raises(ValueError, match="dout"):
        ops.attention_backward(wide[..., ::2], q, k, v, out, lse)
    lse_wide = np.zeros((2, 3, 10), np.float32)
    lse_wide[..., ::2] = lse
    with pytest.raises(ValueError, match="lse"):
        ops.attention_backward(out, q, k, v, out, lse_wide[..., ::2])
    with pytest.raises(ValueError, match="lse"):
        ops.attention_forward(q, k, v, out=(None, lse_wide[..., ::2]))


def test_rejects_outputs_that_overlap_inputs(small):
    q, k, v, out, lse = small
    with pytest.raises(ValueError, match=r"\bout\b"):
        ops.attention(q, k, v, out=q)
    with pytest.raises(ValueError, match=r"\bdk\b"):
        ops.attention_backward(out, q, k, v, out, lse, grads=(None, k, None))
