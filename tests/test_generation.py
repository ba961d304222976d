"""GPT text generation (ssl_core.generation): the key/value cache against the
uncached forward, greedy decoding and beam search against Hugging Face
transformers' generate, the sampling filters against NumPy float64 and
transformers' logits processors, stop tokens, stop strings and the text
helpers, and the errors bad input raises."""

import re

import numpy as np
import pytest
import torch
import transformers
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from ssl_core.data import train_tokenizer
from ssl_core.generation import generate, generate_text, stream, stream_text
from ssl_core.generation.config import GenerationConfig
from ssl_core.generation.logits import draw, keep_top_k, keep_top_p, penalize_repetitions, sampling_scores
from ssl_core.models import GPT, GPTConfig, from_pretrained, save_pretrained

V, P = 300, 128  # vocabulary and context window of the tiny model


def tiny_gpt(vocab_size=V):
    """Random weights with a large init std: logits spread over several units,
    so no two tokens tie for the argmax and greedy decoding is well defined."""
    cfg = GPTConfig(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=P, initializer_range=0.3)
    return GPT(cfg, seed=1).eval()


def positional_gpt(vocab_size=V):
    """tiny_gpt with its position embeddings scaled up, so the next token
    depends on the position as much as on the last token. (tiny_gpt mostly
    repeats its last token under greedy decoding: dull text, and blind to a
    token at the wrong position.)"""
    model = tiny_gpt(vocab_size)
    model.wpe.weight.data *= 4
    return model


def nan_cache(model, batch, capacity):
    """A key/value cache whose positions hold NaN until written (np.empty may
    hold anything, NaN included): a read of a position never written shows."""
    cache = model.new_cache(batch, capacity)
    for layer in cache.layers:
        layer.keys[:] = np.nan
        layer.values[:] = np.nan
    return cache


def hf_generate(hf, ids, mask=None, **options):
    """transformers' generate on a numpy batch; the output as numpy."""
    mask = np.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **options)
    return out.numpy()


def uncached_greedy(model, prompt, n):
    """Greedy decoding by the full forward: argmax of model.logits over the whole text, one token at a time."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model.logits(np.array([ids]))[0, -1].argmax()))
    return np.array(ids)


def softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_p_reference(logits, p):
    """Kept tokens (B, V) bool of the nucleus filter in float64: the most likely
    tokens down to the first whose more likely predecessors reach p."""
    probs = softmax64(logits)
    keep = np.zeros(probs.shape, bool)
    for b, row in enumerate(probs):
        order = np.argsort(-row, kind="stable")
        before = np.cumsum(row[order]) - row[order]
        keep[b, order[before < p]] = True
    return keep


def kept_by(warper, logits):
    """Tokens a transformers logits warper leaves finite."""
    ids = torch.zeros((len(logits), 1), dtype=torch.long)
    return np.isfinite(warper(ids, torch.from_numpy(logits.copy())).numpy())


def first_stop_cut(row, stop):
    """Row's tokens up to and including the first ``stop`` (all of them if none)."""
    hits = np.flatnonzero(row == stop)
    return row[:hits[0] + 1] if hits.size else row


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """transformers is only the reference here; one thread keeps its tiny
    matmuls from fighting our kernels' OpenMP threads for the 2 cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt()


@pytest.fixture(scope="module")
def pairs(model, tmp_path_factory):
    """name -> (our model, the same weights in transformers' GPT2LMHeadModel)."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # quiet about GPT-2's bos/eos ids 50256, outside the vocabulary
    out = {}
    for name, ours in (("tiny", model), ("positional", positional_gpt())):
        folder = tmp_path_factory.mktemp(name)
        save_pretrained(ours, folder)
        out[name] = ours, transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    yield out
    transformers.logging.set_verbosity(previous)


@pytest.fixture(scope="module")
def hf(pairs):
    return pairs["tiny"][1]


BOTH = pytest.mark.parametrize("which", ["tiny", "positional"])


WORDS = {"subject": ["the cat", "a dog", "my friend", "the old man", "our teacher", "a small bird", "the children"],
         "verb": ["sees", "likes", "finds", "carries", "paints", "follows", "remembers"],
         "object": ["the red ball", "a green hat", "the river", "an apple", "the long road", "a blue box"],
         "end": [".", " today.", " at night.", " in the garden.", " again."]}


@pytest.fixture(scope="module")
def text_model():
    """A byte-level BPE tokenizer trained on short sentences, and a random GPT
    of its vocabulary size (positional_gpt: varied text)."""
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS[k]) for k in ("subject", "verb", "object")) + rng.choice(WORDS["end"])
             for _ in range(400)]
    tok = train_tokenizer(texts, "bpe", vocab_size=V)
    assert 257 < tok.vocab_size <= V
    return positional_gpt(tok.vocab_size), tok


