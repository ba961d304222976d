"""From next-token logits to a choice: the repetition penalty, temperature,
top-k and top-p filters, and the draw itself. They apply in that order, as
in transformers' generate. All act on float32 (B, V) arrays in place.
"""

import numpy as np

# top-p looks at this many of the most likely tokens first (argpartition is
# linear in V; sorting all 50,257 of GPT-2's logits per row and step took
# about 3 ms), and at more only when they do not reach top_p.
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
    whose predecessors' probability already reaches p; -inf for the rest."""
    if p >= 1.0:
        return scores
    probs = softmax(scores)
    V = scores.shape[1]
    for b in range(scores.shape[0]):
        look = min(_NUCLEUS_FIRST_LOOK, V)
        while True:
            top = np.argpartition(probs[b], V - look)[V - look:] if look < V else np.arange(V)
            top = top[np.argsort(-probs[b, top], kind="stable")]
            before = np.cumsum(probs[b, top], dtype=np.float64) - probs[b, top]
            if before[-1] >= p or look == V:
                break
            look = min(4 * look, V)
        keep = top[before < p]
        row = np.full(V, -np.inf, np.float32)
        row[keep] = scores[b, keep]
        scores[b] = row
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
