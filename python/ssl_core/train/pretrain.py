"""A pretraining run: corpus -> tokenizer -> batches -> model, trained by the
shared loop (train.loop: AdamW steps, validation, metrics log, checkpoints,
exact resumption)."""

import math
import os

import numpy as np

from ssl_core.data import PretrainingData, open_source, tokenize_corpus
from ssl_core.data.pretraining import unigram_baseline
from ssl_core.data.tokenizer import load_tokenizer, train_tokenizer
from ssl_core.models import GPT, Bert, BertConfig, GPTConfig
from ssl_core.train.config import PretrainConfig
from ssl_core.train.loop import TrainingRun


class Pretraining(TrainingRun):
    """One pretraining run of ``config``. ``resume``: continue from the newest
    checkpoint in ``config.out`` (from scratch when there is none).
    ``progress``: show a tqdm bar; ``echo``: where one-line messages go."""

    DESCRIPTION = "pretraining"

    def __init__(self, config: PretrainConfig, resume=False, progress=True, echo=print):
        checkpoint = self._open(config, resume, progress, echo)
        c = config
        # A resumed run reads the tokenizer its checkpoint was saved with.
        self.tokenizer = self._tokenizer(checkpoint)
        self.model_config = self._model_config()
        corpus = tokenize_corpus(open_source(c.corpus, c.text_field), self.tokenizer, c.cache_folder(),
                                 valid_every=c.valid_every_document, progress=progress)
        self.train_counts = corpus["train"].counts
        self.data = PretrainingData(corpus["train"], self.tokenizer, c.objective, c.seq_len, c.batch_size,
                                    seed=c.seed, masking=c.masking(), short_seq_prob=c.short_seq_prob)
        self.valid = self._validation_batches(corpus["valid"])
        if not checkpoint:
            self.model = self._new_model()
        self._start(checkpoint)

    # ------------------------------------------------------------- set-up --
    def _tokenizer(self, checkpoint=None):
        c = self.config
        kind = "bpe" if c.model == "gpt" else "wordpiece"
        if checkpoint or c.tokenizer:
            return load_tokenizer(checkpoint or c.tokenizer, kind=kind)
        source = open_source(c.corpus, c.text_field)
        cached = os.path.join(c.cache_folder(), f"tokenizer-{kind}-{c.vocab_size}-{source.fingerprint()}.json")
        if os.path.exists(cached):
            return load_tokenizer(cached, kind=kind)
        self.echo(f"training a {kind} tokenizer of {c.vocab_size} tokens on {source.name}")
        tokenizer = train_tokenizer(source.documents(), kind, c.vocab_size)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = cached + f".{os.getpid()}.tmp"
        tokenizer.backend.save(tmp)
        os.replace(tmp, cached)
        return tokenizer

    def _model_config(self):
        c = self.config
        if c.model == "bert":
            config = BertConfig.preset(c.size, vocab_size=self.tokenizer.vocab_size, hidden_dropout_prob=c.dropout,
                                       attention_probs_dropout_prob=c.dropout, pad_token_id=self.tokenizer.pad_id)
            limit = config.max_position_embeddings
        else:
            config = GPTConfig.preset(c.size, vocab_size=self.tokenizer.vocab_size, resid_pdrop=c.dropout,
                                      embd_pdrop=c.dropout, attn_pdrop=c.dropout)
            limit = config.n_positions
        if c.seq_len > limit:
            raise ValueError(f"seq_len {c.seq_len} is longer than the model's {limit} positions")
        return config

    def _new_model(self):
        return (Bert if self.config.model == "bert" else GPT)(self.model_config, seed=self.config.seed)

    def _validation_batches(self, split):
        """A fixed list of validation batches (same masking at every validation)."""
        c = self.config
        if split.n_tokens == 0:
            return []
        try:
            data = PretrainingData(split, self.tokenizer, c.objective, c.seq_len, c.batch_size, seed=c.seed + 1,
                                   masking=c.masking(), short_seq_prob=0.0, drop_last=False)
        except ValueError:  # too little held-out text for one example
            return []
        return [data.batch(0, i) for i in range(min(c.eval_batches, data.batches_per_epoch()))]

    def label_counts(self, batches):
        return _label_counts(batches, self.config.objective)

    def validate(self):
        """Validation metrics over the held-out batches: loss, accuracy,
        perplexity (and NSP/SOP accuracy), beside the unigram baseline."""
        if not self.valid:
            return {}
        self.model.eval()
        sums = {}
        for batch in self.valid:
            _, stats = self.model.evaluate(batch)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value * _weight(key, stats, batch)
        self.model.train()
        n = max(sums.pop("n_masked" if "n_masked" in sums else "n_tokens"), 1)
        n_sequences = sum(len(b["input_ids"]) for b in self.valid)
        metrics = {k: v / (n_sequences if k.startswith("nsp") else n) for k, v in sums.items()}
        head = "mlm" if "mlm_loss" in metrics else "lm"
        metrics["perplexity"] = math.exp(min(metrics[f"{head}_loss"], 700.0))
        metrics["unigram_accuracy"] = unigram_baseline(self.train_counts, _targets(self.valid, head),
                                                       self.tokenizer.special_ids.values())
        return metrics

def _label_counts(batches, objective):
    """Pretraining's normalizers: labelled tokens (and sequences) of the whole
    optimizer step."""
    if objective == "clm":
        tokens = sum(b["input_ids"].size - len(b["input_ids"]) for b in batches)
        return {"token_count": tokens}
    counts = {"token_count": max(sum(int((b["labels"] != -100).sum()) for b in batches), 1)}
    if "next_sentence_label" in batches[0]:
        counts["sequence_count"] = sum(len(b["input_ids"]) for b in batches)
    return counts


def _weight(key, stats, batch):
    """Validation metrics are averaged per labelled token (per sequence for NSP)."""
    if key.startswith("nsp"):
        return len(batch["input_ids"])
    if key in ("n_masked", "n_tokens"):
        return 1
    return stats.get("n_masked", stats.get("n_tokens"))


def _targets(batches, head):
    if head == "mlm":
        return np.concatenate([b["labels"].reshape(-1) for b in batches])
    return np.concatenate([b["input_ids"][:, 1:].reshape(-1) for b in batches])


