"""The flash-attention forward CUDA kernel (csrc/cuda/attention_forward.cu) on
the CPU emulator: out and lse against the CPU op (ssl_core.ops.attention_forward)
for every mask and their combinations, dropout with the shared Philox
convention, edge shapes, strided inputs, both emulator schedules, and the
binding's argument checks.

The kernel takes 64 queries a block (32 for head_dim > 64) and 32 keys a
tile, with float4 access when head_dim % 4 == 0 and rows are 16-byte aligned:
the shapes below are multiples of none of these, span several tiles, and
include odd head dims and misaligned arrays (the scalar path)."""

import numpy as np
import pytest

from ssl_core import ops

RTOL = 2e-5
ATOL = 2e-5


def make_qkv(rng, B, Tq, Tk, H, D, magnitude=1.0):
    q = (rng.standard_normal((B, Tq, H, D)) * magnitude).astype(np.float32)
    k = (rng.standard_normal((B, Tk, H, D)) * magnitude).astype(np.float32)
    v = rng.standard_normal((B, Tk, H, D)).astype(np.float32)
    return q, k, v


def run_simt(simt, q, k, v, scale=None, out=None, lse=None, **options):
    """simt.attention_forward into NaN-filled out and lse, so that anything left
    unwritten shows."""
    B, Tq, H, D = q.shape
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    if out is None:
        out = np.full(q.shape, np.nan, np.float32)
    if lse is None:
        lse = np.full((B, H, Tq), np.nan, np.float32)
    result = simt.attention_forward(out, lse, q, k, v, scale, **options)
    assert result is None
    return out, lse


def run_cpu(q, k, v, scale=None, **options):
    D = q.shape[-1]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    return ops.attention_forward(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v),
                                 scale=scale, **options)


def assert_matches(got, want):
    out, lse = got
    want_out, want_lse = want
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want_out, rtol=RTOL, atol=ATOL)
    # +inf exactly where the CPU op has it (no visible key), close elsewhere.
    np.testing.assert_array_equal(np.isposinf(lse), np.isposinf(want_lse))
    assert not np.isnan(lse).any()
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=RTOL, atol=ATOL)


def check(simt, q, k, v, **options):
    got = run_simt(simt, q, k, v, **options)
    assert_matches(got, run_cpu(q, k, v, **options))
    return got


def mask_options(case, rng, B, H, Tq, Tk):
    """The keyword arguments of a mask case: None / causal / key_lengths /
    prefix_lengths / mask (full or broadcast) and combinations."""
    lengths = rng.integers(1, Tk + 1, B).astype(np.int64)
    lengths[0] = Tk  # one row unpadded, one (if B > 1) padded
    prefixes = rng.integers(0, Tk + 1, B).astype(np.int64)
    full_mask = rng.random((B, H, Tq, Tk)) < 0.7
    options = {
        "none": {},
        "causal": dict(causal=True),
        "key_lengths": dict(key_lengths=lengths),
        "prefix_lengths": dict(prefix_lengths=prefixes),
        "mask": dict(mask=full_mask),
        "mask_broadcast_keys": dict(mask=rng.random((B, 1, 1, Tk)) < 0.6),
        "mask_broadcast_queries": dict(mask=rng.random((1, H, Tq, 1)) < 0.8),
        "causal_key_lengths": dict(causal=True, key_lengths=lengths),
        "prefix_key_lengths": dict(prefix_lengths=prefixes, key_lengths=lengths),
        "causal_prefix": dict(causal=True, prefix_lengths=prefixes),
        "causal_mask": dict(causal=True, mask=full_mask),
        "everything": dict(causal=True, key_lengths=lengths, prefix_lengths=prefixes, mask=full_mask),
    }
    return options[case]


MASK_CASES = ["none", "causal", "key_lengths", "prefix_lengths", "mask", "mask_broadcast_keys",
              "mask_broadcast_queries", "causal_key_lengths", "prefix_key_lengths", "causal_prefix", "causal_mask",
              "everything"]


@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("Tq, Tk, D", [(70, 45, 24), (37, 100, 24), (45, 70, 60), (70, 37, 100)])
def test_masks_match_cpu(simt, rng, case, Tq, Tk, D):
    # D = 24, 60, 100: the three configurations (D <= 32, 64, 128).
    B, H = 2, 2
    q, k, v = make_qkv(rng, B, Tq, Tk, H, D)
    check(simt, q, k, v, **mask_options(case, rng, B, H, Tq, Tk))


