"""The fused linear + cross-entropy CUDA kernel (csrc/cuda/linear_cross_entropy.cu)
on the CPU emulator: loss, correct count and gradients against the CPU op
(ssl_core._C.linear_cross_entropy) and a float64 NumPy reference
(tests/reference.py), deterministic under both emulator schedules.

The kernel tiles 64 rows x 64 vocabulary entries with a 32-deep K slice,
walks 4 vocabulary tiles per split of the logits, splits the vocabulary of
d_hidden = dZ W into parts of >= 512 entries and takes labelled rows in
chunks of at most 256: the shapes below make V and C multiples of none of
these, larger than one tile, several splits and two chunks."""

import numpy as np
import pytest

from ssl_core import _C

import reference

LOSS_RTOL = 1e-5
GRAD_TOL = 2e-5  # of the largest magnitude: float32 sums of up to a few hundred products


def make_problem(rng, N, V, C, labelled=1.0, bias=True, hits=0.5, strided=False, magnitude=1.0):
    """hidden (N, C) (a column slice of a wider array when `strided`), weight
    (V, C), bias or None, and the labelled rows with their int64 targets,
    about `hits` of them the row's largest logit so the correct count is not 0."""
    if strided:
        hidden = rng.standard_normal((N, C + 5)).astype(np.float32)[:, :C]
    else:
        hidden = rng.standard_normal((N, C)).astype(np.float32)
    hidden *= np.float32(magnitude)
    weight = (rng.standard_normal((V, C)) * (2 / np.sqrt(C))).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32) if bias else None
    rows = np.flatnonzero(rng.random(N) < labelled).astype(np.int64)
    targets = rng.integers(0, V, len(rows)).astype(np.int64)
    z = hidden[rows].astype(np.float64) @ weight.T.astype(np.float64)
    if b is not None:
        z += b
    hit = rng.random(len(rows)) < hits
    if len(rows):
        targets[hit] = z[hit].argmax(-1)
    return hidden, weight, b, rows, targets


def labels_of(N, rows, targets):
    labels = np.full(N, -100, np.int64)
    labels[rows] = targets
    return labels


def run_simt(simt, hidden, weight, bias, rows, targets, grads=True, eps=0.0, scale=1.0, accumulate=False,
             init=None):
    """The kernel's (loss_sum, correct, d_hidden, d_weight, d_bias); outputs
    start as NaN (or `init`'s copies) so that anything left unwritten shows."""
    if not grads:
        loss, correct = simt.linear_cross_entropy(None, None, None, hidden, weight, bias, rows, targets,
                                                  label_smoothing=eps, grad_scale=scale)
        return loss, correct, None, None, None
    if init is None:
        d_hidden = np.full(hidden.shape, np.nan, np.float32)
        d_weight = np.full(weight.shape, np.nan, np.float32)
        d_bias = None if bias is None else np.full(bias.shape, np.nan, np.float32)
    else:
        d_hidden, d_weight, d_bias = (None if a is None else a.copy() for a in init)
    loss, correct = simt.linear_cross_entropy(d_hidden, d_weight, d_bias, hidden, weight, bias, rows, targets,
                                              label_smoothing=eps, grad_scale=scale, accumulate=accumulate)
    assert isinstance(loss, float) and isinstance(correct, int)
    return loss, correct, d_hidden, d_weight, d_bias


def run_cpu(hidden, weight, bias, rows, targets, eps=0.0, scale=1.0):
    """The CPU op's (loss_sum, correct, d_hidden, d_weight, d_bias)."""
    return _C.linear_cross_entropy(np.ascontiguousarray(hidden), weight, bias, rows, targets, float(eps),
                                   float(scale), True, None, None, None, False)


def assert_grad_close(got, want, name, floor):
    """To GRAD_TOL of the largest magnitude, or of `floor` (the size of one
    dz, grad_scale) where the gradients are all near 0 (V = 1: rounding noise)."""
    assert got.dtype == np.float32 and got.shape == want.shape, name
    assert np.isfinite(got).all(), name
    size = max(np.abs(want).max(initial=0.0), floor)
    np.testing.assert_allclose(got, want, rtol=0, atol=GRAD_TOL * size, err_msg=name)


