"""From next-token logits to a choice: the repetition penalty, temperature,
top-k and top-p filters, and the draw itself. They apply in that order, as
in transformers' generate. All act on float32 (B, V) arrays in place.
"""

import numpy as np

# top-p looks at this many of the most likely tokens first (partition is
# linear in V; sorting all 50,257 of GPT-2's probabilities takes milliseconds
# per row), and sorts them all only for rows where these do not reach top_p.
_NUCLEUS_FIRST_LOOK = 256


def penalize_repetitions(scores, seen, penalty):
    """Divide the positive scores (multiply the negative ones) of the tokens
    marked in ``seen`` (B, V) bool by ``penalty`` (seen None: no penalty)."""
    if penalty == 1.0 or seen is None:
        return scores
    hit = scores[seen]
    scores[seen] = np.where(hit < 0, hit * np.float32(penalty), hit / np.float32(penalty))
    return scores


def keep_top_k(scores, k):
    """Set to -inf every score below the row's k-th largest (ties with it stay)."""
    if k is None or k >= scores.shape[1]:
        return scores
    kth = np.partition(scores, -k, axis=1)[:, -k:].min(axis=1)
    scores[scores < kth[:, None]] = -np.inf
    return scores


def keep_top_p(scores, p):
    """Nucleus filter: keep, per row, the most likely tokens down to the first
    whose predecessors' probability already reaches p; -inf for the rest.
    (Tokens tied with the last one kept are kept too.)"""
    if p >= 1.0:
        return scores
    probs = softmax(scores)
    V = probs.shape[1]
    look = min(_NUCLEUS_FIRST_LOOK, V)
    top = -np.sort(-np.partition(probs, V - look, axis=1)[:, V - look:], axis=1)  # the `look` largest, descending
    before = np.cumsum(top, axis=1, dtype=np.float64) - top  # probability of the tokens ahead of each
    wider = np.flatnonzero(before[:, -1] < p)  # rows whose nucleus holds more than `look` tokens
    kept = (before < p).sum(axis=1)
    threshold = top[np.arange(len(top)), kept - 1]
    if wider.size:
        top = -np.sort(-probs[wider], axis=1)
        before = np.cumsum(top, axis=1, dtype=np.float64) - top
        threshold[wider] = top[np.arange(len(wider)), (before < p).sum(axis=1) - 1]
    scores[probs < threshold[:, None]] = -np.inf
    return scores


def softmax(scores):
    """Row-wise softmax in float32, -inf scores giving 0."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def log_softmax(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def sampling_scores(logits, seen, config):
    """The processed scores that ``draw`` samples from (logits are changed)."""
    scores = penalize_repetitions(logits, seen, config.repetition_penalty)
    if config.temperature != 1.0:
        scores /= np.float32(config.temperature)
    return keep_top_p(keep_top_k(scores, config.top_k), config.top_p)


def draw(scores, rng):
    """One token per row, drawn from softmax(scores) (B, V) with uniforms from rng."""
    cumulative = np.cumsum(softmax(scores), axis=1, dtype=np.float64)
    u = rng.random(scores.shape[0]) * cumulative[:, -1]
    tokens = np.array([np.searchsorted(row, x, side="right") for row, x in zip(cumulative, u)])
    return np.minimum(tokens, scores.shape[1] - 1)
