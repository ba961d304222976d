"""The settings of one generation, checked once, before any work."""

import dataclasses
import math
import operator

STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass
class GenerationConfig:
    """How to continue a prompt.

    strategy: "greedy" (the most likely token each step), "sample" (draw from
        the processed distribution) or "beam" (beam search).
    max_new_tokens: tokens to add at most (>= 1).
    temperature: > 0; divides the logits before sampling ("sample" only).
    top_k: keep only the k most likely tokens (0 or None: all).
    top_p: nucleus sampling: keep the smallest set of most likely tokens whose
        probability reaches top_p, in (0, 1] (1: all).
    repetition_penalty: >= 1 divides (multiplies, if negative) the logits of
        tokens already in the row, prompt included (CTRL, Keskar et al. 2019).
    num_beams, length_penalty, early_stopping: beam search. Finished beams
        are ranked by their log-probability / (new tokens ** length_penalty);
        early_stopping True stops a prompt once num_beams beams finished,
        False once no running beam can beat the worst finished one at its
        current length, "never" once none can at any length.
    num_return_sequences: the best beams returned per prompt (<= num_beams),
        or samples per prompt ("sample").
    stop_token_ids: tokens that end a row (kept in the output), e.g. the
        end-of-text token.
    stop_strings: texts that end a row once its decoded continuation holds
        one (needs a tokenizer).
    pad_token_id: fills the rows that stopped early (default: the first stop
        token, else 0).
    seed: the sampling generator's seed; the same seed gives the same tokens.
    truncate: cut a prompt too long for the context window to its last
        tokens instead of raising.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: object = False
    num_return_sequences: int = 1
    stop_token_ids: tuple = ()
    stop_strings: tuple = ()
    pad_token_id: int = None
    seed: int = None
    truncate: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        self.max_new_tokens = _integer("max_new_tokens", self.max_new_tokens, minimum=1)
        self.temperature = _number("temperature", self.temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (for the most likely token "
                             "every step, use strategy='greedy')")
        if self.top_k is not None:
            self.top_k = _integer("top_k", self.top_k, minimum=0) or None
        self.top_p = _number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.repetition_penalty = _number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1: none), got {self.repetition_penalty}")
        self.num_beams = _integer("num_beams", self.num_beams, minimum=1)
        self.length_penalty = _number("length_penalty", self.length_penalty)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        self.num_return_sequences = _integer("num_return_sequences", self.num_return_sequences, minimum=1)
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                             f"({self.num_beams})")
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs strategy 'sample' or 'beam' (greedy has one answer)")
        if isinstance(self.stop_token_ids, int):
            self.stop_token_ids = (self.stop_token_ids,)
        self.stop_token_ids = tuple(_integer("stop_token_ids", t, minimum=0) for t in self.stop_token_ids)
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.pad_token_id is None:
            self.pad_token_id = self.stop_token_ids[0] if self.stop_token_ids else 0
        self.pad_token_id = _integer("pad_token_id", self.pad_token_id, minimum=0)
        if self.seed is not None:
            self.seed = _integer("seed", self.seed, minimum=0)


def _integer(name, value, minimum):
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r:.60}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _number(name, value):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r:.60}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value