def check_against_references(got, hidden, weight, bias, rows, targets, eps, scale):
    loss, correct, d_hidden, d_weight, d_bias = got
    N = hidden.shape[0]
    ref_loss, _, ref_correct, ref_dh, ref_dw, ref_db = reference.linear_cross_entropy(
        hidden, weight, bias, labels_of(N, rows, targets), label_smoothing=eps, reduction="sum")
    cpu = run_cpu(hidden, weight, bias, rows, targets, eps, scale)
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=1e-6)
    np.testing.assert_allclose(loss, cpu[0], rtol=LOSS_RTOL, atol=1e-6)
    assert correct == cpu[1] == ref_correct
    if d_hidden is None:
        return
    assert_grad_close(d_hidden, ref_dh * scale, "d_hidden", abs(scale))
    assert_grad_close(d_weight, ref_dw * scale, "d_weight", abs(scale))
    assert_grad_close(d_hidden, cpu[2].astype(np.float64), "d_hidden vs CPU", abs(scale))
    assert_grad_close(d_weight, cpu[3].astype(np.float64), "d_weight vs CPU", abs(scale))
    if bias is None:
        assert d_bias is None
    else:
        assert_grad_close(d_bias, ref_db * scale, "d_bias", abs(scale))
        assert_grad_close(d_bias, cpu[4].astype(np.float64), "d_bias vs CPU", abs(scale))
    unlabelled = np.setdiff1d(np.arange(N), rows)
    assert (d_hidden[unlabelled] == 0).all()


# (N, V, C, labelled fraction, bias, label_smoothing, grad_scale ("mean": 1 / count), strided hidden)
CASES = [
    (1, 1, 1, 1.0, True, 0.0, 1.0, False),           # V = 1: every loss is 0, every dz 0
    (3, 2, 3, 1.0, False, 0.1, "mean", False),
    (37, 150, 45, 0.5, True, 0.1, "mean", True),     # 3 vocabulary tiles, 2 K slices, row stride 50
    (70, 300, 70, 0.8, False, 0.0, 0.5, False),      # 5 vocabulary tiles: 2 splits; 2 column tiles of C
    (300, 70, 20, 1.0, True, 0.2, "mean", False),    # every row labelled: chunks of 256 and 44 rows
    (100, 5000, 9, 0.9, True, 0.1, "mean", False),   # 79 vocabulary tiles: 20 splits; d_hidden: 10 splits
    (40, 1100, 30, 0.7, False, 0.0, 1.0, False),     # d_hidden: 3 vocabulary splits (384, 384, 332)
    (50, 1, 8, 0.5, True, 0.3, 1.0, False),          # V = 1 over several rows
    (10, 40, 130, 0.3, False, 0.0, 2.0, True),       # C = 130: 3 column tiles, 5 K slices
]
CASE_IDS = [f"N{c[0]}-V{c[1]}-C{c[2]}-{c[3]}-{'bias' if c[4] else 'nobias'}-eps{c[5]}-{c[6]}" for c in CASES]


@pytest.mark.parametrize("N,V,C,labelled,bias,eps,scale,strided", CASES, ids=CASE_IDS)
def test_matches_cpu_and_reference(simt, rng, N, V, C, labelled, bias, eps, scale, strided):
    hidden, weight, b, rows, targets = make_problem(rng, N, V, C, labelled, bias, strided=strided)
    scale = 1.0 / len(rows) if scale == "mean" else scale
    got = run_simt(simt, hidden, weight, b, rows, targets, eps=eps, scale=scale)
    check_against_references(got, hidden, weight, b, rows, targets, eps, scale)
    loss_only = run_simt(simt, hidden, weight, b, rows, targets, grads=False, eps=eps, scale=scale)
    assert loss_only[:2] == got[:2]  # the same sums, with or without gradients


@pytest.mark.parametrize("N,V,C", [(70, 300, 70), (300, 150, 20), (40, 1100, 30)])
def test_schedules_identical(simt, simt_schedule, rng, N, V, C):
    hidden, weight, b, rows, targets = make_problem(rng, N, V, C, 0.9, True)
    results = []
    for schedule in ("forward", "reverse"):
        simt_schedule(schedule)
        results.append(run_simt(simt, hidden, weight, b, rows, targets, eps=0.1, scale=0.25))
    (loss_f, correct_f, *grads_f), (loss_r, correct_r, *grads_r) = results
    assert loss_f == loss_r and correct_f == correct_r
    for f, r in zip(grads_f, grads_r):
        np.testing.assert_array_equal(f, r)


def test_repeatable(simt, rng):
    hidden, weight, b, rows, targets = make_problem(rng, 20, 130, 33, 0.7, True)
    first = run_simt(simt, hidden, weight, b, rows, targets, eps=0.05)
    second = run_simt(simt, hidden, weight, b, rows, targets, eps=0.05)
    assert first[:2] == second[:2]
    for a, c in zip(first[2:], second[2:]):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("bias", [True, False])
