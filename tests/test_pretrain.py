"""Pretraining runs end to end: learning, validation metrics, checkpoints,
exact resumption after SIGKILL, non-finite losses, the command line, and the
output folder loading in transformers."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from ssl_core.cli import main as cli_main
from ssl_core.data import EmbeddedSource
from ssl_core.models import from_pretrained
from ssl_core.train import PretrainConfig, Pretraining, TrainingDiverged
from ssl_core.train.checkpoint import list_checkpoints


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """About 250 documents of the embedded corpus as JSON Lines."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    documents = itertools.islice(EmbeddedSource().documents(), 2000, 2250)
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in documents)
    return str(path)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def tiny(corpus_file, cache_dir, out, **overrides):
    settings = dict(model="bert", size="tiny", corpus=corpus_file, vocab_size=1000, seq_len=48, batch_size=8,
                    steps=8, eval_every=0, eval_batches=4, save_every=0, log_every=2, out=str(out),
                    cache_dir=cache_dir, valid_every_document=5)
    return PretrainConfig(**{**settings, **overrides})


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ------------------------------------------------------------- learning --
ANIMALS = {"cat": "meows", "dog": "barks", "bird": "sings", "horse": "neighs", "fish": "swims", "mouse": "squeaks"}
COLORS, PLACES = ["red", "green", "blue", "black", "white", "brown"], ["house", "garden", "river", "forest", "barn"]


@pytest.fixture(scope="session")
def animal_corpus(tmp_path_factory):
    """Documents of sentences "The <color> <animal> <its sound> in the <place>.",
    with a word-level vocab.txt: a corpus whose structure a tiny BERT learns in
    a few dozen steps, and a tokenizer that is the same on every run."""
    folder = tmp_path_factory.mktemp("animals")
    rng = np.random.default_rng(0)
    animals = list(ANIMALS)
    documents = []
    for _ in range(400):
        sentences = []
        for _ in range(int(rng.integers(3, 8))):
            animal = animals[rng.integers(len(animals))]
            sentences.append(f"The {COLORS[rng.integers(len(COLORS))]} {animal} {ANIMALS[animal]} in the "
                             f"{PLACES[rng.integers(len(PLACES))]}.")
        documents.append(" ".join(sentences))
    (folder / "corpus.txt").write_text("\n\n".join(documents))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "in", *ANIMALS, *ANIMALS.values(), *COLORS,
             *PLACES]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(folder / "corpus.txt"), str(folder / "vocab.txt")


def test_tiny_bert_learns_past_the_unigram_baseline(animal_corpus, cache_dir, tmp_path):
    corpus, vocab = animal_corpus
    config = tiny(corpus, cache_dir, tmp_path, tokenizer=vocab, seq_len=32, batch_size=16, steps=60, eval_every=30,
                  eval_batches=10, log_every=10)
    run = Pretraining(config, progress=False)
    first = run.validate()
    assert first["mlm_loss"] == pytest.approx(math.log(run.tokenizer.vocab_size), abs=0.3)  # an untrained guess
    final = run.run()
    assert final["mlm_loss"] < first["mlm_loss"] - 1.5
    assert final["mlm_accuracy"] > final["unigram_accuracy"] + 0.2
    records = read_log(tmp_path)
    assert [r["step"] for r in records if r["split"] == "valid"] == [30, 60]
    assert [r["step"] for r in records if r["split"] == "train"] == [10, 20, 30, 40, 50, 60]
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in records if r["split"] == "train")
    assert (tmp_path / "log.png").stat().st_size > 1000


