"""The 16-bit tensor-core attention forward (csrc/cuda/attention_forward_16bit.cu)
on the CPU emulator, whose WMMA fragments have a scrambled layout: out and lse
against the float32 CPU op (ssl_core.ops.attention_forward) run on the same
inputs rounded to 16 bits, for float16 and bfloat16, every mask kind, dropout
with the shared Philox convention, edge shapes (T=1, Tq != Tk, lengths that are
not multiples of the 64-query / 64-key tiles, fully masked rows), strided and
misaligned arrays, both emulator schedules, and the binding's argument checks.

Tolerances. The inputs are the same 16-bit values on both sides, scores and
softmax are float32 on both, so lse agrees to float32 rounding (1e-5). The
output differs by two roundings the kernel makes and the CPU op does not:
  - each probability is rounded to 16 bits before the P V product (relative
    error u per weight: u = 2^-11 for float16, 2^-8 for bfloat16), which moves
    out by at most u * sum_j p_j f_j |v_j| (f_j the dropout factor); the CPU op
    gives that sum exactly when run with |v| as the values;
  - out itself is stored in 16 bits: u * |out|.
So the test bound is |out - ref| <= 1.1 u (|ref| + ref_abs) + atol, atol
covering float16's subnormal probabilities (below 2^-14 they lose relative
precision: at most 2^-25 a weight) and float32 accumulation-order noise."""

import numpy as np
import pytest

from ssl_core import ops

from reference import from_16bit, nan_16bit, to_16bit

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
ATOL = {"float16": 2e-5, "bfloat16": 1e-6}
LSE_TOL = 1e-5










def make_qkv(rng, B, Tq, Tk, H, D, dtype, magnitude=1.0):
    q = rng.standard_normal((B, Tq, H, D)) * magnitude
    k = rng.standard_normal((B, Tk, H, D)) * magnitude
    v = rng.standard_normal((B, Tk, H, D))
    return [to_16bit(x, dtype) for x in (q, k, v)]


def run_simt(simt, q, k, v, dtype, scale=None, out=None, lse=None, **options):
    B, Tq, H, D = q.shape
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    if out is None:
        out = nan_16bit(q.shape, dtype)
    if lse is None:
        lse = np.full((B, H, Tq), np.nan, np.float32)
    assert simt.attention_forward_16bit(out, lse, q, k, v, dtype, scale, **options) is None
    return out, lse


def check(simt, qkv, dtype, scale=None, **options):
    """Runs the kernel on 16-bit q, k, v and compares with the CPU op on their
    float32 values; returns the kernel's (out, lse)."""
    (q, qf), (k, kf), (v, vf) = qkv
    D = q.shape[-1]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    out, lse = run_simt(simt, q, k, v, dtype, scale=scale, **options)
    want_out, want_lse = ops.attention_forward(qf, kf, vf, scale=scale, **options)
    abs_ref, _ = ops.attention_forward(qf, kf, np.abs(vf), scale=scale, **options)

    got = from_16bit(out, dtype)
    assert np.isfinite(got).all()
    bound = 1.1 * UNIT_ROUNDOFF[dtype] * (np.abs(want_out) + abs_ref) + ATOL[dtype]
    excess = np.abs(got - want_out) - bound
    worst = np.unravel_index(excess.argmax(), excess.shape)
    assert (excess <= 0).all(), f"max error beyond the bound: {excess.max()} at {worst}"
    # +inf exactly where the CPU op has it (no visible key), close elsewhere.
    assert not np.isnan(lse).any()
    np.testing.assert_array_equal(np.isposinf(lse), np.isposinf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[finite], want_lse[finite], rtol=LSE_TOL, atol=LSE_TOL)
    # Rows with no visible key are exactly zero.
    hidden = np.isposinf(want_lse).transpose(0, 2, 1)  # (B, Tq, H)
    assert (got[hidden] == 0).all()
    return out, lse


