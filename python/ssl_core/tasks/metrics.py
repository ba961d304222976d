"""Evaluation metrics of the downstream tasks.

- Classification: accuracy, macro-F1 (the unweighted mean of each class's F1
  over the classes present in the truth or the predictions, 0 for a class
  never predicted), Matthews correlation (the multi-class form of Gorodkin,
  2004).
- Multi-label classification: subset accuracy (all of a text's labels
  right), micro-F1 (over every text-label decision) and macro-F1 (the mean
  of each label's F1).
- Regression: Pearson and Spearman correlation (ties get their average rank).
- Tagging: token accuracy, and entity-level precision / recall / F1 over
  typed spans read from BIO or BIOES tags, micro-averaged as conlleval does.
  In BIO an I-X that does not continue an X entity starts one (conlleval's
  reading); in BIOES a span is only what is well formed (S-X, or B-X I-X* E-X).
- Extractive QA: SQuAD's exact match and token F1 after its normalization
  (lower case, punctuation and the articles a/an/the removed, whitespace
  collapsed), the best over the gold answers; an unanswerable question (no
  gold answers, SQuAD 2.0) scores 1 only for an empty prediction.
"""

import collections
import re
import string

import numpy as np


def accuracy(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    scores = []
    for label in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == label) & (y_true == label))
        predicted, actual = np.sum(y_pred == label), np.sum(y_true == label)
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return float(np.mean(scores))


def matthews_corrcoef(y_true, y_pred):
    y_true, y_pred = _pair(y_true, y_pred)
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = codes[:len(y_true)], codes[len(y_true):]
    confusion = np.zeros((len(labels), len(labels)), np.float64)
    np.add.at(confusion, (t, p), 1)
    n, correct = confusion.sum(), np.trace(confusion)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * n - true_counts @ pred_counts
    denominator = np.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return float(numerator / denominator) if denominator else 0.0


def multi_label_scores(y_true, y_pred):
    """{"subset_accuracy", "micro_f1", "macro_f1"} of (N, L) 0/1 arrays."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.size == 0:
        raise ValueError(f"expected two (texts, labels) arrays of one shape, got {y_true.shape} and {y_pred.shape}")
    tp = (y_true & y_pred).sum(axis=0)
    predicted, actual = y_pred.sum(axis=0), y_true.sum(axis=0)
    per_label = np.where(predicted + actual > 0, 2 * tp / np.maximum(predicted + actual, 1), 0.0)
    total = predicted.sum() + actual.sum()
    return {"subset_accuracy": float((y_true == y_pred).all(axis=1).mean()),
            "micro_f1": float(2 * tp.sum() / total) if total else 0.0, "macro_f1": float(per_label.mean())}


def pearson(x, y):
    x, y = (np.asarray(v, np.float64) for v in _pair(x, y))
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator else float("nan")


def spearman(x, y):
    x, y = _pair(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


def token_accuracy(true_tags, pred_tags):
    """The share of tokens tagged right, over sequences of tags."""
    true_flat, pred_flat = _flat_tags(true_tags, pred_tags)
    return float(np.mean(np.asarray(true_flat) == np.asarray(pred_flat)))


def entity_scores(true_tags, pred_tags, scheme="BIO"):
    """{"precision", "recall", "f1"} of typed entity spans, micro-averaged."""
    _flat_tags(true_tags, pred_tags)  # checks the shapes
    gold = {(i, *span) for i, tags in enumerate(true_tags) for span in entities(tags, scheme)}
    found = {(i, *span) for i, tags in enumerate(pred_tags) for span in entities(tags, scheme)}
    hits = len(gold & found)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entities(tags, scheme="BIO"):
    """[(type, first, last + 1)] of the entities in one sequence of tags."""
    if scheme not in ("BIO", "BIOES"):
        raise ValueError(f"scheme must be 'BIO' or 'BIOES', got {scheme!r}")
    spans, open_type, start = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, kind = tag.partition("-")
        if prefix not in ("B", "I", "O", "E", "S") or (prefix != "O" and not kind):
            raise ValueError(f"tag {tag!r} is not {scheme} (expected O or B-/I-{'/E-/S-' * (scheme == 'BIOES')}TYPE)")
        if scheme == "BIO":
            continues = prefix == "I" and open_type == kind
            if open_type is not None and not continues:
                spans.append((open_type, start, i))
                open_type = None
            if prefix in ("B", "I") and not continues:
                open_type, start = kind, i
        else:
            if prefix == "S":
                spans.append((kind, i, i + 1))
                open_type = None
            elif prefix == "B":
                open_type, start = kind, i
            elif prefix == "I" and open_type == kind:
                pass
            elif prefix == "E" and open_type == kind:
                spans.append((kind, start, i + 1))
                open_type = None
            else:
                open_type = None
    return spans


def normalize_answer(text):
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_scores(predictions, gold_answers):
    """{"exact_match", "f1"} in percent over questions: predictions (N,)
    strings ("" for no answer), gold_answers (N,) lists of strings (empty for
    an unanswerable question)."""
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(gold_answers)} questions")
    if not predictions:
        raise ValueError("no questions to score")
    exact, f1 = [], []
    for prediction, golds in zip(predictions, gold_answers):
        golds = list(golds) or [""]
        exact.append(max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds))
        f1.append(max(_token_f1(prediction, g) for g in golds))
    return {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}


def _token_f1(prediction, gold):
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _average_ranks(values):
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pair(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two sequences of the same length, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no examples to score")
    return a, b


def _flat_tags(true_tags, pred_tags):
    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise ValueError("true and predicted tags must have the same sequences of the same lengths")
    true_flat = [tag for tags in true_tags for tag in tags]
    if not true_flat:
        raise ValueError("no tags to score")
    return true_flat, [tag for tags in pred_tags for tag in tags]
