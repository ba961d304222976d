"""Tests of the data pipeline (ssl_core.data): sources, tokenizers, the token
cache, example building, masking and the batches of every objective.

Everything runs on real tokenizers trained on a slice of the embedded corpus,
and expectations are computed independently in the tests (from the corpus
arrays, the tokenizers' own encodings, or exact binomial / chi-square
statistics)."""

import contextlib
import gc
import itertools
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
from scipy import stats

from ssl_core.data import (IGNORE, CorpusError, EmbeddedSource, MaskingConfig, PretrainingData, TextSource,
                           load_tokenizer, mask_batch, open_source, split_sentences, tokenize_corpus,
                           train_tokenizer)
from ssl_core.data.examples import build_examples
from ssl_core.data.masking import sample_spans

N_DOCUMENTS = 1500
VALID_EVERY = 20
SEQ_LEN = 128
BATCH = 32
N_BATCHES = 30
SIGMAS = 5.0


# ------------------------------------------------------------------ fixtures --
@pytest.fixture(scope="session")
def documents():
    return list(itertools.islice(EmbeddedSource().documents(), N_DOCUMENTS))


@pytest.fixture(scope="session")
def tokenizers(documents):
    return {"wordpiece": train_tokenizer(documents, "wordpiece", vocab_size=2000),
            "bpe": train_tokenizer(documents, "bpe", vocab_size=2000)}


@pytest.fixture(scope="session")
def corpus_file(documents, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="session")
def wp_corpus(corpus_file, tokenizers, cache_dir):
    return tokenize_corpus(TextSource(corpus_file), tokenizers["wordpiece"], cache_dir=cache_dir,
                           valid_every=VALID_EVERY)


@pytest.fixture(scope="session")
def bpe_corpus(corpus_file, tokenizers, cache_dir):
    return tokenize_corpus(TextSource(corpus_file), tokenizers["bpe"], cache_dir=cache_dir,
                           valid_every=VALID_EVERY)


