"""Embeddings from a BERT-family encoder: contextual token vectors, the
vector of a word in its sentence, and sentence vectors (mean pooling over the
real tokens, or the [CLS] vector), with cosine similarity between them.

Mean pooling with L2 normalization is how sentence-transformers models such
as all-MiniLM-L6-v2 are meant to be used; [CLS] pooling is the original
BERT's sentence representation.
"""

import dataclasses
import logging

import numpy as np

from ssl_core.data.tokenizer import load_tokenizer
from ssl_core.models import Bert, from_pretrained

POOLINGS = ("mean", "cls")
_HEADS = ("mlm.", "nsp.", "pooler.")  # parameters an encoder-only checkpoint may lack


@dataclasses.dataclass
class TokenVectors:
    """One text's contextual token vectors: ``tokens`` (n,) strings, ``offsets``
    int (n, 2) character spans in the text ((0, 0) for [CLS] and [SEP]) and
    ``vectors`` float32 (n, C)."""
    tokens: list
    offsets: np.ndarray
    vectors: np.ndarray


class TextEncoder:
    """A Bert (``ssl_core.models``) and its tokenizer. Texts longer than
    ``max_length`` tokens (special tokens included) are truncated; texts are
    encoded ``batch_size`` at a time, padded to the longest of their batch."""

    def __init__(self, model, tokenizer, max_length=None, batch_size=32):
        if not isinstance(model, Bert):
            raise TypeError(f"model must be an ssl_core.models.Bert, got {type(model).__name__}")
        if tokenizer.kind != "wordpiece":
            raise ValueError("a BERT encoder needs its WordPiece tokenizer")
        limit = model.config.max_position_embeddings
        self.max_length = min(max_length or limit, limit)
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.tokenizer.backend.no_padding()
        self.tokenizer.backend.enable_truncation(self.max_length)

    @classmethod
    def from_pretrained(cls, path, **options):
        """From a model folder holding config.json, the weights and a tokenizer
        (tokenizer.json or vocab.txt). The pretraining heads may be missing (a
        bare encoder such as a sentence-transformers model); encoder weights
        may not: random layers would give meaningless vectors."""
        logger = logging.getLogger("ssl_core")
        level = logger.level
        logger.setLevel(logging.ERROR)  # missing heads are expected here; other gaps raise below
        try:
            model = from_pretrained(path)
        finally:
            logger.setLevel(level)
        missing = [name for name in model.load_report["missing"] if not name.startswith(_HEADS)]
        if missing:
            raise ValueError(f"{path}: the checkpoint lacks encoder weights {', '.join(missing)}")
        return cls(model, load_tokenizer(path), **options)

    # --------------------------------------------------------------- vectors --
    def token_vectors(self, texts):
        """[TokenVectors] of the last layer, one per text, special tokens included."""
        out = []
        for encodings, hidden, _ in self._batches(_texts(texts)):
            for i, enc in enumerate(encodings):
                n = len(enc.ids)
                out.append(TokenVectors(list(enc.tokens), np.asarray(enc.offsets, np.int64).reshape(n, 2),
                                        hidden[i, :n].copy()))
        return out

    def sentence_vectors(self, texts, pooling="mean", normalize=True):
        """float32 (N, C): the mean of each text's token vectors over its real
        tokens ([CLS] and [SEP] included, as sentence-transformers does), or
        its [CLS] vector; unit length when ``normalize``."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        rows = []
        for _, hidden, mask in self._batches(_texts(texts)):
            if pooling == "cls":
                rows.append(hidden[:, 0])
            else:
                weights = mask[..., None].astype(np.float32)
                rows.append((hidden * weights).sum(axis=1) / weights.sum(axis=1))
        vectors = np.concatenate(rows).astype(np.float32)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def word_vector(self, text, word, occurrence=0):
        """float32 (C,): the mean vector of the tokens that cover the
        ``occurrence``-th appearance of ``word`` in ``text`` (matched
        case-insensitively as a whole word)."""
        start = _find_word(text, word, occurrence)
        span = (start, start + len(word))
        token = self.token_vectors([text])[0]
        inside = (token.offsets[:, 0] < span[1]) & (token.offsets[:, 1] > span[0]) & \
                 (token.offsets[:, 1] > token.offsets[:, 0])
        if not inside.any():
            raise ValueError(f"word {word!r} lies beyond the first {self.max_length} tokens of the text")
        return token.vectors[inside].mean(axis=0)

    def _batches(self, texts):
        """(encodings, hidden float32 (B, T, C), mask (B, T)) per batch of texts."""
        for first in range(0, len(texts), self.batch_size):
            encodings = self.tokenizer.backend.encode_batch(texts[first:first + self.batch_size])
            T = max(len(e.ids) for e in encodings)
            ids = np.full((len(encodings), T), self.tokenizer.pad_id, np.int64)
            mask = np.zeros((len(encodings), T), np.int64)
            for i, e in enumerate(encodings):
                ids[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, 1
            yield encodings, self.model.hidden_states(ids, np.zeros_like(ids), mask), mask


def cosine_similarity(a, b=None):
    """(N, M) cosines between the rows of a (N, C) and b (M, C) (b = a when
    omitted), in float64."""
    a = np.atleast_2d(np.asarray(a, np.float64))
    b = a if b is None else np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"vectors of different sizes: {a.shape[1]} and {b.shape[1]}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return a @ b.T


def _texts(texts):
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")
    if not texts:
        raise ValueError("texts is empty")
    return list(texts)


def _find_word(text, word, occurrence):
    import re

    matches = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)]
    if len(matches) <= occurrence:
        raise ValueError(f"word {word!r} occurs {len(matches)} time(s) in the text; occurrence {occurrence} "
                         f"was asked for")
    return matches[occurrence]