# ----------------------------------------------------------- key/value cache --
def test_cached_steps_equal_full_forward(model, rng):
    ids = rng.integers(0, V, (3, 14))
    full = model.logits(ids)
    scale = np.abs(full).max()
    cache = nan_cache(model, 3, 14)
    got = model.next_token_logits(ids[:, :6], cache)
    np.testing.assert_allclose(got, full[:, 5], rtol=1e-4, atol=1e-5 * scale)
    for t in range(6, 14):
        got = model.next_token_logits(ids[:, t:t + 1], cache)
        np.testing.assert_allclose(got, full[:, t], rtol=1e-4, atol=1e-5 * scale, err_msg=f"step {t}")
    assert list(cache.lengths) == [14, 14, 14]


def test_cache_of_right_padded_prompts_of_different_lengths(model, rng):
    lengths = np.array([3, 9, 6])
    texts = rng.integers(0, V, (3, 14))
    padded = rng.integers(0, V, (3, 9))  # the padding holds real tokens: it must not be attended to
    for b, n in enumerate(lengths):
        padded[b, :n] = texts[b, :n]
    cache = nan_cache(model, 3, 9 + 5)
    steps = [model.next_token_logits(padded, cache, lengths)]
    for s in range(5):
        steps.append(model.next_token_logits(texts[np.arange(3), lengths + s][:, None], cache))
    for b, n in enumerate(lengths):
        full = model.logits(texts[b:b + 1, :n + 5])[0]
        want = full[n - 1:n + 5]
        np.testing.assert_allclose([s[b] for s in steps], want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"row {b}")
    assert list(cache.lengths) == list(lengths + 5)


def test_multi_token_steps_from_unequal_and_equal_row_starts(model, rng):
    """Several tokens per row at once: rows at different positions (an explicit
    mask in SelfAttention.decode) and rows at the same position past 0 (causal)."""
    texts = rng.integers(0, V, (2, 12))
    lengths = np.array([3, 5])
    cache = nan_cache(model, 2, 12)
    model.next_token_logits(np.where(np.arange(5) < lengths[:, None], texts[:, :5], 7), cache, lengths)
    for size in (2, 1, 3):  # starts (3, 5), then (5, 7), then (6, 8)
        start = cache.lengths.copy()
        chunk = texts[np.arange(2)[:, None], start[:, None] + np.arange(size)]
        got = model.next_token_logits(chunk, cache)
        for b in range(2):
            want = model.logits(texts[b:b + 1, :start[b] + size])[0, -1]
            np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                       err_msg=f"row {b}, {size} tokens from {start[b]}")
    assert list(cache.lengths) == [9, 11]

    ids = texts[:, :4]
    cache = nan_cache(model, 2, 12)
    model.next_token_logits(ids, cache)
    got = model.next_token_logits(texts[:, 4:7], cache)  # both rows start at 4: the causal branch
    want = model.logits(texts[:, :7])[:, -1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


# -------------------------------------------------------------------- greedy --
@BOTH
def test_greedy_matches_transformers(pairs, which, rng):
    model, hf = pairs[which]
    ids = rng.integers(0, V, (4, 7))
    out = model.generate(ids, max_new_tokens=20)
    assert out.shape == (4, 27) and out.dtype == np.int64
    np.testing.assert_array_equal(out, hf_generate(hf, ids, max_new_tokens=20, do_sample=False, pad_token_id=0))


@BOTH
def test_greedy_left_padded_batch_matches_transformers(pairs, which, rng):
    model, hf = pairs[which]
    ids = rng.integers(1, V, (3, 9))  # padding columns hold real tokens: only the mask marks them
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=15)
    want = hf_generate(hf, ids, mask, max_new_tokens=15, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out[:, :9], ids)  # the input's layout, padding and all, is kept


