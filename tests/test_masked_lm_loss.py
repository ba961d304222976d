import numpy as np
import pytest

import ssl_core
from ssl_core import ops

import reference

# (leading shape, V, C, labelled fraction, bias). V is a multiple of no tile
# (vocabulary blocks of 192, depth blocks of 128, SIMD widths 4, 8, 16) and C
# is a multiple of no SIMD width, except 64 to check that a whole number of
# vectors works too. Labelled rows go in chunks of 64..256 (as many as keep the
# chunk's logits near 16 MB): 350 labelled rows at V = 1000 make 2 chunks, 700
# at V = 2053 make 3, 640 at V = 101 make 3, and 300 at V = 70000 make 5
# chunks of 60.
CASES = [
    ((1,), 1, 1, 1.0, True),
    ((3,), 2, 3, 1.0, False),
    ((2, 5), 3, 17, 0.5, True),
    ((4, 33), 101, 30, 0.5, False),
    ((4, 33), 101, 64, 0.1, True),
    ((700,), 1000, 64, 0.1, True),
    ((7, 100), 1000, 3, 0.5, False),
    ((2, 350), 2053, 100, 1.0, True),
    ((300,), 2053, 17, 0.5, False),
    ((640,), 101, 1, 1.0, True),
    ((5, 60), 70000, 8, 1.0, True),
]
CASE_IDS = ["x".join(map(str, lead)) + f"-V{V}-C{C}-{frac}-{'bias' if bias else 'nobias'}"
            for lead, V, C, frac, bias in CASES]

# The loss sums per-row lse - z[label] (each a float32 dot product of C terms,
# combined in float64): measured relative errors up to 2e-7.
LOSS_TOL = 2e-6
# Gradients are sums over the vocabulary (d_hidden) or over the labelled rows
# (d_weight, d_bias) of float32 products: measured errors up to 3e-6 of the
# largest magnitude for V <= 2053. A float32 sum taken in blocks (partial sums
# from zero, then added up) stays near that for any V: at V = 70000 it is
# 4e-7 for d_hidden.
GRAD_TOL = 2e-5


def make_inputs(rng, lead, V, C, labelled=1.0, bias=True, hits=0.5, ignore_index=-100):
    """hidden (*lead, C), weight (V, C), bias (V,) or None, labels (*lead,) with
    about `labelled` of them set and about `hits` of those the row's largest
    logit (so that n_correct counts something), and how many labelled rows
    have a runner-up logit too close to the largest for float32 to order."""
    hidden = rng.standard_normal(lead + (C,)).astype(np.float32)
    weight = (rng.standard_normal((V, C)) * (2 / np.sqrt(C))).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32) if bias else None
    labels = rng.integers(0, V, lead)
    unlabelled = rng.random(lead) >= labelled
    flat = labels.reshape(-1)
    rows = np.flatnonzero(~unlabelled.reshape(-1))
    hit = rng.random(len(rows)) < hits
    ambiguous = 0
    for start in range(0, len(rows), 64):  # 64 rows of logits at a time
        chunk = rows[start:start + 64]
        z = hidden.reshape(-1, C)[chunk].astype(np.float64) @ weight.T.astype(np.float64)
        if b is not None:
            z += b
        top = z.max(-1, keepdims=True)
        ambiguous += int(((z >= top - 1e-5 * (1 + np.abs(top))).sum(-1) > 1).sum())
        chosen = hit[start:start + 64]
        flat[chunk[chosen]] = z[chosen].argmax(-1)
    labels[unlabelled] = ignore_index
    return hidden, weight, b, labels, ambiguous


def assert_close(got, want, tol, name=""):
    """float32 results against float64 ones, to tol of the largest magnitude."""
    assert got.dtype == np.float32 and got.shape == want.shape, name
    assert np.isfinite(got).all(), name
    size = np.abs(want).max(initial=0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * size, err_msg=name)


def check(hidden, weight, bias, labels, ambiguous=0, loss_atol=0.0, **options):
    """Runs masked_lm_loss with and without gradients and holds every result
    to the float64 reference; returns the result with gradients."""
    ref_loss, ref_valid, ref_correct, ref_dh, ref_dw, ref_db = reference.linear_cross_entropy(
        hidden, weight, bias, labels, options.get("ignore_index", -100), options.get("label_smoothing", 0.0),
        options.get("reduction", "mean"))
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, **options)
    assert isinstance(result, ops.MaskedLMLoss)
    assert type(result.loss) is float and type(result.n_valid) is int and type(result.n_correct) is int
    assert result.n_valid == ref_valid
    assert abs(result.n_correct - ref_correct) <= ambiguous, (result.n_correct, ref_correct)
    assert result.loss == pytest.approx(ref_loss, rel=LOSS_TOL, abs=loss_atol)
    assert_close(result.d_hidden, ref_dh, GRAD_TOL, "d_hidden")
    assert_close(result.d_weight, ref_dw, GRAD_TOL, "d_weight")
    if bias is None:
        assert result.d_bias is None
    else:
        assert_close(result.d_bias, ref_db, GRAD_TOL, "d_bias")
    unlabelled = labels == options.get("ignore_index", -100)
    assert not result.d_hidden[unlabelled].any()

    # Without gradients: the same loss and count, from the same forward pass.
    forward = ops.masked_lm_loss(hidden, weight, bias, labels, **options)
    assert forward.d_hidden is None and forward.d_weight is None and forward.d_bias is None
    assert (forward.loss, forward.n_valid, forward.n_correct) == (result.loss, result.n_valid, result.n_correct)
    return result