@pytest.mark.parametrize("objective", ["mlm+nsp", "clm"])
def test_validation_metrics_match_a_float64_recomputation(corpus_file, cache_dir, tmp_path, objective):
    model = "gpt" if objective == "clm" else "bert"
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, model=model, objective=objective, steps=3),
                      progress=False)
    run.run()
    metrics = run.validate()
    run.model.eval()
    losses, hits, pair_hits, sequences = [], [], [], 0
    for batch in run.valid:
        mask = batch.get("attention_mask")
        logits = run.model.logits(batch["input_ids"], batch.get("token_type_ids"), mask).astype(np.float64)
        if model == "gpt":
            logits, targets = logits[:, :-1], batch["input_ids"][:, 1:]
        else:
            targets = batch["labels"]
        rows = targets != -100
        picked, targets = logits[rows], targets[rows]
        top = picked.max(axis=1, keepdims=True)
        log_z = (top + np.log(np.exp(picked - top).sum(axis=1, keepdims=True)))[:, 0]
        losses.append(log_z - picked[np.arange(len(targets)), targets])
        hits.append(picked.argmax(axis=1) == targets)
        if "next_sentence_label" in batch:
            nsp = run.model.next_sentence_logits(batch["input_ids"], batch["token_type_ids"], mask)
            pair_hits.append(nsp.argmax(axis=1) == batch["next_sentence_label"])
            sequences += len(batch["input_ids"])
    head = "lm" if model == "gpt" else "mlm"
    loss = np.concatenate(losses).mean()
    assert metrics[f"{head}_loss"] == pytest.approx(float(loss), rel=1e-4)
    assert metrics[f"{head}_accuracy"] == pytest.approx(float(np.concatenate(hits).mean()), abs=1e-9)
    assert metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    if pair_hits:
        assert metrics["nsp_accuracy"] == pytest.approx(float(np.concatenate(pair_hits).mean()), abs=1e-9)
    # The baseline: the share of validation targets equal to the most frequent
    # non-special training token.
    counts = run.train_counts.copy()
    counts[list(run.tokenizer.special_ids.values())] = -1
    targets = np.concatenate([(b["labels"] if model == "bert" else b["input_ids"][:, 1:]).reshape(-1)
                              for b in run.valid])
    targets = targets[targets != -100]
    assert metrics["unigram_accuracy"] == pytest.approx(float((targets == counts.argmax()).mean()), abs=1e-12)


# ----------------------------------------------------------- output --
def test_output_folder_loads_in_transformers_with_the_same_outputs(corpus_file, cache_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, objective="mlm+nsp", steps=3), progress=False)
    run.run()
    ours = from_pretrained(str(tmp_path)).eval()
    theirs = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    encoded = tokenizer(["The quick brown fox.", "Return the value of the attribute."], ["It jumps.", "None."],
                        padding=True, return_tensors="np")
    ids, types, mask = encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"]
    assert ids[0, 0] == run.tokenizer.cls_id and run.tokenizer.sep_id in ids[0]
    with torch.no_grad():
        out = theirs(*[torch.from_numpy(a) for a in (ids, mask, types)])
    ours_logits = ours.logits(ids, types, mask)
    np.testing.assert_allclose(ours_logits[mask == 1], out.prediction_logits.numpy()[mask == 1], atol=2e-4)
    np.testing.assert_allclose(ours.next_sentence_logits(ids, types, mask), out.seq_relationship_logits.numpy(),
                               atol=2e-4)
    # The final model is the last checkpoint's.
    assert_same_weights(weights(tmp_path), weights(list_checkpoints(tmp_path / "checkpoints")[-1]))


def test_gpt_output_folder_loads_in_transformers_with_the_same_logits(corpus_file, cache_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, model="gpt", steps=3), progress=False)
    run.run()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs.config.eos_token_id == theirs.config.bos_token_id == run.tokenizer.eot_id
    ids = tokenizer("Return the value of the attribute.", return_tensors="np")["input_ids"]
    assert ids.tolist()[0] == run.tokenizer.encode(["Return the value of the attribute."])[0][0].tolist()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(from_pretrained(str(tmp_path)).eval().logits(ids), expected, atol=2e-4)


def test_checkpoints_keep_the_newest_and_leave_no_temporaries(corpus_file, cache_dir, tmp_path):
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=7, save_every=2, keep_checkpoints=2),
                      progress=False)
    run.run()
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["step-0000006", "step-0000007"]
    state = read_json(tmp_path / "checkpoints" / "step-0000007" / "trainer_state.json")
    assert state["step"] == 7 and state["optimizer_step"] == 7 and state["config"]["steps"] == 7


# ------------------------------------------------------------ resume --
def _cli(*args):
    return [sys.executable, "-m", "ssl_core.cli", "pretrain", "--no-progress", *args]