@BOTH
def test_greedy_list_of_prompts_equals_each_alone(pairs, which, rng):
    model = pairs[which][0]
    prompts = [list(rng.integers(0, V, n)) for n in (4, 11, 1, 7)]
    out = model.generate(prompts, max_new_tokens=12)
    assert out.shape == (4, 11 + 12)
    for row, prompt in zip(out, prompts):
        alone = model.generate(prompt, max_new_tokens=12)
        assert alone.shape == (len(prompt) + 12,)
        np.testing.assert_array_equal(row[:len(alone)], alone)
        assert (row[len(alone):] == 0).all()  # right-padded with pad_token_id


@BOTH
def test_greedy_equals_uncached_argmax_loop(pairs, which, rng):
    model = pairs[which][0]
    for n in (1, 6):
        prompt = rng.integers(0, V, n)
        np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=15), uncached_greedy(model, prompt, 15))


@BOTH
def test_greedy_with_repetition_penalty_matches_transformers(pairs, which, rng):
    model, hf = pairs[which]
    ids = rng.integers(0, V, (3, 8))
    out = model.generate(ids, max_new_tokens=20, repetition_penalty=1.3)
    want = hf_generate(hf, ids, max_new_tokens=20, do_sample=False, pad_token_id=0, repetition_penalty=1.3)
    np.testing.assert_array_equal(out, want)
    assert (out != model.generate(ids, max_new_tokens=20)).any()  # the penalty changed something


# --------------------------------------------------------------- beam search --
@pytest.fixture(scope="module")
def beam_case(model):
    """Prompts and a stop token greedy decoding produces early (row 0's third
    new token), which ends beams within the 12 steps in every setting below."""
    ids = np.random.default_rng(7).integers(0, V, (4, 7))
    stop = int(model.generate(ids, max_new_tokens=3)[0, -1])
    return ids, stop


BEAM_GRID = [(es, lp) for es in (False, True, "never") for lp in (1.0, 0.0, 2.0, -1.0)]


@pytest.mark.parametrize("early_stopping, length_penalty", BEAM_GRID)
def test_beam_search_matches_transformers(model, hf, beam_case, early_stopping, length_penalty):
    ids, stop = beam_case
    options = dict(num_beams=4, max_new_tokens=12, length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=2)
    out = model.generate(ids, strategy="beam", stop_token_ids=[stop], **options)
    want = hf_generate(hf, ids, do_sample=False, pad_token_id=stop, eos_token_id=stop, **options)
    assert out.shape == want.shape
    np.testing.assert_array_equal(out, want)
    new = out[:, 7:]
    assert (new[:, :-1] == stop).any(), "no returned beam ended at the stop token: the test would not cover it"
    np.testing.assert_array_equal(out[:, :7], np.repeat(ids, 2, axis=0))


def test_beam_search_settings_change_the_result(model, beam_case):
    """The grid above is not 12 times the same answer: the length penalty decides between beams of
    different lengths."""
    ids, stop = beam_case
    outs = {model.generate(ids, strategy="beam", num_beams=4, max_new_tokens=12, stop_token_ids=[stop],
                           length_penalty=lp, early_stopping=es, num_return_sequences=2).tobytes()
            for es, lp in BEAM_GRID}
    assert len(outs) >= 2


@BOTH
def test_beam_search_with_repetition_penalty_matches_transformers(pairs, which, beam_case):
    model, hf = pairs[which]
    ids, stop = beam_case
    options = dict(num_beams=3, max_new_tokens=10, num_return_sequences=3, repetition_penalty=1.5)
    out = model.generate(ids, strategy="beam", stop_token_ids=[stop], **options)
    want = hf_generate(hf, ids, do_sample=False, pad_token_id=stop, eos_token_id=stop, **options)
    np.testing.assert_array_equal(out, want)
    plain = model.generate(ids, strategy="beam", stop_token_ids=[stop], **{**options, "repetition_penalty": 1.0})
    assert plain.shape != out.shape or (plain != out).any()