def loss_atol(hidden, weight, bias, labels, reduction="mean"):
    """Rounding of the loss: a float32 logit z carries an error of about
    2^-24 |z| C, which can matter when the loss is near 0 (V = 1)."""
    size = np.abs(hidden).max(initial=0) * np.abs(weight).max(initial=0) * hidden.shape[-1]
    size += 0 if bias is None else np.abs(bias).max(initial=0)
    rows = (labels != -100).sum()
    return float(1e-6 * size * (rows if reduction == "sum" else 1))


# ------------------------------------------------- the float64 reference --

@pytest.mark.parametrize("label_smoothing", [0.0, 0.3, 1.0])
def test_reference_matches_the_definition_row_by_row(rng, label_smoothing):
    """The vectorized reference against a literal reading of the definition:
    cross-entropy of softmax(W h + b) with the smoothed one-hot target."""
    hidden, weight, bias, labels, _ = make_inputs(rng, (3, 4), 6, 5, labelled=0.6)
    labels[0, 0], labels[2, 3] = 2, -100
    loss, n_valid, n_correct, d_hidden, d_weight, d_bias = reference.linear_cross_entropy(
        hidden, weight, bias, labels, -100, label_smoothing, "sum")
    total, correct, count = 0.0, 0, 0
    dw, db = np.zeros(weight.shape), np.zeros(6)
    for index in np.ndindex(labels.shape):
        if labels[index] == -100:
            assert not d_hidden[index].any()
            continue
        count += 1
        z = weight.astype(float) @ hidden[index].astype(float) + bias
        p = np.exp(z) / np.exp(z).sum()
        target = np.full(6, label_smoothing / 6)
        target[labels[index]] += 1 - label_smoothing
        total += -(target * np.log(p)).sum()
        correct += int(np.argmax(z) == labels[index])
        np.testing.assert_allclose(d_hidden[index], (p - target) @ weight.astype(float), rtol=1e-12, atol=1e-14)
        dw += np.outer(p - target, hidden[index])
        db += p - target
    assert (n_valid, n_correct) == (count, correct)
    np.testing.assert_allclose(d_weight, dw, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d_bias, db, rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(total, rel=1e-12)
    mean = reference.linear_cross_entropy(hidden, weight, bias, labels, -100, label_smoothing, "mean")
    assert mean[0] == pytest.approx(total / count, rel=1e-12)
    for summed, averaged in zip((d_hidden, d_weight, d_bias), mean[3:]):
        np.testing.assert_allclose(averaged, summed / count, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
@pytest.mark.parametrize("with_bias", [True, False])
def test_reference_gradients_match_finite_differences(rng, reduction, label_smoothing, with_bias):
    hidden, weight, bias, labels, _ = make_inputs(rng, (2, 3), 7, 4, labelled=0.7, bias=with_bias)
    labels[0, 1] = -100
    options = (-100, label_smoothing, reduction)
    _, _, _, *grads = reference.linear_cross_entropy(hidden, weight, bias, labels, *options)
    args = [a.astype(np.float64) for a in (hidden, weight, bias) if a is not None]

    def loss(*args):
        return reference.linear_cross_entropy(*args, *([None] if len(args) == 2 else []), labels, *options)[0]

    for got, numeric in zip(grads, reference.central_differences(loss, args)):
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------- against float64 --

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_float64(cpu_isa, rng, case):
    lead, V, C, labelled, with_bias = case
    hidden, weight, bias, labels, ambiguous = make_inputs(rng, lead, V, C, labelled, with_bias)
    result = check(hidden, weight, bias, labels, ambiguous, loss_atol(hidden, weight, bias, labels))
    if V > 1:
        assert result.n_correct > 0  # the hits make_inputs planted are counted


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.1, 1.0])
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[8], CASES[9]],
                         ids=[CASE_IDS[i] for i in (2, 6, 8, 9)])
def test_label_smoothing_and_sum(cpu_isa, rng, case, label_smoothing, reduction):
    lead, V, C, labelled, with_bias = case
    hidden, weight, bias, labels, ambiguous = make_inputs(rng, lead, V, C, labelled, with_bias)
    check(hidden, weight, bias, labels, ambiguous, loss_atol(hidden, weight, bias, labels, reduction),
          label_smoothing=label_smoothing, reduction=reduction)


def test_sum_is_mean_times_count(cpu_isa, rng):
    hidden, weight, bias, labels, _ = make_inputs(rng, (3, 50), 300, 20, labelled=0.4)
    mean = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, label_smoothing=0.2)
    total = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, label_smoothing=0.2,
                               reduction="sum")
    n = mean.n_valid
    assert total.n_valid == n and total.n_correct == mean.n_correct
    assert total.loss == pytest.approx(mean.loss * n, rel=1e-6)
    for a, b in zip(mean[3:], total[3:]):
        np.testing.assert_allclose(a * n, b, rtol=0, atol=1e-6 * np.abs(b).max())


def test_single_position(cpu_isa, rng):
    """hidden (C,) with a 0-d label."""
    hidden, weight, bias, _, _ = make_inputs(rng, (), 50, 9)
    result = check(hidden, weight, bias, np.array(17))
    assert result.n_valid == 1 and result.d_hidden.shape == (9,)
    result = check(hidden, weight, bias, np.array(-100))
    assert result.n_valid == 0 and result.loss == 0.0


