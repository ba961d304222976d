"""A fine-tuning run: a task file -> encoded examples -> a BERT task model
(from a pretrained checkpoint, ours or a Hugging Face one, or from scratch),
trained by the shared loop (train.loop) and evaluated with the task's
metrics on an evaluation file.

Tasks: "classify" (single texts) and "pair" (sentence pairs) read labelled
texts (CSV/TSV/JSON Lines; a regression when the labels are fractional
numbers or ``regression`` is set; multi-label when they are lists or
``multi_label`` is set), "tokens" reads tagged sentences (CoNLL,
CoNLL-U), "qa" reads SQuAD 1.1 / 2.0 JSON (extractive question answering,
see data.qa for the windows and the answer search). The labels are those of
the training file, sorted, and are saved with the model (config.json
id2label).
"""

import dataclasses
import math

import numpy as np

from ssl_core.data.qa import best_answers, encode_squad
from ssl_core.data.task_data import IGNORE, TaskBatches, collate, encode_labelled, encode_tagged
from ssl_core.data.task_files import read_labelled_texts, read_squad, read_tagged_sentences
from ssl_core.data.tokenizer import load_tokenizer
from ssl_core.models import BertConfig, from_pretrained
from ssl_core.models.tasks import TASKS
from ssl_core.tasks import metrics
from ssl_core.train.config import SIZES, RunConfig, _one_of
from ssl_core.train.loop import TrainingRun

FINETUNE_TASKS = ("classify", "pair", "tokens", "qa")