def test_a_run_killed_with_sigkill_resumes_to_bit_identical_weights(corpus_file, cache_dir, tmp_path):
    common = ["--size", "tiny", "--corpus", corpus_file, "--cache-dir", cache_dir, "--vocab-size", "1000",
              "--seq-len", "48", "--batch-size", "8", "--steps", "40", "--save-every", "5", "--eval-every", "10",
              "--objective", "mlm+nsp", "--dropout", "0.1", "--keep-checkpoints", "3", "--seed", "7"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(_cli(*common, "--out", str(whole)), check=True, capture_output=True)

    process = subprocess.Popen(_cli(*common, "--out", str(broken)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(broken / "checkpoints") and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = read_json(os.path.join(list_checkpoints(broken / "checkpoints")[-1],
                                            "trainer_state.json"))["step"]
    assert interrupted_at < 40, "the run finished before it could be killed"
    assert not (broken / "model.safetensors").exists()

    # The interrupted run's settings come from run.json: --resume needs only --out.
    resumed = subprocess.run(_cli("--out", str(broken), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(whole), weights(broken))
    for name in ("m", "v"):
        newest = [list_checkpoints(folder / "checkpoints")[-1] for folder in (whole, broken)]
        a, b = (load_file(os.path.join(path, "optimizer.safetensors"))[name] for path in newest)
        np.testing.assert_array_equal(a, b)
    # The log of the resumed run holds each step once, as the whole run's does.
    logs = [[(r["step"], r["split"]) for r in read_log(folder)] for folder in (whole, broken)]
    assert logs[0] == logs[1]


def _crash_at(monkeypatch, crash_step):
    """Make Pretraining raise KeyboardInterrupt when it reaches ``crash_step``."""
    real_step = Pretraining._train_step

    def train_step(self, step):
        if step == crash_step:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Pretraining, "_train_step", train_step)


def test_gpt_resumed_from_a_checkpoint_matches_an_uninterrupted_run(corpus_file, cache_dir, tmp_path, monkeypatch):
    settings = dict(model="gpt", objective="clm", steps=8, save_every=3, dropout=0.1, seed=3)
    Pretraining(tiny(corpus_file, cache_dir, tmp_path / "whole", **settings), progress=False).run()

    broken = Pretraining(tiny(corpus_file, cache_dir, tmp_path / "broken", **settings), progress=False)
    _crash_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    monkeypatch.undo()
    resumed = Pretraining(tiny(corpus_file, cache_dir, tmp_path / "broken", **settings), resume=True,
                          progress=False)
    assert resumed.step == 6
    resumed.run()
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "broken"))


def test_resume_reads_the_tokenizer_of_its_checkpoint(corpus_file, tmp_path, monkeypatch):
    """A trained WordPiece vocabulary can differ between trainings (ties), so a
    resumed run must not train a new one when the cache is gone."""
    cache = tmp_path / "cache"
    config = tiny(corpus_file, str(cache), tmp_path / "out", steps=4, save_every=2)
    run = Pretraining(config, progress=False)
    _crash_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    monkeypatch.undo()
    for cached in cache.glob("tokenizer-*.json"):
        cached.unlink()
    messages = []
    resumed = Pretraining(config, resume=True, progress=False, echo=messages.append)
    assert not any("training" in m for m in messages) and "resuming from" in messages[-1]
    assert resumed.tokenizer.fingerprint() == run.tokenizer.fingerprint()
    resumed.run()


def test_resume_refuses_settings_that_change_the_weights(corpus_file, cache_dir, tmp_path):
    Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=2), progress=False).run()
    with pytest.raises(ValueError, match=r"lr 0\.5 \(the run used 0\.001\)"):
        Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=4, lr=0.5), resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=4), progress=False)
    # More steps are allowed: the run continues from step 2.
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=4), resume=True, progress=False)
    assert run.step == 2
    run.run()
    assert run.optimizer.step_count == 4


# ------------------------------------------------------ non-finite --
def _poison_gradients_at(monkeypatch, bad_step):
    real_step = Pretraining._train_step

    def step_with_nan(self, step):
        real = self.model.loss_and_backward

        def loss_and_backward(batch, **counts):
            loss, stats = real(batch, **counts)
            if step == bad_step:
                self.model.params.grad[5] = np.nan
            return loss, stats

        self.model.loss_and_backward = loss_and_backward
        try:
            return real_step(self, step)
        finally:
            del self.model.loss_and_backward

    monkeypatch.setattr(Pretraining, "_train_step", step_with_nan)


