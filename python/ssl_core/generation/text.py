"""Text in, text out: prompts encoded and continuations decoded with a tokenizer."""

import numpy as np

from ssl_core.data.tokenizer import TextTokenizer
from ssl_core.generation.api import generate, stream
from ssl_core.generation.stopping import cut_at_stop_string


def _encode(tokenizer, prompt):
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if isinstance(tokenizer, TextTokenizer):
        ids = tokenizer.encode([prompt])[0][0]
    else:  # a tokenizers.Tokenizer (which returns an Encoding) or a transformers tokenizer (a list)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        ids = getattr(ids, "ids", ids)
    return [int(i) for i in ids]


def _default_stops(tokenizer, options):
    """End at the tokenizer's end-of-text token unless stop_token_ids are given."""
    if "stop_token_ids" not in options:
        eot = getattr(tokenizer, "eot_id", None)
        if eot is None:
            eot = getattr(tokenizer, "eos_token_id", None)
        options["stop_token_ids"] = () if eot is None else (eot,)
    return options


def _decode(tokenizer, ids, stop_token_ids, stop_strings):
    ids = [int(i) for i in ids if int(i) not in stop_token_ids]
    return cut_at_stop_string(tokenizer.decode(ids), stop_strings)


def generate_text(model, tokenizer, prompts, **options):
    """The continuation of each prompt, as text (without the prompt).

    prompts: a string, or a list of strings (batched, of any lengths).
    tokenizer: an ssl_core.data.TextTokenizer, a tokenizers.Tokenizer or a
        transformers tokenizer. Stops at its end-of-text token unless
        ``stop_token_ids`` are given; text from a stop string on is cut off.
    **options: as for ``generate``. Returns a string for a string prompt,
    else a list (num_return_sequences per prompt, adjacent).
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    ids = [_encode(tokenizer, t) for t in texts]
    options = _default_stops(tokenizer, dict(options))
    out = generate(model, ids, tokenizer=tokenizer, **options)
    per_prompt = options.get("num_return_sequences", 1)
    stops, strings = set(options["stop_token_ids"]), options.get("stop_strings", ())
    strings = (strings,) if isinstance(strings, str) else tuple(strings)
    results = []
    for i, row in enumerate(np.atleast_2d(out)):
        start = len(ids[i // per_prompt])
        results.append(_decode(tokenizer, row[start:], stops, strings))
    return results[0] if single and per_prompt == 1 else results


def stream_text(model, tokenizer, prompt, **options):
    """An iterator over the continuation of one prompt, piece by piece as it
    is generated (greedy or sampled), cut at any stop string. A piece is held
    back while the text ends in an incomplete character (a byte-level BPE
    token may carry part of one) or could be the start of a stop string.
    The options are checked before this returns."""
    options = _default_stops(tokenizer, dict(options))
    stops, strings = set(options["stop_token_ids"]), options.get("stop_strings", ())
    strings = (strings,) if isinstance(strings, str) else tuple(strings)
    steps = stream(model, [_encode(tokenizer, prompt)], tokenizer=tokenizer, **options)
    return _pieces(steps, tokenizer, stops, strings)


def _pieces(steps, tokenizer, stops, strings):
    tokens, shown = [], ""
    for step, _ in steps:
        if int(step[0]) in stops:
            break
        tokens.append(int(step[0]))
        text = tokenizer.decode(tokens)
        cut = cut_at_stop_string(text, strings)
        if cut != text:
            if len(cut) > len(shown):
                yield cut[len(shown):]
            return
        safe = len(text.rstrip("\ufffd"))
        for s in strings:  # hold back a tail that a stop string may begin with
            held = next((n for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), 0)
            safe = min(safe, len(text) - held)
        if safe > len(shown):
            yield text[len(shown):safe]
            shown = text[:safe]
    text = _decode(tokenizer, tokens, stops, strings)
    if len(text) > len(shown):
        yield text[len(shown):]