@dataclasses.dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run (ssl-core finetune)."""

    WARMUP_SHARE = 0.1

    task: str = "classify"  # classify, pair, tokens or qa
    train: str = None  # the training file
    eval: str = None  # the evaluation file (None: no evaluation)
    init: str = None  # a model folder to start from, or "none" (random weights, needs size and tokenizer)
    size: str = "mini"  # with init "none": the BERT preset
    tokenizer: str = None  # with init "none": tokenizer.json, vocab.txt or a folder
    text_column: str = "text"
    text_b_column: str = "text_b"  # pair: the second text
    label_column: str = "label"
    tag_column: int = None  # tokens: the tag column (default: the last; CoNLL-U: 3, UPOS)
    regression: bool = None  # classify/pair: labels are values (default: when they are fractional numbers)
    multi_label: bool = None  # classify/pair: each text has a set of labels (default: when JSON labels are lists)
    doc_overlap: int = 64  # qa: context tokens shared by consecutive windows of a long context
    max_answer_tokens: int = 30  # qa: the longest answer predicted
    no_answer: bool = None  # qa: a question may have no answer (SQuAD 2.0; default: when the training file has some)
    epochs: int = 3  # when steps is not given
    skip_bad: bool = None  # skip bad records (counted) instead of stopping at the first
    steps: int = None  # None: epochs x the steps of one epoch
    lr: float = 5e-5
    beta2: float = 0.999
    adam_eps: float = 1e-8
    dropout: float = None  # None: the model's own
    eval_every: int = None  # None: once per epoch
    eval_batches: int = 1000
    save_every: int = None  # None: once per epoch
    out: str = "runs/finetune"

    def __post_init__(self):
        super().__post_init__()
        _one_of("task", self.task, FINETUNE_TASKS)
        _one_of("size", self.size, SIZES)
        if not self.train:
            raise ValueError("train: a training file is needed")
        if not self.init:
            raise ValueError("init: a model folder to start from is needed, or 'none' for random weights")
        if self.init == "none" and not self.tokenizer:
            raise ValueError("init 'none' needs a tokenizer (tokenizer.json, vocab.txt or a model folder)")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")


class FineTuning(TrainingRun):
    """One fine-tuning run of ``config``; ``resume``, ``progress`` and
    ``echo`` as for Pretraining."""

    DESCRIPTION = "fine-tuning"
    LABELLED = True  # the files read hold labels (Prediction reads files without)

    def __init__(self, config: FinetuneConfig, resume=False, progress=True, echo=print):
        checkpoint = self._open(config, resume, progress, echo)
        c = config
        self.tokenizer = load_tokenizer(checkpoint or (c.tokenizer if c.init == "none" else c.init), kind="wordpiece")
        train, self.labels = self._read(c.train, labels=None)
        self.data = TaskBatches(train, c.batch_size, self.tokenizer.pad_id, seed=c.seed)
        self.valid = self._read(c.eval, self.labels)[0] if c.eval else []
        per_epoch = math.ceil(self.data.batches_per_epoch() / c.accumulation_steps)
        resolved = {"steps": c.steps or c.epochs * per_epoch, "eval_every": c.eval_every,
                    "save_every": c.save_every}
        resolved = {k: per_epoch if v is None else v for k, v in resolved.items()}
        self.config = c.replace(**resolved)
        if not checkpoint:
            self.model = self._new_model()
        self._start(checkpoint)

    def _read(self, path, labels):
        """(examples, labels): the encoded examples of a file; labels are
        discovered from the training file (labels=None)."""
        c = self.config
        if c.task == "qa":
            data = read_squad(path, skip_bad=bool(c.skip_bad), answered=self.LABELLED)
            if labels is None:  # the training file
                self.no_answer = c.no_answer if c.no_answer is not None else any(not a for a in data.answers)
            else:
                self.questions = data
            if data.skipped:
                self.echo(f"{path}: {data.skipped} bad questions skipped")
            return encode_squad(self.tokenizer, data, c.seq_len, c.doc_overlap), []
        if c.task == "tokens":
            data = read_tagged_sentences(path, c.tag_column, skip_bad=bool(c.skip_bad), tagged=self.LABELLED)
            labels = labels if labels is not None else sorted({t for tags in data.tags for t in tags})
            examples, skipped, cut = encode_tagged(self.tokenizer, data, {x: i for i, x in enumerate(labels)},
                                                   c.seq_len, path, bool(c.skip_bad))
            if cut:
                self.echo(f"{path}: {cut} words beyond {c.seq_len} tokens are not scored")
        else:
            data = read_labelled_texts(path, c.text_column, c.text_b_column if c.task == "pair" else None,
                                       c.label_column if self.LABELLED else None, c.regression, c.multi_label,
                                       skip_bad=bool(c.skip_bad))
            if c.task == "pair" and data.texts_b is None:
                raise ValueError(f"{path}: a pair task needs a {c.text_b_column!r} column")
            if labels is None:  # the training file decides the kind of problem and the labels
                first = data.labels[0]
                self.problem_type = ("regression" if isinstance(first, float) else "multi_label_classification"
                                     if isinstance(first, list) else "single_label_classification")
                names = {x for y in data.labels for x in y} if isinstance(first, list) else set(data.labels)
                labels = [] if self.problem_type == "regression" else sorted(names)
            ids = None if self.problem_type == "regression" else {x: i for i, x in enumerate(labels)}
            examples, skipped = encode_labelled(self.tokenizer, data, ids, c.seq_len, path, bool(c.skip_bad))
        if data.skipped + skipped:
            self.echo(f"{path}: {data.skipped + skipped} bad records skipped")
        self.records = data  # what was read, for predictions
        return examples, labels

    def _new_model(self):
        c = self.config
        task = TASKS[c.task]
        options = {} if c.task == "qa" else {"labels": self.labels or 1}
        if c.task in ("classify", "pair"):
            options["problem_type"] = self.problem_type
        overrides = {} if c.dropout is None else {"hidden_dropout_prob": c.dropout,
                                                  "attention_probs_dropout_prob": c.dropout}
        if c.init == "none":
            config = BertConfig.preset(c.size, vocab_size=self.tokenizer.vocab_size, pad_token_id=self.tokenizer.pad_id,
                                       **overrides)
            return task(config, seed=c.seed, **options)
        model = from_pretrained(c.init, seed=c.seed, task=c.task, config_overrides=overrides, **options)
        if model.config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"init: the model's vocabulary ({model.config.vocab_size}) is smaller than its "
                             f"tokenizer's ({self.tokenizer.vocab_size})")
        return model

    def label_counts(self, batches):
        if self.config.task == "qa":
            return {"sequence_count": sum(len(b["input_ids"]) for b in batches)}
        if self.config.task == "tokens":
            return {"token_count": max(sum(int((b["labels"] != IGNORE).sum()) for b in batches), 1)}
        return {"sequence_count": sum(len(b["input_ids"]) for b in batches)}

    def validate(self):
        """Loss and the task's metrics on the evaluation file."""
        if not self.valid:
            return {}
        c = self.config
        if c.task == "qa":
            return self._validate_qa()
        self.model.eval()
        truths, predictions, losses = [], [], []
        for first in range(0, min(len(self.valid), c.eval_batches * c.batch_size), c.batch_size):
            batch = collate(self.valid[first:first + c.batch_size], self.tokenizer.pad_id)
            logits = self.model.logits(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            _collect(self._kind(), self.labels, batch, logits.astype(np.float64), truths, predictions, losses)
        self.model.train()
        return _task_metrics(self._kind(), self.labels, truths, predictions, losses)

    def _kind(self):
        """tokens, qa, or the problem of a classify / pair task."""
        return self.config.task if self.config.task in ("tokens", "qa") else self.problem_type

    def _validate_qa(self):
        """Loss over the windows, and SQuAD exact match / F1 of the answers
        found across each question's windows (all questions are scored)."""
        predicted, losses = self._answers()
        gold = [[text for text, _ in answers] for answers in self.questions.answers]
        return {"loss": float(np.sum(losses) / len(self.valid)), **metrics.squad_scores(predicted, gold)}

    def _answers(self):
        """(answer per question, loss terms per window) of the evaluation windows."""
        c = self.config
        self.model.eval()
        starts, ends, losses = [], [], []
        for first in range(0, len(self.valid), c.batch_size):
            batch = collate(self.valid[first:first + c.batch_size], self.tokenizer.pad_id)
            start, end = (x.astype(np.float64) for x in self.model.logits(
                batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]))
            for logits, key in ((start, "start_positions"), (end, "end_positions")):
                log_p = logits - _log_sum_exp(logits)
                losses.extend(-log_p[np.arange(len(logits)), batch[key]] / 2)
            n = [len(w["input_ids"]) for w in batch["windows"]]
            starts += [x[:k] for x, k in zip(start, n)]
            ends += [x[:k] for x, k in zip(end, n)]
        self.model.train()
        answers = best_answers(self.valid, starts, ends, self.questions.contexts, c.max_answer_tokens,
                               allow_no_answer=self.no_answer)
        return answers, losses


