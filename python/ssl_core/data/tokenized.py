"""Corpora tokenized once into memory-mapped files and re-used.

A cache entry is a folder named by a hash of (source fingerprint, tokenizer,
split, format version), holding for each split ("train", "valid"):

    tokens.bin        the tokens of every sentence, back to back (uint16, or
                      uint32 for vocabularies over 65535)
    word_starts.bin   uint8, 1 where a token begins a word
    sentences.npy     int64 (S + 1,): token offset of each sentence, then the end
    documents.npy     int64 (D + 1,): sentence index of each document, then S
    counts.npy        int64 (V,): how often each token occurs
    meta.json         sizes and provenance

Like nanoGPT's train.bin, the tokens are read through ``numpy.memmap``, so a
corpus larger than memory is never loaded whole; it is written as it is
tokenized, document batch by document batch. The folder is built under a
temporary name and renamed into place, so an interrupted build leaves no
entry that looks complete.
"""

import array
import json
import os
import shutil
import tempfile

import numpy as np

from ssl_core.data.sources import CorpusError, _hash, split_sentences

FORMAT_VERSION = 2  # bumped whenever the way a corpus is cut or stored changes
SPLITS = ("train", "valid")


class TokenizedCorpus:
    """One split of a cached corpus. ``tokens``, ``word_starts``: memory-mapped
    (N,); ``sentence_starts`` (S + 1,); ``document_starts`` (D + 1,) into
    sentences; ``counts`` (V,)."""

    def __init__(self, folder):
        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        self.folder = folder
        self.n_tokens = self.meta["n_tokens"]
        dtype = np.dtype(self.meta["dtype"])
        self.tokens = _memmap(os.path.join(folder, "tokens.bin"), dtype, self.n_tokens)
        self.word_starts = _memmap(os.path.join(folder, "word_starts.bin"), np.uint8, self.n_tokens)
        self.sentence_starts = np.load(os.path.join(folder, "sentences.npy"))
        self.document_starts = np.load(os.path.join(folder, "documents.npy"))
        self.counts = np.load(os.path.join(folder, "counts.npy"))

    @property
    def n_documents(self):
        return len(self.document_starts) - 1

    @property
    def n_sentences(self):
        return len(self.sentence_starts) - 1

    def document_token_range(self, d):
        """(begin, end) token offsets of document d."""
        s = self.document_starts
        return int(self.sentence_starts[s[d]]), int(self.sentence_starts[s[d + 1]])


def tokenize_corpus(source, tokenizer, cache_dir, valid_every=50, batch_documents=256, progress=False):
    """{"train": TokenizedCorpus, "valid": TokenizedCorpus} for a source,
    from the cache when an entry for the same source, tokenizer and split
    exists, else built (and cached). Every ``valid_every``-th document goes
    to "valid" (0: no validation split)."""
    if valid_every and valid_every < 2:
        raise ValueError(f"valid_every must be 0 (no validation split) or at least 2, got {valid_every}")
    key = _hash([FORMAT_VERSION, source.fingerprint(), tokenizer.fingerprint(), valid_every])
    folder = os.path.join(cache_dir, f"tokens-{key}")
    if not os.path.isfile(os.path.join(folder, "valid", "meta.json")):
        os.makedirs(cache_dir, exist_ok=True)
        building = tempfile.mkdtemp(prefix=f".tokens-{key}-", dir=cache_dir)
        try:
            _build(source, tokenizer, building, valid_every, batch_documents, progress)
            try:
                os.rename(building, folder)
            except OSError:  # another process finished the same entry first
                if not os.path.isfile(os.path.join(folder, "valid", "meta.json")):
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return {split: TokenizedCorpus(os.path.join(folder, split)) for split in SPLITS}


class _SplitWriter:
    def __init__(self, folder, vocab_size):
        os.makedirs(folder)
        self.folder, self.vocab_size = folder, vocab_size
        self.dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
        self.tokens = open(os.path.join(folder, "tokens.bin"), "wb")
        self.word_starts = open(os.path.join(folder, "word_starts.bin"), "wb")
        self.sentence_starts, self.document_starts = array.array("q", [0]), array.array("q", [0])
        self.counts = np.zeros(vocab_size, np.int64)
        self._uncounted = []  # token arrays not yet in counts: one bincount per ~1M tokens, not per sentence

    def add_document(self, sentences):
        for ids, starts in sentences:
            self.tokens.write(ids.astype(self.dtype).tobytes())
            self.word_starts.write(starts.astype(np.uint8).tobytes())
            self.sentence_starts.append(self.sentence_starts[-1] + len(ids))
            self._uncounted.append(ids)
        self.document_starts.append(len(self.sentence_starts) - 1)
        if sum(map(len, self._uncounted)) > 1 << 20:
            self._count()

    def _count(self):
        if self._uncounted:
            self.counts += np.bincount(np.concatenate(self._uncounted), minlength=self.vocab_size)
            self._uncounted = []

    def close_files(self):
        self.tokens.close()
        self.word_starts.close()

    def finish(self, provenance):
        self.close_files()
        self._count()
        np.save(os.path.join(self.folder, "sentences.npy"), np.asarray(self.sentence_starts, np.int64))
        np.save(os.path.join(self.folder, "documents.npy"), np.asarray(self.document_starts, np.int64))
        np.save(os.path.join(self.folder, "counts.npy"), self.counts)
        meta = {"n_tokens": int(self.sentence_starts[-1]), "n_documents": len(self.document_starts) - 1,
                "dtype": np.dtype(self.dtype).name, "vocab_size": self.vocab_size, **provenance}
        with open(os.path.join(self.folder, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)


def _build(source, tokenizer, folder, valid_every, batch_documents, progress):
    from tqdm import tqdm

    writers = {split: _SplitWriter(os.path.join(folder, split), tokenizer.vocab_size) for split in SPLITS}
    index = 0
    try:
        with tqdm(desc=f"tokenizing {source.name}", unit=" docs", leave=False, disable=not progress) as bar:
            for batch in _batches(source.documents(), batch_documents):
                sentences = [split_sentences(text) for text in batch]
                encoded = iter(tokenizer.encode([s for doc in sentences for s in doc]))
                for doc in sentences:
                    pieces = [piece for piece in (next(encoded) for _ in doc) if len(piece[0])]
                    if pieces:
                        valid = valid_every and index % valid_every == valid_every - 1
                        writers["valid" if valid else "train"].add_document(pieces)
                        index += 1
                bar.update(len(batch))
    finally:
        for writer in writers.values():
            writer.close_files()
    if writers["train"].sentence_starts[-1] == 0:
        raise CorpusError(f"corpus: {source.name} holds no text")
    provenance = {"source": source.name, "tokenizer": tokenizer.fingerprint(), "format": FORMAT_VERSION}
    for writer in writers.values():
        writer.finish(provenance)


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _memmap(path, dtype, count):
    if count == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