def test_beam_search_with_one_beam_is_greedy(model, rng):
    ids = rng.integers(0, V, (2, 5))
    np.testing.assert_array_equal(model.generate(ids, strategy="beam", num_beams=1, max_new_tokens=10),
                                  model.generate(ids, max_new_tokens=10))


def test_a_transformers_checkpoint_generates_as_transformers(tmp_path, rng):
    """A GPT2LMHeadModel that transformers initialized and saved (Conv1D
    layout), loaded with from_pretrained: greedy and beam search as transformers'."""
    config = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=P,
                                     initializer_range=0.3, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    ids = rng.integers(0, V, (2, 6))
    np.testing.assert_array_equal(ours.generate(ids, max_new_tokens=12),
                                  hf_generate(hf, ids, max_new_tokens=12, do_sample=False, pad_token_id=0))
    np.testing.assert_array_equal(ours.generate(ids, strategy="beam", num_beams=3, max_new_tokens=8),
                                  hf_generate(hf, ids, max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=0))


def test_beam_search_over_prompts_of_different_lengths_treats_each_alone(pairs, rng):
    """A batch of prompts of 3, 9 and 5 tokens (per-row cache lengths, beams
    repeated per prompt) gives each prompt's beams as it gives them alone."""
    model = pairs["positional"][0]
    prompts = [list(rng.integers(0, V, n)) for n in (3, 9, 5)]
    options = dict(strategy="beam", num_beams=3, max_new_tokens=10, num_return_sequences=2)
    stop = int(model.generate([prompts[1]], max_new_tokens=4)[0, -2])  # a token greedy decoding makes early
    together = model.generate(prompts, stop_token_ids=[stop], **options)
    for i, prompt in enumerate(prompts):
        alone = model.generate([prompt], stop_token_ids=[stop], **options)
        np.testing.assert_array_equal(together[2 * i:2 * i + 2, :alone.shape[1]], alone)
        assert (together[2 * i:2 * i + 2, alone.shape[1]:] == stop).all()  # padded with the stop token
    assert together.shape[1] < max(map(len, prompts)) + 10 or (together == stop).any()  # some beam stopped


# ------------------------------------------------------------------ sampling --
def test_sampling_is_reproducible_by_seed(model, rng):
    ids = rng.integers(0, V, (2, 5))
    a = model.generate(ids, strategy="sample", max_new_tokens=30, seed=3)
    np.testing.assert_array_equal(a, model.generate(ids, strategy="sample", max_new_tokens=30, seed=3))
    b = model.generate(ids, strategy="sample", max_new_tokens=30, seed=4)
    assert (a[:, 5:] != b[:, 5:]).any()
    # stream() draws the same tokens as generate()
    steps = [tokens for tokens, _ in stream(model, ids, strategy="sample", max_new_tokens=30, seed=3)]
    np.testing.assert_array_equal(np.stack(steps, axis=1), a[:, 5:])


def test_top_k_1_sampling_is_greedy(model, rng):
    ids = rng.integers(0, V, (3, 6))
    greedy = model.generate(ids, max_new_tokens=15)
    for seed in (0, 1):
        np.testing.assert_array_equal(model.generate(ids, strategy="sample", top_k=1, max_new_tokens=15, seed=seed),
                                      greedy)
    # and so is a nucleus smaller than the most likely token
    np.testing.assert_array_equal(model.generate(ids, strategy="sample", top_p=1e-6, max_new_tokens=15, seed=0),
                                  greedy)


@pytest.mark.parametrize("k", [1, 5, 50, 999])
def test_keep_top_k_matches_numpy_and_transformers(rng, k):
    logits = rng.normal(0, 3, (4, 1000)).astype(np.float32)
    got = keep_top_k(logits.copy(), k)
    kth = np.sort(logits.astype(np.float64), axis=1)[:, -k]
    want = logits >= kth[:, None]
    np.testing.assert_array_equal(np.isfinite(got), want)
    np.testing.assert_array_equal(got[want], logits[want])  # the kept scores are unchanged
    assert (got[~want] == -np.inf).all()
    assert (want.sum(axis=1) == k).all()
    np.testing.assert_array_equal(np.isfinite(got), kept_by(TopKLogitsWarper(k), logits))