def test_accumulate(simt, rng, bias):
    hidden, weight, b, rows, targets = make_problem(rng, 40, 100, 40, 0.5, bias)
    init = (rng.standard_normal(hidden.shape).astype(np.float32),  # d_hidden: overwritten all the same
            rng.standard_normal(weight.shape).astype(np.float32),
            rng.standard_normal(weight.shape[0]).astype(np.float32) if bias else None)
    fresh = run_simt(simt, hidden, weight, b, rows, targets, eps=0.1, scale=0.5)
    added = run_simt(simt, hidden, weight, b, rows, targets, eps=0.1, scale=0.5, accumulate=True, init=init)
    assert added[:2] == fresh[:2]
    np.testing.assert_array_equal(added[2], fresh[2])
    np.testing.assert_allclose(added[3], init[1] + fresh[3], rtol=1e-6, atol=1e-6)
    if bias:
        np.testing.assert_allclose(added[4], init[2] + fresh[4], rtol=1e-6, atol=1e-6)


def test_no_labelled_rows(simt, rng):
    hidden, weight, b, _, _ = make_problem(rng, 6, 10, 7, 1.0, True)
    empty = np.zeros(0, np.int64)
    loss, correct, d_hidden, d_weight, d_bias = run_simt(simt, hidden, weight, b, empty, empty)
    assert (loss, correct) == (0.0, 0)
    assert (d_hidden == 0).all() and (d_weight == 0).all() and (d_bias == 0).all()
    init = (np.ones(hidden.shape, np.float32), np.ones(weight.shape, np.float32), np.ones(10, np.float32))
    _, _, d_hidden, d_weight, d_bias = run_simt(simt, hidden, weight, b, empty, empty, accumulate=True, init=init)
    assert (d_hidden == 0).all() and (d_weight == 1).all() and (d_bias == 1).all()
    assert simt.linear_cross_entropy(None, None, None, hidden, weight, b, empty, empty) == (0.0, 0)


def test_large_logits(simt, rng):
    """Integer inputs whose logits are exact float32 integers near +-1e4 and
    +-3e4 (as in test_masked_lm_loss.py): rows whose logits are all near +1e4
    (exp overflows), all near -1e4 (exp underflows), or 2e4 apart. The row
    max and log-sum stay apart, so the probabilities keep float32 accuracy."""
    N, V, C = 60, 300, 16
    hidden = rng.integers(-1, 2, (N, C)).astype(np.float32)
    weight = rng.integers(-1, 2, (V, C)).astype(np.float32)
    weight[:, 0] = 100
    weight[:, 1] = 0
    weight[::5, 1] = 100
    hidden[:, 0] = rng.choice([-100.0, 100.0], N)
    hidden[:, 1] = rng.choice([-200.0, 0.0, 0.0, 200.0], N)
    bias = rng.integers(-3, 4, V).astype(np.float32)
    z = hidden.astype(np.float64) @ weight.T.astype(np.float64) + bias
    assert z.max() > 9000 and z.min() < -9000 and (z.max(-1) - z.min(-1) > 19000).any()
    rows = np.flatnonzero(np.arange(N) % 7 != 1).astype(np.int64)
    targets = rng.integers(0, V, len(rows)).astype(np.int64)
    targets[::3] = z[rows[::3]].argmax(-1)
    eps, scale = 0.1, 1.0 / len(rows)
    loss, correct, d_hidden, d_weight, d_bias = run_simt(simt, hidden, weight, bias, rows, targets, eps=eps,
                                                         scale=scale)
    ref_loss, _, ref_correct, ref_dh, ref_dw, ref_db = reference.linear_cross_entropy(
        hidden, weight, bias, labels_of(N, rows, targets), label_smoothing=eps, reduction="sum")
    assert correct == ref_correct == run_cpu(hidden, weight, bias, rows, targets, eps, scale)[1]
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL, abs=1e-5 * len(rows))
    # Errors measured against what dZ = P - Y sums against (as the CPU test does).
    dz = reference.linear_cross_entropy_logit_gradient(hidden, weight, bias, labels_of(N, rows, targets), -100,
                                                          eps, "sum") * scale
    sizes = (np.abs(dz).sum(-1).max() * np.abs(weight).max(), np.abs(dz).sum(0).max() * np.abs(hidden).max(),
             np.abs(dz).sum(0).max())
    for name, got, want, size in zip(("d_hidden", "d_weight", "d_bias"), (d_hidden, d_weight, d_bias),
                                     (ref_dh, ref_dw, ref_db), sizes):
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, want * scale, rtol=0, atol=GRAD_TOL * size, err_msg=name)


def test_correct_counts_first_largest_logit(simt):
    """Exact ties between vocabulary entries in different tiles and splits:
    only the first largest logit counts as correct."""
    V, C = 600, 4
    weight = np.zeros((V, C), np.float32)
    weight[:, 0] = np.arange(V) % 7  # logits h0 * (v % 7): many ties
    weight[[5, 300, 599], 1] = 10.0  # rows with h1 = 1: three tied maxima in splits 0, 1 and 2
    hidden = np.zeros((6, C), np.float32)
    hidden[:, 0] = 1.0
    hidden[3:, 1] = 1.0
    rows = np.arange(6, dtype=np.int64)
    targets = np.array([6, 13, 0, 5, 300, 599], np.int64)  # first max of rows 0..2 is v = 6
    loss, correct, *_ = run_simt(simt, hidden, weight, None, rows, targets)
    assert correct == 2  # rows 0 and 3
    assert correct == run_cpu(hidden, weight, None, rows, targets)[1]
    ref_loss = reference.linear_cross_entropy(hidden, weight, None, labels_of(6, rows, targets), reduction="sum")[0]
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL)