@pytest.fixture(scope="session")
def saved_tokenizers(tokenizers, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    folders = {}
    for kind, tok in tokenizers.items():
        folders[kind] = str(root / kind)
        tok.save(folders[kind])
    return folders


# ------------------------------------------------------------------- helpers --
def binomial_ok(successes, trials, p, sigmas=SIGMAS):
    """|successes - trials p| within ``sigmas`` binomial standard deviations."""
    sd = np.sqrt(trials * p * (1 - p))
    return abs(successes - trials * p) <= sigmas * sd + 1e-9


def original_bert_batch(data, epoch, index):
    """The batch at (epoch, index) before masking, rebuilt from the epoch's
    examples and the corpus arrays: ids, token types, attention mask, word
    starts, and the examples themselves."""
    tok, corpus = data.tokenizer, data.corpus
    examples = data._epoch(epoch)[index * data.batch_size:(index + 1) * data.batch_size]
    pair = data.kind != "single"
    rows = []
    doc_starts = set(corpus.sentence_starts[corpus.document_starts].tolist())
    for a0, a1, b0, b1, _ in examples:
        ids, ws = [tok.cls_id], [True]
        for t in range(a0, a1):
            if not pair and t > a0 and t in doc_starts:  # packed: [SEP] between documents
                ids.append(tok.sep_id)
                ws.append(True)
            ids.append(int(corpus.tokens[t]))
            ws.append(bool(corpus.word_starts[t]))
        ids.append(tok.sep_id)
        ws.append(True)
        types = [0] * len(ids)
        if pair:
            ids += [*corpus.tokens[b0:b1].tolist(), tok.sep_id]
            ws += [*corpus.word_starts[b0:b1].astype(bool).tolist(), True]
            types += [1] * (b1 - b0 + 1)
        rows.append((ids, ws, types))
    longest = max(len(r[0]) for r in rows)
    T = min(-(-longest // 8) * 8, data.seq_len)
    B = len(rows)
    ids = np.full((B, T), tok.pad_id, np.int64)
    ws = np.zeros((B, T), bool)
    types = np.zeros((B, T), np.int64)
    attention = np.zeros((B, T), np.int64)
    for r, (i, w, t) in enumerate(rows):
        ids[r, :len(i)], ws[r, :len(i)], types[r, :len(i)], attention[r, :len(i)] = i, w, t, 1
    return ids, types, attention, ws, examples


def candidates_of(ids, attention, tok):
    return (attention == 1) & ~np.isin(ids, list(tok.special_ids.values()))


def checked_choice(batch, ids, attention, tok):
    """(candidates, chosen) of a masked batch whose uncorrupted ids are
    ``ids``, after checking that only candidates are chosen, labels hold the
    original tokens and every position not chosen is unchanged."""
    cand = candidates_of(ids, attention, tok)
    labels = batch["labels"]
    chosen = labels != IGNORE
    assert not (chosen & ~cand).any()
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(batch["input_ids"][~chosen], ids[~chosen])
    return cand, chosen


def words_of(candidates_row, word_starts_row):
    """[(begin, end)] token ranges of the words among a row's candidates: a
    word begins at a word start or after a non-candidate position."""
    words = []
    for t in np.flatnonzero(candidates_row):
        if words and words[-1][1] == t and not word_starts_row[t]:
            words[-1][1] = t + 1
        else:
            words.append([t, t + 1])
    return [tuple(w) for w in words]


def exact_budget(n, rate=0.15):
    return max(1, round(rate * n)) if n else 0


def collect_bert_batches(data, n_batches, epoch=0):
    out = []
    for index in range(n_batches):
        batch = data.batch(epoch, index)
        ids, types, attention, ws, examples = original_bert_batch(data, epoch, index)
        out.append((batch, ids, types, attention, ws, examples))
    return out


# ============================================================ 1. MLM masking ==
def test_mlm_exact_budget_labels_and_80_10_10(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, "mlm", SEQ_LEN, BATCH, seed=3)
    special = np.asarray(sorted(tok.special_ids.values()))
    n_chosen = n_candidates = n_mask = n_same = n_random = 0
    random_ids = []
    for batch, ids, types, attention, ws, _ in collect_bert_batches(data, N_BATCHES):
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        for key in batch:
            assert batch[key].dtype == np.int64 and batch[key].shape == ids.shape
        np.testing.assert_array_equal(batch["attention_mask"], attention)
        np.testing.assert_array_equal(batch["token_type_ids"], types)
        inputs, labels = batch["input_ids"], batch["labels"]
        cand = candidates_of(ids, attention, tok)
        chosen = labels != IGNORE
        # Only candidates are chosen: never [CLS], [SEP], [PAD] or padding.
        assert not (chosen & ~cand).any()
        assert not chosen[ids == tok.cls_id].any() and not chosen[ids == tok.sep_id].any()
        assert not chosen[attention == 0].any()
        # Labels hold the original token; everything not chosen is unchanged.
        np.testing.assert_array_equal(labels[chosen], ids[chosen])
        np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
        # Exact budget, row by row.
        per_row_n = cand.sum(axis=1)
        per_row_chosen = chosen.sum(axis=1)
        assert per_row_chosen.tolist() == [exact_budget(int(n)) for n in per_row_n]
        n_chosen += int(chosen.sum())
        n_candidates += int(cand.sum())
        is_mask = chosen & (inputs == tok.mask_id)
        is_same = chosen & (inputs == ids)
        is_random = chosen & ~is_mask & ~is_same
        n_mask += int(is_mask.sum())
        n_same += int(is_same.sum())
        n_random += int(is_random.sum())
        random_ids.append(inputs[is_random])
    assert n_chosen == n_mask + n_same + n_random
    assert float(n_chosen / n_candidates) == pytest.approx(0.15, abs=0.003)
    non_special = tok.vocab_size - len(special)
    # A random replacement can draw the original token (probability 1/non_special).
    assert binomial_ok(n_mask, n_chosen, 0.8)
    assert binomial_ok(n_same, n_chosen, 0.1 + 0.1 / non_special)
    assert binomial_ok(n_random, n_chosen, 0.1 * (1 - 1 / non_special))
    random_ids = np.concatenate(random_ids)
    assert len(random_ids) > 500
    assert not np.isin(random_ids, special).any()
    assert random_ids.min() >= 0 and random_ids.max() < tok.vocab_size
    # Coarse uniformity: ranks among the non-special ids, in 10 equal bins.
    ranks = random_ids - np.searchsorted(special, random_ids)
    observed = np.bincount(ranks * 10 // non_special, minlength=10)
    edges = np.arange(11) * non_special / 10
    expected = np.diff(np.ceil(edges)) * len(ranks) / non_special
    # The corpus (and so this sample) changes with each tokenizer training: a looser threshold.
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_mask_batch_synthetic_exact_budget_and_ratios():
    rng = np.random.default_rng(7)
    B, T, V = 400, 200, 50
    special = [0, 7, 8, 49]  # not contiguous, and the last id of the vocabulary
    non_special = np.setdiff1d(np.arange(V), special)
    ids = rng.choice(non_special, size=(B, T))
    lengths = rng.integers(1, T + 1, B)
    candidates = (np.arange(T)[None, :] < lengths[:, None]) & (rng.random((B, T)) < 0.9)
    ids_before = ids.copy()
    corrupted, labels = mask_batch(ids, candidates, np.ones((B, T), bool), np.random.default_rng(1),
                                   MaskingConfig(), 7, special, V)
    np.testing.assert_array_equal(ids, ids_before)  # the input is not modified in place
    assert corrupted.dtype == np.int64 and labels.dtype == np.int64
    chosen = labels != IGNORE
    assert not (chosen & ~candidates).any()
    assert chosen.sum(axis=1).tolist() == [exact_budget(int(n)) for n in candidates.sum(axis=1)]
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(corrupted[~chosen], ids[~chosen])
    n = int(chosen.sum())
    n_mask = int((corrupted[chosen] == 7).sum())
    n_same = int((corrupted[chosen] == ids[chosen]).sum())
    p_coincide = 1 / len(non_special)
    assert binomial_ok(n_mask, n, 0.8)
    assert binomial_ok(n_same, n, 0.1 + 0.1 * p_coincide)
    assert binomial_ok(n - n_mask - n_same, n, 0.1 * (1 - p_coincide))
    # Same generator state, same result.
    again = mask_batch(ids, candidates, np.ones((B, T), bool), np.random.default_rng(1), MaskingConfig(), 7,
                       special, V)
    np.testing.assert_array_equal(again[0], corrupted)
    np.testing.assert_array_equal(again[1], labels)


def test_mask_batch_random_tokens_uniform_over_non_special_vocabulary():
    rng = np.random.default_rng(11)
    B, T, V = 300, 256, 50
    special = [0, 7, 8, 49]
    non_special = np.setdiff1d(np.arange(V), special)
    ids = np.full((B, T), 20)
    candidates = np.ones((B, T), bool)
    config = MaskingConfig(rate=0.5, mask_ratio=0.0, random_ratio=1.0)
    corrupted, labels = mask_batch(ids, candidates, candidates, rng, config, 7, special, V)
    chosen = labels != IGNORE
    assert chosen.sum() == B * T // 2
    drawn = corrupted[chosen]
    assert not np.isin(drawn, special).any()
    assert drawn.min() >= 0 and drawn.max() < V
    counts = np.bincount(drawn, minlength=V)[non_special]
    assert (counts > 0).all()  # every non-special id, including 48 next to the special 49, is reachable
    assert stats.chisquare(counts).pvalue > 1e-3


def test_mask_batch_bernoulli_budget_synthetic():
    rng = np.random.default_rng(5)
    B, T = 500, 128
    ids = rng.integers(5, 100, (B, T))
    lengths = rng.integers(20, T + 1, B)
    candidates = np.arange(T)[None, :] < lengths[:, None]
    _, labels = mask_batch(ids, candidates, candidates, rng, MaskingConfig(budget="bernoulli"), 4,
                           [0, 1, 2, 3, 4], 100)
    chosen = labels != IGNORE
    assert not (chosen & ~candidates).any()
    n = candidates.sum(axis=1)
    k = chosen.sum(axis=1)
    assert binomial_ok(int(k.sum()), int(n.sum()), 0.15)
    # Per-row counts are Binomial(n_row, 0.15): their dispersion matches.
    statistic = float((((k - 0.15 * n) ** 2) / (n * 0.15 * 0.85)).sum())
    assert stats.chi2.sf(statistic, B) > 1e-3 and stats.chi2.cdf(statistic, B) > 1e-3


def test_mlm_bernoulli_budget_on_real_batches(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, "mlm", SEQ_LEN, BATCH, seed=4,
                           masking=MaskingConfig(budget="bernoulli"))
    ks, ns = [], []
    for batch, ids, _, attention, _, _ in collect_bert_batches(data, N_BATCHES):
        cand = candidates_of(ids, attention, tok)
        chosen = batch["labels"] != IGNORE
        assert not (chosen & ~cand).any()
        np.testing.assert_array_equal(batch["labels"][chosen], ids[chosen])
        ks.append(chosen.sum(axis=1))
        ns.append(cand.sum(axis=1))
    k, n = np.concatenate(ks), np.concatenate(ns)
    k, n = k[n > 0], n[n > 0]
    assert binomial_ok(int(k.sum()), int(n.sum()), 0.15)
    assert float(k.sum() / n.sum()) == pytest.approx(0.15, abs=0.005)
    # Counts vary around the rate instead of following the exact rule.
    exact = np.asarray([exact_budget(int(x)) for x in n])
    assert (k != exact).mean() > 0.5
    statistic = float((((k - 0.15 * n) ** 2) / (n * 0.15 * 0.85)).sum())
    assert stats.chi2.sf(statistic, len(k)) > 1e-4 and stats.chi2.cdf(statistic, len(k)) > 1e-4


# ======================================================== 2. dynamic masking ==
def test_dynamic_masking_differs_between_epochs(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    # Without short sequences the "single" examples are the same every epoch,
    # only reshuffled, so an example can be followed from epoch to epoch.
    data = PretrainingData(wp_corpus["train"], tok, "mlm", SEQ_LEN, BATCH, seed=9, short_seq_prob=0.0)
    e0, e1 = data._epoch(0).copy(), data._epoch(1).copy()
    assert sorted(map(tuple, e0.tolist())) == sorted(map(tuple, e1.tolist()))
    assert not np.array_equal(e0, e1)  # reshuffled
    where = {tuple(row): i for i, row in enumerate(e1.tolist())}
    b0 = data.batch(0, 0)
    originals0 = original_bert_batch(data, 0, 0)[0]
    cache = {}
    compared = 0
    for row, example in enumerate(e0[:BATCH].tolist()):
        index, row1 = divmod(where[tuple(example)], BATCH)
        if index >= data.batches_per_epoch():
            continue
        if index not in cache:
            cache[index] = (data.batch(1, index), original_bert_batch(data, 1, index)[0])
        b1, originals1 = cache[index]
        length = int(b0["attention_mask"][row].sum())
        assert int(b1["attention_mask"][row1].sum()) == length
        # The same tokens underneath ...
        np.testing.assert_array_equal(originals0[row, :length], originals1[row1, :length])
        chosen0, chosen1 = b0["labels"][row, :length] != IGNORE, b1["labels"][row1, :length] != IGNORE
        assert chosen0.sum() == chosen1.sum()  # same candidates, same exact budget
        if length >= 40:  # ... chosen differently (identical by chance: < 1e-6)
            assert not np.array_equal(chosen0, chosen1)
            compared += 1
    assert compared >= 10
    # With the default short_seq_prob, the examples themselves are re-cut each epoch.
    other = PretrainingData(wp_corpus["train"], tok, "mlm", SEQ_LEN, BATCH, seed=9)
    assert sorted(map(tuple, other._epoch(0).tolist())) != sorted(map(tuple, other._epoch(1).tolist()))


@pytest.mark.parametrize("objective", ["mlm", "wwm", "span", "mlm+nsp", "mlm+sop"])
def test_batches_reproducible_from_seed(wp_corpus, tokenizers, objective):
    tok = tokenizers["wordpiece"]
    a = PretrainingData(wp_corpus["train"], tok, objective, SEQ_LEN, BATCH, seed=21)
    b = PretrainingData(wp_corpus["train"], tok, objective, SEQ_LEN, BATCH, seed=21)
    c = PretrainingData(wp_corpus["train"], tok, objective, SEQ_LEN, BATCH, seed=22)
    for epoch, index in ((0, 0), (0, 5), (2, 3)):
        x, y = a.batch(epoch, index), b.batch(epoch, index)
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # Iterating reaches the same batches as asking for the positions.
    for index in range(3):
        batch = next(b)
        expected = a.batch(0, index)
        for key in batch:
            np.testing.assert_array_equal(batch[key], expected[key])
    assert not np.array_equal(a.batch(0, 0)["labels"], c.batch(0, 0)["labels"]) or \
        not np.array_equal(a.batch(0, 0)["input_ids"], c.batch(0, 0)["input_ids"])


def test_state_dict_restores_stream_position(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    make = lambda: PretrainingData(wp_corpus["train"], tok, "mlm", SEQ_LEN, 128, seed=5)  # noqa: E731
    a = make()
    per_epoch = a.batches_per_epoch()
    assert 2 <= per_epoch < 40
    for _ in range(per_epoch + 2):  # into the second epoch
        next(a)
    state = a.state_dict()
    assert state == {"epoch": 1, "batch_index": 2}
    expected = [next(a) for _ in range(3)]
    b = make()
    next(b)  # a different position, overwritten by the state
    b.load_state_dict(json.loads(json.dumps(state)))  # a state survives a JSON round trip
    for want in expected:
        got = next(b)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    fresh = make()
    for i, want in enumerate(expected):  # the positions the state names
        np.testing.assert_array_equal(fresh.batch(1, 2 + i)["labels"], want["labels"])
    # And the stream really moved on: the batches at the two epochs differ.
    assert not np.array_equal(expected[0]["input_ids"], make().batch(0, 2)["input_ids"])


# ==================================================== 3. whole-word masking ==
def word_fates(batch_inputs, ids, chosen, words, tok):
    """'mask' / 'same' / 'random' / 'mixed' for each chosen word of a row."""
    fates = []
    for begin, end in words:
        if not chosen[begin:end].any():
            continue
        got, orig = batch_inputs[begin:end], ids[begin:end]
        if (got == tok.mask_id).all():
            fates.append("mask")
        elif (got == orig).all():
            fates.append("same")
        elif not (got == tok.mask_id).any() and (got != orig).all():
            fates.append("random")
        else:
            fates.append("mixed")
    return fates


def test_whole_word_masking(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, "wwm", SEQ_LEN, BATCH, seed=13)
    assert data.masking.unit == "word"
    fates, n_chosen, n_candidates, multi_token_words = [], 0, 0, 0
    for batch, ids, _, attention, ws, _ in collect_bert_batches(data, N_BATCHES):
        inputs = batch["input_ids"]
        cand, chosen = checked_choice(batch, ids, attention, tok)
        for r in range(len(ids)):
            words = words_of(cand[r], ws[r])
            n = int(cand[r].sum())
            budget = exact_budget(n)
            chosen_words = []
            for begin, end in words:
                picked = chosen[r, begin:end]
                assert picked.all() or not picked.any(), "a word is chosen in part"
                if picked.all():
                    chosen_words.append(end - begin)
                    multi_token_words += end - begin > 1
            k = int(chosen[r].sum())
            assert k == sum(chosen_words)
            assert k <= budget or len(chosen_words) == 1  # only a lone first word may overshoot
            if k < budget:  # words are added while they fit: nothing left would have fit
                free = [end - begin for begin, end in words if not chosen[r, begin:end].any()]
                assert all(size > budget - k for size in free)
            fates += word_fates(inputs[r], ids[r], chosen[r], words, tok)
            n_chosen += k
            n_candidates += n
    assert multi_token_words > 500  # the test really exercises words of several tokens
    assert float(n_chosen / n_candidates) == pytest.approx(0.15, abs=0.01)
    fates = np.asarray(fates)
    n_words = len(fates)
    # A random word's token can coincide with the original (one chance in the
    # non-special vocabulary each), so a few words look mixed.
    assert (fates == "mixed").sum() <= 10
    assert binomial_ok(int((fates == "mask").sum()), n_words, 0.8)
    assert binomial_ok(int((fates == "same").sum()), n_words, 0.1, sigmas=6)
    assert binomial_ok(int((fates == "random").sum()), n_words, 0.1, sigmas=6)


def test_explicit_masking_config_keeps_the_objectives_unit(wp_corpus, tokenizers):
    """A MaskingConfig instance (e.g. to ask for a Bernoulli budget) must not
    turn whole-word masking into token masking: "wwm" chooses whole words."""
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, "wwm", SEQ_LEN, BATCH, seed=2,
                           masking=MaskingConfig(budget="bernoulli"))
    split_words = 0
    for batch, ids, _, attention, ws, _ in collect_bert_batches(data, 5):
        cand = candidates_of(ids, attention, tok)
        chosen = batch["labels"] != IGNORE
        for r in range(len(ids)):
            for begin, end in words_of(cand[r], ws[r]):
                picked = chosen[r, begin:end]
                split_words += bool(picked.any() and not picked.all())
    assert data.masking.budget == "bernoulli"
    assert split_words == 0, f"{split_words} words chosen in part under objective 'wwm'"


# ============================================================ 4. span masking ==
def test_span_lengths_follow_truncated_geometric():
    config = MaskingConfig(unit="span")
    p = config.span_length_probabilities()
    lengths = np.arange(1, 11)
    assert float(p.sum()) == pytest.approx(1.0)
    q = 0.2 * 0.8 ** (lengths - 1)
    np.testing.assert_allclose(p, q / q.sum())
    assert float((lengths * p).sum()) == pytest.approx(3.797, abs=0.01)
    rng = np.random.default_rng(17)
    words = [(i, i + 1) for i in range(2000)]
    budget = exact_budget(2000)
    observed = []
    for _ in range(300):
        spans = sample_spans(words, rng, config)
        taken = np.zeros(len(words), int)
        for first, n in spans:
            assert n >= 1 and 0 <= first and first + n <= len(words)
            taken[first:first + n] += 1
        assert taken.max() == 1  # no overlap
        assert taken.sum() == budget  # single-token words: the budget is met exactly
        observed += [n for _, n in spans[:-1]]  # the last span may be cut to the budget
    observed = np.asarray(observed)
    counts = np.bincount(observed, minlength=11)[1:]
    assert counts.sum() > 20000
    mean_sd = float(np.sqrt((lengths ** 2 * p).sum() - (lengths * p).sum() ** 2) / np.sqrt(len(observed)))
    assert float(observed.mean()) == pytest.approx(float((lengths * p).sum()), abs=SIGMAS * mean_sd)
    assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3


def test_first_span_of_each_row_follows_truncated_geometric():
    """The first span of a row is never redrawn for overlap; its length
    follows span_length_probabilities (isolates the length draw)."""
    config = MaskingConfig(unit="span")
    p = config.span_length_probabilities()
    rng = np.random.default_rng(19)
    words = [(i, i + 1) for i in range(400)]  # budget 60: the first span is never cut
    first = np.asarray([sample_spans(words, rng, config)[0][1] for _ in range(3000)])
    counts = np.bincount(first, minlength=11)[1:]
    assert stats.chisquare(counts, p * len(first)).pvalue > 1e-3


def test_sample_spans_multi_token_words_and_bernoulli():
    rng = np.random.default_rng(23)
    for budget_kind in ("exact", "bernoulli"):
        config = MaskingConfig(unit="span", budget=budget_kind)
        totals, budgets = [], []
        for _ in range(100):
            sizes = rng.integers(1, 5, 300)
            ends = np.cumsum(sizes)
            words = list(zip((ends - sizes).tolist(), ends.tolist()))
            n_tokens = int(sizes.sum())
            spans = sample_spans(words, rng, config)
            taken = np.zeros(len(words), int)
            for first, n in spans:
                taken[first:first + n] += 1
            assert taken.max() <= 1
            total = int(sizes[taken == 1].sum())
            if budget_kind == "exact":
                budget = exact_budget(n_tokens)
                assert total <= budget or len(spans) == 1 and spans[0][1] == 1
                # Stops only once no further word could fit.
                assert total > budget - sizes.max()
            totals.append(total)
            budgets.append(n_tokens)
        rate = sum(totals) / sum(budgets)
        assert float(rate) == pytest.approx(0.15, abs=0.01)
    assert sample_spans([], rng, MaskingConfig(unit="span")) == []


def test_span_masking_batches(wp_corpus, tokenizers):
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, "span", SEQ_LEN, BATCH, seed=31)
    assert data.masking.unit == "span"
    n_chosen = n_candidates = 0
    fates = []
    runs = []
    for batch, ids, _, attention, ws, _ in collect_bert_batches(data, 15):
        inputs = batch["input_ids"]
        cand, chosen = checked_choice(batch, ids, attention, tok)
        for r in range(len(ids)):
            words = words_of(cand[r], ws[r])
            n_words_chosen = 0
            for begin, end in words:
                picked = chosen[r, begin:end]
                assert picked.all() or not picked.any(), "a span cuts a word"
                n_words_chosen += bool(picked.all())
            k, n = int(chosen[r].sum()), int(cand[r].sum())
            assert k <= exact_budget(n) or n_words_chosen == 1
            fates += word_fates(inputs[r], ids[r], chosen[r], words, tok)
            n_chosen, n_candidates = n_chosen + k, n_candidates + n
            # maximal runs of chosen words (adjacent spans merge)
            flags = [bool(chosen[r, b]) for b, _ in words]
            runs += [len(list(g)) for key, g in itertools.groupby(flags) if key]
    assert float(n_chosen / n_candidates) == pytest.approx(0.15, abs=0.01)
    assert np.mean(runs) > 2.0  # spans of several words, unlike token or word masking
    fates = np.asarray(fates)
    assert (fates == "mixed").sum() <= 10
    assert 0.7 < float((fates == "mask").mean()) < 0.9


# ============================================================== 5. NSP / SOP ==
def document_of(corpus, begin, end):
    """The document holding tokens [begin, end), checked to be a single one."""
    token_doc_begin = corpus.sentence_starts[corpus.document_starts]
    d = int(np.searchsorted(token_doc_begin, begin, side="right")) - 1
    assert end <= token_doc_begin[d + 1], "a segment crosses a document boundary"
    return d


def test_single_examples_pack_the_corpus_in_order(wp_corpus):
    """FULL-SENTENCES: the examples of an epoch tile the corpus, each fills at
    most max_tokens counting one [SEP] per document it enters, cuts fall on
    sentence boundaries unless a sentence alone is too long, and the batch
    puts a [SEP] exactly where a document starts."""
    corpus, max_tokens = wp_corpus["train"], 62
    examples = build_examples(corpus, "single", max_tokens, np.random.default_rng(3), short_seq_prob=0.0)
    assert examples[0, 0] == 0 and examples[-1, 1] == corpus.n_tokens
    np.testing.assert_array_equal(examples[1:, 0], examples[:-1, 1])
    assert (examples[:, 2:] == 0).all()
    doc_starts = corpus.sentence_starts[corpus.document_starts]
    sentence_starts = set(corpus.sentence_starts.tolist())
    lengths = []
    for a0, a1 in examples[:, :2]:
        inner = int(((doc_starts > a0) & (doc_starts < a1)).sum())
        lengths.append(a1 - a0 + inner)
        # Cut at a sentence boundary, or a full piece of an over-long sentence.
        assert a1 in sentence_starts or a1 - a0 == max_tokens
    lengths = np.array(lengths)
    assert lengths.max() <= max_tokens and lengths.min() >= 1
    crossing = sum(((doc_starts > a0) & (doc_starts < a1)).any() for a0, a1 in examples[:, :2])
    assert crossing > len(examples) // 4  # short documents share sequences
    # Sequences are mostly full: a sentence that does not fit starts the next.
    assert lengths.mean() > 0.7 * max_tokens


@pytest.mark.parametrize("kind", ["nsp", "sop"])
def test_sentence_pair_examples(wp_corpus, kind):
    corpus = wp_corpus["train"]
    max_tokens = SEQ_LEN - 3
    rng = np.random.default_rng(41)
    ex = build_examples(corpus, kind, max_tokens, rng)
    assert ex.dtype == np.int64 and ex.shape[1] == 5 and len(ex) > 1000
    labels = ex[:, 4]
    assert set(labels.tolist()) <= {0, 1}
    assert binomial_ok(int(labels.sum()), len(labels), 0.5)
    adjacent_checked = 0
    for a0, a1, b0, b1, label in ex.tolist():
        assert a1 > a0 and b1 > b0
        total = (a1 - a0) + (b1 - b0)
        assert total <= max_tokens
        da, db = document_of(corpus, a0, a1), document_of(corpus, b0, b1)
        untrimmed = total < max_tokens  # a trimmed pair fills max_tokens exactly
        if kind == "nsp" and label == 1:
            assert da != db
        elif kind == "nsp" or label == 0:  # B follows A in the same document
            assert da == db and a1 <= b0
            if untrimmed:
                assert a1 == b0
                adjacent_checked += 1
        else:  # sop, swapped: B precedes A
            assert da == db and b1 <= a0
            if untrimmed:
                assert b1 == a0
                adjacent_checked += 1
    assert adjacent_checked > 100
    # Examples are re-cut with each epoch's generator.
    other = build_examples(corpus, kind, max_tokens, np.random.default_rng(42))
    assert not np.array_equal(ex, other)


@pytest.mark.parametrize("objective", ["mlm+nsp", "mlm+sop"])
def test_sentence_pair_batches(wp_corpus, tokenizers, objective):
    tok = tokenizers["wordpiece"]
    data = PretrainingData(wp_corpus["train"], tok, objective, SEQ_LEN, BATCH, seed=43)
    labels_seen = []
    for batch, ids, types, attention, ws, examples in collect_bert_batches(data, 10):
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
        B, T = batch["input_ids"].shape
        assert (B, T) == ids.shape
        np.testing.assert_array_equal(batch["token_type_ids"], types)
        np.testing.assert_array_equal(batch["attention_mask"], attention)
        assert T <= SEQ_LEN and (T % 8 == 0 or T == SEQ_LEN)
        np.testing.assert_array_equal(batch["next_sentence_label"], examples[:, 4])
        labels_seen += examples[:, 4].tolist()
        inputs, labels = batch["input_ids"], batch["labels"]
        for r, (a0, a1, b0, b1, _) in enumerate(examples.tolist()):
            la, lb = a1 - a0, b1 - b0
            length = la + lb + 3
            assert length <= SEQ_LEN
            row_types = batch["token_type_ids"][r]
            # [CLS] A [SEP] B [SEP], then padding
            assert inputs[r, 0] == tok.cls_id and inputs[r, 1 + la] == tok.sep_id
            assert inputs[r, 2 + la + lb] == tok.sep_id
            assert (row_types[:2 + la] == 0).all() and (row_types[2 + la:length] == 1).all()
            assert (row_types[length:] == 0).all()
            assert (batch["attention_mask"][r, :length] == 1).all() and (batch["attention_mask"][r, length:] == 0).all()
            assert (inputs[r, length:] == tok.pad_id).all() and (labels[r, length:] == IGNORE).all()
            chosen = labels[r] != IGNORE
            seg_a = np.arange(1, 1 + la)
            seg_b = np.arange(2 + la, 2 + la + lb)
            segments = np.concatenate([seg_a, seg_b])
            original = np.concatenate([wp_corpus["train"].tokens[a0:a1], wp_corpus["train"].tokens[b0:b1]])
            kept = ~chosen[segments]
            np.testing.assert_array_equal(inputs[r, segments][kept], original[kept])
            np.testing.assert_array_equal(labels[r, segments][~kept], original[~kept])
            assert not chosen[[0, 1 + la, 2 + la + lb]].any()
    assert binomial_ok(int(np.sum(labels_seen)), len(labels_seen), 0.5)


# ============================================================ 6. GPT packing ==
def test_clm_windows_pack_documents_with_endoftext(bpe_corpus, tokenizers):
    tok = tokenizers["bpe"]
    corpus = bpe_corpus["train"]
    L = SEQ_LEN
    # The packed stream, built from the corpus arrays.
    tokens = np.asarray(corpus.tokens, np.int64)
    pieces = []
    for d in range(corpus.n_documents):
        begin = corpus.sentence_starts[corpus.document_starts[d]]
        end = corpus.sentence_starts[corpus.document_starts[d + 1]]
        pieces += [tokens[begin:end], [tok.eot_id]]
    stream = np.concatenate(pieces).astype(np.int64)
    assert len(stream) == corpus.n_tokens + corpus.n_documents
    assert int((stream == tok.eot_id).sum()) == corpus.n_documents  # no <|endoftext|> in the text itself
    n_windows = len(stream) // L
    data = PretrainingData(corpus, tok, "clm", L, 16, seed=1, drop_last=False)
    starts = data._epoch(0)
    np.testing.assert_array_equal(np.sort(starts), np.arange(n_windows) * L)
    assert data.batches_per_epoch() == -(-n_windows // 16)
    windows = {}
    for index in range(data.batches_per_epoch()):
        batch = data.batch(0, index)
        assert set(batch) == {"input_ids"}
        ids = batch["input_ids"]
        expected_rows = min(16, n_windows - index * 16)
        assert ids.shape == (expected_rows, L) and ids.dtype == np.int64
        for row, start in zip(ids, starts[index * 16:(index + 1) * 16]):
            windows[int(start)] = row
    joined = np.concatenate([windows[s] for s in sorted(windows)])
    np.testing.assert_array_equal(joined, stream[:n_windows * L])
    # drop_last (the default) drops the partial batch, and epochs are reshuffled.
    dropped = PretrainingData(corpus, tok, "clm", L, 16, seed=1)
    assert dropped.batches_per_epoch() == n_windows // 16
    assert not np.array_equal(dropped._epoch(0), dropped._epoch(1).copy())


# ============================================================= 7. tokenizers ==
def test_saved_tokenizers_load_in_transformers(tokenizers, saved_tokenizers, documents):
    transformers = pytest.importorskip("transformers")
    texts = documents[19::20][:15] + ["Unbelievable! The [MASK] of naïve CAFÉ costs 3.14 dollars.\n\nNext."]
    wp = transformers.AutoTokenizer.from_pretrained(saved_tokenizers["wordpiece"])
    ours = tokenizers["wordpiece"]
    assert wp.mask_token_id == ours.mask_id and wp.cls_token_id == ours.cls_id
    assert wp.sep_token_id == ours.sep_id and wp.pad_token_id == ours.pad_id
    for text, (ids, _) in zip(texts, ours.encode(texts)):
        assert wp(text)["input_ids"] == [ours.cls_id, *ids.tolist(), ours.sep_id]
    # Pairs: [CLS] A [SEP] B [SEP] with token types 0 / 1.
    pair = wp(texts[0], texts[1])
    (a, _), (b, _) = ours.encode(texts[:2])
    assert pair["input_ids"] == [ours.cls_id, *a.tolist(), ours.sep_id, *b.tolist(), ours.sep_id]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    gpt = transformers.AutoTokenizer.from_pretrained(saved_tokenizers["bpe"])
    ours = tokenizers["bpe"]
    assert gpt.eos_token_id == ours.eot_id
    for text, (ids, _) in zip(texts, ours.encode(texts)):
        assert gpt(text)["input_ids"] == ids.tolist()
        assert gpt.decode(ids.tolist()) == text == ours.decode(ids)  # byte-level BPE is lossless


def test_load_tokenizer_from_each_file(tokenizers, saved_tokenizers, documents):
    texts = documents[39::20][:20] + ["unbelievable, isn't it? x = f(y) + 42"]
    for kind, folder in saved_tokenizers.items():
        ours = tokenizers[kind]
        expected = ours.encode(texts)
        paths = [folder, os.path.join(folder, "tokenizer.json")]
        if kind == "wordpiece":
            paths.append(os.path.join(folder, "vocab.txt"))
        for path in paths:
            loaded = load_tokenizer(path)
            assert loaded.kind == kind
            assert loaded.special_ids == ours.special_ids and loaded.vocab_size == ours.vocab_size
            for (ids, starts), (want_ids, want_starts) in zip(loaded.encode(texts), expected):
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_array_equal(starts, want_starts)
            if kind == "wordpiece":
                assert loaded.backend.encode(texts[0], texts[1]).ids == ours.backend.encode(texts[0], texts[1]).ids


def test_load_tokenizer_vocab_txt_keeps_special_tokens_whole(saved_tokenizers):
    """A literal [MASK] / [SEP] in text is one special token for the trained
    tokenizer, for its tokenizer.json and for transformers; a tokenizer loaded
    from the same folder's vocab.txt must encode it the same way."""
    folder = saved_tokenizers["wordpiece"]
    text = "Fill the [MASK] here [SEP] and there."
    from_json = load_tokenizer(os.path.join(folder, "tokenizer.json"))
    from_vocab = load_tokenizer(os.path.join(folder, "vocab.txt"))
    want = from_json.encode([text])[0][0]
    assert from_json.mask_id in want.tolist()
    np.testing.assert_array_equal(from_vocab.encode([text])[0][0], want)


def test_load_tokenizer_errors(saved_tokenizers, tmp_path):
    with open(os.path.join(saved_tokenizers["wordpiece"], "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().split("\n")
    assert "[MASK]" in vocab
    no_mask = tmp_path / "vocab.txt"
    no_mask.write_text("\n".join(t for t in vocab if t != "[MASK]"), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("[MASK]")):
        load_tokenizer(str(no_mask))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "no-such-tokenizer.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        load_tokenizer(str(empty))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        load_tokenizer(str(broken))
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], "wordpiece", vocab_size=10)
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(["a b c"], "unigram", vocab_size=100)


def test_encode_word_starts(tokenizers):
    wp, bpe = tokenizers["wordpiece"], tokenizers["bpe"]
    (ids, starts), = wp.encode(["unbelievable"])
    assert len(ids) > 1 and starts.tolist() == [True] + [False] * (len(ids) - 1)
    assert all(wp.backend.id_to_token(int(i)).startswith("##") for i in ids[1:])
    text = "The quick brownish fox, unbelievably, jumped over 12345 lazy dogs! Isn't it odd?"
    for tok in (wp, bpe):
        (ids, starts), = tok.encode([text])
        encoding = tok.backend.encode(text, add_special_tokens=False)
        assert encoding.ids == ids.tolist()
        words = tok.backend.pre_tokenizer.pre_tokenize_str(text)
        word_begins = {begin for _, (begin, _) in words}
        expected = [begin in word_begins for begin, _ in encoding.offsets]
        # every word begins at a token, and exactly those tokens are marked
        assert sum(expected) == len(words)
        assert starts.tolist() == expected
    assert wp.encode([]) == []


# =============================================== 8. sources and the cache ==
def test_plain_text_file_documents(tmp_path, documents):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n\n  \n\t\nthird\n\n\n\nlast one", encoding="utf-8")
    assert list(TextSource(str(path)).documents()) == ["first line\nsecond line\n", "third\n", "last one"]
    # Real documents, blank lines inside each collapsed, separated by blank lines.
    collapsed = ["\n".join(line for line in doc.split("\n") if line.strip()) for doc in documents[:200]]
    path.write_text("\n\n".join(collapsed) + "\n", encoding="utf-8")
    assert list(TextSource(str(path)).documents()) == [doc + "\n" for doc in collapsed]


def test_jsonl_custom_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [{"body": "one doc", "id": 1}, {"body": "   "}, {"body": "two\n\ndocs"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    assert list(TextSource(str(path), text_field="body").documents()) == ["one doc", "two\n\ndocs"]
    with pytest.raises(CorpusError, match=r"line 1 .*'text'") as info:
        list(TextSource(str(path)).documents())
    assert str(path) in str(info.value)


def test_folder_source(tmp_path):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("second file\n\nstill the second", encoding="utf-8")
    (root / "a.md").write_text("first file", encoding="utf-8")
    (root / "sub" / "c.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n", encoding="utf-8")
    (root / "sub" / "d.txt").write_text("   \n", encoding="utf-8")  # blank: no document
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / ".git" / "config").write_text("hidden folder", encoding="utf-8")
    source = TextSource(str(root))
    assert list(source.documents()) == ["first file", "second file\n\nstill the second", "from jsonl"]
    assert isinstance(open_source(str(root)), TextSource)
    assert isinstance(open_source(None), EmbeddedSource)
    only_hidden = tmp_path / "hidden-only"
    only_hidden.mkdir()
    (only_hidden / ".x").write_text("x", encoding="utf-8")
    with pytest.raises(CorpusError, match=re.escape(str(only_hidden))):
        TextSource(str(only_hidden))


def test_bad_sources_raise_corpus_error(tmp_path, tokenizers):
    missing = tmp_path / "missing.txt"
    with pytest.raises(CorpusError, match=re.escape(str(missing))):
        TextSource(str(missing))
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("fine line\n".encode() + "caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=re.escape(str(binary)) + r".*offset 13"):
        list(TextSource(str(binary)).documents())
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=re.escape(str(bad_json)) + " line 3"):
        list(TextSource(str(bad_json)).documents())
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"text": "ok"}\n{"content": "x"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=re.escape(str(no_field)) + " line 2 .*'text'"):
        list(TextSource(str(no_field)).documents())
    not_string = tmp_path / "number.jsonl"
    not_string.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 1"):
        list(TextSource(str(not_string)).documents())
    # Errors surface through tokenize_corpus too, and leave no cache entry behind.
    # (Files left open by a failed build are test_failed_build_closes_its_files' concern.)
    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\n\t\n", encoding="utf-8")
    cache = tmp_path / "cache"
    with ignoring_resource_warnings():
        with pytest.raises(CorpusError, match="holds no text"):
            tokenize_corpus(TextSource(str(empty)), tokenizers["wordpiece"], cache_dir=str(cache))
        with pytest.raises(CorpusError, match=re.escape(str(binary))):
            tokenize_corpus(TextSource(str(binary)), tokenizers["wordpiece"], cache_dir=str(cache))
        gc.collect()
    assert os.listdir(cache) == []
    with pytest.raises(ValueError, match="valid_every"):
        tokenize_corpus(TextSource(str(bad_json)), tokenizers["wordpiece"], cache_dir=str(cache), valid_every=1)


@contextlib.contextmanager
def ignoring_resource_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    unexpected = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    assert not unexpected, [str(w.message) for w in unexpected]


@pytest.mark.parametrize("content", [b"\n   \n\n", b"caf\xe9\n"], ids=["no-text", "not-utf8"])
def test_failed_build_closes_its_files(tmp_path, tokenizers, content):
    """A build that fails (empty or undecodable corpus) closes the token files
    it opened before removing its temporary folder."""
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with ignoring_resource_warnings() as caught:
        with pytest.raises(CorpusError):
            tokenize_corpus(TextSource(str(path)), tokenizers["wordpiece"], cache_dir=str(tmp_path / "cache"))
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []


def test_corpus_round_trip_split_and_dtype(wp_corpus, bpe_corpus, tokenizers, documents):
    for kind, corpus in (("wordpiece", wp_corpus), ("bpe", bpe_corpus)):
        tok = tokenizers[kind]
        train, valid = corpus["train"], corpus["valid"]
        assert valid.n_documents == N_DOCUMENTS // VALID_EVERY
        assert train.n_documents + valid.n_documents == N_DOCUMENTS
        assert train.tokens.dtype == np.uint16 and valid.tokens.dtype == np.uint16
        assert train.word_starts.dtype == np.uint8
        assert train.meta["n_documents"] == train.n_documents and train.meta["n_tokens"] == len(train.tokens)
        assert train.sentence_starts[0] == 0 and train.sentence_starts[-1] == train.n_tokens
        assert (np.diff(train.sentence_starts) > 0).all()  # no empty sentences
        assert train.document_starts[-1] == train.n_sentences
        for split in (train, valid):
            np.testing.assert_array_equal(split.counts, np.bincount(split.tokens, minlength=tok.vocab_size))
        where = {}  # document index -> (split, index in split)
        counters = {"train": 0, "valid": 0}
        for i in range(N_DOCUMENTS):
            split = "valid" if i % VALID_EVERY == VALID_EVERY - 1 else "train"
            where[i] = (split, counters[split])
            counters[split] += 1
        for i in list(range(0, N_DOCUMENTS, 37)) + list(range(19, 300, 20)):
            split, d = where[i]
            begin, end = corpus[split].document_token_range(d)
            ids = np.asarray(corpus[split].tokens[begin:end])
            starts = corpus[split].word_starts[begin:end].astype(bool)
            sentences = split_sentences(documents[i])
            encoded = tok.encode(sentences)
            np.testing.assert_array_equal(ids, np.concatenate([e[0] for e in encoded]))
            np.testing.assert_array_equal(starts, np.concatenate([e[1] for e in encoded]))
            n_sentences = corpus[split].document_starts[d + 1] - corpus[split].document_starts[d]
            assert n_sentences == len(sentences)
            if kind == "wordpiece":
                # Sentences are cut at whitespace: the same tokens as the whole document.
                (whole, _), = tok.encode([documents[i]])
                np.testing.assert_array_equal(ids, whole)
                assert tok.decode(ids) == tok.decode(whole)
            else:
                assert tok.decode(ids) == "".join(sentences)


def test_cache_hit_miss_and_leftovers(tmp_path, tokenizers, documents, monkeypatch):
    wp, bpe = tokenizers["wordpiece"], tokenizers["bpe"]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[:60]), encoding="utf-8")
    cache = tmp_path / "cache"
    first = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(cache), valid_every=VALID_EVERY)
    entries = [e for e in os.listdir(cache)]
    assert len(entries) == 1 and entries[0].startswith("tokens-")

    calls = []

    def refuse(texts):
        calls.append(len(texts))
        raise AssertionError("encode called although the corpus is cached")

    monkeypatch.setattr(wp, "encode", refuse)
    second = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(cache), valid_every=VALID_EVERY)
    assert calls == []
    for split in ("train", "valid"):
        assert second[split].folder == first[split].folder
        for name in ("tokens", "word_starts", "sentence_starts", "document_starts", "counts"):
            np.testing.assert_array_equal(getattr(second[split], name), getattr(first[split], name))
    monkeypatch.undo()

    # A changed file (content and modification time) is a new entry with the new text.
    path.write_text(json.dumps({"text": "Completely new content here."}) + "\n" + json.dumps({"text": "More."}) + "\n",
                    encoding="utf-8")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    changed = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(cache), valid_every=VALID_EVERY)
    assert len([e for e in os.listdir(cache) if e.startswith("tokens-")]) == 2
    assert changed["train"].folder != first["train"].folder
    assert changed["train"].n_documents == 2
    (want_a, _), (want_b, _) = wp.encode(["Completely new content here.", "More."])
    np.testing.assert_array_equal(changed["train"].tokens, np.concatenate([want_a, want_b]))

    # Another tokenizer: another entry.
    other = tokenize_corpus(TextSource(str(path)), bpe, cache_dir=str(cache), valid_every=VALID_EVERY)
    assert len([e for e in os.listdir(cache) if e.startswith("tokens-")]) == 3
    assert other["train"].folder != changed["train"].folder
    assert other["train"].meta["tokenizer"] == bpe.fingerprint()
    assert bpe.decode(other["train"].tokens) == "Completely new content here.More."

    # A complete-looking folder under a temporary (dot) name is no cache entry.
    entry = os.path.dirname(changed["train"].folder)
    leftover = os.path.join(str(cache), "." + os.path.basename(entry) + "-leftover")
    os.rename(entry, leftover)
    counted = []
    original_encode = wp.encode
    monkeypatch.setattr(wp, "encode", lambda texts: counted.append(len(texts)) or original_encode(texts))
    rebuilt = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(cache), valid_every=VALID_EVERY)
    assert counted, "a leftover temporary folder was taken for the cache entry"
    assert rebuilt["train"].folder == changed["train"].folder and os.path.isdir(leftover)
    np.testing.assert_array_equal(rebuilt["train"].tokens, np.concatenate([want_a, want_b]))
    assert not [e for e in os.listdir(cache) if e.startswith(".") and e != os.path.basename(leftover)]
    shutil.rmtree(leftover)