def _collect(kind, labels, batch, logits, truths, predictions, losses):
    """Per-example truths and predictions (words' tags for "tokens"), and
    per-target losses, of one evaluation batch."""
    if kind == "tokens":
        log_p = logits - _log_sum_exp(logits)
        for row, starts in enumerate(batch["word_starts"]):
            gold = batch["labels"][row, starts]
            truths.append([labels[i] for i in gold])
            predictions.append([labels[i] for i in logits[row, starts].argmax(axis=1)])
            losses.extend(-log_p[row, starts, gold])
    elif kind == "multi_label_classification":
        y = batch["labels"].astype(np.float64)
        truths.extend(y > 0.5)
        predictions.extend(logits > 0)  # sigmoid > 1/2
        losses.extend((np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))).mean(axis=1))
    elif kind == "regression":
        truths.extend(batch["labels"].astype(np.float64))
        predictions.extend(logits[:, 0])
        losses.extend((logits[:, 0] - batch["labels"]) ** 2)
    else:
        log_p = logits - _log_sum_exp(logits)
        truths.extend(batch["labels"])
        predictions.extend(logits.argmax(axis=1))
        losses.extend(-log_p[np.arange(len(logits)), batch["labels"]])


def _task_metrics(kind, labels, truths, predictions, losses):
    scores = {"loss": float(np.mean(losses))}
    if kind == "multi_label_classification":
        scores.update(metrics.multi_label_scores(truths, predictions))
    elif kind == "tokens":
        scores["token_accuracy"] = metrics.token_accuracy(truths, predictions)
        scheme = _tagging_scheme(labels)
        if scheme:
            scores.update({f"entity_{k}": v for k, v in metrics.entity_scores(truths, predictions, scheme).items()})
    elif kind == "regression":
        scores.update(pearson=metrics.pearson(truths, predictions), spearman=metrics.spearman(truths, predictions))
    else:
        scores.update(accuracy=metrics.accuracy(truths, predictions), macro_f1=metrics.macro_f1(truths, predictions),
                      mcc=metrics.matthews_corrcoef(truths, predictions))
    return scores


