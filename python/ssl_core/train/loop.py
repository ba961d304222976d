"""The training loop every run shares: steps of AdamW over accumulated
micro-batches, periodic logging, validation and checkpoints, non-finite
losses, exact resumption and the final model.

A run (Pretraining, FineTuning) sets up ``config`` (a RunConfig),
``tokenizer``, ``data`` (an endless batch stream with state_dict /
load_state_dict), ``model`` and ``optimizer``, and implements
``label_counts(batches)`` (the divisors of gradient accumulation) and
``validate()``.

Layout of the output folder:

    run.json            the settings of the run
    log.jsonl, log.png  metrics (train every log_every steps, valid at each validation)
    checkpoints/        step-NNNNNNN folders (see train.checkpoint), the newest K
    config.json, model.safetensors, tokenizer files
                        the final model, loadable by transformers and by
                        ssl_core.models.from_pretrained

Exact resumption: everything random in a step is a function of (seed, step)
or of the data position (epoch, batch), and the kernels give the same result
for any thread count, so a run resumed from a checkpoint ends with weights
bit-identical to those of an uninterrupted run.
"""

import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

import ssl_core
from ssl_core.train.checkpoint import (list_checkpoints, load_checkpoint, remove_partial_checkpoints,
                                       save_checkpoint, write_model)
from ssl_core.train.metrics_log import MetricsLog, plot_metrics
from ssl_core.train.optim import AdamW, clip_grad_norm, learning_rate

# Consecutive skipped steps after which on_nonfinite="skip" gives up.
MAX_SKIPPED_STEPS = 10


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