def test_ignore_index_inside_the_vocabulary(cpu_isa, rng):
    """ignore_index may be a class: it then marks unlabelled positions, and
    -100 becomes an out-of-range label."""
    hidden, weight, bias, labels, ambiguous = make_inputs(rng, (4, 30), 50, 9, labelled=1.0)
    labels[:, ::3] = 3
    result = check(hidden, weight, bias, labels, ambiguous, ignore_index=3)
    assert result.n_valid == (labels != 3).sum() < labels.size
    labels[1, 4] = -100
    with pytest.raises(ValueError, match=r"labels\[1, 4\] = -100 is outside \[0, 50\)"):
        ops.masked_lm_loss(hidden, weight, bias, labels, ignore_index=3)


# ---------------------------------------------------------- large logits --

def large_logit_inputs(rng):
    """Integer hidden and weight whose logits are exact float32 integers near
    +-1e4 and +-3e4: rows whose logits are all near +1e4 (exp overflows), all
    near -1e4 (exp underflows), or 2e4 apart."""
    N, V, C = 140, 300, 16
    hidden = rng.integers(-1, 2, (2, N // 2, C)).astype(np.float32)
    weight = rng.integers(-1, 2, (V, C)).astype(np.float32)
    weight[:, 0] = 100
    weight[:, 1] = 0
    weight[::5, 1] = 100  # every 5th class: one more +-2e4 from the rows with h[1] != 0
    hidden[..., 0] = rng.choice([-100.0, 100.0], (2, N // 2))
    hidden[..., 1] = rng.choice([-200.0, 0.0, 0.0, 200.0], (2, N // 2))
    bias = rng.integers(-3, 4, V).astype(np.float32)
    labels = rng.integers(0, V, (2, N // 2))
    z = hidden.reshape(N, C).astype(np.float64) @ weight.T.astype(np.float64) + bias
    labels.reshape(-1)[::3] = z[::3].argmax(-1)  # some right, most far off
    labels.reshape(-1)[1::7] = -100
    return hidden, weight, bias, labels, z


@pytest.mark.parametrize("label_smoothing,reduction", [(0.0, "mean"), (0.1, "sum")])
def test_large_logits_do_not_overflow(cpu_isa, rng, label_smoothing, reduction):
    hidden, weight, bias, labels, z = large_logit_inputs(rng)
    assert z.max() > 9000 and z.min() < -9000
    assert (z.max(-1) < -9000).any() and (z.min(-1) > 9000).any() and (z.max(-1) - z.min(-1) > 19000).any()
    options = dict(label_smoothing=label_smoothing, reduction=reduction)
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, **options)
    ref_loss, ref_valid, ref_correct, *ref_grads = reference.linear_cross_entropy(
        hidden, weight, bias, labels, -100, label_smoothing, reduction)
    assert np.isfinite(result.loss)
    assert (result.n_valid, result.n_correct) == (ref_valid, ref_correct)
    # The logits are exact; the loss adds per-row log-sums of float32 exps to them.
    atol = float(1e-5 * (ref_valid if reduction == "sum" else 1))
    assert result.loss == pytest.approx(ref_loss, rel=LOSS_TOL, abs=atol)
    # The gradients use P = exp((z - max) - log(sum)) with both parts of the
    # log-sum-exp kept apart, so the size of the logits does not enter P's
    # error (a float32 lse of 3e4 alone would be off by 1.8e-3). The errors
    # are measured against what dZ = P - Y sums against.
    dz = reference.linear_cross_entropy_logit_gradient(hidden, weight, bias, labels, -100, label_smoothing,
                                                          reduction)
    tol = GRAD_TOL
    sizes = (np.abs(dz).sum(-1).max() * np.abs(weight).max(),
             np.abs(dz).sum(0).max() * np.abs(hidden).max(),
             np.abs(dz).sum(0).max())
    for name, got, want, size in zip(("d_hidden", "d_weight", "d_bias"), result[3:], ref_grads, sizes):
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * size, err_msg=name)


# --------------------------------------------------- finite differences --

TINY_CASES = [
    dict(),
    dict(label_smoothing=0.3),
    dict(reduction="sum", label_smoothing=1.0),
    dict(with_bias=False, reduction="sum"),
]


@pytest.mark.parametrize("options", TINY_CASES)
def test_gradients_match_finite_differences(cpu_isa, rng, options):
    """The op's gradients against central differences of the float64 loss, one
    coordinate at a time."""
    options = dict(options)
    with_bias = options.pop("with_bias", True)
    hidden, weight, bias, labels, _ = make_inputs(rng, (2, 3), 7, 5, labelled=0.7, bias=with_bias)
    labels[1, 0] = -100
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, **options)
    args = [a.astype(np.float64) for a in (hidden, weight, bias) if a is not None]

    def loss(*args):
        return reference.linear_cross_entropy(*args, *([None] if len(args) == 2 else []), labels, -100,
                                              options.get("label_smoothing", 0.0),
                                              options.get("reduction", "mean"))[0]

    got = [g for g in result[3:] if g is not None]
    assert len(got) == len(args)
    for g, numeric in zip(got, reference.central_differences(loss, args)):
        np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- accuracy --

def test_accuracy_counts_first_largest_logit(cpu_isa, rng):
    """One-hot hidden rows pick a column of an integer weight: exact logits
    whose argmax is known, ties included (the first largest counts), within one
    vocabulary block of 192 and across blocks."""
    V, K = 400, 7
    columns = np.zeros((V, K), np.float32)
    columns[:, 0] = rng.integers(-5, 5, V)
    columns[123, 0] = 9                       # 0: unique max at 123
    columns[:, 1] = rng.integers(-5, 5, V)
    columns[[10, 300], 1] = 8                 # 1: tie across blocks, 10 wins
    columns[:, 2] = rng.integers(-5, 5, V)
    columns[[3, 4], 2] = 7                    # 2: tie of neighbours in one block, 3 wins
    columns[:, 3] = 0                         # 3: all equal, 0 wins
    columns[:, 4] = rng.integers(-5, 5, V)
    columns[[191, 192, 399], 4] = 6           # 4: tie at the block boundary, 191 wins
    columns[:, 5] = rng.integers(-5, 5, V)
    columns[V - 1, 5] = 6                     # 5: max in the last class
    columns[:, 6] = -1
    columns[[250, 251], 6] = 2                # 6: tie inside the second block, 250 wins
    winners = [123, 10, 3, 0, 191, V - 1, 250]
    losers = [0, 300, 4, 1, 192, V - 2, 251]  # a tied class that does not win, or a smaller one
    np.testing.assert_array_equal(columns.argmax(0), winners)

    N = 600  # about 400 labelled rows: two chunks at V = 400
    pick = rng.integers(0, K, N)
    hidden = np.zeros((N, K + 2), np.float32)  # C = 9: padding columns, all zero
    hidden[np.arange(N), pick] = 1
    weight = np.zeros((V, K + 2), np.float32)
    weight[:, :K] = columns
    bias = np.zeros(V, np.float32)
    kind = rng.integers(0, 3, N)  # 0: the winner, 1: a loser, 2: ignored
    labels = np.where(kind == 0, np.take(winners, pick), np.take(losers, pick))
    labels[kind == 2] = -100
    expected = int((kind == 0).sum())
    assert 0 < expected < N - (kind == 2).sum()
    for b in (bias, None):
        result = ops.masked_lm_loss(hidden, weight, b, labels)
        assert result.n_correct == expected
        assert result.n_valid == (kind != 2).sum()
        assert reference.linear_cross_entropy(hidden, weight, b, labels)[2] == expected
    # A bias breaks column 3's all-way tie in favour of class 5.
    shifted = np.zeros(V, np.float32)
    shifted[5] = 1
    rows3 = (pick == 3) & (kind != 2)
    labels3 = np.where(rows3, 5, -100)
    assert ops.masked_lm_loss(hidden, weight, shifted, labels3).n_correct == rows3.sum() > 0
    assert ops.masked_lm_loss(hidden, weight, None, labels3).n_correct == 0


# ----------------------------------------------------------- accumulate --

def test_accumulate_adds_parameter_gradients(cpu_isa, rng):
    """V = 1000 with about 600 labelled rows: 3 chunks, the later ones adding
    to the first; C = 30 leaves a column tail narrower than a vector."""
    hidden, weight, bias, labels, _ = make_inputs(rng, (3, 250), 1000, 30, labelled=0.8)
    fresh = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True)
    unlabelled = labels == -100
    assert unlabelled.any()

    # Earlier gradients of the same size as these (another micro-batch, the
    # input side of a tied embedding).
    d_hidden = np.full_like(hidden, np.nan)
    old_weight = (rng.standard_normal(weight.shape) * np.abs(fresh.d_weight).max()).astype(np.float32)
    old_bias = (rng.standard_normal(bias.shape) * np.abs(fresh.d_bias).max()).astype(np.float32)
    d_weight, d_bias = old_weight.copy(), old_bias.copy()
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True,
                                grads=(d_hidden, d_weight, d_bias), accumulate=True)
    assert result.d_hidden is d_hidden and result.d_weight is d_weight and result.d_bias is d_bias
    assert (result.loss, result.n_valid, result.n_correct) == (fresh.loss, fresh.n_valid, fresh.n_correct)
    np.testing.assert_array_equal(d_hidden, fresh.d_hidden)  # written, not added
    assert not d_hidden[unlabelled].any()
    for got, before, new in ((d_weight, old_weight, fresh.d_weight), (d_bias, old_bias, fresh.d_bias)):
        np.testing.assert_allclose(got, before + new, rtol=0, atol=GRAD_TOL * np.abs(before + new).max())

    # Accumulated twice from zero: twice the fresh gradients.
    d_weight, d_bias = np.zeros_like(weight), np.zeros_like(bias)
    for _ in range(2):
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=(None, d_weight, d_bias),
                           accumulate=True)
    np.testing.assert_allclose(d_weight, 2 * fresh.d_weight, rtol=0, atol=GRAD_TOL * np.abs(fresh.d_weight).max())
    np.testing.assert_allclose(d_bias, 2 * fresh.d_bias, rtol=0, atol=GRAD_TOL * np.abs(fresh.d_bias).max())

    # Without accumulate every output is overwritten, NaN garbage included.
    grads = tuple(np.full_like(a, np.nan) for a in (hidden, weight, bias))
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=grads)
    for got, buffer, want in zip(result[3:], grads, fresh[3:]):
        assert got is buffer
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("old", [1.0, 10.0])
def test_accumulate_keeps_the_accuracy_of_the_added_gradient(cpu_isa, rng, old):
    """Adding to gradients larger than the new ones (a sum over many
    micro-batches) costs a few roundings at the scale of the old values,
    2^-24 |old| each (once per chunk of rows, say), not one per labelled row:
    the new gradient keeps its own accuracy."""
    hidden, weight, bias, labels, _ = make_inputs(rng, (3, 250), 1000, 30, labelled=0.8)
    fresh = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True)
    d_weight, d_bias = np.full_like(weight, old), np.full_like(bias, old)
    ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=(None, d_weight, d_bias),
                       accumulate=True)
    for name, got, new in (("d_weight", d_weight, fresh.d_weight), ("d_bias", d_bias, fresh.d_bias)):
        atol = 8 * 2.0**-24 * old + GRAD_TOL * np.abs(new).max()
        np.testing.assert_allclose(got.astype(np.float64) - old, new, rtol=0, atol=atol, err_msg=name)


