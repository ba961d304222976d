"""The settings of training runs, with their defaults and checks.

A run's settings come, lowest priority first, from these defaults, a TOML
file and the command line; ``out/run.json`` records the settings a run used,
and ``--resume`` starts from them.
"""

import dataclasses
import json
import os

from ssl_core.data.masking import MaskingConfig
from ssl_core.data.pretraining import OBJECTIVES
from ssl_core.models.config import SIZES as MODEL_SIZES

MODELS = ("bert", "gpt")
SIZES = tuple(reversed(MODEL_SIZES))  # tiny, mini, small, base

# Settings a resumed run may change without changing its weights.
RESUMABLE_CHANGES = frozenset({"steps", "epochs", "threads", "log_every", "eval_every", "eval_batches", "save_every",
                               "keep_checkpoints", "cache_dir", "out"})


@dataclasses.dataclass
class RunConfig:
    """What every training run is set with: batches, optimizer, schedule,
    validation, checkpoints, output."""

    WARMUP_SHARE = 0.06  # of the steps, when warmup_steps is not given

    seq_len: int = 128
    batch_size: int = 32  # sequences per micro-batch
    accumulation_steps: int = 1  # micro-batches per optimizer step
    steps: int = 1000  # optimizer steps
    lr: float = 1e-3
    schedule: str = "linear"  # after warmup: constant, linear or cosine decay to min_lr
    warmup_steps: int = None  # None: WARMUP_SHARE of steps
    min_lr: float = 0.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0  # 0: no clipping
    dropout: float = 0.1  # hidden and attention dropout
    eval_every: int = 100  # steps between validations (0: only at the end)
    eval_batches: int = 20  # validation batches (at most)
    save_every: int = 500  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: "stop", or "skip" the step
    seed: int = 0
    out: str = "runs/run"
    cache_dir: str = None  # None: $SSL_CORE_CACHE or ~/.cache/ssl_core
    threads: int = None  # None: ssl_core's default

    def __post_init__(self):
        if self.warmup_steps is None and self.steps is not None:
            self.warmup_steps = int(self.WARMUP_SHARE * self.steps)
        _one_of("schedule", self.schedule, ("constant", "linear", "cosine"))
        _one_of("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        positive = ["seq_len", "batch_size", "accumulation_steps", "eval_batches", "keep_checkpoints", "log_every"]
        for name in positive + (["steps"] if self.steps is not None else []):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("eval_every", "save_every", "seed") + (("warmup_steps",) if self.steps is not None else ()):
            if name.endswith("_every") and getattr(self, name) is None:
                continue  # a run kind that resolves it later (fine-tuning: once per epoch)
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.steps is not None and self.warmup_steps >= self.steps and self.schedule != "constant":
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"lr must be > 0 and min_lr in [0, lr], got lr={self.lr}, min_lr={self.min_lr}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="settings"):
        """A config from a dict, unknown keys rejected with their names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes):
        values = {**self.to_dict(), **changes}
        derived = self.steps is not None and self.warmup_steps == int(self.WARMUP_SHARE * self.steps)
        if "steps" in changes and "warmup_steps" not in changes and derived:
            values["warmup_steps"] = None  # a derived warmup follows the new length
        return type(self).from_dict(values)

    def weight_changes(self, other):
        """The settings in which two configs differ that change the weights."""
        return sorted(k for k, v in self.to_dict().items()
                      if k not in RESUMABLE_CHANGES and other.to_dict()[k] != v)

    def cache_folder(self):
        return self.cache_dir or os.environ.get("SSL_CORE_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "ssl_core")


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    """A pretraining run (ssl-core pretrain)."""

    model: str = "bert"  # "bert" or "gpt"
    size: str = "mini"  # tiny (2 layers x 128), mini (4 x 256), small (4 x 512), base (12 x 768)
    objective: str = None  # mlm, mlm+nsp, mlm+sop, wwm, span (bert), clm (gpt); None: mlm / clm
    corpus: str = None  # file or folder of text or JSON Lines; None: the embedded corpus
    text_field: str = "text"  # the field holding the text in JSON Lines
    tokenizer: str = None  # tokenizer.json, vocab.txt or a folder; None: train one on the corpus
    vocab_size: int = 8192  # of a tokenizer trained here
    mask_rate: float = 0.15
    mask_token_ratio: float = 0.8  # of chosen tokens shown as [MASK]
    random_token_ratio: float = 0.1  # ... as a random token; the rest unchanged
    mask_budget: str = "exact"  # or bernoulli
    span_p: float = 0.2
    max_span: int = 10
    short_seq_prob: float = 0.1
    valid_every_document: int = 20  # every k-th document is held out for validation
    out: str = "runs/pretrain"

    def __post_init__(self):
        if self.objective is None:
            self.objective = "clm" if self.model == "gpt" else "mlm"
        super().__post_init__()
        _one_of("model", self.model, MODELS)
        _one_of("size", self.size, SIZES)
        _one_of("objective", self.objective, tuple(OBJECTIVES))
        if (self.model == "gpt") != (self.objective == "clm"):
            raise ValueError(f"objective {self.objective!r} is not one of model {self.model!r}: "
                             f"bert takes mlm, mlm+nsp, mlm+sop, wwm or span; gpt takes clm")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.dropout is None:
            raise ValueError("dropout must be a number in [0, 1)")
        if self.valid_every_document < 2:
            raise ValueError(f"valid_every_document must be at least 2, got {self.valid_every_document}")
        self.masking()  # checks the masking settings

    def masking(self):
        return MaskingConfig(rate=self.mask_rate, mask_ratio=self.mask_token_ratio,
                             random_ratio=self.random_token_ratio, budget=self.mask_budget,
                             span_p=self.span_p, max_span=self.max_span)


def load_toml(path, table="pretrain"):
    """Settings from a TOML file: a flat table of a config's fields (dashes or
    underscores), optionally under a [pretrain] / [finetune] table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config: no such file {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config: {path} is not valid TOML ({error})") from None
    values = values.get(table, values)
    return {key.replace("-", "_"): value for key, value in values.items()}


def read_run_config(out, kind=None):
    """The settings recorded in ``out/run.json`` as a ``kind`` (a RunConfig
    subclass, PretrainConfig by default), or None."""
    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return (kind or PretrainConfig).from_dict(json.load(f), source=path)


def _one_of(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
