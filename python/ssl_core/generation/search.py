"""The decoding loops: one token per row per step (greedy and sampling), and
beam search. Both prefill the prompts once, then feed the model one token
per row per step against its key/value cache.

The model is anything with ``new_cache(batch, capacity)`` and
``next_token_logits(ids, cache, lengths=None)`` (models.GPT).
"""

import numpy as np

from ssl_core.generation.logits import draw, log_softmax, penalize_repetitions, sampling_scores


def _prefill(model, prompts, config, copies):
    """Run the prompts through the model once; returns (cache, logits (N, V)),
    each prompt's cache and logits repeated ``copies`` times (N = B * copies)."""
    ids, lengths = prompts.right_padded()
    cache = model.new_cache(len(ids), int(lengths.max()) + config.max_new_tokens)
    logits = model.next_token_logits(ids, cache, lengths)
    if copies > 1:
        cache.repeat(copies)
        logits = np.repeat(logits, copies, axis=0)
    return cache, logits


def _seen_tokens(prompts, vocab_size, copies, config):
    """(N, V) bool marks of each row's prompt tokens for the repetition penalty, or None."""
    if config.repetition_penalty == 1.0:
        return None
    seen = np.zeros((len(prompts.rows) * copies, vocab_size), bool)
    for i, row in enumerate(prompts.rows):
        seen[i * copies:(i + 1) * copies, row] = True
    return seen


def stream_tokens(model, prompts, config, stop):
    """Greedy decoding or sampling, one step at a time.

    Yields (tokens, live) per step: tokens (N,) int64 the new token of each
    row (pad for rows already ended), live (N,) bool the rows that produced
    one. N = prompts x num_return_sequences (sampling), row i continuing
    prompt i // num_return_sequences. Stops when every row has ended or
    max_new_tokens are reached.
    """
    copies = config.num_return_sequences
    cache, logits = _prefill(model, prompts, config, copies)
    seen = _seen_tokens(prompts, logits.shape[1], copies, config)
    rng = np.random.default_rng(config.seed)
    live = np.ones(len(logits), bool)
    new = [[] for _ in range(len(logits))]
    for step in range(config.max_new_tokens):
        if config.strategy == "greedy":
            tokens = penalize_repetitions(logits, seen, config.repetition_penalty).argmax(axis=1)
        else:
            tokens = draw(sampling_scores(logits, seen, config), rng)
        tokens = np.where(live, tokens, config.pad_token_id)
        yield tokens, live.copy()
        rows = np.flatnonzero(live)
        for i in rows:
            new[i].append(int(tokens[i]))
        if seen is not None:
            seen[rows, tokens[rows]] = True
        live &= ~stop.ended(tokens, new.__getitem__)
        if not live.any() or step + 1 == config.max_new_tokens:
            return
        logits = model.next_token_logits(tokens[:, None], cache)


def beam_search(model, prompts, config, stop):
    """Beam search with a length penalty; returns, for each prompt, its
    num_return_sequences best finished beams, best first, as a list of
    (score, new tokens) pairs.

    Each step, every running beam's log-probabilities (after the repetition
    penalty) are added to its score; of all beams' continuations, the
    K = (1 + stop tokens) x num_beams best are kept, enough that num_beams
    of them have not ended. Those among the num_beams best that ended join
    the prompt's finished beams, scored score / new_tokens ** length_penalty;
    the num_beams best that have not ended run on. These are the rules of
    transformers' beam search (early_stopping True, False and "never"
    included), whose output it matches.
    """
    nb, B = config.num_beams, len(prompts.rows)
    cache, logits = _prefill(model, prompts, config, nb)
    V = logits.shape[1]
    seen = _seen_tokens(prompts, V, nb, config)
    K = max(2, 1 + len(config.stop_token_ids)) * nb
    running_scores = np.full((B, nb), -1e9, np.float32)
    running_scores[:, 0] = 0.0  # the copies of a prompt start as one beam
    running = np.zeros((B, nb, config.max_new_tokens), np.int64)
    finished = [[] for _ in range(B)]
    improvable = np.ones(B, bool)  # can a running beam still beat the worst finished one?
    lp, never = config.length_penalty, config.early_stopping == "never"
    for step in range(config.max_new_tokens):
        new_tokens = step + 1
        logp = penalize_repetitions(log_softmax(logits), seen, config.repetition_penalty)
        total = (logp + running_scores.reshape(-1, 1)).reshape(B, nb * V)
        top = np.argpartition(-total, K - 1, axis=1)[:, :K]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(total, top, 1), axis=1, kind="stable"), 1)
        scores = np.take_along_axis(total, top, 1)
        beam, token = top // V, top % V
        candidates = running[np.arange(B)[:, None], beam]
        candidates[:, :, step] = token
        flat = candidates.reshape(B * K, -1)
        ended = stop.ended(token.reshape(-1), lambda i: flat[i, :new_tokens]).reshape(B, K)
        if new_tokens == config.max_new_tokens:
            ended[:] = True
        for b in np.flatnonzero(improvable):
            if config.early_stopping is True and len(finished[b]) == nb:
                continue
            finished[b] += [(float(scores[b, k]) / new_tokens ** lp, candidates[b, k, :new_tokens])
                            for k in range(nb) if ended[b, k]]
            finished[b] = sorted(finished[b], key=lambda f: -f[0])[:nb]
        go_on = scores - np.float32(1e9) * ended
        keep = np.argsort(-go_on, axis=1, kind="stable")[:, :nb]
        running_scores = np.take_along_axis(go_on, keep, 1)
        running = np.take_along_axis(candidates, keep[:, :, None], 1)
        for b in np.flatnonzero(improvable):
            if len(finished[b]) == nb:
                length = config.max_new_tokens if never and lp > 0 else new_tokens
                improvable[b] = running_scores[b, 0] / length ** lp > finished[b][-1][0]
        all_full = all(len(f) == nb for f in finished)
        if not improvable.any() or (config.early_stopping is True and all_full) or ended.all():
            break
        rows = (np.arange(B)[:, None] * nb + np.take_along_axis(beam, keep, 1)).reshape(-1)
        cache.select(rows)
        next_tokens = running[:, :, step].reshape(-1)
        if seen is not None:
            seen = seen[rows]
            seen[np.arange(B * nb), next_tokens] = True
        logits = model.next_token_logits(next_tokens[:, None], cache)
    return [f[:config.num_return_sequences] for f in finished]