def test_accumulate_without_bias(cpu_isa, rng):
    hidden, weight, _, labels, _ = make_inputs(rng, (90,), 37, 5, labelled=0.5, bias=False)
    fresh = ops.masked_lm_loss(hidden, weight, None, labels, return_grad=True)
    d_weight = np.ones_like(weight)
    result = ops.masked_lm_loss(hidden, weight, None, labels, return_grad=True, grads=(None, d_weight, None),
                                accumulate=True)
    assert result.d_bias is None and result.d_weight is d_weight
    np.testing.assert_array_equal(result.d_hidden, fresh.d_hidden)
    np.testing.assert_allclose(d_weight, 1 + fresh.d_weight, rtol=0,
                               atol=8 * 2.0**-24 + GRAD_TOL * np.abs(fresh.d_weight).max())


# ---------------------------------------------------------- no label --

@pytest.mark.parametrize("lead", [(3, 40), (0,), (2, 0)])
def test_no_labelled_position(cpu_isa, rng, lead):
    """Loss 0.0 (not NaN), zero gradients, or unchanged ones under accumulate."""
    C, V = 20, 77
    hidden = rng.standard_normal(lead + (C,)).astype(np.float32)
    weight = rng.standard_normal((V, C)).astype(np.float32)
    bias = rng.standard_normal(V).astype(np.float32)
    labels = np.full(lead, -100)
    for reduction in ("mean", "sum"):
        result = ops.masked_lm_loss(hidden, weight, bias, labels, reduction=reduction, label_smoothing=0.1)
        assert (result.loss, result.n_valid, result.n_correct) == (0.0, 0, 0)
        assert type(result.loss) is float

    grads = tuple(np.full_like(a, np.nan) for a in (hidden, weight, bias))
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=grads)
    assert (result.loss, result.n_valid, result.n_correct) == (0.0, 0, 0)
    for got, buffer in zip(result[3:], grads):
        assert got is buffer
        np.testing.assert_array_equal(got, np.zeros_like(got))

    result = ops.masked_lm_loss(hidden, weight, None, labels, return_grad=True)
    assert result.d_hidden.shape == hidden.shape and not result.d_hidden.any()
    assert result.d_weight.shape == weight.shape and not result.d_weight.any()
    assert result.d_bias is None

    d_hidden = np.full_like(hidden, 5.0)
    d_weight, d_bias = np.full_like(weight, 3.0), np.full_like(bias, -2.0)
    result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True,
                                grads=(d_hidden, d_weight, d_bias), accumulate=True)
    assert result.loss == 0.0 and result.n_valid == 0
    assert not d_hidden.any()  # d_hidden is written even under accumulate
    np.testing.assert_array_equal(d_weight, np.full_like(weight, 3.0))
    np.testing.assert_array_equal(d_bias, np.full_like(bias, -2.0))


