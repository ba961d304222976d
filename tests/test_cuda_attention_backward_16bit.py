"""The 16-bit tensor-core attention backward (csrc/cuda/attention_backward_16bit.cu)
on the CPU emulator (scrambled WMMA fragment layout): dq, dk, dv against the
float32 CPU op (ssl_core.ops.attention_backward) run on the same 16-bit inputs
(dout, q, k, v, and out = the CPU forward's out rounded to 16 bits, lse the
CPU forward's), for float16 and bfloat16, every mask kind, dropout with the
same seed, T=1, Tq != Tk, lengths that are not multiples of the 64-query /
64-key tiles, fully masked rows (zero gradients), head dims 16, 64, 128; the
deterministic dq path bit-identical on repeat and under both schedules; bad
arguments.

Tolerances. Both sides see the same 16-bit values and compute S, dP, delta
and all sums in float32; the kernel additionally rounds (u = 2^-11 for
float16, 2^-8 for bfloat16):
  - each P o [kept] weight to 16 bits before dV = (P o F)^T dO: at most
    u * sum_i P_ij F_ij |dO_i|;
  - each dS_ij to 16 bits before dK = scale dS^T Q and dQ = scale dS K: at
    most u * scale * sum_i |dS_ij| |q_i| and u * scale * sum_j |dS_ij| |k_j|;
  - the results themselves to 16 bits: u * |ref|.
The sums need P, F and dS, which this file computes in float64 NumPy from a
probe of the CPU op for the visibility and dropout factors (forward with q = 0
and one-hot values: out[i, j] = F_ij [visible] / n_i). The bound is 1.1 times
those terms plus float32 noise of the CPU op and the kernel (2e-5 relative of
the same magnitudes: dS = P (dP - delta) cancels) plus an absolute term for
float16's subnormal P and dS (below 2^-14 an element's error is 2^-25, times
up to Tk terms of |q|, |k|, |dO| of a few units)."""

import numpy as np
import pytest

from ssl_core import ops

from reference import from_16bit, nan_16bit, to_16bit

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
ATOL = {"float16": 3e-5, "bfloat16": 1e-6}
F32_NOISE = 2e-5










def probe_factors(B, Tq, Tk, H, options):
    """F_ij [visible_ij] (B, H, Tq, Tk) of the CPU op's masks and dropout, from
    forwards with q = 0 (uniform weights over the visible keys) and one-hot values."""
    D = 64
    q = np.zeros((B, Tq, H, D), np.float32)
    k = np.zeros((B, Tk, H, D), np.float32)
    no_dropout = {key: val for key, val in options.items() if key not in ("dropout_p", "seed")}
    visible = np.zeros((B, H, Tq, Tk))
    factor = np.zeros((B, H, Tq, Tk))
    for j0 in range(0, Tk, D):
        n = min(D, Tk - j0)
        v = np.zeros((B, Tk, H, D), np.float32)
        v[:, j0:j0 + n, :, :n] = np.eye(n, dtype=np.float32)[:, None, :]
        out, _ = ops.attention_forward(q, k, v, scale=1.0, **no_dropout)
        visible[..., j0:j0 + n] = out.transpose(0, 2, 1, 3)[..., :n] > 0
        if "dropout_p" in options:
            out, _ = ops.attention_forward(q, k, v, scale=1.0, **options)
        factor[..., j0:j0 + n] = out.transpose(0, 2, 1, 3)[..., :n]
    counts = visible.sum(-1, keepdims=True)
    return visible.astype(bool), factor * np.maximum(counts, 1)  # F_ij [visible]


