"""Batches for pretraining: examples of an epoch, shuffled, assembled into
padded arrays and corrupted by the objective, at a position that can be
saved and restored exactly.

Everything random about a batch is drawn from generators keyed by (seed,
epoch) and (seed, epoch, batch index): the batch at a given position is the
same whether a run got there directly or was resumed from a checkpoint.
"""

import dataclasses

import numpy as np

from ssl_core.data.examples import build_examples, document_boundaries
from ssl_core.data.masking import IGNORE, MaskingConfig, mask_batch
from ssl_core.data.stream import BatchStream

# objective -> (example kind, masking unit); clm is GPT's next-token prediction.
OBJECTIVES = {
    "mlm": ("single", "token"),
    "mlm+nsp": ("nsp", "token"),
    "mlm+sop": ("sop", "token"),
    "wwm": ("single", "word"),
    "span": ("single", "span"),
    "clm": (None, None),
}


class PretrainingData(BatchStream):
    """An endless stream of batches of ``batch_size`` sequences of at most
    ``seq_len`` tokens from one split of a corpus.

    BERT objectives give dicts with ``input_ids``, ``token_type_ids``,
    ``attention_mask``, ``labels`` (int64 (B, T), T the longest sequence of the
    batch rounded up to a multiple of 8) and, for mlm+nsp / mlm+sop,
    ``next_sentence_label`` (B,). "clm" gives ``input_ids`` (B, seq_len):
    windows of the corpus with <|endoftext|> between documents (GPT-2's
    packing). Each epoch's examples are rebuilt and reshuffled; the last
    partial batch of an epoch is dropped unless ``drop_last=False``.
    """

    def __init__(self, corpus, tokenizer, objective, seq_len, batch_size, seed=0, masking=None,
                 short_seq_prob=0.1, drop_last=True):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.kind, unit = OBJECTIVES[objective]
        minimum = 2 if objective == "clm" else (5 if self.kind != "single" else 3)
        if seq_len < minimum:
            raise ValueError(f"seq_len must be at least {minimum} for {objective}, got {seq_len}")
        if objective != "clm" and tokenizer.kind != "wordpiece":
            raise ValueError(f"objective {objective} needs a BERT (WordPiece) tokenizer with [MASK]")
        if objective == "clm" and tokenizer.kind != "bpe":
            raise ValueError("objective clm needs a GPT (byte-level BPE) tokenizer with <|endoftext|>")
        self.corpus, self.tokenizer, self.objective = corpus, tokenizer, objective
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.short_seq_prob, self.drop_last = short_seq_prob, drop_last
        # The objective decides the masking unit, whatever the masking settings say.
        masking = masking if isinstance(masking, MaskingConfig) else MaskingConfig(**(masking or {}))
        self.masking = dataclasses.replace(masking, unit=unit) if unit else masking
        self.epoch, self.batch_index = 0, 0
        self._examples = (None, None)  # (epoch, its shuffled examples)
        if self.examples_in_epoch(0) == 0:
            raise ValueError(f"the corpus split holds too little text for one example of {seq_len} tokens")
        if self.batches_per_epoch() == 0:
            raise ValueError(f"the corpus split makes {self.examples_in_epoch(0)} examples of up to {seq_len} tokens, "
                             f"fewer than one batch of {batch_size}: use a smaller batch_size or a larger corpus")

    # ------------------------------------------------------------ epochs --
    def examples_in_epoch(self, epoch):
        return len(self._epoch(epoch))

    def batches_per_epoch(self):
        n = self.examples_in_epoch(self.epoch)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch(self, epoch, index):
        """The batch at (epoch, index), a pure function of the position."""
        examples = self._epoch(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, 1, index])
        if self.kind is None:
            return {"input_ids": self._windows(examples)}
        return self._bert_batch(examples, rng)

    def _epoch(self, epoch):
        if self._examples[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0])
            if self.kind is None:
                examples = np.arange(self._stream_length() // self.seq_len, dtype=np.int64) * self.seq_len
            else:
                max_tokens = self.seq_len - (3 if self.kind != "single" else 2)
                examples = build_examples(self.corpus, self.kind, max_tokens, rng, self.short_seq_prob)
            self._examples = (epoch, examples[rng.permutation(len(examples))])
        return self._examples[1]

    # ------------------------------------------------------------ BERT --
    def _bert_batch(self, examples, rng):
        tok, corpus = self.tokenizer, self.corpus
        if self.kind == "single":  # packed across documents: a [SEP] where each new one starts
            separators = [document_boundaries(corpus, a0, a1) for a0, a1 in examples[:, :2]]
            lengths = examples[:, 1] - examples[:, 0] + np.array([len(x) for x in separators]) + 2
        else:
            lengths = (examples[:, 1] - examples[:, 0]) + (examples[:, 3] - examples[:, 2]) + 3
        T = min(-(-int(lengths.max()) // 8) * 8, self.seq_len)
        B = len(examples)
        ids = np.full((B, T), tok.pad_id, np.int64)
        types = np.zeros((B, T), np.int64)
        word_starts = np.ones((B, T), bool)
        for row, (a0, a1, b0, b1, _) in enumerate(examples):
            ids[row, 0], at = tok.cls_id, 1
            if self.kind == "single":
                inner = separators[row] - a0
                pieces = [(np.insert(corpus.tokens[a0:a1].astype(np.int64), inner, tok.sep_id),
                           np.insert(corpus.word_starts[a0:a1].astype(bool), inner, True), 0)]
            else:
                pieces = [(corpus.tokens[a0:a1], corpus.word_starts[a0:a1], 0),
                          (corpus.tokens[b0:b1], corpus.word_starts[b0:b1], 1)]
            for tokens, starts, segment in pieces:
                n = len(tokens)
                ids[row, at:at + n] = tokens
                word_starts[row, at:at + n] = starts
                ids[row, at + n] = tok.sep_id
                types[row, at:at + n + 1] = segment
                at += n + 1
        attention = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
        candidates = (attention == 1) & ~np.isin(ids, list(tok.special_ids.values()))
        ids, labels = mask_batch(ids, candidates, word_starts, rng, self.masking, tok.mask_id,
                                 tok.special_ids.values(), tok.vocab_size)
        batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": attention, "labels": labels}
        if self.kind != "single":
            batch["next_sentence_label"] = examples[:, 4].copy()
        return batch

    # ------------------------------------------------------------- GPT --
    def _stream_length(self):
        """Tokens of the packed stream: every document followed by <|endoftext|>."""
        return self.corpus.n_tokens + self.corpus.n_documents

    def _windows(self, starts):
        """(B, seq_len) token windows of the packed stream beginning at ``starts``."""
        c = self.corpus
        doc_token_begin = c.sentence_starts[c.document_starts]  # (D + 1,), last = n_tokens
        stream_begin = doc_token_begin + np.arange(len(doc_token_begin))  # where each document starts in the stream
        out = np.empty((len(starts), self.seq_len), np.int64)
        for row, start in enumerate(starts):
            at, p = 0, int(start)
            while at < self.seq_len:
                d = int(np.searchsorted(stream_begin, p, side="right")) - 1
                offset = p - int(stream_begin[d])
                doc_len = int(doc_token_begin[d + 1] - doc_token_begin[d])
                if offset == doc_len:  # the separator after document d
                    out[row, at] = self.tokenizer.eot_id
                    at, p = at + 1, p + 1
                    continue
                n = min(doc_len - offset, self.seq_len - at)
                begin = int(doc_token_begin[d]) + offset
                out[row, at:at + n] = c.tokens[begin:begin + n]
                at, p = at + n, p + n
        return out


def unigram_baseline(train_counts, labels, special_ids):
    """Accuracy of always predicting the training split's most frequent
    non-special token, on the labelled positions of ``labels`` (any shape)."""
    counts = np.asarray(train_counts).copy()
    counts[list(special_ids)] = -1
    targets = np.asarray(labels)
    targets = targets[targets != IGNORE]
    return float(np.mean(targets == counts.argmax())) if targets.size else float("nan")