# -------------------------------------------------------------- threads --

def test_identical_for_any_thread_count(cpu_isa, rng, num_threads):
    """About 720 labelled rows of V = 2053 (3 chunks, 11 vocabulary blocks)."""
    hidden, weight, bias, labels, _ = make_inputs(rng, (2, 400), 2053, 40, labelled=0.9)
    old = rng.standard_normal(weight.shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        plain = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, label_smoothing=0.1)
        d_weight = old.copy()
        accumulated = ops.masked_lm_loss(hidden, weight, None, labels, return_grad=True,
                                         grads=(None, d_weight, None), accumulate=True)
        results.append((plain, accumulated))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a.loss, a.n_valid, a.n_correct) == (b.loss, b.n_valid, b.n_correct)
            for x, y in zip(a[3:], b[3:]):
                if x is None:
                    assert y is None
                else:
                    np.testing.assert_array_equal(x, y)


# -------------------------------------------------------------- strides --

def test_strided_inputs(cpu_isa, rng):
    """hidden as hidden_big[..., :C] (and its rows reversed), weight as every
    other row of a wider array, labels non-contiguous: only the last axes of
    hidden and weight are contiguous."""
    B, T, C, V = 3, 90, 30, 150
    hidden_big = rng.standard_normal((B, T, C + 13)).astype(np.float32)
    weight_big = (rng.standard_normal((2 * V, C + 5)) * 0.4).astype(np.float32)
    hidden = hidden_big[:, :, 3:C + 3]
    weight = weight_big[::2, 2:C + 2]
    bias = rng.standard_normal(V).astype(np.float32)
    labels_big = rng.integers(0, V, (T, 2 * B))
    labels_big[rng.random((T, 2 * B)) < 0.4] = -100
    labels = labels_big[:, ::2].T  # (B, T), strided both ways
    assert not hidden.flags.c_contiguous and not weight.flags.c_contiguous and not labels.flags.c_contiguous
    check(hidden, weight, bias, labels)
    contiguous = ops.masked_lm_loss(np.ascontiguousarray(hidden), np.ascontiguousarray(weight), bias,
                                    np.ascontiguousarray(labels), return_grad=True)
    strided = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True)
    assert strided.loss == contiguous.loss and strided.n_correct == contiguous.n_correct
    for a, b in zip(strided[3:], contiguous[3:]):
        np.testing.assert_array_equal(a, b)

    flat = hidden_big[0, ::-1, :C]  # rows a negative stride apart
    check(flat, weight, bias, labels[0, ::-1])
    check(hidden_big[:, 5, :C], weight, None, labels[:, 0])  # rows T * (C + 13) floats apart