def _tagging_scheme(tags):
    """"BIOES", "BIO" or None (plain tags such as parts of speech)."""
    prefixes = {t.partition("-")[0] for t in tags if t != "O"}
    if not prefixes or any("-" not in t for t in tags if t != "O"):
        return None
    if prefixes <= {"B", "I"}:
        return "BIO"
    return "BIOES" if prefixes <= {"B", "I", "E", "S"} else None


def _log_sum_exp(x):
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


class Evaluation(FineTuning):
    """The metrics of a fine-tuned model folder on a labelled file of its
    task (``ssl-core evaluate``), computed as a fine-tuning run validates:
    ``Evaluation(model_dir, task, path, **settings).run()``. ``settings`` are
    FinetuneConfig fields (seq_len, batch_size, columns, skip_bad, ...)."""

    def __init__(self, model_dir, task, path, echo=print, **settings):
        self.echo = echo
        self.config = FinetuneConfig(task=task, train=path, eval=path, init=model_dir, **settings)
        self.model = from_pretrained(model_dir).eval()
        if not isinstance(self.model, TASKS[task]):
            raise ValueError(f"{model_dir} holds a {type(self.model).__name__}, not a model for task {task!r} "
                             f"({TASKS[task].__name__})")
        self.tokenizer = load_tokenizer(model_dir, kind="wordpiece")
        self.problem_type = getattr(self.model, "problem_type", None)
        if self.problem_type == "regression":
            self.config = self.config.replace(regression=True)
        elif self.problem_type == "multi_label_classification":
            self.config = self.config.replace(multi_label=True)
        self.labels = [] if task == "qa" or self.problem_type == "regression" else self.model.labels
        self.no_answer = bool(settings.get("no_answer"))
        self.valid = self._read(path, self.labels)[0]

    def run(self):
        return self.validate()


class Prediction(Evaluation):
    """Predictions of a fine-tuned model folder on a file of its task,
    labelled or not (``ssl-core predict``). ``run()`` returns, per record:
    classify/pair {"label", "scores"} (class probabilities), {"labels",
    "scores"} (multi-label: those above 1/2) or {"value"} (regression);
    tokens the predicted tag of every word (words past seq_len: None); qa
    {question id: answer} ("" for no answer)."""

    LABELLED = False

    def run(self):
        c = self.config
        if c.task == "qa":
            return dict(zip(self.questions.ids, self._answers()[0]))
        self.model.eval()
        out = []
        for first in range(0, len(self.valid), c.batch_size):
            batch = collate(self.valid[first:first + c.batch_size], self.tokenizer.pad_id)
            logits = self.model.logits(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            logits = logits.astype(np.float64)
            if c.task == "tokens":
                for row, starts in enumerate(batch["word_starts"]):
                    n_words = len(self.records.words[first + row])
                    tags = [self.labels[i] for i in logits[row, starts].argmax(axis=1)]
                    out.append(tags + [None] * (n_words - len(tags)))
            elif self.problem_type == "regression":
                out += [{"value": float(v)} for v in logits[:, 0]]
            elif self.problem_type == "multi_label_classification":
                probabilities = 1 / (1 + np.exp(-logits))
                out += [{"labels": [x for x, q in zip(self.labels, p) if q > 0.5],
                         "scores": {x: float(q) for x, q in zip(self.labels, p)}} for p in probabilities]
            else:
                probabilities = np.exp(logits - _log_sum_exp(logits))
                out += [{"label": self.labels[int(p.argmax())],
                         "scores": {x: float(q) for x, q in zip(self.labels, p)}} for p in probabilities]
        return out