def test_valid_split_membership(tmp_path, tokenizers):
    wp = tokenizers["wordpiece"]
    path = tmp_path / "numbered.jsonl"
    texts = [f"document number {i} says hello" for i in range(47)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    corpus = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(tmp_path / "c"), valid_every=5)
    decoded = {}
    for split in ("train", "valid"):
        c = corpus[split]
        decoded[split] = [wp.decode(c.tokens[slice(*c.document_token_range(d))]) for d in range(c.n_documents)]
    assert decoded["valid"] == [texts[i] for i in range(47) if i % 5 == 4]
    assert decoded["train"] == [texts[i] for i in range(47) if i % 5 != 4]
    none = tokenize_corpus(TextSource(str(path)), wp, cache_dir=str(tmp_path / "c"), valid_every=0)
    assert none["train"].n_documents == 47 and none["valid"].n_documents == 0 and len(none["valid"].tokens) == 0


# ========================================================== 9. split_sentences ==
def test_split_sentences_examples():
    text = 'First one. Second one!  Third? 4th is here.\n\nNew para, e.g. lower 3.14 "Quoted". (Paren) end'
    assert split_sentences(text) == ["First one.", " Second one!", "  Third?", " 4th is here.",
                                     '\n\nNew para, e.g. lower 3.14 "Quoted".', " (Paren) end"]
    assert split_sentences("no break here. lower case follows") == ["no break here. lower case follows"]
    assert split_sentences("Para one\n\nPara two\n \nPara three") == ["Para one", "\n\nPara two", "\n \nPara three"]
    assert split_sentences("") == [] and split_sentences("  \n\n ") == []
    # Whitespace alone is no sentence: it joins the next one, and nothing is lost.
    assert split_sentences("A\n\n\nB") == ["A", "\n\n\nB"]
    assert split_sentences("  Lead. Trail  \n\n") == ["  Lead.", " Trail  \n\n"]