def test_strided_gradient_outputs(cpu_isa, rng):
    """d_hidden and d_weight written into slices of wider arrays; nothing outside them."""
    B, T, C, V = 2, 70, 17, 90
    hidden, weight, bias, labels, _ = make_inputs(rng, (B, T), V, C, labelled=0.5)
    expected = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True)
    dh_wide = np.full((B, T, C + 7), 9.0, np.float32)
    dw_wide = np.full((V, 2 * C), 9.0, np.float32)
    for accumulate in (False, True):
        dw_wide[:, C:] = 0
        result = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, accumulate=accumulate,
                                    grads=(dh_wide[..., 7:], dw_wide[:, C:], np.zeros_like(bias)))
        assert np.shares_memory(result.d_hidden, dh_wide) and np.shares_memory(result.d_weight, dw_wide)
        np.testing.assert_array_equal(dh_wide[..., 7:], expected.d_hidden)
        np.testing.assert_allclose(dw_wide[:, C:], expected.d_weight, rtol=0,
                                   atol=1e-7 * np.abs(expected.d_weight).max())
        assert (dh_wide[..., :7] == 9).all() and (dw_wide[:, :C] == 9).all()


# ---------------------------------------------------------------- labels --

@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.uint64, np.int8])
def test_integer_label_dtypes(cpu_isa, rng, dtype):
    hidden, weight, bias, labels, _ = make_inputs(rng, (4, 60), 100, 12, labelled=0.6)
    expected = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True)
    ignore_index = -100 if np.iinfo(dtype).min < 0 else int(np.iinfo(dtype).max)
    typed = np.where(labels == -100, 0, labels).astype(dtype)
    typed[labels == -100] = ignore_index
    result = ops.masked_lm_loss(hidden, weight, bias, typed, return_grad=True, ignore_index=ignore_index)
    assert (result.loss, result.n_valid, result.n_correct) == (expected.loss, expected.n_valid, expected.n_correct)
    for a, b in zip(result[3:], expected[3:]):
        np.testing.assert_array_equal(a, b)


def test_unsigned_labels_with_default_ignore_index(cpu_isa, rng):
    """uint8 labels cannot hold -100: every position is labelled."""
    hidden, weight, bias, labels, _ = make_inputs(rng, (3, 20), 100, 12, labelled=1.0)
    result = ops.masked_lm_loss(hidden, weight, bias, labels.astype(np.uint8))
    assert result.n_valid == labels.size
    assert result.loss == pytest.approx(reference.linear_cross_entropy(hidden, weight, bias, labels)[0], rel=1e-6)


# ------------------------------------------------------------ bad input --