def test_a_nan_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(corpus_file, cache_dir, tmp_path,
                                                                         monkeypatch):
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=8, save_every=2), progress=False)
    _poison_gradients_at(monkeypatch, 5)
    with pytest.raises(TrainingDiverged, match=r"step 5: the gradient norm is nan.*step-0000004"):
        run.run()
    assert [os.path.basename(p) for p in list_checkpoints(tmp_path / "checkpoints")] == \
        ["step-0000002", "step-0000004"]
    assert all(np.isfinite(w).all() for w in weights(tmp_path / "checkpoints" / "step-0000004").values())
    assert not (tmp_path / "model.safetensors").exists()


def test_skip_mode_drops_the_bad_step_and_goes_on(corpus_file, cache_dir, tmp_path, monkeypatch):
    run = Pretraining(tiny(corpus_file, cache_dir, tmp_path, steps=6, on_nonfinite="skip"), progress=False)
    _poison_gradients_at(monkeypatch, 3)
    run.run()
    assert run.optimizer.step_count == 5
    assert np.isfinite(run.model.params.data).all()
    records = read_log(tmp_path)
    assert [r.get("skipped_steps") for r in records if r["split"] == "train"] == [None, 1, None]


# --------------------------------------------------------------- CLI --
def test_cli_settings_come_from_toml_then_options(corpus_file, cache_dir, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'[pretrain]\nsize = "tiny"\ncorpus = "{corpus_file}"\ncache-dir = "{cache_dir}"\n'
                    f'vocab_size = 1000\nseq_len = 48\nbatch_size = 8\nsteps = 50\nlr = 0.002\n')
    out = tmp_path / "out"
    assert cli_main(["pretrain", "--config", str(toml), "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    used = read_json(out / "run.json")
    assert (used["steps"], used["lr"], used["size"], used["seq_len"]) == (2, 0.002, "tiny", 48)
    assert "model written to" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--corpus", "/no/such/corpus.txt"], "corpus: no such file or folder /no/such/corpus.txt"),
    (["--steps", "0"], "steps must be a positive integer, got 0"),
    (["--model", "gpt", "--objective", "mlm"], "objective 'mlm' is not one of model 'gpt'"),
    (["--seq-len", "4096"], "seq_len 4096 is longer than the model's 512 positions"),
    (["--lr", "-1"], "lr must be > 0"),
])
def test_cli_reports_bad_settings_without_a_traceback(corpus_file, cache_dir, tmp_path, capsys, args, message):
    base = ["pretrain", "--size", "tiny", "--corpus", corpus_file, "--cache-dir", cache_dir, "--vocab-size", "1000",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssl-core pretrain: error: ") and message in err
    assert "Traceback" not in err


def test_cli_reports_an_unknown_toml_key_and_bad_toml(tmp_path, capsys):
    (tmp_path / "a.toml").write_text("stepz = 3\n")
    (tmp_path / "b.toml").write_text("steps = \n")
    assert cli_main(["pretrain", "--config", str(tmp_path / "a.toml")]) == 2
    assert "unknown setting(s) stepz" in capsys.readouterr().err
    assert cli_main(["pretrain", "--config", str(tmp_path / "b.toml")]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    assert cli_main(["pretrain", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config: no such file" in capsys.readouterr().err


def test_cli_reports_undecodable_and_empty_corpora(cache_dir, tmp_path, capsys):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    base = ["pretrain", "--size", "tiny", "--cache-dir", cache_dir, "--vocab-size", "100", "--no-progress",
            "--out", str(tmp_path / "out")]
    assert cli_main(base + ["--corpus", str(tmp_path / "latin1.txt")]) == 2
    assert "latin1.txt is not UTF-8 text (undecodable byte at offset 3)" in capsys.readouterr().err
    assert cli_main(base + ["--corpus", str(tmp_path / "blank.txt")]) == 2
    assert "blank.txt holds no text" in capsys.readouterr().err
