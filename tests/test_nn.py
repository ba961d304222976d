"""Layers of ssl_core.nn against float64 NumPy references: forward values, and
gradients (of every parameter and of the input) against directional central
differences of the float64 reference."""

import numpy as np
import pytest

import reference
from ssl_core import nn

# ----------------------------------------------------------- parameters --


def test_store_backs_every_parameter_with_aligned_views():
    store = nn.ParameterStore()
    a = store.add("a.weight", (3, 5))
    b = store.add("a.bias", (5,), init="zeros", decay=False)
    c = store.add("ln.weight", (7,), init="ones", decay=False)
    store.allocate(seed=3)
    assert store.num_parameters() == 15 + 5 + 7 and len(store) == 3
    for p in (a, b, c):
        assert p.offset % 16 == 0 and p.data.shape == p.shape == p.grad.shape
        assert np.shares_memory(p.data, store.data) and np.shares_memory(p.grad, store.grad)
    assert (b.data == 0).all() and (c.data == 1).all() and (store.grad == 0).all()
    assert a.decay and not b.decay and store["a.weight"] is a
    a.grad[...] = 1.0
    store.zero_grad()
    assert (store.grad == 0).all()


def test_store_initializes_reproducibly_with_the_requested_std():
    def build(seed, extra):
        store = nn.ParameterStore()
        if extra:
            store.add("first", (10,))
        w = store.add("w", (400, 300), std=0.05)
        store.allocate(seed)
        return w.data.copy()

    w = build(0, extra=False)
    assert abs(w.std() - 0.05) < 0.001 and abs(w.mean()) < 0.001
    assert np.array_equal(w, build(0, extra=False)) and not np.array_equal(w, build(1, extra=False))


def test_store_rejects_bad_declarations():
    store = nn.ParameterStore()
    store.add("w", (2, 2))
    with pytest.raises(ValueError, match="declared twice"):
        store.add("w", (2, 2))
    with pytest.raises(ValueError, match="init"):
        store.add("v", (2,), init="uniform")
    with pytest.raises(ValueError, match="positive shape"):
        store.add("u", (0, 3))
    store.allocate()
    with pytest.raises(RuntimeError, match="already allocated"):
        store.add("late", (1,))


# ------------------------------------------------------ simple layers --


def test_scatter_add_rows_sums_repeated_ids(rng):
    ids = rng.integers(0, 6, 50)
    rows = rng.standard_normal((50, 4)).astype(np.float32)
    target = rng.standard_normal((6, 4)).astype(np.float32)
    want = target.astype(np.float64)
    np.add.at(want, ids, rows)
    nn.scatter_add_rows(target, ids, rows)
    np.testing.assert_allclose(target, want, rtol=1e-6, atol=1e-6)
    nn.scatter_add_rows(target, ids[:0], rows[:0])  # nothing to add


def test_embedding_forward_backward_and_bad_ids(rng):
    store = nn.ParameterStore()
    emb = nn.Embedding(store, "emb", 9, 4)
    store.allocate()
    ids = np.array([[1, 1, 8], [0, 1, 3]])
    np.testing.assert_array_equal(emb.forward(ids), emb.weight.data[ids])
    dy = rng.standard_normal((2, 3, 4)).astype(np.float32)
    emb.backward(dy)
    want = np.zeros((9, 4))
    np.add.at(want, ids.reshape(-1), dy.reshape(-1, 4))
    np.testing.assert_allclose(emb.weight.grad, want, rtol=1e-6, atol=1e-7)
    for bad in (np.array([0, 9]), np.array([-1, 2])):
        with pytest.raises(ValueError, match=r"emb.weight: id (9|-1) is outside \[0, 9\)"):
            emb.forward(bad)


def test_linear_matches_float64_and_accumulates(rng):
    store = nn.ParameterStore()
    lin = nn.Linear(store, "lin", 5, 3)
    store.allocate()
    lin.bias.data[...] = rng.standard_normal(3)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    w, b = lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)
    np.testing.assert_allclose(lin.forward(x), x @ w.T + b, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal((2, 4, 3)).astype(np.float32)
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, dy @ w, rtol=1e-5, atol=1e-6)
    dw = np.einsum("bto,bti->oi", dy, x)
    np.testing.assert_allclose(lin.weight.grad, dw, rtol=1e-5, atol=1e-6)
    lin.forward(x)
    lin.backward(dy)  # gradients add up across uses
    np.testing.assert_allclose(lin.weight.grad, 2 * dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.bias.grad, 2 * dy.sum((0, 1)), rtol=1e-5, atol=1e-6)


def test_dropout_keeps_the_expected_fraction_and_reuses_its_mask(rng):
    drop = nn.Dropout(0.25, seed=5)
    x = np.ones((200, 500), np.float32)
    y = drop.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01 and np.allclose(y[kept], 1 / 0.75)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(drop.backward(dy), dy * kept / 0.75, rtol=1e-6)
    again = nn.Dropout(0.25, seed=5).forward(x)
    np.testing.assert_array_equal(again, y)
    drop.training = False
    assert drop.forward(x) is x and drop.backward(dy) is dy
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.0)


