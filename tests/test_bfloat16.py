"""bfloat16 weights for decoding: the conversions against torch, the kernel
against NumPy float64 on the widened weights, and GPT.bfloat16_copy against a
float32 GPT holding the same rounded weights."""

import numpy as np
import pytest
import torch

from ssl_core import ops
from ssl_core.generation import generate
from ssl_core.models import GPT, GPTConfig


def test_to_bfloat16_rounds_as_torch(rng):
    values = np.concatenate([rng.standard_normal(50_000).astype(np.float32) * 10,
                             rng.standard_normal(1000).astype(np.float32) * 1e-39,  # subnormals
                             np.float32([np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.39e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8])])
    bits = ops.to_bfloat16(values)
    assert bits.dtype == np.uint16 and bits.shape == values.shape
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, expected)  # round to nearest, ties to even; overflow to inf
    widened = ops.from_bfloat16(bits)
    assert widened.dtype == np.float32
    np.testing.assert_array_equal(widened, torch.from_numpy(values).to(torch.bfloat16).float().numpy())
    assert np.isnan(ops.from_bfloat16(ops.to_bfloat16(np.float32([np.nan, -np.nan])))).all()


@pytest.mark.parametrize("M", [1, 2, 3, 7, 8, 9, 32, 40])
@pytest.mark.parametrize("K,N", [(1, 1), (13, 5), (100, 258)])
def test_linear_with_bfloat16_weights_matches_float64(cpu_isa, rng, M, K, N):
    """Any rows (the kernel up to 32, BLAS on the widened weights beyond);
    K off every vector width exercises the masked tail loads."""
    x = rng.standard_normal((M, K), dtype=np.float32)
    bits = ops.to_bfloat16(rng.standard_normal((N, K), dtype=np.float32))
    bias = rng.standard_normal(N, dtype=np.float32)
    want = x.astype(np.float64) @ ops.from_bfloat16(bits).astype(np.float64).T + bias
    got = ops.linear(x, bits, bias)
    assert got.dtype == np.float32 and got.shape == (M, N)
    tolerance = dict(rtol=1e-5, atol=1e-5 * np.sqrt(K) * np.abs(want).max())
    np.testing.assert_allclose(got, want, **tolerance)
    strided = np.zeros((N, K + 3), np.uint16)  # weight rows K + 3 apart
    strided[:, :K] = bits
    np.testing.assert_allclose(ops.linear(x, strided[:, :K], bias, kernel=True), want, **tolerance)


def test_linear_rejects_other_integer_weights(rng):
    x = rng.standard_normal((2, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="weight must be a numpy.ndarray of float32"):
        ops.linear(x, np.zeros((3, 4), np.int16))
    with pytest.raises(ValueError, match="x has 4 features"):
        ops.linear(x, np.zeros((3, 5), np.uint16))


@pytest.fixture(scope="module")
def models():
    """A GPT (left in training mode: the copy must not use its dropout), its
    bfloat16 copy, and a float32 GPT whose linear layers hold the rounded
    weights: the copy's reference."""
    config = GPTConfig(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.3,
                       resid_pdrop=0.5, attn_pdrop=0.5, embd_pdrop=0.5)
    model = GPT(config, seed=1)
    copy = model.bfloat16_copy()
    rounded = GPT(config, seed=1).eval()
    for param in rounded.params:
        if param.name.startswith("layers.") and param.data.ndim == 2:
            param.data[...] = ops.from_bfloat16(ops.to_bfloat16(param.data))
    return model, copy, rounded


def rounded_logits(rounded, hidden):
    """The output layer with the rounded (tied) embeddings, in float64."""
    head = ops.from_bfloat16(ops.to_bfloat16(rounded.wte.weight.data)).astype(np.float64)
    return hidden.astype(np.float64) @ head.T


def test_bfloat16_copy_is_the_model_with_rounded_weights(models, rng):
    model, copy, rounded = models
    ids = rng.integers(0, 300, (3, 9))
    hidden = rounded.hidden_states(ids)
    np.testing.assert_allclose(copy.hidden_states(ids), hidden, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(copy.logits(ids), rounded_logits(rounded, hidden), rtol=1e-5, atol=1e-4)
    # incremental decoding through the cache, one token at a time
    cache = copy.new_cache(3, 9)
    copy.next_token_logits(ids[:, :5], cache)
    for t in range(5, 9):
        step = copy.next_token_logits(ids[:, t:t + 1], cache)
    np.testing.assert_allclose(step, rounded_logits(rounded, hidden[:, -1]), rtol=1e-5, atol=1e-4)
    # more rows than the kernel takes (48): BLAS on the widened weights, the same numbers
    long_ids = rng.integers(0, 300, (4, 12))
    np.testing.assert_allclose(copy.hidden_states(long_ids), rounded.hidden_states(long_ids), rtol=1e-5, atol=1e-5)
    # close to the float32 model: rounding moves logits by about 2^-9 of their size
    full = model.eval().logits(ids)
    model.train()
    assert 0 < np.abs(copy.logits(ids) - full).max() < 0.05 * np.abs(full).max()


def test_bfloat16_copy_generates_as_the_rounded_model(models, rng):
    _, copy, rounded = models
    ids = rng.integers(0, 300, (2, 6))
    out = copy.generate(ids, max_new_tokens=15)
    # the rounded float32 model with its head rounded too: greedy steps by hand
    seq = ids.copy()
    for _ in range(15):
        nxt = rounded_logits(rounded, rounded.hidden_states(seq)[:, -1]).argmax(axis=1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    beams = generate(copy, ids, strategy="beam", num_beams=3, max_new_tokens=8)
    assert beams.shape == (2, 14)


def test_bfloat16_copy_is_a_snapshot_that_cannot_train(models):
    model, copy, _ = models
    batch = {"input_ids": np.zeros((1, 4), np.int64)}
    with pytest.raises(TypeError, match="cannot train"):
        copy.loss_and_backward(batch)
    with pytest.raises(TypeError, match="cannot train"):
        copy.train()
    with pytest.raises(TypeError, match="computes no loss"):
        copy.evaluate(batch)
    with pytest.raises(TypeError, match="float32 GPT"):
        copy.bfloat16_copy()
    assert copy.eval() is copy and model.training  # the original keeps its mode
