"""The ``ssl-core`` command: ``info``, ``pretrain``, ``finetune``, ``evaluate``, ``predict``, ``embed`` and
``generate``."""

import argparse
import dataclasses
import os
import platform
import sys

import ssl_core
from ssl_core import _C
from ssl_core.generation import command as generate_command

# Help for every setting of ``ssl-core pretrain`` and ``finetune``; each is also a TOML key.
RUN_HELP = {
    "seq_len": "maximum tokens per sequence, special tokens included",
    "batch_size": "sequences per micro-batch",
    "accumulation_steps": "micro-batches per optimizer step (gradient accumulation)",
    "steps": "optimizer steps to train for (fine-tuning default: --epochs passes over the data)",
    "lr": "peak learning rate of AdamW",
    "schedule": "after warmup: constant, linear or cosine decay to min_lr",
    "warmup_steps": "steps of linear warmup (default: 6%% of the steps for pretraining, 10%% for fine-tuning)",
    "min_lr": "learning rate at the end of a linear or cosine schedule",
    "weight_decay": "AdamW weight decay (not applied to biases and LayerNorm)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "adam_eps": "AdamW epsilon",
    "max_grad_norm": "clip the global gradient norm to this (0: no clipping)",
    "dropout": "hidden and attention dropout probability (fine-tuning default: the model's own)",
    "eval_every": "steps between validations (0: only at the end; fine-tuning default: once per epoch)",
    "eval_batches": "validation batches at most",
    "save_every": "steps between checkpoints (0: only at the end; fine-tuning default: once per epoch)",
    "keep_checkpoints": "checkpoints to keep (the newest)",
    "log_every": "steps between lines of the metrics log",
    "on_nonfinite": "when the loss or gradient becomes NaN/inf: stop (keeping the last good checkpoint) or "
                    "skip the step",
    "seed": "seed of initialization, data order, masking and dropout",
    "out": "output folder: final model, checkpoints, log.jsonl, log.png, run.json",
    "cache_dir": "where tokenizers and token files are cached (default: $SSL_CORE_CACHE or ~/.cache/ssl_core)",
    "threads": "threads of the CPU kernels (default: all cores)",
}
_PRETRAIN_ONLY = {
    "model": "bert (masked LM, optional NSP/SOP) or gpt (next-token prediction)",
    "size": "tiny (2 layers, width 128), mini (4, 256), small (4, 512) or base (12, 768)",
    "objective": "bert: mlm, mlm+nsp, mlm+sop, wwm (whole-word masking) or span (SpanBERT); gpt: clm. "
                 "Default: mlm for bert, clm for gpt",
    "corpus": "a text file (documents separated by blank lines), a JSON Lines file, or a folder of them "
              "(one document per text file). Default: the embedded corpus, the Python standard library's "
              "documentation",
    "text_field": "the field holding the text in JSON Lines records",
    "tokenizer": "tokenizer.json, vocab.txt or a folder with one; default: train one on the corpus (cached)",
    "vocab_size": "vocabulary size of a tokenizer trained here",
    "mask_rate": "fraction of tokens chosen for prediction",
    "mask_token_ratio": "of the chosen tokens, the fraction replaced by [MASK]",
    "random_token_ratio": "of the chosen tokens, the fraction replaced by a random token (the rest stay)",
    "mask_budget": "exact (round(rate * tokens) per sequence) or bernoulli (each independently)",
    "span_p": "span masking: geometric parameter of span lengths in words",
    "max_span": "span masking: longest span in words",
    "short_seq_prob": "probability that a BERT example aims at a random shorter length",
    "valid_every_document": "hold out every k-th document for validation",
}
_FINETUNE_ONLY = {
    "task": "classify (single texts), pair (sentence pairs), tokens (a tag per word) or qa (SQuAD answers)",
    "train": "the training file: CSV/TSV with a header or JSON Lines (classify, pair), CoNLL or CoNLL-U (tokens), "
             "SQuAD JSON (qa)",
    "eval": "the evaluation file, in the training file's format",
    "init": "a model folder to start from (ours or Hugging Face's), or none for random weights",
    "size": "with --init none: tiny, mini, small or base",
    "tokenizer": "with --init none: tokenizer.json, vocab.txt or a folder holding one",
    "text_column": "the column (or JSON field) of the text",
    "text_b_column": "pair: the column of the second text",
    "label_column": "the column of the label",
    "tag_column": "tokens: the column of the tags, from 0 (default: the last; CoNLL-U: 3, UPOS)",
    "regression": "classify/pair: the labels are values to predict (default: when they are fractional numbers)",
    "multi_label": "classify/pair: each text has a set of labels, a JSON list or names separated by | "
                   "(default: when the JSON labels are lists)",
    "doc_overlap": "qa: context tokens shared by consecutive windows of a long context",
    "max_answer_tokens": "qa: the longest answer, in tokens, that is predicted",
    "no_answer": "qa: questions may have no answer (SQuAD 2.0; default: when the training file has some)",
    "epochs": "passes over the training file (when --steps is not given)",
    "skip_bad": "skip bad records, counting them, instead of stopping at the first",
}
PRETRAIN_HELP = {**_PRETRAIN_ONLY, **RUN_HELP}
FINETUNE_HELP = {**_FINETUNE_ONLY, **RUN_HELP}