# ------------------------------------------------- transformer blocks --

C, HEADS, HIDDEN = 32, 4, 64


def reference_block(x, params, pre_ln, causal, key_lengths, approximate, eps):
    """The block in float64 from tests/reference.py's attention, LayerNorm and GELU."""
    B, T, _ = x.shape

    def linear(h, name):
        return h @ params[f"b.{name}.weight"].T + params[f"b.{name}.bias"]

    def norm(h, name):
        return reference.layer_norm(h, params[f"b.{name}.weight"], params[f"b.{name}.bias"], eps)[0]

    def attention(h):
        qkv = linear(h, "attn.qkv").reshape(B, T, 3, HEADS, C // HEADS)
        out, _ = reference.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=causal,
                                     key_lengths=key_lengths)
        return linear(out.reshape(B, T, C), "attn.out")

    def ffn(h):
        return linear(reference.gelu(linear(h, "ffn.up"), approximate), "ffn.down")

    if pre_ln:
        h = x + attention(norm(x, "ln1"))
        return h + ffn(norm(h, "ln2"))
    h = norm(x + attention(x), "ln1")
    return norm(h + ffn(h), "ln2")


BLOCKS = [
    dict(pre_ln=False, causal=False, key_lengths=[7, 4], approximate="none"),  # BERT
    dict(pre_ln=True, causal=True, key_lengths=None, approximate="tanh"),  # GPT-2
]


@pytest.mark.parametrize("config", BLOCKS, ids=["post-ln", "pre-ln"])
def test_transformer_block_matches_float64(cpu_isa, rng, config):
    store = nn.ParameterStore()
    eps = 1e-5
    block = nn.TransformerBlock(store, "b", C, HEADS, HIDDEN, pre_ln=config["pre_ln"], causal=config["causal"],
                                approximate=config["approximate"], eps=eps)
    store.allocate(seed=2)
    for p in store:  # LayerNorm and biases away from their trivial starting values
        p.data[...] += rng.standard_normal(p.shape).astype(np.float32) * 0.1
    key_lengths = None if config["key_lengths"] is None else np.array(config["key_lengths"])
    x = rng.standard_normal((2, 7, C)).astype(np.float32)
    y = block.forward(x, key_lengths=key_lengths)
    params = {p.name: p.data.astype(np.float64) for p in store}

    def loss_of(x64, params):
        out = reference_block(x64, params, config["pre_ln"], config["causal"], key_lengths, config["approximate"],
                              eps)
        return (out * r).sum()

    want = reference_block(x.astype(np.float64), params, config["pre_ln"], config["causal"], key_lengths,
                           config["approximate"], eps)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)

    r = rng.standard_normal(y.shape)
    dx = block.backward(r.astype(np.float32))
    # One random direction per parameter (and one for x): d/dh loss(theta + h u)
    # by central differences of the float64 reference, against <grad, u>.
    h = 1e-4
    for name in [None] + [p.name for p in store]:
        grad = dx if name is None else store[name].grad
        u = rng.standard_normal(grad.shape)
        if name is None:
            numeric = (loss_of(x + h * u, params) - loss_of(x - h * u, params)) / (2 * h)
        else:
            plus, minus = dict(params), dict(params)
            plus[name], minus[name] = params[name] + h * u, params[name] - h * u
            numeric = (loss_of(x.astype(np.float64), plus) - loss_of(x.astype(np.float64), minus)) / (2 * h)
        got = float((grad * u).sum())
        assert got == pytest.approx(numeric, rel=2e-3, abs=float(2e-3 * np.abs(grad).sum() / np.sqrt(grad.size))), name


def test_attention_dropout_draws_a_key_per_forward_and_backward_reuses_it(rng):
    store = nn.ParameterStore()
    attn = nn.SelfAttention(store, "a", C, HEADS, dropout_p=0.2, seed=4)
    store.allocate(seed=1)
    x = rng.standard_normal((2, 5, C)).astype(np.float32)
    y1 = attn.forward(x)
    seed = attn._saved[-1]["seed"]
    qkv = (x.astype(np.float64) @ attn.qkv.weight.data.T).reshape(2, 5, 3, HEADS, C // HEADS)
    out, _ = reference.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p=0.2, seed=seed)
    np.testing.assert_allclose(y1, out.reshape(2, 5, C) @ attn.out.weight.data.T, rtol=1e-4, atol=1e-5)
    attn.backward(np.ones_like(y1))
    y2 = attn.forward(x)  # a new key, a new mask
    assert attn._saved[-1]["seed"] != seed and not np.allclose(y1, y2)
    attn.training = False
    np.testing.assert_array_equal(attn.forward(x), attn.forward(x))
