"""Task metrics against independent references: scikit-learn (accuracy,
macro-F1, Matthews correlation), SciPy (Pearson, Spearman), seqeval's
documented example (entity F1) and SQuAD's evaluation rules."""

import numpy as np
import pytest

from ssl_core.tasks.metrics import (accuracy, entities, entity_scores, macro_f1, matthews_corrcoef, multi_label_scores,
                                    normalize_answer, pearson, spearman, squad_scores, token_accuracy)

sklearn_metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed, classes, n", [(0, 2, 50), (1, 3, 200), (2, 7, 31), (3, 4, 9)])
def test_classification_metrics_match_scikit_learn(seed, classes, n):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, classes + 1, n))  # some never-true class
    assert accuracy(y_true, y_pred) == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    assert matthews_corrcoef(y_true, y_pred) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_multi_label_scores_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.random((40, 5)) < 0.3
    y_pred = np.where(rng.random((40, 5)) < 0.7, y_true, rng.random((40, 5)) < 0.3)
    y_true[:, 4] = y_pred[:, 4] = False  # a label nobody has: F1 0, as zero_division=0
    scores = multi_label_scores(y_true, y_pred)
    assert scores["subset_accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    for average in ("micro", "macro"):
        assert scores[f"{average}_f1"] == pytest.approx(
            sklearn_metrics.f1_score(y_true, y_pred, average=average, zero_division=0), abs=1e-12)
    with pytest.raises(ValueError, match="arrays of one shape"):
        multi_label_scores(y_true, y_pred[:, :3])


def test_string_labels_and_degenerate_cases():
    y = np.array(["pos", "neg", "pos", "neu"])
    assert accuracy(y, y) == 1.0 and macro_f1(y, y) == 1.0 and matthews_corrcoef(y, y) == pytest.approx(1.0)
    constant = np.array(["pos"] * 4)
    assert matthews_corrcoef(y, constant) == sklearn_metrics.matthews_corrcoef(y, constant) == 0.0
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        macro_f1([], [])


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    y[::5] = y[0]  # ties
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)


def test_entity_f1_matches_seqeval_documented_example():
    # seqeval's README: f1_score of this pair is 0.50 (one of two entities found).
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = entity_scores(y_true, y_pred)
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert token_accuracy(y_true, y_pred) == pytest.approx(8 / 10)  # positions 2 and 3 of the first differ


def test_entities_read_bio_and_bioes():
    assert entities(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == \
        [("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7)]
    assert entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "B-ORG", "O", "E-ORG", "I-MISC"], "BIOES") == \
        [("PER", 0, 1), ("LOC", 1, 4)]  # a B- without its E- and a stray I- are no entities
    with pytest.raises(ValueError, match="tag 'X-PER' is not BIO"):
        entities(["X-PER"])
    with pytest.raises(ValueError, match="scheme must be"):
        entities(["O"], "IOB3")
    with pytest.raises(ValueError, match="same sequences of the same lengths"):
        entity_scores([["O", "O"]], [["O"]])


def test_squad_scores_follow_the_official_rules():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    scores = squad_scores(
        ["Eiffel Tower", "in 1889", "Paris, France", "", "something"],
        [["the Eiffel Tower"], ["1889", "the year 1889"], ["Paris"], [], []])
    # exact: 1, 0, 0, 1 (no answer, empty prediction), 0 (answered an unanswerable)
    # f1: 1, 2/3 (in 1889 vs 1889: p 1/2, r 1), 2/3 (paris france vs paris), 1, 0
    assert scores["exact_match"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3 + 1 + 0) / 5)
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        squad_scores(["a", "b"], [["a"]])