def mask_options(case, rng, B, H, Tq, Tk):
    lengths = rng.integers(1, Tk + 1, B).astype(np.int64)
    lengths[0] = Tk  # one row unpadded, one (if B > 1) padded
    prefixes = rng.integers(0, Tk + 1, B).astype(np.int64)
    return {
        "none": {},
        "causal": dict(causal=True),
        "key_lengths": dict(key_lengths=lengths),
        "prefix_lengths": dict(prefix_lengths=prefixes),
        "mask": dict(mask=rng.random((B, H, Tq, Tk)) < 0.7),
        "mask_broadcast": dict(mask=rng.random((B, 1, 1, Tk)) < 0.6),
        "causal_lengths_mask": dict(causal=True, key_lengths=lengths, mask=rng.random((1, H, Tq, 1)) < 0.8),
        "dropout": dict(dropout_p=0.25, seed=2**40 + 7),
        "dropout_causal_prefix": dict(causal=True, prefix_lengths=prefixes, dropout_p=0.5, seed=123),
    }[case]


MASK_CASES = ["none", "causal", "key_lengths", "prefix_lengths", "mask", "mask_broadcast", "causal_lengths_mask",
              "dropout", "dropout_causal_prefix"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_matches_cpu_op_for_every_mask(simt, rng, dtype, case):
    # Tq, Tk: more than one tile, neither a multiple of 64, Tq != Tk.
    B, Tq, Tk, H, D = 2, 70, 100, 2, 64
    check(simt, make_qkv(rng, B, Tq, Tk, H, D, dtype), dtype, **mask_options(case, rng, B, H, Tq, Tk))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("D", [16, 48, 80, 128])  # each kernel configuration (32, 64, 128), full and partial
@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 77), (77, 1), (64, 64), (130, 65)])
def test_shapes_and_head_dims(simt, rng, dtype, D, Tq, Tk):
    causal = Tq <= Tk  # bottom-right causal with T=1 decoding; Tq > Tk has its own test
    check(simt, make_qkv(rng, 1, Tq, Tk, 2, D, dtype), dtype, causal=causal)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fully_masked_rows(simt, rng, dtype):
    B, Tq, Tk, H, D = 3, 80, 20, 2, 32
    mask = rng.random((B, H, Tq, Tk)) < 0.8
    mask[1, 0, 70] = False  # a whole row masked
    # Causal with Tq > Tk: queries i < Tq - Tk see nothing; key_lengths 0 hides everything in batch row 2.
    out, lse = check(simt, make_qkv(rng, B, Tq, Tk, H, D, dtype), dtype, causal=True,
                     key_lengths=np.array([20, 13, 0], np.int64), mask=mask)
    assert np.isposinf(lse[:, :, : Tq - Tk - 1]).all()
    assert np.isposinf(lse[2]).all() and np.isposinf(lse[1, 0, 70])
    assert (from_16bit(out, dtype)[2] == 0).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_large_scores(simt, rng, dtype):
    """Scores in the hundreds: the online softmax's running max keeps exp2 in range."""
    check(simt, make_qkv(rng, 1, 40, 150, 1, 64, dtype, magnitude=5.0), dtype, causal=True)