def top_p_cases(rng):
    """Random logits; logits whose top few tokens hold nearly all the mass;
    flat logits whose nucleus needs hundreds of tokens (more than the 256
    that keep_top_p looks at first); and a batch mixing peaked and flat rows."""
    random = rng.normal(0, 2, (4, 1000)).astype(np.float32)
    peaked = rng.normal(0, 1, (4, 1000)).astype(np.float32)
    for b in range(4):
        peaked[b, rng.choice(1000, 3, replace=False)] += [12.0, 11.0, 10.5]
    flat = rng.normal(0, 0.1, (4, 1000)).astype(np.float32)
    mixed = np.concatenate([flat[:2], peaked[:1], flat[2:3], random[:1]])
    return {"random": random, "peaked": peaked, "flat": flat, "mixed": mixed}


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99])
def test_keep_top_p_matches_numpy_and_transformers(rng, p):
    sizes = {}
    for name, logits in top_p_cases(rng).items():
        got = keep_top_p(logits.copy(), p)
        want = top_p_reference(logits, p)
        np.testing.assert_array_equal(np.isfinite(got), want, err_msg=name)
        np.testing.assert_array_equal(got[want], logits[want], err_msg=name)
        np.testing.assert_array_equal(np.isfinite(got), kept_by(TopPLogitsWarper(p), logits), err_msg=name)
        sizes[name] = want.sum(axis=1)
    assert (sizes["peaked"] <= 3).all()
    if p >= 0.5:  # the widening branch: nuclei of more than 256 tokens, alone and next to small ones
        assert (sizes["flat"] > 256).all() and (sizes["mixed"][[0, 1, 3]] > 256).all()
        assert sizes["mixed"][2] <= 3


def test_penalize_repetitions_matches_numpy_and_transformers(rng):
    logits = rng.normal(0, 3, (3, 50)).astype(np.float32)
    history = rng.integers(0, 50, (3, 12))
    seen = np.zeros(logits.shape, bool)
    seen[np.arange(3)[:, None], history] = True
    x = logits.astype(np.float64)
    want = np.where(seen, np.where(x < 0, x * 1.7, x / 1.7), x)
    got = penalize_repetitions(logits.copy(), seen, 1.7)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got[~seen] == logits[~seen]).all()
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.from_numpy(history), torch.from_numpy(logits.copy()))
    np.testing.assert_allclose(got, theirs.numpy(), rtol=1e-6)
    assert penalize_repetitions(logits.copy(), None, 1.7).tolist() == logits.tolist()


def test_sampling_scores_match_transformers_warpers(rng):
    """Penalty, temperature, top-k, top-p in transformers' order: the same tokens survive, with the same scores."""
    logits = (rng.normal(0, 1, (5, 400)) * np.array([[0.2], [1], [2], [4], [0.5]])).astype(np.float32)
    history = rng.integers(0, 400, (5, 30))
    seen = np.zeros(logits.shape, bool)
    seen[np.arange(5)[:, None], history] = True
    for options in (dict(temperature=0.7, top_k=40, top_p=0.8), dict(temperature=1.6, top_p=0.95),
                    dict(temperature=0.5, top_k=10), dict(top_p=0.6, repetition_penalty=1.0)):
        config = GenerationConfig(strategy="sample", **{"repetition_penalty": 1.4, **options})
        got = sampling_scores(logits.copy(), seen.copy(), config)
        theirs = torch.from_numpy(logits.copy())
        ids = torch.from_numpy(history)
        processors = [RepetitionPenaltyLogitsProcessor(config.repetition_penalty),
                      TemperatureLogitsWarper(config.temperature)]
        processors += [TopKLogitsWarper(config.top_k)] if config.top_k else []
        processors += [TopPLogitsWarper(config.top_p)]
        for processor in processors:
            theirs = processor(ids, theirs)
        theirs = theirs.numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(theirs), err_msg=str(options))
        kept = np.isfinite(got)
        np.testing.assert_allclose(got[kept], theirs[kept], rtol=1e-6, err_msg=str(options))
        assert kept.sum(axis=1).min() >= 1 and (~kept).any()