def info() -> str:
    """What this installation is: version, build, CPU code path, threads, CUDA."""
    rows = [
        ("ssl_core", ssl_core.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("compiler", _C.COMPILER),
        ("cpu", f"{platform.machine()}, {os.cpu_count()} logical cores"),
        ("cpu code path", f"{ssl_core.get_cpu_isa()} (supported: {', '.join(ssl_core.supported_cpu_isas())})"),
        ("threads", f"{ssl_core.get_num_threads()} (OpenMP {'on' if _C.WITH_OPENMP else 'off'})"),
        ("WITH_CUDA", f"True (kernels for {_C.CUDA_ARCHITECTURES})" if ssl_core.WITH_CUDA else "False"),
        ("cuda devices", str(_C.cuda_device_count())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _add_run_parser(commands, name, help, description):
    parser = commands.add_parser(name, help=help, argument_default=argparse.SUPPRESS,
                                 description=description + " Settings come from the defaults, then --config, then "
                                 "the options given; with --resume, from the interrupted run's settings first.")
    parser.add_argument("--config", metavar="TOML", help="settings from a TOML file (keys as the options below, "
                        "with - or _), optionally under a [pretrain] / [finetune] table")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest "
                        "checkpoint; it ends with the weights an uninterrupted run would have")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _add_pretrain_parser(commands):
    from ssl_core.data import OBJECTIVES
    from ssl_core.train import PretrainConfig
    from ssl_core.train.config import MODELS, SIZES

    parser = _add_run_parser(commands, "pretrain", "pretrain a BERT or GPT model",
                             "Pretrain a BERT or GPT model from text.")
    choices = {"model": MODELS, "size": SIZES, "objective": sorted(OBJECTIVES), "mask_budget": ("exact", "bernoulli"),
               "schedule": ("constant", "linear", "cosine"), "on_nonfinite": ("stop", "skip")}
    _add_config_options(parser, PretrainConfig, PRETRAIN_HELP, choices)


def _add_finetune_parser(commands):
    from ssl_core.train.config import SIZES
    from ssl_core.train.finetune import FINETUNE_TASKS, FinetuneConfig

    parser = _add_run_parser(commands, "finetune", "fine-tune a BERT model on a downstream task",
                             "Fine-tune a BERT model (ours, a Hugging Face one, or random weights) on sequence "
                             "classification, sentence-pair classification, token classification or extractive "
                             "question answering.")
    choices = {"task": FINETUNE_TASKS, "size": SIZES, "schedule": ("constant", "linear", "cosine"),
               "on_nonfinite": ("stop", "skip")}
    _add_config_options(parser, FinetuneConfig, FINETUNE_HELP, choices)


def _add_config_options(parser, config_class, help_texts, choices):
    """An option per field of a RunConfig subclass, in the order of help_texts
    (which must explain every field)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    missing = sorted(set(fields) - set(help_texts))
    assert not missing, f"no help for {missing}"
    for name, text in help_texts.items():
        field = fields[name]
        flag = "--" + name.replace("_", "-")
        shown = "" if field.default is None else f" (default: {field.default})"
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        if kind == "bool":
            parser.add_argument(flag, dest=name, action="store_true", help=text)
            continue
        parser.add_argument(flag, dest=name, type={"int": int, "float": float}.get(kind, str),
                            choices=choices.get(name), help=text + shown,
                            metavar=None if name in choices else name.upper())


def _run_config(args, kind):
    """Defaults < saved run (with --resume) < TOML < command line."""
    from ssl_core.train.config import load_toml, read_run_config

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "no_progress")}
    from_file = load_toml(args.config, args.command) if getattr(args, "config", None) else {}
    out = given.get("out", from_file.get("out", kind.out))
    saved = read_run_config(out, kind) if getattr(args, "resume", False) else None
    if saved is not None:
        return saved.replace(**{**from_file, **given})
    return kind.from_dict({**from_file, **given}, source=getattr(args, "config", None) or "options")


def _train(args, name, kind, run_class):
    """Run a training command; errors are one-line messages with exit codes
    (2 bad settings or data, 1 divergence, 130 interrupted)."""
    from ssl_core.data import CorpusError
    from ssl_core.train import TrainingDiverged

    try:
        config = _run_config(args, kind)
        run = run_class(config, resume=getattr(args, "resume", False),
                        progress=not getattr(args, "no_progress", False))
        metrics = run.run()
    except (ValueError, CorpusError, FileNotFoundError) as error:
        print(f"ssl-core {name}: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"ssl-core {name}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nssl-core {name}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    print(f"model written to {config.out}")
    if metrics:
        print("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def _add_evaluate_parser(commands, name="evaluate"):
    from ssl_core.train.finetune import FINETUNE_TASKS

    if name == "evaluate":
        parser = commands.add_parser("evaluate", help="a fine-tuned model's metrics on a labelled file",
                                     description="Run a fine-tuned model folder on a labelled file of its task and "
                                     "print (or write) the metrics its fine-tuning reports.")
        parser.add_argument("--out", help="also write the metrics to this JSON file")
    else:
        parser = commands.add_parser("predict", help="a fine-tuned model's predictions on a file",
                                     description="Run a fine-tuned model folder on a file of its task (labels not "
                                     "needed) and write its predictions: JSON Lines (classify, pair: the texts with "
                                     "label and class probabilities, or value), CoNLL (tokens: word and tag), or "
                                     "SQuAD's prediction JSON (qa: question id to answer).")
        parser.add_argument("--out", required=True, help="where to write the predictions")
    parser.add_argument("--model", required=True, help="the fine-tuned model folder")
    parser.add_argument("--task", required=True, choices=FINETUNE_TASKS, help="the model's task")
    parser.add_argument("--file", required=True, help="the file, in the task's format")
    for name in ("seq_len", "batch_size", "text_column", "text_b_column", "label_column", "tag_column",
                 "doc_overlap", "max_answer_tokens"):
        kind = int if name in ("seq_len", "batch_size", "tag_column", "doc_overlap", "max_answer_tokens") else str
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=argparse.SUPPRESS,
                            help=FINETUNE_HELP.get(name, RUN_HELP.get(name)))
    for name in ("no_answer", "skip_bad", "multi_label"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true",
                            default=argparse.SUPPRESS, help=FINETUNE_HELP[name])


def evaluate(args):
    """ssl-core evaluate and ssl-core predict."""
    import json

    from ssl_core.data import CorpusError
    from ssl_core.train.finetune import Evaluation, Prediction

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "model", "task", "file", "out")}
    try:
        run = (Evaluation if args.command == "evaluate" else Prediction)(args.model, args.task, args.file, **settings)
        result = run.run()
    except (ValueError, CorpusError, FileNotFoundError) as error:
        print(f"ssl-core {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.command == "evaluate":
        print(", ".join(f"{k} {v:.4g}" for k, v in result.items()))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        if args.task == "qa":
            json.dump(result, f, indent=2, ensure_ascii=False)
        elif args.task == "tokens":
            f.write("\n".join("".join(f"{w}\t{t or '_'}\n" for w, t in zip(words, tags))
                              for words, tags in zip(run.records.words, result)))
        else:
            texts_b = run.records.texts_b or [None] * len(result)
            for text, text_b, prediction in zip(run.records.texts, texts_b, result):
                record = {"text": text, **({"text_b": text_b} if text_b is not None else {}), **prediction}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(result)} predictions written to {args.out}")
    return 0


def _add_embed_parser(commands):
    parser = commands.add_parser(
        "embed", help="sentence embeddings and their cosine similarities",
        description="Embed texts with a BERT-family model folder (ours or a Hugging Face one, e.g. "
                    "all-MiniLM-L6-v2) and print their cosine similarities.")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    parser.add_argument("--model", required=True, help="model folder: config.json, weights and tokenizer")
    parser.add_argument("--input", help="a file of texts, one per line (after any TEXT arguments)")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                        help="mean of the token vectors (sentence-transformers) or the [CLS] vector (default: mean)")
    parser.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths")
    parser.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    parser.add_argument("--out", help="write the vectors, float32 (N, C), to this .npy file")


def embed(args):
    from ssl_core.tasks import TextEncoder, cosine_similarity

    try:
        texts = list(args.texts)
        if args.input:
            with open(args.input, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
        if not texts:
            raise ValueError("no texts: give TEXT arguments or --input FILE")
        encoder = TextEncoder.from_pretrained(args.model, max_length=args.max_length)
        vectors = encoder.sentence_vectors(texts, pooling=args.pooling, normalize=not args.no_normalize)
    except (ValueError, TypeError, FileNotFoundError, UnicodeDecodeError) as error:
        print(f"ssl-core embed: error: {error}", file=sys.stderr)
        return 2
    if args.out:
        import numpy as np

        np.save(args.out, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {args.out}")
    similarity = cosine_similarity(vectors)
    labels = [t if len(t) <= 40 else t[:37] + "..." for t in texts]
    width = max(len(label) for label in labels)
    for i, label in enumerate(labels):
        print(f"{label:<{width}}  " + " ".join(f"{v:6.3f}" for v in similarity[i]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssl-core", description=ssl_core.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show the build and runtime configuration")
    _add_pretrain_parser(commands)
    _add_finetune_parser(commands)
    _add_evaluate_parser(commands)
    _add_evaluate_parser(commands, "predict")
    _add_embed_parser(commands)
    generate_command.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
        return 0
    if args.command == "embed":
        return embed(args)
    if args.command == "generate":
        return generate_command.run(args)
    if args.command in ("evaluate", "predict"):
        return evaluate(args)
    if args.command == "pretrain":
        from ssl_core.train import PretrainConfig, Pretraining
        return _train(args, "pretrain", PretrainConfig, Pretraining)
    from ssl_core.train.finetune import FinetuneConfig, FineTuning
    return _train(args, "finetune", FinetuneConfig, FineTuning)


if __name__ == "__main__":
    sys.exit(main())