@pytest.mark.parametrize("D", [1, 5, 16, 33, 40, 64, 72, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims(simt, rng, D, causal):
    # Covers the three configurations (D <= 32, 64, 128), odd D (scalar path)
    # and several query tiles of each (Tq > 64).
    q, k, v = make_qkv(rng, 1, 67, 41, 2, D)
    check(simt, q, k, v, causal=causal, key_lengths=np.array([39], np.int64))


@pytest.mark.parametrize("B, Tq, Tk, H", [(1, 1, 1, 1), (2, 1, 37, 3), (1, 3, 1, 2), (3, 2, 2, 40),
                                          (1, 65, 33, 1), (1, 64, 64, 1), (2, 33, 97, 2)])
def test_shapes(simt, rng, B, Tq, Tk, H):
    q, k, v = make_qkv(rng, B, Tq, Tk, H, 32)
    check(simt, q, k, v)
    check(simt, q, k, v, causal=True)


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
@pytest.mark.parametrize("case", ["none", "causal_key_lengths", "everything"])
@pytest.mark.parametrize("D", [20, 64, 128])
def test_dropout_matches_cpu(simt, rng, dropout_p, case, D):
    # The same seed drops the same weights as the CPU op (philox.h's convention).
    B, Tq, Tk, H = 2, 35, 50, 2
    q, k, v = make_qkv(rng, B, Tq, Tk, H, D)
    options = mask_options(case, rng, B, H, Tq, Tk)
    check(simt, q, k, v, dropout_p=dropout_p, seed=2**40 + 12345, **options)


def test_dropout_depends_on_the_seed(simt, rng):
    q, k, v = make_qkv(rng, 1, 20, 20, 2, 16)
    plain, plain_lse = run_simt(simt, q, k, v)
    a, a_lse = run_simt(simt, q, k, v, dropout_p=0.3, seed=7)
    b, _ = run_simt(simt, q, k, v, dropout_p=0.3, seed=7)
    c, _ = run_simt(simt, q, k, v, dropout_p=0.3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, plain)
    # lse is the softmax's, before dropout.
    np.testing.assert_array_equal(a_lse, plain_lse)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_fully_masked_rows(simt, rng, dropout_p):
    # Row 0: key_lengths 0 (no keys). Row 1: causal with Tq > Tk, so the
    # first Tq - Tk queries see none. Plus a mask row that is all False.
    B, Tq, Tk, H, D = 2, 40, 30, 2, 16
    q, k, v = make_qkv(rng, B, Tq, Tk, H, D)
    mask = np.ones((B, H, Tq, Tk), bool)
    mask[1, 1, 35] = False
    options = dict(causal=True, key_lengths=np.array([0, 30], np.int64), mask=mask, dropout_p=dropout_p, seed=3)
    out, lse = check(simt, q, k, v, **options)
    assert (out[0] == 0).all() and np.isposinf(lse[0]).all()
    assert (out[1, :10] == 0).all() and np.isposinf(lse[1, :, :10]).all()
    assert (out[1, 35, 1] == 0).all() and np.isposinf(lse[1, 1, 35])
    assert np.isfinite(lse[1, :, 10:35]).all()


def test_no_keys_at_all(simt, rng):
    q, k, v = make_qkv(rng, 2, 3, 0, 2, 8)
    out, lse = check(simt, q, k, v)
    assert (out == 0).all() and np.isposinf(lse).all()


def test_empty_queries(simt, rng):
    q, k, v = make_qkv(rng, 2, 0, 5, 2, 8)
    out, lse = run_simt(simt, q, k, v)
    assert out.shape == (2, 0, 2, 8) and lse.shape == (2, 2, 0)


def test_lengths_are_clamped_on_the_device(simt, rng):
    # The binding cannot range-check device memory: the kernel clamps to [0, Tk].
    B, Tq, Tk, H, D = 4, 9, 40, 1, 8
    q, k, v = make_qkv(rng, B, Tq, Tk, H, D)
    key_lengths = np.array([-5, 100, 7, 2**40], np.int64)
    prefix_lengths = np.array([3, -1, 2**62, 50], np.int64)
    got = run_simt(simt, q, k, v, key_lengths=key_lengths, prefix_lengths=prefix_lengths)
    want = run_cpu(q, k, v, key_lengths=np.clip(key_lengths, 0, Tk), prefix_lengths=np.clip(prefix_lengths, 0, Tk))
    assert_matches(got, want)


def test_large_scores(simt, rng):
    # Scores in the thousands: the running max must keep exp2 in range. A
    # float32 score of ~1000 is only good to ~1e-4 absolute, which the
    # probabilities inherit: the tolerance of out follows.
    q, k, v = make_qkv(rng, 1, 40, 70, 2, 16, magnitude=30.0)
    out, lse = run_simt(simt, q, k, v, causal=True)
    want_out, want_lse = run_cpu(q, k, v, causal=True)
    assert np.isfinite(out).all() and np.abs(lse).max() > 500
    np.testing.assert_allclose(out, want_out, atol=5e-3)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5)


def test_strided_inputs_and_outputs(simt, rng):
    # q, k, v: slices of one fused (B, T, 3, H, D) projection; out a slice of a
    # wider array, lse contiguous.
    B, T, H, D = 2, 45, 3, 40
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    wide = np.full((B, T, H, D + 8), np.nan, np.float32)
    out = wide[..., :D]
    got = run_simt(simt, q, k, v, out=out, causal=True, key_lengths=np.array([45, 30], np.int64))
    assert_matches(got, run_cpu(q, k, v, causal=True, key_lengths=np.array([45, 30], np.int64)))
    assert np.isnan(wide[..., D:]).all()


def test_output_interleaved_with_the_inputs(simt, rng):
    # out the fourth slice of a (B, T, 4, H, D) array whose first three are
    # q, k and v: interleaved with them but disjoint, so allowed.
    B, T, H, D = 2, 20, 2, 16
    fused = rng.standard_normal((B, T, 4, H, D)).astype(np.float32)
    q, k, v = fused[:, :, 0], fused[:, :, 1], fused[:, :, 2]
    want = run_cpu(q.copy(), k.copy(), v.copy(), causal=True)
    got = run_simt(simt, q, k, v, out=fused[:, :, 3], causal=True)
    assert_matches(got, want)


@pytest.mark.parametrize("target", ["q", "k", "lse_in_out"])
def test_rejects_outputs_sharing_memory(simt, rng, target):
    B, T, H, D = 2, 20, 2, 16
    fused = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = fused[:, :, 0], fused[:, :, 1], fused[:, :, 2]
    out = np.zeros((B, T, H, D), np.float32)
    lse = np.zeros((B, H, T), np.float32)
    if target == "q":
        with pytest.raises(ValueError, match="out shares memory with input q"):
            simt.attention_forward(q, lse, q, k, v, 1.0)
    elif target == "k":
        # A contiguous lse laid over the memory from k's first row on.
        lse_over_k = np.ndarray((B, H, T), np.float32, buffer=fused, offset=H * D * 4)
        with pytest.raises(ValueError, match="lse shares memory with input"):
            simt.attention_forward(out, lse_over_k, q, k, v, 1.0)
    else:
        with pytest.raises(ValueError, match="outputs out and lse share memory"):
            simt.attention_forward(out, out.reshape(-1)[:B * H * T].reshape(B, H, T), q, k, v, 1.0)


def test_misaligned_arrays_take_the_scalar_path(simt, rng):
    # D % 4 == 0 but rows not 16-byte aligned: no float4 access may be used.
    B, Tq, Tk, H, D = 1, 20, 35, 2, 16

    def misaligned(shape):
        n = int(np.prod(shape))
        return np.zeros(n + 1, np.float32)[1:].reshape(shape)

    q, k, v = (misaligned(a.shape) for a in make_qkv(rng, B, Tq, Tk, H, D))
    q[...], k[...], v[...] = make_qkv(rng, B, Tq, Tk, H, D)
    out = misaligned(q.shape)
    got = run_simt(simt, q, k, v, out=out, causal=True)
    assert_matches(got, run_cpu(q, k, v, causal=True))


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_schedules_give_identical_results(simt, simt_schedule, rng, dropout_p):
    B, Tq, Tk, H, D = 2, 70, 40, 2, 36
    q, k, v = make_qkv(rng, B, Tq, Tk, H, D)
    mask = rng.random((B, 1, Tq, Tk)) < 0.8
    options = dict(causal=True, prefix_lengths=np.array([5, 12], np.int64), mask=mask, dropout_p=dropout_p,
                   seed=99)
    simt_schedule("forward")
    forward = run_simt(simt, q, k, v, **options)
    simt_schedule("reverse")
    simt.set_strict_barriers(True)  # no thread may leave while others wait at a barrier
    try:
        reverse = run_simt(simt, q, k, v, **options)
    finally:
        simt.set_strict_barriers(False)
    np.testing.assert_array_equal(forward[0], reverse[0])
    np.testing.assert_array_equal(forward[1], reverse[1])
    assert_matches(forward, run_cpu(q, k, v, **options))


@pytest.mark.parametrize("D", [64, 128])
def test_larger_problem_both_schedules(simt, simt_schedule, rng, D):
    # Several query and key tiles per head; the D <= 128 configuration reuses
    # the key tile's shared memory for the probabilities.
    q, k, v = make_qkv(rng, 2, 150, 130, 2, D)
    options = dict(causal=True, key_lengths=np.array([130, 97], np.int64), dropout_p=0.1, seed=5)
    forward = check(simt, q, k, v, **options)
    simt_schedule("reverse")
    reverse = run_simt(simt, q, k, v, **options)
    np.testing.assert_array_equal(forward[0], reverse[0])
    np.testing.assert_array_equal(forward[1], reverse[1])


# ----------------------------------------------------------------------------
# Argument checks of the binding (before any kernel runs)
# ----------------------------------------------------------------------------

@pytest.fixture
def small(rng):
    q, k, v = make_qkv(rng, 2, 3, 4, 2, 8)
    out = np.zeros_like(q)
    lse = np.zeros((2, 2, 3), np.float32)
    return out, lse, q, k, v


def test_rejects_wrong_dtypes(simt, small):
    out, lse, q, k, v = small
    with pytest.raises(TypeError, match="q"):
        simt.attention_forward(out, lse, q.astype(np.float64), k, v, 1.0)
    with pytest.raises(TypeError, match="lse"):
        simt.attention_forward(out, lse.astype(np.float64), q, k, v, 1.0)
    with pytest.raises(TypeError, match="key_lengths"):
        simt.attention_forward(out, lse, q, k, v, 1.0, key_lengths=np.array([1, 2], np.int32))
    with pytest.raises(TypeError, match="mask"):
        simt.attention_forward(out, lse, q, k, v, 1.0, mask=np.ones((2, 2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        simt.attention_forward([[1.0]], lse, q, k, v, 1.0)


def test_rejects_wrong_shapes(simt, small):
    out, lse, q, k, v = small
    with pytest.raises(ValueError, match="k and v"):
        simt.attention_forward(out, lse, q, k, v[:, :3], 1.0)
    with pytest.raises(ValueError, match="q .* and k"):
        simt.attention_forward(out, lse, q[:, :, :1], k, v, 1.0)
    with pytest.raises(ValueError, match=r"out must have shape .*\(2, 3, 2, 8\)"):
        simt.attention_forward(out[:, :2], lse, q, k, v, 1.0)
    with pytest.raises(ValueError, match=r"lse must have shape .*\(2, 2, 3\)"):
        simt.attention_forward(out, np.zeros((2, 3, 2), np.float32), q, k, v, 1.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        simt.attention_forward(out, lse, q[0], k, v, 1.0)
    with pytest.raises(ValueError, match="key_lengths"):
        simt.attention_forward(out, lse, q, k, v, 1.0, key_lengths=np.array([1, 2, 3], np.int64))
    with pytest.raises(ValueError, match="mask"):
        simt.attention_forward(out, lse, q, k, v, 1.0, mask=np.ones((2, 2, 4, 3), bool))


def test_rejects_bad_layouts_and_values(simt, small):
    out, lse, q, k, v = small
    with pytest.raises(ValueError, match="q must have a contiguous last axis"):
        simt.attention_forward(out, lse, np.zeros((2, 3, 2, 16), np.float32)[..., ::2], k, v, 1.0)
    with pytest.raises(ValueError, match="lse must be C-contiguous"):
        simt.attention_forward(out, np.zeros((2, 3, 2), np.float32).transpose(0, 2, 1), q, k, v, 1.0)
    read_only = out.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out .*writable"):
        simt.attention_forward(read_only, lse, q, k, v, 1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        simt.attention_forward(out, lse, q, k, v, 1.0, dropout_p=1.0)
    with pytest.raises(ValueError, match="scale"):
        simt.attention_forward(out, lse, q, k, v, float("nan"))
    big = np.zeros((1, 2, 1, 129), np.float32)
    with pytest.raises(ValueError, match="head_dim up to 128"):
        simt.attention_forward(big.copy(), np.zeros((1, 1, 2), np.float32), big, big, big, 1.0)


def test_backward_binding_checks_arguments(simt, small):
    # The backward kernel has its own tests (test_cuda_attention_backward.py);
    # here only that the binding rejects bad outputs before launching it.
    out, lse, q, k, v = small
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    with pytest.raises(ValueError, match=r"dk must have shape .*\(2, 4, 2, 8\)"):
        simt.attention_backward(dq, dk[:, :3], dv, out, q, k, v, out, lse, 1.0)
    with pytest.raises(ValueError, match=r"dout must have shape"):
        simt.attention_backward(dq, dk, dv, out[:, :1], q, k, v, out, lse, 1.0)
    with pytest.raises(ValueError, match=r"lse must have shape"):
        simt.attention_backward(dq, dk, dv, out, q, k, v, out, lse[:, :1], 1.0)
    with pytest.raises(TypeError, match="dv"):
        simt.attention_backward(dq, dk, dv.astype(np.float64), out, q, k, v, out, lse, 1.0)