def test_draw_frequencies_match_softmax(rng):
    logits = np.array([-np.inf, 1.0, 0.2, 2.0, -np.inf, -0.5], np.float32)
    n = 20_000
    tokens = draw(np.tile(logits, (n, 1)), np.random.default_rng(0))
    assert tokens.shape == (n,)
    counts = np.bincount(tokens, minlength=6)
    assert counts[0] == 0 and counts[4] == 0  # -inf tokens are never drawn
    probs = softmax64(logits)
    # each frequency has std <= sqrt(0.25 / n) = 0.0035; 0.018 is 5 of them
    np.testing.assert_allclose(counts / n, probs, atol=0.018, rtol=0)
    # the draws of different rows are different: one uniform per row, not one per call
    assert len(set(draw(np.tile(logits, (50, 1)), rng))) > 1


def test_draw_keeps_to_the_only_finite_token(rng):
    scores = np.full((20, 7), -np.inf, np.float32)
    only = rng.integers(0, 7, 20)
    scores[np.arange(20), only] = rng.normal(0, 1, 20)
    np.testing.assert_array_equal(draw(scores, rng), only)


# --------------------------------------------------------------- stop tokens --
def test_stop_token_ends_rows_and_pads_them(model, rng):
    ids = rng.integers(0, V, (4, 6))
    options = dict(max_new_tokens=16, repetition_penalty=1.3)
    free = model.generate(ids, **options)[:, 6:]
    stop = int(free[1, 2])  # a token row 1 produces at its third step
    cuts = [first_stop_cut(row, stop) for row in free]
    assert len({len(c) for c in cuts}) > 1 and min(len(c) for c in cuts) < 16  # rows end at different steps
    for pad in (None, 1):
        out = model.generate(ids, stop_token_ids=[stop], pad_token_id=pad, **options)
        fill = stop if pad is None else pad  # pad_token_id defaults to the first stop token
        assert out.shape == (4, 6 + max(len(c) for c in cuts))
        np.testing.assert_array_equal(out[:, :6], ids)
        for row, cut in zip(out[:, 6:], cuts):
            np.testing.assert_array_equal(row[:len(cut)], cut)
            assert (row[len(cut):] == fill).all()
    # stream() reports the same: each row's tokens while live, pad_token_id after it stopped
    steps = list(stream(model, ids, stop_token_ids=[stop], pad_token_id=1, **options))
    assert len(steps) == max(len(c) for c in cuts)
    for b, cut in enumerate(cuts):
        live = np.array([s[1][b] for s in steps])
        tokens = np.array([s[0][b] for s in steps])
        assert live.sum() == len(cut) and live[:len(cut)].all()
        np.testing.assert_array_equal(tokens[:len(cut)], cut)
        assert (tokens[len(cut):] == 1).all()


def test_stop_token_in_a_list_of_prompts(model, rng):
    prompts = [list(rng.integers(0, V, n)) for n in (3, 8)]
    free = model.generate(prompts, max_new_tokens=10, repetition_penalty=1.3)
    stop = int(free[0, 3 + 1])  # prompt 0's second new token
    out = model.generate(prompts, max_new_tokens=10, repetition_penalty=1.3, stop_token_ids=[stop], pad_token_id=2)
    for row, prompt, free_row in zip(out, prompts, free):
        cut = first_stop_cut(free_row[len(prompt):len(prompt) + 10], stop)
        np.testing.assert_array_equal(row[:len(prompt) + len(cut)], np.concatenate([prompt, cut]))
        assert (row[len(prompt) + len(cut):] == 2).all()
    assert out.shape[1] == max(len(p) + len(first_stop_cut(f[len(p):len(p) + 10], stop))
                               for p, f in zip(prompts, free))


