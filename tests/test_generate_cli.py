"""ssl-core generate: a GPT model folder with its tokenizer, as ssl-core pretrain writes it."""

import itertools

import pytest

from ssl_core import cli
from ssl_core.data import EmbeddedSource, train_tokenizer
from ssl_core.generation import generate_text, stream_text
from ssl_core.models import GPT, Bert, BertConfig, GPTConfig, save_pretrained
from ssl_core.train.checkpoint import write_model

PROMPT = "Return the number of"


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    texts = list(itertools.islice(EmbeddedSource().documents(), 300))
    tokenizer = train_tokenizer(texts, "bpe", vocab_size=400)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                       initializer_range=0.2)
    folder = tmp_path_factory.mktemp("gpt")
    write_model(str(folder), GPT(config, seed=3).eval(), tokenizer)
    return str(folder), tokenizer


def run(capsys, *args):
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_streams_the_greedy_continuation(gpt_folder, capsys):
    folder, tokenizer = gpt_folder
    code, out, _ = run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", "12")
    assert code == 0
    model = cli.generate_command.load_generator(folder)[0]
    expected = generate_text(model, tokenizer, PROMPT, max_new_tokens=12)
    assert expected and out == PROMPT + expected + "\n"


def test_text_helpers_take_tokenizers_and_transformers_tokenizers(gpt_folder):
    """generate_text and stream_text with the folder's tokenizer as ours, as a
    tokenizers.Tokenizer and as transformers' AutoTokenizer: the same text."""
    transformers = pytest.importorskip("transformers")
    folder, tokenizer = gpt_folder
    model = cli.generate_command.load_generator(folder)[0]
    options = dict(max_new_tokens=15, repetition_penalty=1.2)
    ours = generate_text(model, tokenizer, PROMPT, **options)
    assert ours
    assert generate_text(model, tokenizer.backend, PROMPT, stop_token_ids=[tokenizer.eot_id], **options) == ours
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert generate_text(model, auto, PROMPT, **options) == ours  # its eos_token_id stops it, as ours
    assert "".join(stream_text(model, auto, PROMPT, **options)) == ours


def test_bfloat16_weights(gpt_folder, capsys):
    folder, tokenizer = gpt_folder
    code, out, _ = run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", "12", "--bfloat16")
    assert code == 0
    model = cli.generate_command.load_generator(folder)[0].bfloat16_copy()
    assert out == PROMPT + generate_text(model, tokenizer, PROMPT, max_new_tokens=12) + "\n"


def test_sampling_is_seeded_and_beams_print_each(gpt_folder, capsys):
    folder, _ = gpt_folder
    sample = ["--model", folder, "--prompt", PROMPT, "--strategy", "sample", "--top-p", "0.9", "--temperature",
              "0.8", "--max-new-tokens", "20"]
    first = run(capsys, *sample, "--seed", "1")[1]
    assert first == run(capsys, *sample, "--seed", "1")[1]
    assert first != run(capsys, *sample, "--seed", "2")[1]
    code, out, _ = run(capsys, "--model", folder, "--prompt", PROMPT, "--strategy", "beam", "--num-beams", "3",
                       "--num-return-sequences", "2", "--max-new-tokens", "8", "--early-stopping", "never")
    assert code == 0 and out.startswith("--- 1\n" + PROMPT) and "\n--- 2\n" + PROMPT in out


def test_stop_string_cuts_the_text(gpt_folder, capsys):
    folder, tokenizer = gpt_folder
    full = run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", "24")[1][len(PROMPT):-1]
    stop = full.strip()[len(full.strip()) // 2:][:2]  # from the middle of the unstopped text
    assert stop and stop in full
    code, out, _ = run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", "24", "--stop", stop)
    assert code == 0 and out == PROMPT + full[:full.index(stop)] + "\n"


def test_bad_input_is_a_one_line_error(gpt_folder, tmp_path, capsys):
    folder, tokenizer = gpt_folder
    code, out, err = run(capsys, "--model", folder, "--prompt", "")
    assert code == 2 and out == "" and "prompt 0 is empty" in err
    code, out, err = run(capsys, "--model", folder, "--prompt", PROMPT, "--temperature", "0.5")
    assert code == 2 and out == "" and "applies to strategy='sample'" in err
    code, _, err = run(capsys, "--model", folder, "--prompt", PROMPT, "--strategy", "sample", "--top-p", "1.5")
    assert code == 2 and "top_p must be in (0, 1]" in err
    code, _, err = run(capsys, "--model", folder, "--prompt", "word " * 80, "--max-new-tokens", "4")
    assert code == 2 and "truncate" in err
    code, out, _ = run(capsys, "--model", folder, "--prompt", "word " * 80, "--max-new-tokens", "4", "--truncate")
    assert code == 0 and out.startswith("word ")
    bert = tmp_path / "bert"
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    save_pretrained(Bert(config), str(bert))
    code, _, err = run(capsys, "--model", str(bert), "--prompt", PROMPT)
    assert code == 2 and "generation needs a GPT" in err
    code, _, err = run(capsys, "--model", str(tmp_path / "missing"), "--prompt", PROMPT)
    assert code == 2 and "missing" in err