def test_strided_and_misaligned_arrays(simt, rng):
    """q, k, v interleaved in one (B, T, 3, H, D) array (the fused QKV projection),
    out a slice of a wider array; then views shifted by one element, which are
    not 16-byte aligned (the kernel's element-wise load and store path)."""
    dtype, B, T, H, D = "float16", 2, 70, 2, 32
    qkv, _ = to_16bit(rng.standard_normal((B, T, 3, H, D)), dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    views = [(x, x.astype(np.float32)) for x in (q, k, v)]
    wide = nan_16bit((B, T, H, D + 16), dtype)
    out, _ = run_simt(simt, q, k, v, dtype, out=wide[..., :D], causal=True)
    want = check(simt, views, dtype, causal=True)[0]
    np.testing.assert_array_equal(out, want)
    assert np.isnan(wide[..., D:]).all()  # nothing written past the view

    flat = to_16bit(rng.standard_normal(3 * B * T * H * D + 3), dtype)[0]
    shifted = [flat[1 + n * B * T * H * D: 1 + (n + 1) * B * T * H * D].reshape(B, T, H, D) for n in range(3)]
    assert all(x.ctypes.data % 16 != 0 for x in shifted)
    out_flat = nan_16bit(B * T * H * D + 1, dtype)
    out_shifted = out_flat[1:].reshape(B, T, H, D)
    got, _ = run_simt(simt, *shifted, dtype, out=out_shifted, key_lengths=np.array([70, 33], np.int64))
    aligned = [np.ascontiguousarray(x) for x in shifted]
    want, _ = run_simt(simt, *aligned, dtype, key_lengths=np.array([70, 33], np.int64))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_both_schedules_give_identical_results(simt, simt_schedule, rng, dtype):
    B, Tq, Tk, H, D = 2, 70, 130, 2, 64
    (q, _), (k, _), (v, _) = make_qkv(rng, B, Tq, Tk, H, D, dtype)
    options = dict(causal=True, key_lengths=np.array([130, 90], np.int64), mask=rng.random((B, 1, Tq, Tk)) < 0.9,
                   dropout_p=0.2, seed=99)
    forward = run_simt(simt, q, k, v, dtype, **options)
    simt_schedule("reverse")
    reverse = run_simt(simt, q, k, v, dtype, **options)
    for a, b in zip(forward, reverse):
        np.testing.assert_array_equal(a.view(np.uint16) if a.dtype != np.float32 else a,
                                      b.view(np.uint16) if b.dtype != np.float32 else b)


def test_bad_arguments(simt, rng):
    def args(D=32, dtype="float16", q_dtype=None, k_dtype=None):
        q = np.zeros((1, 5, 2, D), q_dtype or (np.float16 if dtype == "float16" else np.uint16))
        k = np.zeros((1, 7, 2, D), k_dtype or q.dtype)
        v = np.zeros((1, 7, 2, D), q.dtype)
        return [np.zeros_like(q), np.zeros((1, 2, 5), np.float32), q, k, v]

    with pytest.raises(ValueError, match="multiple of 16"):
        simt.attention_forward_16bit(*args(D=24), "float16", 1.0)
    with pytest.raises(ValueError, match="support head_dim up to 128, got q of shape \\(1, 5, 2, 144\\)"):
        simt.attention_forward_16bit(*args(D=144), "float16", 1.0)
    with pytest.raises(ValueError, match="dtype must be 'float16' or 'bfloat16'"):
        simt.attention_forward_16bit(*args(), "float32", 1.0)
    with pytest.raises(TypeError, match="q must have dtype float16, got float32"):
        simt.attention_forward_16bit(*args(q_dtype=np.float32), "float16", 1.0)
    with pytest.raises(TypeError, match="k must have dtype float16, got uint16"):
        simt.attention_forward_16bit(*args(k_dtype=np.uint16), "float16", 1.0)
    with pytest.raises(TypeError, match="q must have dtype uint16 \\(bfloat16 bits\\), got float16"):
        simt.attention_forward_16bit(*args(), "bfloat16", 1.0)
    out, lse, q, k, v = args()
    with pytest.raises(ValueError, match="out must have shape"):
        simt.attention_forward_16bit(out[:, :4], lse, q, k, v, "float16", 1.0)
    with pytest.raises(ValueError, match="lse must have shape"):
        simt.attention_forward_16bit(out, lse[:, :1], q, k, v, "float16", 1.0)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        simt.attention_forward_16bit(out, lse, q, k, v[:, :6], "float16", 1.0)
    with pytest.raises(ValueError, match="contiguous last axis"):
        simt.attention_forward_16bit(out, lse, np.zeros((1, 5, 2, 64), np.float16)[..., ::2], k, v, "float16", 1.0)
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out is an output and must be writable"):
        simt.attention_forward_16bit(readonly, lse, q, k, v, "float16", 1.0)
    with pytest.raises(ValueError, match="out shares memory with input q"):
        simt.attention_forward_16bit(q, lse, q, k, v, "float16", 1.0)
    with pytest.raises(ValueError, match="mask must be broadcastable"):
        simt.attention_forward_16bit(out, lse, q, k, v, "float16", 1.0, mask=np.ones((1, 2, 5, 6), bool))
    with pytest.raises(ValueError, match="dropout_p"):
        simt.attention_forward_16bit(out, lse, q, k, v, "float16", 1.0, dropout_p=1.0)
