"""Masked-LM corruption: which tokens to predict and what the model sees there.

Semantics, per sequence (row):

- Candidates are the tokens that are neither special ([CLS], [SEP], [PAD], ...)
  nor padding; only candidates are ever chosen.
- The budget is ``rate`` of the candidates: with ``budget="exact"``,
  ``max(1, round(rate * n))`` tokens (BERT's rule); with ``"bernoulli"`` each
  unit is chosen independently with probability ``rate``.
- Units: ``"token"`` (BERT), ``"word"`` (whole-word masking: every token of a
  chosen word; words come from the tokenizer's word boundaries, not from "##"
  prefixes) or ``"span"`` (SpanBERT: runs of whole words whose length in words
  is drawn from a geometric distribution with parameter ``span_p``, truncated
  at ``max_span`` and renormalized, mean 3.8 words at the defaults). Spans are
  drawn until the budget, Binomial(n, rate) tokens under ``"bernoulli"``, is
  met. With an exact budget, whole words are added in random order while they fit, and a
  span that would overshoot is cut to the words that fit, so a row never
  exceeds its budget; overlapping spans are redrawn.
- Each chosen unit (token, word or span) is replaced as a whole: by [MASK]
  with probability ``mask_ratio``, by random tokens (uniform over the
  vocabulary without special tokens) with probability ``random_ratio``, else
  left unchanged.
- Labels hold the original token where chosen and ``IGNORE`` elsewhere.

Draws come from the generator passed in, so a batch's masking is re-drawn
each epoch (dynamic masking) and reproducible from the seed.
"""

import dataclasses

import numpy as np

IGNORE = -100
UNITS = ("token", "word", "span")