class TrainingRun:
    """The shared loop; see the module docstring for what a run provides."""

    DESCRIPTION = "training"  # the progress bar's label

    def _open(self, config, resume, progress, echo):
        """Checks and state every run starts with: returns the checkpoint to
        resume from (or None)."""
        self.config, self.progress, self.echo = config, progress, echo
        if config.threads:
            ssl_core.set_num_threads(config.threads)
        self.checkpoints = os.path.join(config.out, "checkpoints")
        existing = list_checkpoints(self.checkpoints)
        if existing and not resume:
            raise ValueError(f"out: {config.out} already holds a run (checkpoints up to "
                             f"{os.path.basename(existing[-1])}); pass --resume to continue it, or choose another "
                             f"--out")
        self.step, self.skipped_in_a_row = 0, 0
        return existing[-1] if resume and existing else None

    def _start(self, checkpoint):
        """After the subclass built data (and a model unless resuming): the
        log, and the resumed state."""
        c = self.config
        os.makedirs(c.out, exist_ok=True)
        self.log = MetricsLog(os.path.join(c.out, "log.jsonl"))
        remove_partial_checkpoints(self.checkpoints)
        if checkpoint:
            self._resume(checkpoint)
        else:
            self.optimizer = self._new_optimizer(self.model.params)
            if os.path.exists(self.log.path):
                os.remove(self.log.path)
        with open(os.path.join(c.out, "run.json"), "w") as f:
            json.dump(c.to_dict(), f, indent=2)

    def _new_optimizer(self, params):
        c = self.config
        return AdamW(params, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps, weight_decay=c.weight_decay)

    def _resume(self, checkpoint):
        model, optimizer, state = load_checkpoint(checkpoint, self._new_optimizer)
        saved = type(self.config).from_dict(state["config"], source=checkpoint)
        changed = self.config.weight_changes(saved)
        if changed:
            raise ValueError("cannot resume with settings that change the weights: " + ", ".join(
                f"{k} {getattr(self.config, k)!r} (the run used {getattr(saved, k)!r})" for k in changed))
        self.model, self.optimizer, self.step = model, optimizer, state["step"]
        self.data.load_state_dict(state["data"])
        self.log.truncate_after(self.step)
        self.echo(f"resuming from {checkpoint} (step {self.step})")

    # --------------------------------------------------------------- loop --
    def run(self):
        """Train to config.steps; returns the last validation metrics (or {})."""
        c = self.config
        bar = self._bar()
        window, metrics, started = _Window(), {}, time.perf_counter()
        self.model.train()
        while self.step < c.steps:
            step = self.step + 1
            began = time.perf_counter()
            record = self._train_step(step)
            window.add(record, time.perf_counter() - began)
            self.step = step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{window.tokens_per_second():,.0f}")
            if step % c.log_every == 0 or step == c.steps:
                self.log.append({"step": step, "split": "train", **window.summary(),
                                 "elapsed_s": time.perf_counter() - started})
                window = _Window()
            if (c.eval_every and step % c.eval_every == 0) or step == c.steps:
                metrics = self.validate()
                if metrics:
                    self.log.append({"step": step, "split": "valid", **metrics})
                    if bar is not None:
                        bar.write(_describe(step, metrics))
                plot_metrics(self.log.records(), os.path.join(c.out, "log.png"))
            if (c.save_every and step % c.save_every == 0) or step == c.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self._write_final_model()
        return metrics

    def _train_step(self, step):
        c, model = self.config, self.model
        model.reseed_dropout(c.seed, step)
        model.params.grad[...] = 0.0
        batches = [next(self.data) for _ in range(c.accumulation_steps)]
        counts = self.label_counts(batches)
        totals, tokens = {}, 0
        for batch in batches:
            loss, stats = model.loss_and_backward(batch, **counts)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            totals["loss"] = totals.get("loss", 0.0) + loss
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].size
        norm, scale = clip_grad_norm(model.params, c.max_grad_norm or math.inf)
        if not (math.isfinite(totals["loss"]) and math.isfinite(norm)):
            return self._nonfinite(step, totals["loss"], norm, tokens)
        self.skipped_in_a_row = 0
        lr = learning_rate(step, c.lr, c.schedule, c.warmup_steps, c.steps, c.min_lr)
        self.optimizer.step(lr=lr, grad_scale=scale)
        accuracies = {k: v / c.accumulation_steps for k, v in totals.items() if k.endswith("_accuracy")}
        losses = {k: v for k, v in totals.items() if k.endswith("loss")}
        return {**losses, **accuracies, "lr": lr, "grad_norm": norm, "tokens": tokens}

    def _nonfinite(self, step, loss, norm, tokens):
        where = f"step {step}: the {'loss' if not math.isfinite(loss) else 'gradient norm'} is " \
                f"{loss if not math.isfinite(loss) else norm}"
        if self.config.on_nonfinite == "skip" and self.skipped_in_a_row < MAX_SKIPPED_STEPS:
            self.skipped_in_a_row += 1
            self.echo(f"{where}; the step is skipped (on_nonfinite = skip)")
            return {"loss": math.nan, "skipped": 1, "tokens": tokens}
        last = list_checkpoints(self.checkpoints)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written before it"
        reason = "" if self.config.on_nonfinite == "stop" else f" after {MAX_SKIPPED_STEPS} skipped steps in a row"
        raise TrainingDiverged(f"training diverged at {where}{reason}; {kept}. Lower --lr, raise warmup_steps, "
                               f"or set on_nonfinite = \"skip\".")

    def label_counts(self, batches):
        """The normalizers that make accumulated micro-batches one batch, as
        keyword arguments of the model's loss_and_backward."""
        raise NotImplementedError

    def validate(self):
        """Validation metrics ({} when there is nothing to validate on)."""
        raise NotImplementedError

    # -------------------------------------------------------- checkpoints --
    def save_checkpoint(self):
        state = {"config": self.config.to_dict(), "data": self.data.state_dict(),
                 "ssl_core_version": ssl_core.__version__}
        return save_checkpoint(self.checkpoints, self.step, self.model, self.tokenizer, self.optimizer, state,
                               keep=self.config.keep_checkpoints)

    def _write_final_model(self):
        """The final model into ``out`` itself, each file replaced atomically."""
        building = tempfile.mkdtemp(prefix=".final-", dir=self.config.out)
        try:
            write_model(building, self.model, self.tokenizer)
            for name in os.listdir(building):
                os.replace(os.path.join(building, name), os.path.join(self.config.out, name))
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def _bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=self.config.steps, initial=self.step, desc=self.DESCRIPTION,
                    unit="step", dynamic_ncols=True)



class _Window:
    """Training metrics averaged over the steps since the last log line;
    tokens/s counts the time of the steps alone, not of validation or saving."""

    def __init__(self):
        self.records, self.seconds = [], 0.0

    def add(self, record, seconds):
        self.records.append(record)
        self.seconds += seconds

    def tokens_per_second(self):
        return sum(r["tokens"] for r in self.records) / max(self.seconds, 1e-9)

    def summary(self):
        done = [r for r in self.records if not r.get("skipped")]
        keys = [k for k in (done[0] if done else {}) if k not in ("tokens",)]
        summary = {k: float(np.mean([r[k] for r in done])) for k in keys}
        summary["tokens_per_s"] = self.tokens_per_second()
        if len(done) < len(self.records):
            summary["skipped_steps"] = len(self.records) - len(done)
        return summary


def _describe(step, metrics):
    parts = [f"step {step}"] + [f"{k} {v:.4g}" for k, v in metrics.items()]
    return "validation: " + ", ".join(parts[1:]) + f" ({parts[0]})"