def test_num_return_sequences_sampling_rows_are_adjacent(model, rng):
    ids = rng.integers(0, V, (2, 5))
    out = model.generate(ids, strategy="sample", num_return_sequences=3, max_new_tokens=10, seed=0,
                         temperature=2.0)
    assert out.shape == (6, 15)
    np.testing.assert_array_equal(out[:, :5], np.repeat(ids, 3, axis=0))
    for b in range(2):
        samples = {tuple(r) for r in out[3 * b:3 * b + 3, 5:]}
        assert len(samples) > 1  # independent draws, not one sample copied
    one = model.generate(ids[0], strategy="sample", num_return_sequences=3, max_new_tokens=10, seed=0)
    assert one.shape == (3, 15)  # a single prompt with several samples gives rows


# ---------------------------------------------------------- stop strings, text --
def test_generate_text_cuts_at_stop_string(text_model):
    model, tok = text_model
    prompt = "the cat sees"
    options = dict(max_new_tokens=30, repetition_penalty=1.3)
    free = generate_text(model, tok, prompt, **options)
    assert isinstance(free, str) and len(free) >= 12
    stop = re.search("[a-z]{2,}", free[len(free) // 3:]).group()  # a word from the text's middle
    where = free.find(stop)
    assert where > 0  # a cut that keeps some text and drops some
    assert generate_text(model, tok, prompt, stop_strings=[stop], **options) == free[:where]
    assert generate_text(model, tok, prompt, stop_strings=stop, **options) == free[:where]  # one string is fine
    # generation itself stopped at the token that completed the stop string
    ids = tok.encode([prompt])[0][0]
    free_ids = generate(model, list(ids), max_new_tokens=30, repetition_penalty=1.3)[len(ids):]
    stopped = generate(model, list(ids), tokenizer=tok, max_new_tokens=30, repetition_penalty=1.3,
                       stop_strings=[stop])[len(ids):]
    assert len(stopped) < len(free_ids)
    np.testing.assert_array_equal(stopped, free_ids[:len(stopped)])
    assert stop in tok.decode(stopped) and stop not in tok.decode(stopped[:-1])


@pytest.mark.parametrize("options", [dict(), dict(repetition_penalty=1.3), dict(stop_strings=["day"]),
                                     dict(repetition_penalty=1.3, stop_strings=["xyz", "l"]),
                                     dict(stop_strings="\x08 l"), dict(strategy="sample", seed=2, top_k=20)])
def test_stream_text_joins_to_generate_text(text_model, options):
    model, tok = text_model
    strings = options.get("stop_strings", ())
    strings = [strings] if isinstance(strings, str) else strings
    free_options = {k: v for k, v in options.items() if k != "stop_strings"}
    cuts = 0
    for prompt in ("the cat sees", "a", "the old man paints"):
        pieces = list(stream_text(model, tok, prompt, max_new_tokens=25, **options))
        assert all(isinstance(p, str) and p for p in pieces)  # no empty pieces
        if not strings:
            assert len(pieces) > 1  # streamed as it goes, not all at the end
        text = generate_text(model, tok, prompt, max_new_tokens=25, **options)
        assert "".join(pieces) == text
        free = generate_text(model, tok, prompt, max_new_tokens=25, **free_options)
        ends = [free.find(s) for s in strings if s in free]
        assert text == (free[:min(ends)] if ends else free)
        cuts += bool(ends)
    assert cuts >= (1 if strings else 0)  # the stop strings cases do cut some text


def test_generate_text_list_of_prompts(text_model):
    model, tok = text_model
    prompts = ["the old man paints", "a", "our teacher follows the long road"]
    out = generate_text(model, tok, prompts, max_new_tokens=12)
    assert isinstance(out, list) and len(out) == 3
    assert out == [generate_text(model, tok, p, max_new_tokens=12) for p in prompts]
    samples = generate_text(model, tok, prompts[:2], max_new_tokens=8, strategy="sample", num_return_sequences=2,
                            seed=1)
    assert isinstance(samples, list) and len(samples) == 4


# ----------------------------------------------------------------- bad input --
@pytest.mark.parametrize("options, error, message", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1"),
    (dict(strategy="sample", top_p=0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(strategy="sample", top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(strategy="sample", temperature=-1), ValueError, "temperature must be > 0"),
    (dict(strategy="sample", temperature=0), ValueError, "temperature must be > 0"),
    (dict(strategy="beam", num_beams=0), ValueError, "num_beams must be >= 1"),
    (dict(strategy="nope"), ValueError, "strategy must be one of"),
    (dict(strategy="beam", num_beams=2, num_return_sequences=3), ValueError, r"num_return_sequences \(3\) must be"),
    (dict(temperature=0.7), ValueError, "temperature applies to strategy='sample'"),
    (dict(strategy="beam", top_k=5), ValueError, "top_k applies to strategy='sample'"),
    (dict(num_beams=2), ValueError, "num_beams applies to strategy='beam'"),
    (dict(num_return_sequences=2), ValueError, "needs strategy 'sample' or 'beam'"),
    (dict(stop_strings=["."]), ValueError, "stop_strings need a tokenizer"),
    (dict(stop_token_ids=[V]), ValueError, "must be in the vocabulary"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer"),
    (dict(strategy="beam", early_stopping="sometimes"), ValueError, "early_stopping must be"),
])
def test_bad_options_raise(model, options, error, message):
    with pytest.raises(error, match=message):
        model.generate(np.array([[1, 2, 3]]), **options)


@pytest.mark.parametrize("input_ids, mask, error, message", [
    ([[1, 2], []], None, ValueError, "prompt 1 is empty"),
    (np.zeros((1, 0), np.int64), None, ValueError, "prompt 0 is empty"),
    (np.array([[4, 5, 6]]), np.array([[0, 0, 0]]), ValueError, "prompt 0 is empty"),
    ([], None, ValueError, "input_ids holds no prompt"),
    ([5, V], None, ValueError, f"token id {V}, outside the vocabulary"),
    ([[5, 6], [-1, 2]], None, ValueError, "prompt 1 holds token id -1"),
    (np.array([[1.0, 2.0]]), None, TypeError, "input_ids must hold integers"),
    ([[1.5, 2.0]], None, TypeError, "prompt 0 must hold integer token ids"),
    (np.array([[4, 5, 6]]), np.array([[1, 0, 1]]), ValueError, "marks tokens with gaps"),
    (np.array([[4, 5, 6]]), np.array([[1, 1]]), ValueError, "attention_mask must be an array of the shape"),
    ([[4, 5, 6]], np.array([[1, 1, 1]]), ValueError, "a list of prompts needs none"),
    ("hello", None, TypeError, "input_ids must be a numpy array or a list"),
])
def test_bad_prompts_raise(model, input_ids, mask, error, message):
    with pytest.raises(error, match=message):
        model.generate(input_ids, attention_mask=mask, max_new_tokens=3)


def test_too_long_prompt_raises_or_is_truncated(model, rng):
    prompt = rng.integers(0, V, 120)
    with pytest.raises(ValueError, match=r"prompt 0 has 120 tokens.*leaves room for 118.*truncate=True"):
        model.generate(prompt, max_new_tokens=10)
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        model.generate(prompt[:5], max_new_tokens=P)
    out = model.generate(prompt, max_new_tokens=10, truncate=True)
    np.testing.assert_array_equal(out, model.generate(prompt[-118:], max_new_tokens=10))
    # a batch array: the truncated prompt comes back right-padded like a list of prompts would
    batch = model.generate(np.stack([prompt, prompt]), max_new_tokens=10, truncate=True)
    np.testing.assert_array_equal(batch, np.stack([out, out]))


def test_stream_rejects_beam_search_before_any_work(model):
    with pytest.raises(ValueError, match="beam search cannot stream"):
        stream(model, [1, 2, 3], strategy="beam")
    with pytest.raises(ValueError, match="top_p must be in"):  # options are checked when stream() is called
        stream(model, [1, 2, 3], strategy="sample", top_p=2.0)


def test_text_helpers_check_their_input(text_model):
    model, tok = text_model
    with pytest.raises(TypeError, match="prompt must be a string"):
        generate_text(model, tok, [1, 2, 3])
    with pytest.raises(ValueError, match="beam search cannot stream"):
        stream_text(model, tok, "the cat", strategy="beam")
    with pytest.raises(ValueError, match="stop_strings must be non-empty strings"):
        generate_text(model, tok, "the cat", stop_strings=[""])
