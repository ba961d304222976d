"""AdamW, gradient clipping and schedules against torch.optim and float64 formulas."""

import math

import numpy as np
import pytest

from ssl_core import _C, nn
from ssl_core.train import AdamW, clip_grad_norm, learning_rate


def adamw_float64(p, g, m, v, lr, b1, b2, eps, wd, step):
    p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
    m = m + (1 - b1) * (g - m)
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - b2**step) + eps
    return p * (1 - lr * wd) - lr / (1 - b1**step) * m / denom, m, v


@pytest.mark.parametrize("n", [1, 7, 8, 16, 1000, 70001])
def test_kernel_matches_float64(cpu_isa, rng, n):
    p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = rng.random(n).astype(np.float32)
    want = adamw_float64(p, g * 0.5, m, v, 1e-3, 0.9, 0.98, 1e-6, 0.1, 7)
    _C.adamw_update(p, g, m, v, 1e-3, 0.9, 0.98, 1e-6, 0.1, 0.5, 7)
    for got, expected in zip((p, m, v), want):
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)


def test_kernel_rejects_bad_arrays(rng):
    a = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="grads must have shape"):
        _C.adamw_update(a, np.zeros(7, np.float32), a.copy(), a.copy(), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 1)
    with pytest.raises(ValueError, match="m must be a contiguous 1-d"):
        _C.adamw_update(a, a.copy(), np.zeros(16, np.float32)[::2], a.copy(), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 1)
    with pytest.raises(ValueError, match="params and m share memory"):
        _C.adamw_update(a, a.copy(), a, a.copy(), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        _C.adamw_update(a, a.copy(), a.copy(), np.zeros(8, np.float32), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 0)
    with pytest.raises(TypeError, match="float32"):
        _C.adamw_update(a.astype(np.float64), a, a.copy(), a.copy(), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1.0, 1)


def small_store(rng):
    store = nn.ParameterStore()
    nn.Embedding(store, "emb", 11, 6)
    nn.Linear(store, "lin", 6, 5)
    nn.LayerNorm(store, "ln", 5)
    store.allocate(seed=1)
    for p in store:
        p.data[...] += rng.standard_normal(p.shape).astype(np.float32) * 0.1
    return store


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_adamw_matches_torch_over_several_steps(rng, decay_embeddings):
    torch = pytest.importorskip("torch")
    store = small_store(rng)
    tensors = {p.name: torch.tensor(p.data.copy(), requires_grad=True) for p in store}
    decayed = [tensors[p.name] for p in store if p.decay and (decay_embeddings or not p.embedding)]
    exempt = [tensors[p.name] for p in store if not (p.decay and (decay_embeddings or not p.embedding))]
    reference = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.05}, {"params": exempt, "weight_decay": 0.0}],
                                  lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW(store, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, decay_embeddings=decay_embeddings)
    for step in range(1, 6):
        for p in store:
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad[...] = g
            tensors[p.name].grad = torch.from_numpy(g.copy())
        ours.step(lr=3e-3 / step)
        for group in reference.param_groups:
            group["lr"] = 3e-3 / step
        reference.step()
    for p in store:
        np.testing.assert_allclose(p.data, tensors[p.name].detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=p.name)
    assert (store.data[store["lin.weight"].offset + 30:store["lin.bias"].offset] == 0).all()  # alignment gap


def test_state_round_trip_and_mismatch(rng):
    store = small_store(rng)
    opt = AdamW(store)
    store.grad[...] = 1.0
    opt.step()
    fresh = AdamW(store)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.step_count == 1 and np.array_equal(fresh.m, opt.m) and np.array_equal(fresh.v, opt.v)
    other = nn.ParameterStore()
    other.add("w", (3,))
    with pytest.raises(ValueError, match="optimizer state for"):
        AdamW(other.allocate()).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="AdamW needs"):
        AdamW(store, betas=(1.0, 0.9))


def test_clip_grad_norm(rng):
    store = small_store(rng)
    store.grad[...] = rng.standard_normal(store.grad.shape).astype(np.float32)
    norm, factor = clip_grad_norm(store, 1.0)
    assert norm == pytest.approx(float(np.linalg.norm(store.grad.astype(np.float64))), rel=1e-6)
    assert factor == pytest.approx(1.0 / norm, rel=1e-5)
    assert clip_grad_norm(store, 10 * norm)[1] == 1.0
    store.grad[0] = np.inf
    assert clip_grad_norm(store, 1.0)[1] == 0.0


def test_learning_rate_schedules():
    assert learning_rate(5, 1.0, "constant", warmup_steps=10) == 0.5
    assert learning_rate(50, 1.0, "constant", warmup_steps=10) == 1.0
    assert learning_rate(10, 1.0, "linear", warmup_steps=10, total_steps=110) == 1.0
    assert learning_rate(60, 1.0, "linear", warmup_steps=10, total_steps=110) == pytest.approx(0.5)
    assert learning_rate(110, 1.0, "linear", warmup_steps=10, total_steps=110, min_lr=0.1) == pytest.approx(0.1)
    assert learning_rate(60, 1.0, "cosine", warmup_steps=10, total_steps=110) == pytest.approx(0.5)
    assert learning_rate(35, 1.0, "cosine", warmup_steps=10, total_steps=110) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate(20, 1.0, "cosine", warmup_steps=10)
    with pytest.raises(ValueError, match="schedule must be"):
        learning_rate(20, 1.0, "step")


def test_clip_grad_norm_stays_accurate_on_a_large_buffer(rng):
    store = nn.ParameterStore()
    store.add("big", (3_000_007,))
    store.allocate()
    store.grad[...] = rng.standard_normal(store.grad.size).astype(np.float32) + 0.5
    norm, _ = clip_grad_norm(store, 1.0)
    assert norm == pytest.approx(float(np.linalg.norm(store.grad.astype(np.float64))), rel=1e-6)
