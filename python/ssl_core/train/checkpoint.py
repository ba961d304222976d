"""Training checkpoints, written atomically.

A checkpoint is a folder ``<out>/checkpoints/step-NNNNNNN`` holding

    config.json, model.safetensors   the model, as save_pretrained writes it
    tokenizer.json, ...              the tokenizer, so the folder is a usable model
    optimizer.safetensors            AdamW's first and second moments
    trainer_state.json               step, data position, run settings, metrics

It is written under a hidden temporary name, every file flushed to disk, and
renamed into place in one step: a checkpoint folder either is complete or
does not exist, whatever moment the process is killed at.
"""

import json
import os
import re
import shutil
import tempfile

from safetensors.numpy import load_file, save_file

from ssl_core.models import from_pretrained, save_pretrained

_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def save_checkpoint(folder, step, model, tokenizer, optimizer, state, keep=None):
    """Write the checkpoint of ``step`` under ``folder`` and delete all but the
    newest ``keep`` (None: keep all). ``state``: JSON-serializable trainer
    state. Returns the checkpoint's path."""
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, f"step-{step:07d}")
    building = tempfile.mkdtemp(prefix=f".step-{step:07d}-", dir=folder)
    try:
        write_model(building, model, tokenizer)
        save_file({"m": optimizer.m, "v": optimizer.v}, os.path.join(building, "optimizer.safetensors"))
        with open(os.path.join(building, STATE_FILE), "w") as f:
            json.dump({**state, "step": step, "optimizer_step": optimizer.step_count}, f, indent=2)
        _sync_folder(building)
        if os.path.exists(final):  # a checkpoint of this step from an earlier, interrupted attempt
            shutil.rmtree(final)
        os.rename(building, final)
        _sync(folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    return final


def write_model(folder, model, tokenizer):
    """The model (config.json, model.safetensors) and its tokenizer's files;
    config.json names the tokenizer's special ids, as transformers expects."""
    if tokenizer.kind == "bpe":
        ids = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    else:
        ids = {"pad_token_id": tokenizer.pad_id}
    save_pretrained(model, folder, **ids)
    tokenizer.save(folder, model_max_length=_max_positions(model.config))


def list_checkpoints(folder):
    """Complete checkpoints under ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder)
             if (m := _NAME.match(name)) and os.path.isfile(os.path.join(folder, name, STATE_FILE))]
    return [path for _, path in sorted(found)]


def remove_partial_checkpoints(folder):
    """Delete the temporary folders a killed save left behind."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".step-"):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def load_checkpoint(path, optimizer_factory):
    """(model, optimizer, state) from a checkpoint folder; the optimizer is
    ``optimizer_factory(model.params)`` with the saved moments and step."""
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    model = from_pretrained(path)
    optimizer = optimizer_factory(model.params)
    moments = load_file(os.path.join(path, "optimizer.safetensors"))
    optimizer.load_state_dict({"m": moments["m"], "v": moments["v"], "step": state["optimizer_step"]})
    return model, optimizer, state


def _max_positions(config):
    return getattr(config, "max_position_embeddings", None) or config.n_positions


def _sync_folder(folder):
    for name in os.listdir(folder):
        _sync(os.path.join(folder, name))
    _sync(folder)


def _sync(path):
    """fsync a file or folder, so a rename after it never exposes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
