"""BERT with the heads of the downstream tasks, as Hugging Face defines them
(so checkpoints move both ways and losses agree):

- BertForSequenceClassification: pooled [CLS] -> dropout -> linear. One
  label scores a regression (mean squared error); "multi_label_classification"
  scores each label independently (sigmoid + binary cross-entropy); otherwise
  softmax cross-entropy. Sentence pairs are the same model fed [CLS] A [SEP] B
  [SEP] with token types.
- BertForTokenClassification: dropout -> linear on every token; positions
  labelled -100 (padding, sub-tokens after a word's first) are ignored.
- BertForQuestionAnswering: a linear layer gives each token a start and an end
  score; the loss is the mean of the two cross-entropies over the sequence.
"""

import numpy as np

from ssl_core import ops
from ssl_core.models.bert import Bert
from ssl_core.nn import Dropout, Linear

IGNORE = -100


class _BertTask(Bert):
    """What the task models share: labels, their config.json form, and the
    head's dropout taking part in train()/eval() and in re-seeding."""

    ARCHITECTURE = None

    def __init__(self, config=None, labels=2, seed=0):
        self.labels = [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else [str(x) for x in labels]
        if len(self.labels) < 1 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be a positive count or distinct names, got {labels!r}")
        super().__init__(config, seed)

    @property
    def num_labels(self):
        return len(self.labels)

    def _head_dropout(self, seed):
        c = self.config
        p = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        return Dropout(p, seed=(seed, 3))

    def train(self, training=True):
        super().train(training)
        if hasattr(self, "head_drop"):
            self.head_drop.training = training
        return self

    def dropout_generators(self):
        extra = [self.head_drop.generator] if hasattr(self, "head_drop") else []
        return super().dropout_generators() + extra

    def hf_config(self):
        return {**super().hf_config(), "architectures": [self.ARCHITECTURE],
                "id2label": dict(enumerate(self.labels)), "label2id": {x: i for i, x in enumerate(self.labels)}}


class BertForSequenceClassification(_BertTask):
    HEADS, ARCHITECTURE = "sequence", "BertForSequenceClassification"
    PROBLEMS = ("single_label_classification", "multi_label_classification", "regression")

    def __init__(self, config=None, labels=2, problem_type=None, seed=0):
        n = labels if isinstance(labels, int) else len(labels)
        self.problem_type = problem_type or ("regression" if n == 1 else "single_label_classification")
        if self.problem_type not in self.PROBLEMS:
            raise ValueError(f"problem_type must be one of {self.PROBLEMS}, got {problem_type!r}")
        super().__init__(config, labels, seed)

    def _build_heads(self, P, seed):
        H, std = self.config.hidden_size, self.config.initializer_range
        self.pooler = Linear(P, "pooler", H, H, std=std)
        self.head_drop = self._head_dropout(seed)
        self.classifier = Linear(P, "classifier", H, self.num_labels, std=std)

    def hf_config(self):
        return {**super().hf_config(), "problem_type": self.problem_type}

    def logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """(B, num_labels) float32."""
        h = self.hidden_states(input_ids, token_type_ids, attention_mask)
        return self.classifier.forward(self.head_drop.forward(self.pooled_output(h)))

    def loss_and_backward(self, batch, sequence_count=None):
        """Loss of ``labels`` (B,) class ids, (B,) values for regression, or
        (B, num_labels) 0/1 for multi-label; gradients added to params.grad.
        ``sequence_count``: the sequences of the whole optimizer step, for
        gradient accumulation. Returns (loss, stats)."""
        return self._loss(batch, sequence_count, backward=True)

    def evaluate(self, batch):
        return self._loss(batch, None, backward=False)

    def _loss(self, batch, sequence_count, backward):
        h = self.hidden_states(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))
        pooled = self.pooled_output(h)
        logits = self.classifier.forward(self.head_drop.forward(pooled)).astype(np.float64)
        loss, dlogits, stats = _sequence_loss(logits, batch["labels"], self.problem_type, sequence_count)
        if backward:
            dpooled = self.head_drop.backward(self.classifier.backward(dlogits.astype(np.float32)))
            dh = np.zeros_like(h)
            dh[:, 0] = self.pooler.backward(dpooled * (1 - pooled * pooled))
            self._backward_encoder(dh)
        return loss, stats


class BertForTokenClassification(_BertTask):
    HEADS, ARCHITECTURE = "token", "BertForTokenClassification"

    def _build_heads(self, P, seed):
        self.head_drop = self._head_dropout(seed)
        self.classifier = Linear(P, "classifier", self.config.hidden_size, self.num_labels,
                                 std=self.config.initializer_range)

    def logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """(B, T, num_labels) float32."""
        h = self.hidden_states(input_ids, token_type_ids, attention_mask)
        return self.classifier.forward(self.head_drop.forward(h))

    def loss_and_backward(self, batch, token_count=None):
        """Mean cross-entropy over the labelled tokens of ``labels`` (B, T)
        (-100 elsewhere); ``token_count`` for gradient accumulation."""
        return self._loss(batch, token_count, backward=True)

    def evaluate(self, batch):
        return self._loss(batch, None, backward=False)

    def _loss(self, batch, token_count, backward):
        h = self.hidden_states(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))
        x = self.head_drop.forward(h)
        labels = np.asarray(batch["labels"])
        if labels.shape != h.shape[:2]:
            raise ValueError(f"labels must have the shape of input_ids {h.shape[:2]}, got {labels.shape}")
        w, b = self.classifier.weight, self.classifier.bias
        result = ops.masked_lm_loss(x, w.data, b.data, labels.astype(np.int64), normalizer=token_count,
                                    return_grad=backward, accumulate=backward,
                                    grads=(None, w.grad, b.grad) if backward else None)
        if backward:
            self._backward_encoder(self.head_drop.backward(result.d_hidden))
        stats = {"loss": result.loss, "accuracy": result.n_correct / max(result.n_valid, 1),
                 "n_labelled": result.n_valid}
        return result.loss, stats