@dataclasses.dataclass
class MaskingConfig:
    rate: float = 0.15
    mask_ratio: float = 0.8
    random_ratio: float = 0.1
    budget: str = "exact"  # or "bernoulli"
    unit: str = "token"  # or "word", "span"
    span_p: float = 0.2
    max_span: int = 10

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"masking rate must be in (0, 1), got {self.rate}")
        if not (0.0 <= self.mask_ratio and 0.0 <= self.random_ratio and self.mask_ratio + self.random_ratio <= 1.0):
            raise ValueError(f"mask_ratio and random_ratio must be >= 0 with a sum <= 1, got "
                             f"{self.mask_ratio} and {self.random_ratio}")
        if self.budget not in ("exact", "bernoulli"):
            raise ValueError(f"budget must be 'exact' or 'bernoulli', got {self.budget!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if not 0.0 < self.span_p <= 1.0 or self.max_span < 1:
            raise ValueError(f"span_p must be in (0, 1] and max_span >= 1, got {self.span_p} and {self.max_span}")

    def span_length_probabilities(self):
        """P(length = 1..max_span) in words: geometric, truncated, renormalized."""
        lengths = np.arange(1, self.max_span + 1)
        p = self.span_p * (1.0 - self.span_p) ** (lengths - 1)
        return p / p.sum()


def mask_batch(input_ids, candidates, word_starts, rng, config, mask_id, special_ids, vocab_size):
    """(corrupted input_ids, labels), both int64 (B, T).

    input_ids: integer (B, T); candidates: bool (B, T), where tokens may be
    chosen; word_starts: bool (B, T), True where a token begins a word (needed
    for the "word" and "span" units); rng: numpy Generator.
    """
    ids = np.asarray(input_ids, np.int64)
    if config.unit == "token":
        chosen, unit_of = _choose_tokens(candidates, rng, config)
    else:
        chosen = np.zeros(ids.shape, bool)
        unit_of = np.full(ids.shape, -1, np.int64)
        next_unit = 0
        for row in range(ids.shape[0]):
            words = _words(candidates[row], word_starts[row])
            if config.unit == "word":
                groups = _choose_words(words, rng, config)
            else:
                groups = [(first, first + n) for first, n in sample_spans(words, rng, config)]
            for first, last in groups:  # word index range [first, last)
                begin, end = words[first][0], words[last - 1][1]
                chosen[row, begin:end] = candidates[row, begin:end]
                unit_of[row, begin:end] = next_unit
                next_unit += 1
    labels = np.where(chosen, ids, IGNORE)
    # One uniform draw per unit decides [MASK] / random / unchanged for all of it.
    draw = rng.random(max(int(unit_of.max()) + 1, 1))[np.maximum(unit_of, 0)]
    corrupted = ids.copy()
    corrupted[chosen & (draw < config.mask_ratio)] = mask_id
    replace = chosen & (draw >= config.mask_ratio) & (draw < config.mask_ratio + config.random_ratio)
    corrupted[replace] = random_tokens(int(replace.sum()), rng, vocab_size, special_ids)
    return corrupted, labels


def random_tokens(n, rng, vocab_size, special_ids):
    """n token ids uniform over the vocabulary without the special tokens."""
    special = np.asarray(sorted(set(special_ids)), np.int64)
    if len(special) >= vocab_size:
        raise ValueError("the vocabulary holds only special tokens")
    # Draw from the non-special ids by index: rank r -> r-th non-special id.
    ranks = rng.integers(0, vocab_size - len(special), n)
    return ranks + np.searchsorted(special - np.arange(len(special)), ranks, side="right")


def sample_spans(words, rng, config):
    """SpanBERT spans over a row's words: [(first word, number of words)]."""
    if not words:
        return []
    n_tokens = sum(end - begin for begin, end in words)
    taken = np.zeros(len(words), bool)
    probabilities = config.span_length_probabilities()
    spans, masked = [], 0
    if config.budget == "bernoulli":
        budget = int(rng.binomial(n_tokens, config.rate))
    else:
        budget = max(1, int(round(config.rate * n_tokens)))
    n = len(words)
    for _ in range(50 * n):
        if masked >= budget:
            break
        length = min(int(rng.choice(config.max_span, p=probabilities)) + 1, n)
        # Redraw only the start of a span that overlaps an earlier one: redrawing
        # its length too would reject long spans more often and skew the lengths.
        for _ in range(20):
            first = int(rng.integers(n - length + 1))
            if not taken[first:first + length].any():
                break
        else:
            continue  # no room for this length; draw another
        last = first + length
        # Cut a span that would overshoot the budget to the words that fit.
        while last > first and masked + words[last - 1][1] - words[first][0] > budget:
            last -= 1
        if last == first:
            if masked:
                break
            last = first + 1  # a row's first span always has at least one word
        taken[first:last] = True
        masked += words[last - 1][1] - words[first][0]
        spans.append((first, last - first))
    return spans


def _choose_tokens(candidates, rng, config):
    keys = rng.random(candidates.shape)
    if config.budget == "bernoulli":
        chosen = candidates & (keys < config.rate)
    else:
        keys[~candidates] = np.inf
        rank = np.empty(candidates.shape, np.int64)
        order = np.argsort(keys, axis=1, kind="stable")
        np.put_along_axis(rank, order, np.arange(candidates.shape[1])[None, :], axis=1)
        n = candidates.sum(axis=1)
        budget = np.where(n > 0, np.maximum(1, np.round(config.rate * n)), 0)
        chosen = rank < budget[:, None]
    return chosen, np.arange(chosen.size).reshape(chosen.shape)


def _choose_words(words, rng, config):
    if not words:
        return []
    if config.budget == "bernoulli":
        return [(i, i + 1) for i in np.flatnonzero(rng.random(len(words)) < config.rate)]
    n_tokens = sum(end - begin for begin, end in words)
    budget = max(1, int(round(config.rate * n_tokens)))
    groups, masked = [], 0
    for i in rng.permutation(len(words)):
        size = words[i][1] - words[i][0]
        if masked + size <= budget or not groups:
            groups.append((int(i), int(i) + 1))
            masked += size
        if masked >= budget:
            break
    return groups


def _words(candidates, word_starts):
    """[(begin, end)] token ranges of a row's words among its candidates; a
    word also starts after any non-candidate token."""
    positions = np.flatnonzero(candidates)
    if len(positions) == 0:
        return []
    starts = word_starts[positions].astype(bool)
    starts[0] = True
    starts[1:] |= np.diff(positions) > 1
    begins = positions[starts]
    ends = np.append(positions[np.flatnonzero(starts)[1:] - 1] + 1, positions[-1] + 1)
    return list(zip(begins.tolist(), ends.tolist()))