@pytest.fixture
def small(rng):
    """Valid arguments: hidden (2, 4, 8), weight (10, 8), bias (10,), labels (2, 4)."""
    hidden = rng.standard_normal((2, 4, 8)).astype(np.float32)
    weight = rng.standard_normal((10, 8)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    labels = rng.integers(0, 10, (2, 4))
    labels[0, 1] = -100
    return hidden, weight, bias, labels


def test_rejects_out_of_range_labels(small):
    hidden, weight, bias, labels = small
    bad = labels.copy()
    bad[1, 2] = 10
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 10 is outside \[0, 10\)"):
        ops.masked_lm_loss(hidden, weight, bias, bad)
    bad = labels.copy()
    bad[0, 3] = -1  # negative, and not the ignore_index
    with pytest.raises(ValueError, match=r"labels\[0, 3\] = -1 is outside \[0, 10\)"):
        ops.masked_lm_loss(hidden, weight, bias, bad)
    bad[1, 0] = 99  # the first bad position is named
    with pytest.raises(ValueError, match=r"labels\[0, 3\]"):
        ops.masked_lm_loss(hidden, weight, bias, bad, return_grad=True)
    bad = labels.copy()
    bad[0, 1] = -100
    with pytest.raises(ValueError, match=r"labels\[0, 1\] = -100"):
        ops.masked_lm_loss(hidden, weight, bias, bad, ignore_index=-1)
    # uint64 2^64 - 1 would wrap to -1 in int64: the range is checked before any cast.
    huge = np.where(labels == -100, 0, labels).astype(np.uint64)
    huge[1, 1] = 2**64 - 1
    with pytest.raises(ValueError, match=r"labels\[1, 1\] = 18446744073709551615"):
        ops.masked_lm_loss(hidden, weight, bias, huge)
    huge[1, 1] = 2**63
    with pytest.raises(ValueError, match=r"labels\[1, 1\]"):
        ops.masked_lm_loss(hidden, weight, bias, huge)
    with pytest.raises(ValueError, match=r"labels\[\] = 10 is outside"):  # a 0-d label
        ops.masked_lm_loss(hidden[0, 0], weight, bias, np.array(10))


def test_rejects_bad_label_types_and_shapes(small):
    hidden, weight, bias, labels = small
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray of integers, got an array of float64"):
        ops.masked_lm_loss(hidden, weight, bias, labels.astype(np.float64))
    with pytest.raises(TypeError, match="labels"):
        ops.masked_lm_loss(hidden, weight, bias, labels.astype(bool))
    with pytest.raises(TypeError, match="labels"):
        ops.masked_lm_loss(hidden, weight, bias, labels.tolist())
    with pytest.raises(ValueError, match=r"labels must have the shape of hidden without its last axis, "
                                         r"\(2, 4\), got \(2, 3\)"):
        ops.masked_lm_loss(hidden, weight, bias, labels[:, :3])
    with pytest.raises(ValueError, match="labels must have the shape"):
        ops.masked_lm_loss(hidden, weight, bias, labels.reshape(-1))


def test_rejects_bad_arrays(small):
    hidden, weight, bias, labels = small
    with pytest.raises(TypeError, match="hidden must have dtype float32, got float64"):
        ops.masked_lm_loss(hidden.astype(np.float64), weight, bias, labels)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        ops.masked_lm_loss(hidden, weight.astype(np.float16), bias, labels)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        ops.masked_lm_loss(hidden, weight, bias.astype(np.float64), labels)
    with pytest.raises(TypeError, match="hidden must be a numpy.ndarray"):
        ops.masked_lm_loss(hidden.tolist(), weight, bias, labels)
    with pytest.raises(TypeError, match="bias must be a numpy.ndarray"):
        ops.masked_lm_loss(hidden, weight, bias.tolist(), labels)
    with pytest.raises(ValueError, match=r"weight must have shape \(vocab, 8\) to match hidden \(2, 4, 8\), "
                                         r"got \(10, 7\)"):
        ops.masked_lm_loss(hidden, weight[:, :7].copy(), bias, labels)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.masked_lm_loss(hidden, weight[None], bias, labels)
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\), got \(9,\)"):
        ops.masked_lm_loss(hidden, weight, bias[:9], labels)
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\), got \(1, 10\)"):
        ops.masked_lm_loss(hidden, weight, bias[None], labels)
    with pytest.raises(ValueError, match="weight must have between 1 and 2\\^24 rows"):
        ops.masked_lm_loss(hidden, weight[:0], None, np.full((2, 4), -100))
    with pytest.raises(ValueError, match="at least one feature"):
        ops.masked_lm_loss(hidden[..., :0], weight[:, :0], None, labels)
    with pytest.raises(ValueError, match="hidden must have a contiguous last axis"):
        ops.masked_lm_loss(hidden[..., ::2], weight[:, :4].copy(), bias, labels)
    with pytest.raises(ValueError, match="weight must have a contiguous last axis"):
        ops.masked_lm_loss(hidden, np.asfortranarray(weight), bias, labels)
    with pytest.raises(ValueError, match="bias must be C-contiguous"):
        ops.masked_lm_loss(hidden, weight, np.zeros(20, np.float32)[::2], labels)


def test_rejects_bad_options(small):
    hidden, weight, bias, labels = small
    for eps in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\]"):
            ops.masked_lm_loss(hidden, weight, bias, labels, label_smoothing=eps)
    for reduction in ("none", "MEAN", None):
        with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
            ops.masked_lm_loss(hidden, weight, bias, labels, reduction=reduction)
    with pytest.raises(ValueError, match="grads .* needs return_grad=True"):
        ops.masked_lm_loss(hidden, weight, bias, labels, grads=(None, np.zeros_like(weight), None))
    with pytest.raises(ValueError, match="accumulate need return_grad=True"):
        ops.masked_lm_loss(hidden, weight, bias, labels, accumulate=True)
    with pytest.raises(ValueError, match="accumulate=True adds to existing gradients: pass d_weight"):
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, accumulate=True)
    with pytest.raises(ValueError, match="accumulate=True adds to existing gradients: pass d_weight"):
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, accumulate=True,
                           grads=(None, np.zeros_like(weight), None))  # d_bias missing while bias is given
    with pytest.raises(ValueError, match="d_bias was given but bias is None"):
        ops.masked_lm_loss(hidden, weight, None, labels, return_grad=True,
                           grads=(None, None, np.zeros(10, np.float32)))
    with pytest.raises(TypeError, match=r"grads must be a tuple \(d_hidden, d_weight, d_bias\)"):
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=np.zeros_like(weight))
    with pytest.raises(TypeError, match="grads must be a tuple"):
        ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=(None, None))


