"""Hugging Face checkpoints: load a local BERT or GPT-2 directory into our
models and write ours back in the same format, so that ``transformers``
loads them without custom code.

Our fused QKV projection is the concatenation of BERT's query, key and value
weights; GPT-2's Conv1D weights are stored (in, out) and are transposed.
Loading never runs code from the checkpoint: safetensors, or a
pytorch_model.bin through torch's weights-only loader.
"""

import json
import logging
import os

import numpy as np

from ssl_core.models.bert import Bert
from ssl_core.models.config import BertConfig, GPTConfig
from ssl_core.models.gpt import GPT

log = logging.getLogger("ssl_core")

# Buffers some GPT-2 checkpoints carry that are not parameters.
_NOT_PARAMETERS = (".attn.bias", ".attn.masked_bias", "position_ids")


# Checkpoint names of the layers on top of the encoder, by Bert.HEADS.
_BERT_HEADS = {
    "pretraining": {"pooler": "bert.pooler.dense", "mlm.transform": "cls.predictions.transform.dense",
                    "mlm.ln": "cls.predictions.transform.LayerNorm", "mlm.bias": "cls.predictions.bias",
                    "nsp": "cls.seq_relationship"},
    "sequence": {"pooler": "bert.pooler.dense", "classifier": "classifier"},
    "token": {"classifier": "classifier"},
    "qa": {"qa_outputs": "qa_outputs"},
}