def test_out_of_range_labels_are_skipped(simt, rng):
    """Device labels are not checked on the host: a row or target out of range
    is skipped (no loss, no gradient), never read or written out of bounds."""
    hidden, weight, b, rows, targets = make_problem(rng, 30, 80, 20, 0.6, True)
    bad_rows, bad_targets = rows.copy(), targets.copy()
    bad_targets[1], bad_targets[-1] = 80, -3
    bad_rows = np.append(bad_rows, [30, 1 << 40])  # past the last row of hidden
    bad_targets = np.append(bad_targets, [0, 1])
    keep = np.ones(len(rows), bool)
    keep[[1, -1]] = False
    got = run_simt(simt, hidden, weight, b, bad_rows, bad_targets)
    want = run_simt(simt, hidden, weight, b, rows[keep], targets[keep])
    assert got[:2] == want[:2]
    for g, w in zip(got[2:], want[2:]):
        np.testing.assert_array_equal(g, w)
    assert (got[2][rows[[1, -1]]] == 0).all()


def test_bad_arguments(simt, rng):
    hidden, weight, b, rows, targets = make_problem(rng, 8, 12, 5, 1.0, True)
    d_hidden, d_weight, d_bias = np.zeros_like(hidden), np.zeros_like(weight), np.zeros_like(b)
    f = simt.linear_cross_entropy

    def call(**changes):
        args = dict(d_hidden=d_hidden, d_weight=d_weight, d_bias=d_bias, hidden=hidden, weight=weight, bias=b,
                    rows=rows, targets=targets)
        args.update(changes)
        return f(**args)

    with pytest.raises(TypeError, match="hidden"):
        call(hidden=hidden.astype(np.float64))
    with pytest.raises(TypeError, match="weight"):
        call(weight=[[1.0]])
    with pytest.raises(TypeError, match="rows.*int64"):
        call(rows=rows.astype(np.int32))
    with pytest.raises(TypeError, match="targets.*int64"):
        call(targets=targets.astype(np.float32))
    with pytest.raises(ValueError, match=r"weight must have shape \(vocab, 5\)"):
        call(weight=weight[:, :4].copy(), d_weight=d_weight[:, :4].copy())
    with pytest.raises(ValueError, match=r"bias must have shape \(12,\)"):
        call(bias=b[:11].copy())
    with pytest.raises(ValueError, match="same length"):
        call(targets=targets[:-1].copy())
    with pytest.raises(ValueError, match="rows must be a 1-d"):
        call(rows=rows.reshape(2, -1).copy())
    with pytest.raises(ValueError, match="label_smoothing"):
        call(label_smoothing=1.5)
    with pytest.raises(ValueError, match="grad_scale"):
        call(grad_scale=float("nan"))
    with pytest.raises(ValueError, match=r"d_hidden must have the shape of hidden, \(8, 5\)"):
        call(d_hidden=np.zeros((7, 5), np.float32))
    with pytest.raises(ValueError, match=r"d_weight must have the shape of weight, \(12, 5\)"):
        call(d_weight=np.zeros((13, 5), np.float32))
    with pytest.raises(ValueError, match=r"d_bias must have shape \(12,\)"):
        call(d_bias=np.zeros(13, np.float32))
    with pytest.raises(ValueError, match="d_weight must be given"):
        call(d_weight=None)
    with pytest.raises(ValueError, match="d_bias was given but bias is None"):
        call(bias=None)
    with pytest.raises(ValueError, match="must be None when d_hidden is None"):
        call(d_hidden=None)
    with pytest.raises(ValueError, match="accumulate"):
        f(None, None, None, hidden, weight, b, rows, targets, accumulate=True)
    readonly = np.zeros_like(weight)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="d_weight.*writable"):
        call(d_weight=readonly)
    with pytest.raises(ValueError, match="contiguous last axis"):
        call(hidden=np.zeros((8, 10), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="d_hidden shares memory with input hidden"):
        call(d_hidden=hidden)
    with pytest.raises(ValueError, match="more|only"):
        many = np.arange(9, dtype=np.int64)
        call(rows=many, targets=many)
    # Nothing above touched the outputs.
    assert (d_hidden == 0).all() and (d_weight == 0).all() and (d_bias == 0).all()
