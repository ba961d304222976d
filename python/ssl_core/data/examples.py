"""Training examples cut from a tokenized corpus, as token ranges.

An example is a row (a_begin, a_end, b_begin, b_end, label) of token offsets
into the corpus: segment A, segment B (empty when b_begin == b_end) and the
sentence-pair label. Ranges are contiguous because a document's sentences are
stored back to back. Examples are rebuilt for every epoch from the epoch's
generator, so pairs and cut points differ between epochs, as in BERT.

- ``"single"``: consecutive sentences in corpus order filling up to
  ``max_tokens``, crossing from one document into the next with a [SEP]
  between them, which the batch inserts and the budget counts (RoBERTa's
  FULL-SENTENCES: sequences are full however short the documents, so little
  compute goes to padding); a sentence longer than that is cut.
- ``"nsp"`` (BERT): A is the first 1..k-1 sentences of a chunk of k, B is the
  rest (label 0, "B follows A") or, with probability 1/2, a run of sentences of
  another document (label 1); the sentences not used go back to the pool.
- ``"sop"`` (ALBERT): A and B are consecutive parts of one chunk, swapped with
  probability 1/2 (label 1 = swapped).

A chunk of a single sentence is split at a random token instead of a sentence
boundary, so every chunk yields a pair and the labels stay balanced. With
probability ``short_seq_prob`` a chunk aims at a random shorter length (BERT's
trick to reduce the mismatch with short fine-tuning inputs). Pairs longer
than ``max_tokens`` are trimmed, the longer segment first, from its front or
back at random.
"""

import numpy as np

KINDS = ("single", "nsp", "sop")


def build_examples(corpus, kind, max_tokens, rng, short_seq_prob=0.1):
    """int64 (E, 5) examples of one epoch, in corpus order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    if kind == "nsp" and corpus.n_documents < 2:
        raise ValueError("next-sentence prediction needs a corpus of at least 2 documents")
    rows = []
    if kind == "single":
        _packed_examples(corpus, max_tokens, rng, short_seq_prob, rows)
    else:
        for d in range(corpus.n_documents):
            _document_examples(corpus, d, kind, max_tokens, rng, short_seq_prob, rows)
    return np.asarray(rows, np.int64).reshape(-1, 5)


def document_boundaries(corpus, begin, end):
    """Token offsets in (begin, end) where a document starts: where a packed
    example gets a [SEP]."""
    starts = corpus.sentence_starts[corpus.document_starts]
    return starts[np.searchsorted(starts, begin, side="right"):np.searchsorted(starts, end, side="left")]


def _packed_examples(corpus, max_tokens, rng, short_seq_prob, rows):
    starts = corpus.sentence_starts
    opens_document = np.zeros(corpus.n_sentences, bool)
    opens_document[corpus.document_starts[:-1]] = True

    def new_target():
        return int(rng.integers(2, max_tokens + 1)) if rng.random() < short_seq_prob else max_tokens

    target, begin, end, length = new_target(), None, None, 0
    for s in range(corpus.n_sentences):
        b, e = int(starts[s]), int(starts[s + 1])
        separator = int(begin is not None and opens_document[s])
        if begin is not None and length + separator + (e - b) > target:
            rows.append((begin, end, 0, 0, 0))
            target, begin, length, separator = new_target(), None, 0, 0
        if begin is None:
            begin = b
            while e - begin > target:  # a sentence longer than a sequence: cut it
                rows.append((begin, begin + target, 0, 0, 0))
                begin += target
        length += separator + (e - max(b, begin))
        end = e
    if begin is not None:
        rows.append((begin, end, 0, 0, 0))


def _document_examples(corpus, d, kind, max_tokens, rng, short_seq_prob, rows):
    starts = corpus.sentence_starts
    first, stop = int(corpus.document_starts[d]), int(corpus.document_starts[d + 1])
    s = first
    while s < stop:
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        # A chunk: sentences from s while the chunk is shorter than target.
        e = s + 1
        while e < stop and starts[e] - starts[s] < target:
            e += 1
        begin, end = int(starts[s]), int(starts[e])
        if end - begin < 2:
            s = e
            continue
        # Cut point between A and B: a sentence boundary, or a token for one sentence.
        if e - s > 1:
            cut = int(starts[s + int(rng.integers(1, e - s))])
        else:
            cut = begin + int(rng.integers(1, end - begin))
        a, b, label = [begin, cut], [cut, end], 0
        if kind == "nsp" and rng.random() < 0.5:
            label = 1
            b = _random_segment(corpus, d, max(target - (cut - begin), 1), rng)
            # The chunk's sentences after the cut were not used: start there next.
            e = next(i for i in range(s, e + 1) if starts[i] >= cut) if e - s > 1 else e
        elif kind == "sop" and rng.random() < 0.5:
            a, b, label = b, a, 1
        _trim_pair(a, b, max_tokens, rng)
        rows.append((a[0], a[1], b[0], b[1], label))
        s = e


def _random_segment(corpus, d, length, rng):
    """A run of sentences of a random other document, about ``length`` tokens."""
    other = int(rng.integers(corpus.n_documents - 1))
    other += other >= d
    first, stop = int(corpus.document_starts[other]), int(corpus.document_starts[other + 1])
    s = int(rng.integers(first, stop))
    starts = corpus.sentence_starts
    e = s + 1
    while e < stop and starts[e] - starts[s] < length:
        e += 1
    return [int(starts[s]), int(min(starts[e], starts[s] + length))]


def _trim_pair(a, b, max_tokens, rng):
    """Shorten the longer segment until the pair fits (both alternately once
    equal), each removed token taken from the front or back at random."""
    excess = (a[1] - a[0]) + (b[1] - b[0]) - max_tokens
    if excess <= 0:
        return
    longer, shorter = (a, b) if a[1] - a[0] >= b[1] - b[0] else (b, a)
    first = min(excess, (longer[1] - longer[0]) - (shorter[1] - shorter[0]))
    rest = excess - first
    _trim(longer, first + (rest + 1) // 2, rng)
    _trim(shorter, rest // 2, rng)


def _trim(segment, n, rng):
    front = int(rng.binomial(n, 0.5))
    segment[0] += front
    segment[1] -= n - front