def test_split_sentences_is_lossless(documents):
    for text in documents:
        pieces = split_sentences(text)
        assert all(p.strip() for p in pieces)
        assert "".join(pieces) == text


def test_bad_pretraining_arguments(wp_corpus, bpe_corpus, tokenizers):
    wp, bpe = tokenizers["wordpiece"], tokenizers["bpe"]
    train = wp_corpus["train"]
    with pytest.raises(ValueError, match="objective"):
        PretrainingData(train, wp, "mlm+xyz", SEQ_LEN, BATCH)
    with pytest.raises(ValueError, match="seq_len"):
        PretrainingData(train, wp, "mlm", 2, BATCH)
    with pytest.raises(ValueError, match="seq_len"):
        PretrainingData(train, wp, "mlm+nsp", 4, BATCH)
    with pytest.raises(ValueError, match="seq_len"):
        PretrainingData(bpe_corpus["train"], bpe, "clm", 1, BATCH)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingData(train, wp, "mlm", SEQ_LEN, 0)
    with pytest.raises(ValueError, match="tokenizer"):
        PretrainingData(bpe_corpus["train"], bpe, "mlm", SEQ_LEN, BATCH)
    with pytest.raises(ValueError, match="tokenizer"):
        PretrainingData(train, wp, "clm", SEQ_LEN, BATCH)
    with pytest.raises(ValueError, match="rate"):
        PretrainingData(train, wp, "mlm", SEQ_LEN, BATCH, masking={"rate": 1.5})
    with pytest.raises(ValueError, match="batch"):
        PretrainingData(wp_corpus["valid"], wp, "mlm", SEQ_LEN, 100000)
    # The smallest legal lengths work.
    tiny = PretrainingData(train, wp, "mlm+sop", 5, 4)
    batch = tiny.batch(0, 0)
    assert batch["input_ids"].shape == (4, 5) and (batch["attention_mask"].sum(axis=1) == 5).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"rate": 0.0}, "rate"), ({"rate": 1.0}, "rate"), ({"rate": -0.1}, "rate"), ({"rate": 1.2}, "rate"),
    ({"mask_ratio": 0.95, "random_ratio": 0.1}, "mask_ratio"), ({"random_ratio": -0.1}, "random_ratio"),
    ({"budget": "poisson"}, "budget"), ({"unit": "sentence"}, "unit"), ({"span_p": 0.0}, "span_p"),
    ({"max_span": 0}, "max_span"),
])
def test_bad_masking_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MaskingConfig(**kwargs)


def test_masking_config_boundaries_accepted():
    MaskingConfig(mask_ratio=0.9, random_ratio=0.1)
    MaskingConfig(mask_ratio=0.0, random_ratio=0.0, rate=0.999)
    assert MaskingConfig(span_p=1.0, max_span=1).span_length_probabilities().tolist() == [1.0]


def test_build_examples_bad_arguments(wp_corpus):
    with pytest.raises(ValueError, match="kind"):
        build_examples(wp_corpus["train"], "pairs", 100, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_tokens"):
        build_examples(wp_corpus["train"], "nsp", 1, np.random.default_rng(0))
