"""Timing whole training loops step by step: ours (a train.loop run) and a
Hugging Face Trainer fed the very same batches."""

import tempfile
import time

import numpy as np

import ssl_core


def step_times(run):
    """Run a TrainingRun to its end; the wall time of each of its steps, from
    the end of one to the end of the next (data, forward, backward, update)."""
    original = run._train_step
    ends = []

    def train_step(step):
        record = original(step)
        ends.append(time.perf_counter())
        return record

    start = time.perf_counter()
    run._train_step = train_step
    try:
        type(run).run(run)
    finally:
        del run._train_step
    return list(np.diff([start] + ends))


def trainer_step_times(torch, model, batches, settings):
    """Train ``model`` (transformers) with a Trainer on ``batches`` (dicts of
    arrays, one per step, through a pass-through collator) with the AdamW and
    schedule settings of a RunConfig; the time of each step."""
    import transformers

    tensors = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()} for b in batches]
    ends = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=len(batches), learning_rate=settings.lr,
            warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay, adam_beta1=settings.beta1,
            adam_beta2=settings.beta2, adam_epsilon=settings.adam_eps, max_grad_norm=settings.max_grad_norm,
            lr_scheduler_type="linear", logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False, seed=settings.seed)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=tensors,
                                       data_collator=lambda items: items[0], callbacks=[StepTimer()])
        torch.set_num_threads(ssl_core.get_num_threads())
        start = time.perf_counter()
        trainer.train()
    return list(np.diff([start] + ends))
