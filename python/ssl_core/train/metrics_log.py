"""The metrics of a run: a JSON Lines file, one record per line, and a plot
of it (PNG, needs the optional matplotlib)."""

import json
import math
import os


class MetricsLog:
    """Appends records ({"step": ..., "split": "train" | "valid", ...}) to a
    JSON Lines file, flushed line by line so a killed run loses nothing that
    was logged."""

    def __init__(self, path):
        self.path = path

    def append(self, record):
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")

    def records(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, step):
        """Drop the records of steps after ``step`` (a resumed run logs them again)."""
        kept = [r for r in self.records() if r["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)


def plot_metrics(records, path):
    """Loss and accuracy against step, training and validation, as a PNG.
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        rows = [r for r in records if r.get("split") == split]
        keys = {k for r in rows for k in r if k.endswith(("_loss", "_accuracy")) and k != "unigram_accuracy"}
        for key in sorted(keys):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax = loss_ax if key.endswith("_loss") else acc_ax
                ax.plot(*zip(*points), style, label=f"{split} {key}", markersize=3)
    baselines = [r["unigram_accuracy"] for r in records if r.get("unigram_accuracy") is not None]
    if baselines:
        acc_ax.axhline(baselines[-1], color="gray", linestyle=":", label="unigram baseline")
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