def test_rejects_bad_outputs(small):
    hidden, weight, bias, labels = small
    run = lambda grads, **kw: ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, grads=grads, **kw)
    with pytest.raises(ValueError, match="d_weight shares memory with input weight"):
        run((None, weight, None))
    with pytest.raises(ValueError, match="d_hidden shares memory with input hidden"):
        run((hidden, None, None))
    with pytest.raises(ValueError, match="d_bias shares memory with input bias"):
        run((None, None, bias))
    with pytest.raises(ValueError, match="d_weight shares memory with input weight"):
        run((None, weight, np.zeros_like(bias)), accumulate=True)
    shared = np.zeros(90, np.float32)
    with pytest.raises(ValueError, match="outputs d_weight and d_bias share memory"):
        run((None, shared[:80].reshape(10, 8), shared[75:85]))
    with pytest.raises(ValueError, match="outputs d_hidden and d_weight share memory"):
        run((shared[:64].reshape(2, 4, 8), shared[10:90].reshape(10, 8), None))
    readonly = np.zeros_like(weight)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="d_weight must be a writable array"):
        run((None, readonly, None))
    readonly = np.zeros_like(hidden)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="d_hidden must be a writable array"):
        run((readonly, None, None))
    with pytest.raises(ValueError, match=r"d_hidden must have shape \(2, 4, 8\), got \(2, 4, 9\)"):
        run((np.zeros((2, 4, 9), np.float32), None, None))
    with pytest.raises(ValueError, match=r"d_weight must have shape \(10, 8\)"):
        run((None, np.zeros((11, 8), np.float32), None))
    with pytest.raises(ValueError, match=r"d_bias must have shape \(10,\)"):
        run((None, None, np.zeros(11, np.float32)))
    with pytest.raises(TypeError, match="d_bias must have dtype float32"):
        run((None, None, np.zeros(10, np.float64)))
    with pytest.raises(TypeError, match="d_weight must be a numpy.ndarray"):
        run((None, np.zeros((10, 8)).tolist(), None))
    with pytest.raises(ValueError, match="d_hidden has rows that overlap"):
        run((np.lib.stride_tricks.as_strided(np.zeros(64, np.float32), (2, 4, 8), (64, 16, 4)), None, None))


# ------------------------------------------------------ the raw binding --

def raw(hidden, weight, bias, rows, targets, grads=False, **outputs):
    return ssl_core._C.linear_cross_entropy(
        hidden, weight, bias, rows, targets, outputs.pop("label_smoothing", 0.0), outputs.pop("grad_scale", 1.0),
        grads, outputs.pop("d_hidden", None), outputs.pop("d_weight", None), outputs.pop("d_bias", None),
        outputs.pop("accumulate", False))


def test_raw_binding_checks_rows_and_targets(small):
    """Called directly, the kernel entry point still refuses anything that would
    read or write out of bounds."""
    hidden, weight, bias, _ = small
    hidden = hidden.reshape(8, 8)
    loss_sum, correct = raw(hidden, weight, bias, np.array([1, 2, 7]), np.array([0, 9, 3]))
    ref = reference.linear_cross_entropy(hidden, weight, bias, np.array([-100, 0, 9, -100, -100, -100, -100, 3]),
                                         reduction="sum")
    assert loss_sum == pytest.approx(ref[0], rel=LOSS_TOL) and correct == ref[2]
    for rows, targets, message in [
        (np.array([3, 1]), np.array([0, 1]), r"rows must be strictly increasing .* got rows\[1\] = 1"),
        (np.array([1, 1]), np.array([0, 1]), r"rows\[1\] = 1"),
        (np.array([1, 8]), np.array([0, 1]), r"in \[0, 8\), got rows\[1\] = 8"),
        (np.array([-1, 2]), np.array([0, 1]), r"rows\[0\] = -1"),
        (np.array([2**62, 2**63 - 1]), np.array([0, 1]), r"rows\[0\]"),
        (np.array([1, 2]), np.array([0, 10]), r"targets\[1\] = 10 is outside \[0, 10\)"),
        (np.array([1, 2]), np.array([-5, 1]), r"targets\[0\] = -5"),
        (np.array([1, 2]), np.array([1]), "rows and targets must have the same length, got 2 and 1"),
    ]:
        for grads in (False, True):
            with pytest.raises(ValueError, match=message):
                raw(hidden, weight, bias, rows, targets, grads)
    for rows in (np.array([1, 2], np.int32), np.array([1, 5, 2, 6])[::2], np.array([[1, 2]]), [1, 2]):
        with pytest.raises(TypeError, match="rows must be a C-contiguous 1-d numpy.ndarray of int64"):
            raw(hidden, weight, bias, rows, np.array([0, 1]))
    with pytest.raises(TypeError, match="targets must be"):
        raw(hidden, weight, bias, np.array([1, 2]), np.array([0, 1], np.uint64))
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        raw(hidden, weight, bias, np.array([1]), np.array([1]), grad_scale=float("nan"))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        raw(hidden, weight, bias, np.array([1]), np.array([1]), label_smoothing=2.0)
    with pytest.raises(ValueError, match="gradient outputs and accumulate need return_grad=True"):
        raw(hidden, weight, bias, np.array([1]), np.array([1]), d_weight=np.zeros_like(weight))


def test_normalizer_divides_the_sum_instead_of_the_count(rng):
    hidden, weight, bias, labels, _ = make_inputs(rng, (30,), 50, 8, labelled=0.5)
    summed = ops.masked_lm_loss(hidden, weight, bias, labels, reduction="sum", return_grad=True)
    scaled = ops.masked_lm_loss(hidden, weight, bias, labels, normalizer=123, return_grad=True)
    assert scaled.loss == pytest.approx(summed.loss / 123, rel=1e-6)
    for got, want in zip(scaled[3:], summed[3:]):
        np.testing.assert_allclose(got, want / 123, rtol=1e-5, atol=1e-9)
    for bad in (0, -2.0):
        with pytest.raises(ValueError, match="normalizer must be a positive count"):
            ops.masked_lm_loss(hidden, weight, bias, labels, normalizer=bad)
    with pytest.raises(ValueError, match="normalizer"):
        ops.masked_lm_loss(hidden, weight, bias, labels, normalizer=5, reduction="sum")
