"""``ssl-core generate``: continue a prompt with a GPT model folder, streaming
the text to the terminal as it is produced."""

import argparse
import sys

GENERATE_HELP = {
    "strategy": "greedy (the most likely token), sample, or beam (beam search) (default: greedy)",
    "max_new_tokens": "tokens to add at most (default: 64)",
    "temperature": "sample: divide the logits by this (> 0; default: 1)",
    "top_k": "sample: draw from the k most likely tokens only",
    "top_p": "sample: draw from the smallest set of most likely tokens holding this probability (default: 1)",
    "repetition_penalty": "penalize tokens already in the text (> 1 penalizes; default: 1, none)",
    "num_beams": "beam: beams kept (default: 4)",
    "length_penalty": "beam: finished beams score log-probability / length ** this (default: 1)",
    "early_stopping": "beam: true (stop when num_beams beams finished), false (when no running beam can beat the "
                      "finished ones at its length) or never (at any length) (default: false)",
    "num_return_sequences": "sample or beam: continuations to print (default: 1)",
    "seed": "sample: seed of the draws (the same seed gives the same text)",
}
_KINDS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
          "num_beams": int, "length_penalty": float, "num_return_sequences": int, "seed": int}


def add_parser(commands):
    from ssl_core.generation.config import STRATEGIES

    parser = commands.add_parser(
        "generate", help="continue a prompt with a GPT model", argument_default=argparse.SUPPRESS,
        description="Continue a prompt with a GPT model folder (from ssl-core pretrain --model gpt, or a Hugging "
                    "Face GPT-2 checkpoint with its tokenizer.json). Greedy decoding and sampling print the text "
                    "as it is produced; beam search prints its best beams at the end.")
    parser.add_argument("--model", required=True, help="model folder: config.json, weights and tokenizer.json")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    for name, text in GENERATE_HELP.items():
        flag = "--" + name.replace("_", "-")
        if name == "strategy":
            parser.add_argument(flag, choices=STRATEGIES, help=text)
        elif name == "early_stopping":
            parser.add_argument(flag, choices=("true", "false", "never"), help=text)
        else:
            parser.add_argument(flag, dest=name, type=_KINDS[name], metavar=name.upper(), help=text)
    parser.add_argument("--stop", dest="stop_strings", action="append", metavar="TEXT",
                        help="end the text where TEXT first appears (repeatable); it always ends at the "
                             "tokenizer's end-of-text token")
    parser.add_argument("--truncate", action="store_true",
                        help="keep the end of a prompt too long for the context window instead of failing")
    parser.add_argument("--bfloat16", action="store_true",
                        help="hold the linear and output layers' weights as bfloat16: half the memory each step "
                             "reads, so faster at small batches; logits move by about 1%% of their spread, so the "
                             "text can differ where two tokens are nearly tied")
    parser.add_argument("--threads", type=int, help="threads of the CPU kernels (default: all cores)")


def run(args, out=None):
    """Generate for the parsed ``args``, writing to ``out`` (default: standard
    output); returns the exit code (2 for bad input)."""
    import ssl_core
    from ssl_core.generation.text import generate_text, stream_text

    out = out or sys.stdout
    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "model", "prompt", "threads", "bfloat16")}
    options.setdefault("max_new_tokens", 64)
    if "early_stopping" in options:
        options["early_stopping"] = {"true": True, "false": False}.get(options["early_stopping"], "never")
    try:
        if getattr(args, "threads", None):
            ssl_core.set_num_threads(args.threads)
        model, tokenizer = load_generator(args.model)
        if getattr(args, "bfloat16", False):
            model = model.bfloat16_copy()
        if options.get("strategy", "greedy") == "beam" or options.get("num_return_sequences", 1) > 1:
            texts = generate_text(model, tokenizer, [args.prompt], **options)
            for i, text in enumerate(texts):
                out.write(("" if len(texts) == 1 else f"--- {i + 1}\n") + args.prompt + text + "\n")
            return 0
        pieces = stream_text(model, tokenizer, args.prompt, **options)
        out.write(args.prompt)
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"ssl-core generate: error: {error}", file=sys.stderr)
        return 2
    return 0


def load_generator(path):
    """(GPT, tokenizer) from a model folder."""
    from ssl_core.data.tokenizer import load_tokenizer
    from ssl_core.models import GPT, from_pretrained

    model = from_pretrained(path)
    if not isinstance(model, GPT):
        raise ValueError(f"{path} holds a {type(model).__name__}; generation needs a GPT (model_type gpt2)")
    tokenizer = load_tokenizer(path, kind="bpe")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                         f"{model.config.vocab_size}")
    return model.eval(), tokenizer