class BertForQuestionAnswering(_BertTask):
    HEADS, ARCHITECTURE = "qa", "BertForQuestionAnswering"

    def __init__(self, config=None, seed=0):
        super().__init__(config, ["start", "end"], seed)

    def _build_heads(self, P, seed):
        self.qa_outputs = Linear(P, "qa_outputs", self.config.hidden_size, 2, std=self.config.initializer_range)

    def hf_config(self):
        config = super().hf_config()
        del config["id2label"], config["label2id"]  # two fixed outputs, not labels
        return config

    def logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """(start, end): float32 (B, T) each."""
        out = self.qa_outputs.forward(self.hidden_states(input_ids, token_type_ids, attention_mask))
        return out[..., 0], out[..., 1]

    def loss_and_backward(self, batch, sequence_count=None):
        """Mean of the start and end cross-entropies over each sequence's T
        positions, for ``start_positions`` and ``end_positions`` (B,);
        as Hugging Face does, negative positions count as 0 ([CLS], the
        no-answer convention) and positions >= T are ignored."""
        return self._loss(batch, sequence_count, backward=True)

    def evaluate(self, batch):
        return self._loss(batch, None, backward=False)

    def _loss(self, batch, sequence_count, backward):
        h = self.hidden_states(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))
        out = self.qa_outputs.forward(h).astype(np.float64)
        B, T = h.shape[:2]
        dout, losses, hits = np.zeros_like(out), [], []
        for k, key in enumerate(("start_positions", "end_positions")):
            positions = np.asarray(batch[key])
            if positions.shape != (B,) or positions.dtype.kind not in "iu":
                raise ValueError(f"{key} must be ({B},) integer positions, got {positions.dtype} {positions.shape}")
            positions = np.maximum(positions, 0)
            loss, dlogits, correct = _softmax_cross_entropy(out[..., k], positions, sequence_count)
            dout[..., k] = dlogits / 2
            losses.append(loss)
            hits.append(correct)
        if backward:
            self._backward_encoder(self.qa_outputs.backward(dout.astype(np.float32)))
        loss = (losses[0] + losses[1]) / 2
        both = np.logical_and(*hits)
        return loss, {"loss": loss, "start_loss": losses[0], "end_loss": losses[1],
                      "exact_span_accuracy": float(both.mean())}


TASKS = {"classify": BertForSequenceClassification, "pair": BertForSequenceClassification,
         "tokens": BertForTokenClassification, "qa": BertForQuestionAnswering}


def _sequence_loss(logits, labels, problem_type, count):
    """(loss, dloss/dlogits, stats) of a sequence classifier, as Hugging Face's
    BertForSequenceClassification computes the loss."""
    labels = np.asarray(labels)
    B, n = logits.shape
    if problem_type == "single_label_classification":
        if labels.shape != (B,) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be ({B},) integer class ids, got {labels.dtype} {labels.shape}")
        loss, dlogits, correct = _softmax_cross_entropy(logits, labels, count)
        valid = labels != IGNORE
        return loss, dlogits, {"loss": loss, "accuracy": float(correct[valid].mean()) if valid.any() else 0.0}
    y = labels.astype(np.float64)
    if problem_type == "regression":
        if y.size != B:
            raise ValueError(f"regression labels must hold one value per sequence ({B}), got shape {labels.shape}")
        error = logits.reshape(-1) - y.reshape(-1)
        total = count or B
        return float((error**2).sum() / total), (2 * error / total).reshape(B, 1), {"loss": float((error**2).mean())}
    if y.shape != (B, n):
        raise ValueError(f"multi-label labels must have shape ({B}, {n}), got {labels.shape}")
    probability = 1 / (1 + np.exp(-logits))
    # log(1 + e^x) - y x, written to stay finite for large |x|
    elementwise = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    total = (count or B) * n
    loss = float(elementwise.sum() / total)
    accuracy = float(((probability > 0.5) == (y > 0.5)).mean())
    return loss, (probability - y) / total, {"loss": loss, "accuracy": accuracy}


def _softmax_cross_entropy(logits, targets, count):
    """Mean cross-entropy over rows whose target is in [0, C) (others are
    ignored), its gradient, and per-row correctness. logits float64 (B, C)."""
    B, C = logits.shape
    valid = (targets >= 0) & (targets < C)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    rows = np.flatnonzero(valid)
    total = count or max(len(rows), 1)
    loss = float(-log_p[rows, targets[rows]].sum() / total)
    dlogits = np.exp(log_p)
    dlogits[rows, targets[rows]] -= 1
    dlogits[~valid] = 0
    correct = logits.argmax(axis=1) == np.where(valid, targets, -1)
    return loss, dlogits / total, correct