def _bert_names(config, heads="pretraining"):
    """{our name: (checkpoint names, how)}; how is None (copy), "concat" or "T"."""
    names = {
        "embeddings.word.weight": ("bert.embeddings.word_embeddings.weight",),
        "embeddings.position.weight": ("bert.embeddings.position_embeddings.weight",),
        "embeddings.token_type.weight": ("bert.embeddings.token_type_embeddings.weight",),
        "embeddings.ln.weight": ("bert.embeddings.LayerNorm.weight",),
        "embeddings.ln.bias": ("bert.embeddings.LayerNorm.bias",),
    }
    for ours, theirs in _BERT_HEADS[heads].items():
        if ours == "mlm.bias":
            names[ours] = (theirs,)
        else:
            names.update({f"{ours}.{kind}": (f"{theirs}.{kind}",) for kind in ("weight", "bias")})
    names = {ours: (theirs, None) for ours, theirs in names.items()}
    for i in range(config.num_hidden_layers):
        hf = f"bert.encoder.layer.{i}"
        for kind in ("weight", "bias"):
            names[f"layers.{i}.attn.qkv.{kind}"] = (
                tuple(f"{hf}.attention.self.{p}.{kind}" for p in ("query", "key", "value")), "concat")
            for ours, theirs in (("attn.out", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"),
                                 ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"),
                                 ("ln2", "output.LayerNorm")):
                names[f"layers.{i}.{ours}.{kind}"] = ((f"{hf}.{theirs}.{kind}",), None)
    return names


def _gpt_names(config):
    names = {"wte.weight": (("transformer.wte.weight",), None), "wpe.weight": (("transformer.wpe.weight",), None),
             "ln_f.weight": (("transformer.ln_f.weight",), None), "ln_f.bias": (("transformer.ln_f.bias",), None)}
    for i in range(config.n_layer):
        hf = f"transformer.h.{i}"
        for ours, theirs, conv in (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                                   ("attn.out", "attn.c_proj", True), ("ln2", "ln_2", False),
                                   ("ffn.up", "mlp.c_fc", True), ("ffn.down", "mlp.c_proj", True)):
            names[f"layers.{i}.{ours}.weight"] = ((f"{hf}.{theirs}.weight",), "T" if conv else None)
            names[f"layers.{i}.{ours}.bias"] = ((f"{hf}.{theirs}.bias",), None)
    return names


def _canonical(name, prefix):
    """A checkpoint key with the model prefix (bert. / transformer.) present
    and TF-era gamma/beta renamed."""
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    elif name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if not name.startswith(("cls.", "lm_head.", "classifier.", "qa_outputs.", prefix)):
        name = prefix + name
    return name


def _read_tensors(path):
    safetensors_file = os.path.join(path, "model.safetensors")
    if os.path.exists(safetensors_file):
        from safetensors.numpy import load_file

        return load_file(safetensors_file)
    bin_file = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(bin_file):
        try:
            import torch
        except ImportError:
            raise RuntimeError(f"{bin_file} needs torch to read; convert it to model.safetensors or install torch")
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")


def from_pretrained(path, seed=0, task=None, config_overrides=None, **task_options):
    """A Bert, a BERT task model or a GPT from a local Hugging Face directory
    (config.json + model.safetensors, or pytorch_model.bin when torch is
    installed).

    Accepts BertModel / BertForMaskedLM / BertForPreTraining /
    BertForSequenceClassification / BertForTokenClassification /
    BertForQuestionAnswering and GPT2Model / GPT2LMHeadModel layouts, with or
    without the ``bert.`` / ``transformer.`` prefix. The model class follows
    the checkpoint's architecture, or ``task`` ("classify", "pair", "tokens",
    "qa"), with ``task_options`` (``labels``, ``problem_type``) for its head:
    how a pretrained encoder starts fine-tuning. ``config_overrides`` replace
    entries of config.json (e.g. the dropout probabilities). Parameters the checkpoint
    lacks (a new task head, the heads of a bare BertModel) keep their fresh
    initialization and are logged; ``model.load_report`` lists what was
    loaded, missing and left unused. A shape that does not match the config
    raises ValueError.
    """
    from ssl_core.models.tasks import TASKS

    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    with open(os.path.join(path, "config.json")) as f:
        hf_config = {**json.load(f), **(config_overrides or {})}
    model_type = hf_config.get("model_type")
    architecture = (hf_config.get("architectures") or [None])[0]
    by_architecture = {cls.ARCHITECTURE: cls for cls in TASKS.values()}
    if model_type == "bert" and (task or architecture in by_architecture):
        cls = TASKS[task] if task else by_architecture[architecture]
        options = dict(task_options)
        if cls.HEADS != "qa" and "labels" not in options and "id2label" in hf_config:
            options["labels"] = [hf_config["id2label"][k] for k in sorted(hf_config["id2label"], key=int)]
        if cls.HEADS == "sequence" and "problem_type" not in options:
            options["problem_type"] = hf_config.get("problem_type")
        model, prefix = cls(BertConfig.from_hf(hf_config), seed=seed, **options), "bert."
        names = _bert_names(model.config, model.HEADS)
    elif model_type == "bert":
        model, prefix = Bert(BertConfig.from_hf(hf_config), seed), "bert."
        names = _bert_names(model.config)
    elif model_type == "gpt2":
        model, prefix = GPT(GPTConfig.from_hf(hf_config), seed), "transformer."
        names = _gpt_names(model.config)
    else:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (expected 'bert' or 'gpt2')")
    tensors = {_canonical(k, prefix): v for k, v in _read_tensors(path).items()}
    used, loaded, missing = set(), [], []
    for ours, (theirs, how) in names.items():
        if not all(t in tensors for t in theirs):
            missing.append(ours)
            continue
        parts = [tensors[t] for t in theirs]
        value = np.concatenate(parts) if how == "concat" else parts[0].T if how == "T" else parts[0]
        param = model.params[ours]
        if value.shape != param.shape:
            raise ValueError(f"{path}: {' + '.join(theirs)} has shape {value.shape}, the config implies "
                             f"{param.shape} for {ours}")
        param.data[...] = value
        used.update(theirs)
        loaded.append(ours)
    tied = [k for k in ("cls.predictions.decoder.weight", "lm_head.weight") if k in tensors]
    used.update(tied + ["cls.predictions.decoder.bias"])
    unused = sorted(k for k in tensors if k not in used and not k.endswith(_NOT_PARAMETERS))
    model.load_report = {"loaded": loaded, "missing": missing, "unused": unused}
    if missing:
        log.warning("%s: %d parameters not in the checkpoint keep their initialization: %s", path, len(missing),
                    ", ".join(missing))
    if unused:
        log.warning("%s: %d checkpoint tensors were not used: %s", path, len(unused), ", ".join(unused))
    return model


def save_pretrained(model, path, **config_extras):
    """Write config.json and model.safetensors (BertForPreTraining or
    GPT2LMHeadModel layout, output embeddings tied rather than stored twice).
    ``config_extras`` go into config.json as well, e.g. the tokenizer's
    ``pad_token_id`` / ``bos_token_id`` / ``eos_token_id``."""
    from safetensors.numpy import save_file

    if isinstance(model, Bert):
        names = _bert_names(model.config, model.HEADS)
    elif isinstance(model, GPT):
        names = _gpt_names(model.config)
    else:
        raise TypeError(f"save_pretrained takes a Bert or a GPT, got {type(model).__name__}")
    tensors = {}
    for ours, (theirs, how) in names.items():
        value = model.params[ours].data
        if how == "concat":
            for name, part in zip(theirs, np.split(value, len(theirs))):
                tensors[name] = np.ascontiguousarray(part)
        else:
            tensors[theirs[0]] = np.ascontiguousarray(value.T if how == "T" else value)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**model.hf_config(), **config_extras}, f, indent=2)
