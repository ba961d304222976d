"""generate() and stream(): token ids in, token ids out."""

import numpy as np

from ssl_core.generation.config import GenerationConfig
from ssl_core.generation.prompts import Prompts
from ssl_core.generation.search import beam_search, stream_tokens
from ssl_core.generation.stopping import StopCondition

_SAMPLING_ONLY = {"temperature": 1.0, "top_k": None, "top_p": 1.0}
_BEAM_ONLY = {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False}


def _setup(model, input_ids, attention_mask, tokenizer, options):
    """Checked (config, prompts, stop condition); the model's context window bounds the prompts."""
    config = GenerationConfig(**options)
    for name, default in (_SAMPLING_ONLY if config.strategy != "sample" else {}).items():
        if options.get(name, default) != default:
            raise ValueError(f"{name} applies to strategy='sample', not {config.strategy!r}")
    for name, default in (_BEAM_ONLY if config.strategy != "beam" else {}).items():
        if options.get(name, default) != default:
            raise ValueError(f"{name} applies to strategy='beam', not {config.strategy!r}")
    c = model.config
    prompts = Prompts(input_ids, attention_mask, c.n_positions, config.max_new_tokens, c.vocab_size,
                      config.truncate)
    if config.pad_token_id >= c.vocab_size or any(t >= c.vocab_size for t in config.stop_token_ids):
        raise ValueError(f"pad_token_id and stop_token_ids must be in the vocabulary [0, {c.vocab_size})")
    return config, prompts, StopCondition(config.stop_token_ids, config.stop_strings, tokenizer)


def generate(model, input_ids, attention_mask=None, tokenizer=None, **options):
    """Continue prompts with a GPT; returns the prompts followed by the new tokens.

    Args:
        model: a models.GPT (ours, or a GPT-2 checkpoint from from_pretrained).
        input_ids: one prompt (1-D integer array or list of ids), a list of
            prompts of any lengths, or an integer array (B, T) with
            ``attention_mask`` (B, T) marking its padding (left or right) with 0.
        tokenizer: decodes continuations for ``stop_strings``.
        **options: a GenerationConfig's fields: strategy ("greedy", "sample",
            "beam"), max_new_tokens, temperature, top_k, top_p,
            repetition_penalty, num_beams, length_penalty, early_stopping,
            num_return_sequences, stop_token_ids, stop_strings, pad_token_id,
            seed, truncate.

    Returns:
        int64 (N, T_out), N = B x num_return_sequences (a prompt's rows
        adjacent): an input array's columns (padding and all) then the new
        tokens; a list of prompts gives each prompt then its new tokens. Rows
        that stopped early are padded with pad_token_id. A single prompt
        gives (T_out,) when num_return_sequences is 1.
    """
    config, prompts, stop = _setup(model, input_ids, attention_mask, tokenizer, options)
    if config.strategy == "beam":
        best = beam_search(model, prompts, config, stop)
        continuations = [tokens for beams in best for _, tokens in beams]
    else:
        continuations = [[] for _ in range(len(prompts.rows) * config.num_return_sequences)]
        for tokens, live in stream_tokens(model, prompts, config, stop):
            for i in np.flatnonzero(live):
                continuations[i].append(tokens[i])
    return prompts.output([np.asarray(c, np.int64) for c in continuations], config.pad_token_id,
                          config.num_return_sequences)


def stream(model, input_ids, attention_mask=None, tokenizer=None, **options):
    """Greedy decoding or sampling as it happens: yields (tokens, live) each
    step, tokens (N,) int64 the new token of every row (pad_token_id for rows
    already ended) and live (N,) bool the rows that produced one. Arguments
    as for ``generate``; beam search, which settles its tokens only at the
    end, cannot stream."""
    config, prompts, stop = _setup(model, input_ids, attention_mask, tokenizer, options)
    if config.strategy == "beam":
        raise ValueError("beam search cannot stream: its best beams are known only at the end; use generate()")
    return stream_tokens(model, prompts, config, stop)
