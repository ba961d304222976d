"""Downstream-task examples encoded for a BERT model, and their batches.

- Labelled texts (single or pairs): [CLS] A [SEP] (B [SEP]) with token types,
  truncated to ``seq_len`` (the longer text first), the label as a class id
  or a float (regression).
- Tagged sentences: the words are tokenized as given (no re-splitting); each
  word's tag labels its first sub-token and the other sub-tokens get -100;
  ``word_starts`` keeps where each word begins, so token predictions map back
  to words. Words past ``seq_len`` are cut and counted.

``TaskBatches`` shuffles the examples anew each epoch from (seed, epoch) and
pads each batch to its longest row (rounded up to 8), with the same
saved/restored position as the pretraining stream.
"""

import numpy as np

from ssl_core.data.sources import CorpusError
from ssl_core.data.stream import BatchStream

IGNORE = -100


def encode_labelled(tokenizer, data, label_ids, seq_len, path="", skip_bad=False):
    """Examples (dicts of arrays) of a LabelledTexts. ``label_ids``: {name: id}
    of the classes, or None for a regression; unlabelled texts (label None,
    for prediction) get label 0. Returns (examples, skipped)."""
    backend = tokenizer.backend
    backend.no_padding()
    backend.enable_truncation(seq_len, strategy="longest_first")
    inputs = data.texts if data.texts_b is None else list(zip(data.texts, data.texts_b))
    examples, skipped = [], 0
    for encoding, label in zip(backend.encode_batch(inputs), data.labels):
        if label is None:  # unlabelled, for prediction
            label = 0
        elif isinstance(label, list):  # multi-label: a 0/1 vector over the classes
            unknown = [x for x in label if x not in label_ids]
            if unknown:
                if not skip_bad:
                    raise CorpusError(f"{path}: label {unknown[0]!r} is not one of the training labels "
                                      f"{sorted(label_ids)}")
                skipped += 1
                continue
            vector = np.zeros(len(label_ids), np.float32)
            vector[[label_ids[x] for x in label]] = 1.0
            label = vector
        elif label_ids is not None:
            if label not in label_ids:
                if not skip_bad:
                    raise CorpusError(f"{path}: label {label!r} is not one of the training labels "
                                      f"{sorted(label_ids)}")
                skipped += 1
                continue
            label = label_ids[label]
        examples.append({"input_ids": np.asarray(encoding.ids, np.int64),
                         "token_type_ids": np.asarray(encoding.type_ids, np.int64), "labels": label})
    return examples, skipped


def encode_tagged(tokenizer, data, label_ids, seq_len, path="", skip_bad=False):
    """Examples of a TaggedSentences (tags may be None, for prediction):
    ``labels`` on first sub-tokens,
    ``word_starts`` the token index of each kept word. Returns (examples,
    skipped sentences, words cut by seq_len)."""
    backend = tokenizer.backend
    backend.no_padding()
    backend.enable_truncation(seq_len)
    examples, skipped, cut = [], 0, 0
    for words, tags, encoding in zip(data.words, data.tags,
                                     backend.encode_batch(data.words, is_pretokenized=True)):
        unknown = [t for t in tags if t is not None and t not in label_ids]
        if unknown:
            if not skip_bad:
                raise CorpusError(f"{path}: tag {unknown[0]!r} is not one of the training tags {sorted(label_ids)}")
            skipped += 1
            continue
        word_ids = encoding.word_ids
        labels = np.full(len(word_ids), IGNORE, np.int64)
        starts = []
        for position, word in enumerate(word_ids):
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                labels[position] = label_ids.get(tags[word], 0)  # untagged (prediction): a placeholder
                starts.append(position)
        cut += len(words) - len(starts)
        examples.append({"input_ids": np.asarray(encoding.ids, np.int64),
                         "token_type_ids": np.zeros(len(word_ids), np.int64), "labels": labels,
                         "word_starts": np.asarray(starts, np.int64)})
    return examples, skipped, cut


class TaskBatches(BatchStream):
    """An endless stream of padded batches of ``batch_size`` examples,
    reshuffled every epoch; ``batch(epoch, index)`` is a pure function of the
    position, and ``state_dict`` / ``load_state_dict`` save and restore it."""

    def __init__(self, examples, batch_size, pad_id, seed=0, shuffle=True):
        if not examples:
            raise ValueError("no examples to batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.batch_index = 0, 0

    def batches_per_epoch(self):
        return -(-len(self.examples) // self.batch_size)

    def batch(self, epoch, index):
        order = np.arange(len(self.examples))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        return collate([self.examples[i] for i in order[index * self.batch_size:(index + 1) * self.batch_size]],
                       self.pad_id)


def collate(examples, pad_id):
    """Pad a list of examples into one batch: input_ids, token_type_ids,
    attention_mask (B, T), and labels (B,) or (B, T) with -100 in the padding,
    or start_positions and end_positions (B,) (with the window examples)."""
    T = -(-max(len(e["input_ids"]) for e in examples) // 8) * 8
    B = len(examples)
    ids = np.full((B, T), pad_id, np.int64)
    types = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n], types[row, :n], mask[row, :n] = e["input_ids"], e["token_type_ids"], 1
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    if "start_positions" in examples[0]:  # question answering
        for key in ("start_positions", "end_positions"):
            batch[key] = np.asarray([e[key] for e in examples], np.int64)
        batch["windows"] = examples
        return batch
    first = examples[0]["labels"]
    if "word_starts" in examples[0]:  # per-token labels
        labels = np.full((B, T), IGNORE, np.int64)
        for row, e in enumerate(examples):
            labels[row, :len(e["labels"])] = e["labels"]
        batch["labels"] = labels
        batch["word_starts"] = [e["word_starts"] for e in examples]
    else:  # class ids, values, or 0/1 vectors (multi-label)
        kind = np.float32 if isinstance(first, (float, np.ndarray)) else np.int64
        batch["labels"] = np.asarray([e["labels"] for e in examples], kind)
    return batch