def error_terms(q, k, v, dout, out, scale, visible, F):
    """float64 magnitudes the kernel's 16-bit roundings of P and dS scale with:
    (sum_i P F |dO|, scale sum_i |dS| |q|, scale sum_j |dS| |k|), shaped like dv, dk, dq."""
    q, k, v, dout, out = (x.astype(np.float64).transpose(0, 2, 1, 3) for x in (q, k, v, dout, out))
    s = np.where(visible, scale * q @ k.transpose(0, 1, 3, 2), -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    total = e.sum(-1, keepdims=True)
    P = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    dP = dout @ v.transpose(0, 1, 3, 2)
    delta = (dout * out).sum(-1, keepdims=True)
    dS = np.abs(P * (dP * F - delta))
    dS_big = P * (np.abs(dP) * F + np.abs(delta))  # float32 cancellation noise scales with this
    back = lambda x: x.transpose(0, 2, 1, 3)
    pf = P * F
    return (back(pf.transpose(0, 1, 3, 2) @ np.abs(dout)),
            back(scale * dS.transpose(0, 1, 3, 2) @ np.abs(q)), back(scale * dS @ np.abs(k)),
            back(scale * dS_big.transpose(0, 1, 3, 2) @ np.abs(q)), back(scale * dS_big @ np.abs(k)))


def make_inputs(rng, B, Tq, Tk, H, D, dtype, magnitude=1.0):
    arrays = [rng.standard_normal(shape) * scale for shape, scale in
              (((B, Tq, H, D), magnitude), ((B, Tk, H, D), magnitude), ((B, Tk, H, D), 1.0), ((B, Tq, H, D), 1.0))]
    return [to_16bit(x, dtype) for x in arrays]  # q, k, v, dout


def run_simt(simt, dtype, dout, q, k, v, out, lse, scale, deterministic=False, **options):
    dq, dk, dv = nan_16bit(q.shape, dtype), nan_16bit(k.shape, dtype), nan_16bit(v.shape, dtype)
    assert simt.attention_backward_16bit(dq, dk, dv, dout, q, k, v, out, lse, dtype, scale,
                                         deterministic=deterministic, **options) is None
    return dq, dk, dv


def check(simt, rng, dtype, B, Tq, Tk, H, D, deterministic=False, magnitude=1.0, **options):
    (q, qf), (k, kf), (v, vf), (dout, doutf) = make_inputs(rng, B, Tq, Tk, H, D, dtype, magnitude)
    scale = 1.0 / np.sqrt(D)
    out32, lse = ops.attention_forward(qf, kf, vf, scale=scale, **options)
    out, outf = to_16bit(out32, dtype)
    got = [from_16bit(x, dtype) for x in
           run_simt(simt, dtype, dout, q, k, v, out, lse, scale, deterministic, **options)]
    want = ops.attention_backward(doutf, qf, kf, vf, outf, lse, scale=scale, **options)
    visible, F = probe_factors(B, Tq, Tk, H, options)
    dv_t, dk_t, dq_t, dk_big, dq_big = error_terms(qf, kf, vf, doutf, outf, scale, visible, F)
    u = UNIT_ROUNDOFF[dtype]
    bounds = {"dq": 1.1 * u * (np.abs(want[0]) + dq_t) + F32_NOISE * (np.abs(want[0]) + dq_big),
              "dk": 1.1 * u * (np.abs(want[1]) + dk_t) + F32_NOISE * (np.abs(want[1]) + dk_big),
              "dv": 1.1 * u * (np.abs(want[2]) + dv_t) + F32_NOISE * (np.abs(want[2]) + dv_t)}
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert np.isfinite(g).all(), name
        excess = np.abs(g - w) - bounds[name] - ATOL[dtype]
        worst = np.unravel_index(excess.argmax(), excess.shape)
        assert (excess <= 0).all(), f"{name}: error beyond the bound by {excess.max()} at {worst}"
    # Queries with no visible key and keys no query sees: exactly zero gradients.
    hidden_q = ~visible.any(-1).transpose(0, 2, 1)  # (B, Tq, H)
    hidden_k = ~visible.any(-2).transpose(0, 2, 1)  # (B, Tk, H)
    assert (got[0][hidden_q] == 0).all()
    assert (got[1][hidden_k] == 0).all() and (got[2][hidden_k] == 0).all()
    return got


def mask_options(case, rng, B, H, Tq, Tk):
    lengths = rng.integers(1, Tk + 1, B).astype(np.int64)
    lengths[0] = Tk
    prefixes = rng.integers(0, Tk + 1, B).astype(np.int64)
    return {
        "none": {},
        "causal": dict(causal=True),
        "key_lengths": dict(key_lengths=lengths),
        "prefix_lengths": dict(prefix_lengths=prefixes),
        "mask": dict(mask=rng.random((B, H, Tq, Tk)) < 0.7),
        "causal_lengths_mask": dict(causal=True, key_lengths=lengths, mask=rng.random((1, H, Tq, 1)) < 0.8),
        "dropout": dict(dropout_p=0.25, seed=2**40 + 7),
        "dropout_causal_prefix": dict(causal=True, prefix_lengths=prefixes, dropout_p=0.5, seed=123),
    }[case]


MASK_CASES = ["none", "causal", "key_lengths", "prefix_lengths", "mask", "causal_lengths_mask", "dropout",
              "dropout_causal_prefix"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_matches_cpu_op_for_every_mask(simt, rng, dtype, case):
    # Tq, Tk: more than one 64-tile, neither a multiple of 64, Tq != Tk; D = 16 (padded to 32).
    B, Tq, Tk, H, D = 2, 70, 81, 1, 16
    deterministic = case in ("causal", "dropout")
    check(simt, rng, dtype, B, Tq, Tk, H, D, deterministic, **mask_options(case, rng, B, H, Tq, Tk))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("D,Tq,Tk,deterministic", [(64, 1, 1, False), (64, 1, 77, True), (64, 77, 1, False),
                                                   (64, 65, 20, True), (128, 40, 67, False)])
def test_shapes_and_head_dims(simt, rng, dtype, D, Tq, Tk, deterministic):
    check(simt, rng, dtype, 1, Tq, Tk, 1, D, deterministic, causal=Tq <= Tk)


@pytest.mark.parametrize("deterministic", [False, True])
def test_fully_masked_rows(simt, rng, deterministic):
    B, Tq, Tk, H, D = 3, 40, 20, 1, 16
    mask = rng.random((B, H, Tq, Tk)) < 0.8
    mask[1, 0, 30] = False
    got = check(simt, rng, "float16", B, Tq, Tk, H, D, deterministic, causal=True,
                key_lengths=np.array([20, 13, 0], np.int64), mask=mask)
    assert (got[0][:, : Tq - Tk] == 0).all() and (got[0][2] == 0).all() and (got[0][1, 30] == 0).all()
    assert (got[1][2] == 0).all() and (got[2][2] == 0).all() and (got[1][1, 13:] == 0).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_large_scores(simt, rng, dtype):
    """Scores in the hundreds: P = exp2(S - lse) stays in range, most weights underflow to 0."""
    check(simt, rng, dtype, 1, 40, 90, 1, 32, magnitude=5.0, causal=True)


@pytest.mark.parametrize("Tq,Tk", [(0, 5), (5, 0)])
def test_empty_sequences(simt, Tq, Tk):
    """No queries: dk = dv = 0; no keys: dq = 0 (lse +inf)."""
    q, k = np.ones((1, Tq, 2, 16), np.float16), np.ones((1, Tk, 2, 16), np.float16)
    lse = np.full((1, 2, Tq), np.inf, np.float32)
    for grad in run_simt(simt, "float16", q.copy(), q, k, k.copy(), np.zeros_like(q), lse, 0.25):
        assert (grad == 0).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_deterministic_is_bit_identical_under_both_schedules(simt, simt_schedule, rng, dtype):
    B, Tq, Tk, H, D = 1, 70, 90, 2, 32
    (q, qf), (k, kf), (v, vf), (dout, _) = make_inputs(rng, B, Tq, Tk, H, D, dtype)
    options = dict(causal=True, key_lengths=np.array([80], np.int64), dropout_p=0.2, seed=99)
    out32, lse = ops.attention_forward(qf, kf, vf, scale=0.2, **options)
    out, _ = to_16bit(out32, dtype)
    first = run_simt(simt, dtype, dout, q, k, v, out, lse, 0.2, True, **options)
    again = run_simt(simt, dtype, dout, q, k, v, out, lse, 0.2, True, **options)
    simt_schedule("reverse")
    reverse = run_simt(simt, dtype, dout, q, k, v, out, lse, 0.2, True, **options)
    for a, b, c in zip(first, again, reverse):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
        np.testing.assert_array_equal(a.view(np.uint16), c.view(np.uint16))
    # dk and dv are computed the same way on the atomic path; dq only up to summation order.
    atomic = run_simt(simt, dtype, dout, q, k, v, out, lse, 0.2, False, **options)
    for a, b in zip(first[1:], atomic[1:]):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_strided_and_misaligned_arrays(simt, rng):
    """q, k, v and dq, dk, dv as slices of fused (B, T, 3, H, D) arrays, and
    inputs shifted by one element (not 16-byte aligned: the element-wise load
    path): the same bits as contiguous arrays (deterministic dq)."""
    dtype, B, T, H, D = "float16", 1, 70, 2, 32
    qkv, _ = to_16bit(rng.standard_normal((B, T, 3, H, D)), dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dout, _ = to_16bit(rng.standard_normal((B, T, H, D)), dtype)
    out32, lse = ops.attention_forward(*(x.astype(np.float32) for x in (q, k, v)), scale=0.3, causal=True)
    out, _ = to_16bit(out32, dtype)
    want = run_simt(simt, dtype, dout, *(np.ascontiguousarray(x) for x in (q, k, v)), out, lse, 0.3, True,
                    causal=True)
    grads = nan_16bit((B, T, 3, H, D + 16), dtype)
    assert simt.attention_backward_16bit(grads[:, :, 0, :, :D], grads[:, :, 1, :, :D], grads[:, :, 2, :, :D], dout,
                                         q, k, v, out, lse, dtype, 0.3, causal=True, deterministic=True) is None
    for n in range(3):
        np.testing.assert_array_equal(grads[:, :, n, :, :D].view(np.uint16), want[n].view(np.uint16))
    assert np.isnan(grads[..., D:]).all()  # nothing written past the views

    flat = np.full(4 * B * T * H * D + 1, np.nan, np.float16)
    shifted = [flat[1 + n * B * T * H * D: 1 + (n + 1) * B * T * H * D].reshape(B, T, H, D) for n in range(4)]
    for dst, src in zip(shifted, (dout, q, k, v)):
        dst[...] = src
    assert all(x.ctypes.data % 16 != 0 for x in shifted)
    got = run_simt(simt, dtype, *shifted, out, lse, 0.3, True, causal=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_bad_arguments(simt):
    def args(D=32, Tq=5, Tk=7, dtype=np.float16, k_dtype=None):
        q = np.zeros((1, Tq, 2, D), dtype)
        k = np.zeros((1, Tk, 2, D), k_dtype or dtype)
        v = np.zeros((1, Tk, 2, D), dtype)
        return [np.zeros_like(q), np.zeros_like(k), np.zeros_like(v), np.zeros_like(q), q, k, v,
                np.zeros_like(q), np.zeros((1, 2, Tq), np.float32)]

    with pytest.raises(ValueError, match="multiple of 16"):
        simt.attention_backward_16bit(*args(D=24), "float16", 1.0)
    with pytest.raises(ValueError, match="support head_dim up to 128"):
        simt.attention_backward_16bit(*args(D=144), "float16", 1.0)
    with pytest.raises(ValueError, match="dtype must be 'float16' or 'bfloat16'"):
        simt.attention_backward_16bit(*args(), "float32", 1.0)
    with pytest.raises(TypeError, match="k must have dtype float16, got uint16"):
        simt.attention_backward_16bit(*args(k_dtype=np.uint16), "float16", 1.0)
    with pytest.raises(TypeError, match="q must have dtype uint16 \\(bfloat16 bits\\), got float16"):
        simt.attention_backward_16bit(*args(), "bfloat16", 1.0)
    dq, dk, dv, dout, q, k, v, out, lse = args()
    with pytest.raises(ValueError, match="dq must have shape"):
        simt.attention_backward_16bit(dq[:, :4], dk, dv, dout, q, k, v, out, lse, "float16", 1.0)
    with pytest.raises(ValueError, match="dk must have shape"):
        simt.attention_backward_16bit(dq, dk[:, :4], dv, dout, q, k, v, out, lse, "float16", 1.0)
    with pytest.raises(ValueError, match="dout must have shape"):
        simt.attention_backward_16bit(dq, dk, dv, dout[:, :4], q, k, v, out, lse, "float16", 1.0)
    with pytest.raises(ValueError, match="lse must have shape"):
        simt.attention_backward_16bit(dq, dk, dv, dout, q, k, v, out, lse[:, :1], "float16", 1.0)
    with pytest.raises(ValueError, match="contiguous last axis"):
        simt.attention_backward_16bit(dq, dk, dv, dout, np.zeros((1, 5, 2, 64), np.float16)[..., ::2], k, v, out,
                                      lse, "float16", 1.0)
    readonly = dq.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="dq is an output and must be writable"):
        simt.attention_backward_16bit(readonly, dk, dv, dout, q, k, v, out, lse, "float16", 1.0)
    with pytest.raises(ValueError, match="dq shares memory with input q"):
        simt.attention_backward_16bit(q, dk, dv, dout, q, k, v, out, lse, "float16", 1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        simt.attention_backward_16bit(dq, dk, dv, dout, q, k, v, out, lse, "float16", 1.0, dropout_p=1.0)
