"""Does pretraining pay? Fine-tune the model ``ssl-core pretrain`` made and the
same architecture from random weights on the same task, with the same
settings and seed, and plot both validation curves.

The task comes from the text the model was pretrained on: which standard
library package a docstring belongs to (asyncio, email, http, json, logging,
multiprocessing, unittest, xml), from the docstrings' first paragraphs.

    python -m benchmarks.pretrained_vs_scratch --pretrained runs/bert-mini --out runs/vs

writes runs/vs/curves.png and prints the final metrics of both runs.
"""

import argparse
import ast
import os
import sysconfig

import numpy as np

from benchmarks.common import write_labelled_csvs

PACKAGES = ["asyncio", "email", "http", "json", "logging", "multiprocessing", "unittest", "xml"]


def docstring_task(folder, per_package=250, seed=0):
    """train.csv / dev.csv of (first paragraph of a docstring, its package)."""
    rows = []
    root = sysconfig.get_paths()["stdlib"]
    for package in PACKAGES:
        found = []
        for directory, _, files in sorted(os.walk(os.path.join(root, package))):
            for name in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        text = (ast.get_docstring(node) or "").split("\n\n")[0]
                        if len(text.split()) >= 6:
                            found.append(" ".join(text.split()))
        picked = np.random.default_rng(seed).permutation(len(found))[:per_package]
        rows += [(found[i], package) for i in picked]
    rows = [rows[i] for i in np.random.default_rng(seed + 1).permutation(len(rows))]
    return write_labelled_csvs(folder, ("train.csv", "dev.csv"), rows, 4 / 5)


def main():
    from ssl_core.models import from_pretrained
    from ssl_core.train.finetune import FinetuneConfig, FineTuning
    from ssl_core.train.metrics_log import MetricsLog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a folder written by ssl-core pretrain (BERT)")
    parser.add_argument("--out", default="runs/pretrained-vs-scratch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    train, dev = docstring_task(args.out)
    size = {128: "tiny", 256: "mini", 512: "small", 768: "base"}[from_pretrained(args.pretrained).config.hidden_size]
    curves = {}
    for name, init in (("pretrained", args.pretrained), ("from scratch", "none")):
        out = os.path.join(args.out, name.replace(" ", "-"))
        config = FinetuneConfig(task="classify", train=train, eval=dev, init=init, size=size,
                                tokenizer=args.pretrained, epochs=args.epochs, lr=args.lr, out=out, save_every=0,
                                eval_every=None, seq_len=128)
        run = FineTuning(config)
        run.config = run.config.replace(eval_every=max(run.config.steps // 12, 1))
        final = run.run()
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
        curves[name] = [r for r in MetricsLog(os.path.join(out, "log.jsonl")).records() if r["split"] == "valid"]
    _plot(curves, os.path.join(args.out, "curves.png"))
    print(f"wrote {os.path.join(args.out, 'curves.png')}")


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, records in curves.items():
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["loss"] for r in records], "o-", label=name, markersize=3)
        axes[1].plot(steps, [r["accuracy"] for r in records], "o-", label=name, markersize=3)
    for ax, title in zip(axes, ("validation loss", "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("docstring package classification (8 classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
