"""ssl_core.integrations.jax: the kernels as jax.custom_vjp functions, held to
float64 NumPy references, eagerly and under jit, through jax.grad and jax.vmap."""

import numpy as np
import pytest

from ssl_core import ops

import reference

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from ssl_core.integrations import jax as ssl_jax  # noqa: E402

EAGER_AND_JIT = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def close(got, want, tol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(initial=0.0), 1.0))


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- attention --

B, TQ, TK, H, D = 2, 5, 7, 2, 8
MASK_CASES = {
    "none": dict(),
    "causal": dict(causal=True),
    "key_lengths": dict(key_lengths=np.array([7, 2])),
    "prefix_lengths": dict(prefix_lengths=np.array([3, 0])),
    "mask": dict(mask=np.tri(TQ, TK, 2, dtype=bool)[None, None]),
    "all_and_dropout": dict(causal=True, key_lengths=np.array([5, 0]), mask=np.arange(TK) != 1,
                            dropout_p=0.3, seed=2**33 + 5),
    "dropout": dict(dropout_p=0.5, seed=11, scale=0.2),
}


@pytest.mark.parametrize("transform", EAGER_AND_JIT)
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_attention_forward_and_grad(rng, case, transform):
    options = MASK_CASES[case]
    q, k, v, dout = f32(rng, B, TQ, H, D), f32(rng, B, TK, H, D), f32(rng, B, TK, H, D), f32(rng, B, TQ, H, D)
    jax_options = {name: jnp.asarray(value) if isinstance(value, np.ndarray) else value
                   for name, value in options.items()}

    def loss(q, k, v):
        return (ssl_jax.attention(q, k, v, **jax_options) * dout).sum()

    out = transform(lambda q, k, v: ssl_jax.attention(q, k, v, **jax_options))(q, k, v)
    assert out.dtype == jnp.float32 and out.shape == q.shape
    close(out, reference.attention(q, k, v, **options)[0])
    grads = transform(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads, reference.attention_backward(dout, q, k, v, **options)):
        close(got, want, 1e-4)
    # The same kernels as ssl_core.ops, so the same numbers, dropout mask and all.
    out, lse = ops.attention_forward(q, k, v, **options)
    for got, want in zip(grads, ops.attention_backward(dout, q, k, v, out, lse, **options)):
        np.testing.assert_array_equal(got, want)


def test_attention_dropout_gradient_matches_finite_differences(rng):
    q, k, v = f32(rng, 1, 3, 1, 4), f32(rng, 1, 4, 1, 4), f32(rng, 1, 4, 1, 4)
    dout = rng.standard_normal(q.shape)
    options = dict(causal=True, dropout_p=0.4, seed=5)
    grads = jax.grad(lambda q, k, v: (ssl_jax.attention(q, k, v, **options) * dout.astype(np.float32)).sum(),
                     argnums=(0, 1, 2))(q, k, v)
    numeric = reference.central_differences(
        lambda q, k, v: (reference.attention(q, k, v, **options)[0] * dout).sum(),
        [a.astype(np.float64) for a in (q, k, v)])
    assert not reference.attention_keep(1, 1, 3, 4, 0.4, 5).all()  # something is dropped
    for got, want in zip(grads, numeric):
        close(got, want, 1e-4)


def test_attention_seed_as_traced_array(rng):
    q = f32(rng, 1, 4, 1, 8)
    run = jax.jit(lambda q, seed: ssl_jax.attention(q, q, q, dropout_p=0.5, seed=seed))
    for seed in (0, 3, 2**31 - 1):
        np.testing.assert_array_equal(run(q, jnp.int32(seed)), ops.attention(q, q, q, dropout_p=0.5, seed=seed))
    np.testing.assert_array_equal(ssl_jax.attention(q, q, q, dropout_p=0.5, seed=np.uint32(3)),
                                  ops.attention(q, q, q, dropout_p=0.5, seed=3))
    assert not np.array_equal(run(q, jnp.int32(1)), run(q, jnp.int32(2)))


def test_attention_vmap(rng):
    q, k = f32(rng, 3, B, TQ, H, D), f32(rng, 3, B, TK, H, D)
    key_lengths = jnp.array([4, 7])
    out = jax.vmap(lambda q, k: ssl_jax.attention(q, k, k, key_lengths=key_lengths))(q, k)
    for i in range(3):
        close(out[i], reference.attention(q[i], k[i], k[i], key_lengths=[4, 7])[0])
    dq = jax.vmap(jax.grad(lambda q, k: ssl_jax.attention(q, k, k, causal=True).sum()))(q, k)
    for i in range(3):
        close(dq[i], reference.attention_backward(np.ones(q.shape[1:]), q[i], k[i], k[i], causal=True)[0], 1e-4)


def test_attention_bad_input():
    x = jnp.ones((1, 2, 1, 4))
    with pytest.raises(TypeError, match="q must be a float32 JAX or NumPy array, got dtype float16"):
        ssl_jax.attention(x.astype(jnp.float16), x, x)
    with pytest.raises(TypeError, match="v must be a float32 JAX or NumPy array, got dtype float16"):
        jax.jit(ssl_jax.attention)(x, x, x.astype(jnp.float16))  # at trace time, not from the kernel
    with pytest.raises(TypeError, match="v must be a float32 JAX or NumPy array, got dtype float64"):
        ssl_jax.attention(x, x, np.ones((1, 2, 1, 4)))  # (jit would make it float32 without jax_enable_x64)
    with pytest.raises(TypeError, match="k must be a float32 JAX or NumPy array, got dtype bfloat16"):
        ssl_jax.attention(x, x.astype(jnp.bfloat16), x)
    with pytest.raises(ValueError, match=r"k must have shape \(1, 2, 1, 4\) to match q"):
        ssl_jax.attention(x, x[..., :3], x)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        ssl_jax.attention(x[0], x, x)
    with pytest.raises(TypeError, match="key_lengths must be an integer array, got dtype float32"):
        ssl_jax.attention(x, x, x, key_lengths=jnp.ones(1))
    with pytest.raises(ValueError, match=r"prefix_lengths must have shape \(1,\), got \(2,\)"):
        ssl_jax.attention(x, x, x, prefix_lengths=jnp.ones(2, int))
    with pytest.raises(TypeError, match="mask must be a bool array"):
        ssl_jax.attention(x, x, x, mask=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"mask must be broadcastable to \(B, H, Tq, Tk\) = \(1, 1, 2, 2\)"):
        ssl_jax.attention(x, x, x, mask=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        ssl_jax.attention(x, x, x, dropout_p=1.0)
    with pytest.raises(ValueError, match="seed must be in"):
        ssl_jax.attention(x, x, x, seed=-1)
    with pytest.raises(TypeError, match="seed must be a Python int or an integer scalar array"):
        ssl_jax.attention(x, x, x, seed=jnp.ones(2, int))
    # What only the values show is found by the kernel, inside the callback.
    with pytest.raises(jax.errors.JaxRuntimeError, match="key_lengths"):
        jax.jit(lambda x: ssl_jax.attention(x, x, x, key_lengths=jnp.array([5])))(x).block_until_ready()


# --------------------------------------------------------------- layer norm --

@pytest.mark.parametrize("transform", EAGER_AND_JIT)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(rng, transform, affine):
    x, dy = f32(rng, 2, 3, 16) * 3 + 1, f32(rng, 2, 3, 16)
    weight, bias = (f32(rng, 16), f32(rng, 16)) if affine else (None, None)
    y = transform(lambda x, weight, bias: ssl_jax.layer_norm(x, weight, bias, 1e-3))(x, weight, bias)
    w64, b64 = (weight, bias) if affine else (1.0, 0.0)
    close(y, reference.layer_norm(x, w64, b64, 1e-3)[0])
    grads = transform(jax.grad(lambda *a: (ssl_jax.layer_norm(*a, 1e-3) * dy).sum(), argnums=(0, 1, 2)))(
        x, weight, bias)
    ref = reference.layer_norm_backward(dy, x, np.ones(16) if weight is None else weight, 1e-3)
    close(grads[0], ref[0], 1e-4)
    if affine:
        close(grads[1], ref[1], 1e-4)
        close(grads[2], ref[2], 1e-4)
    else:
        assert grads[1] is None and grads[2] is None


def test_layer_norm_bad_input():
    x = jnp.ones((3, 4))
    with pytest.raises(TypeError, match="x must be a float32 JAX or NumPy array, got dtype int32"):
        ssl_jax.layer_norm(x.astype(jnp.int32), None, None)
    with pytest.raises(TypeError, match="bias must be a float32 JAX or NumPy array, got dtype float16"):
        jax.jit(ssl_jax.layer_norm)(x, None, jnp.ones(4, jnp.float16))
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\) to match x \(3, 4\), got \(3,\)"):
        ssl_jax.layer_norm(x, jnp.ones(3), None)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        ssl_jax.layer_norm(x, None, None, -1.0)
    with pytest.raises(TypeError, match="eps must be a Python number, not a traced value"):
        jax.jit(ssl_jax.layer_norm)(x, None, None, 1e-5)
    with pytest.raises(TypeError, match="dropout_p must be a Python number, not a traced value"):
        jax.jit(lambda x, p: ssl_jax.attention(x, x, x, dropout_p=p))(jnp.ones((1, 2, 1, 4)), 0.1)


# --------------------------------------------------------------------- GELU --

@pytest.mark.parametrize("transform", EAGER_AND_JIT)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, transform, approximate):
    x = f32(rng, 3, 50) * 4
    close(transform(lambda x: ssl_jax.gelu(x, approximate))(x), reference.gelu(x, approximate), 1e-6)
    dy = f32(rng, 3, 50)
    dx = transform(jax.grad(lambda x: (ssl_jax.gelu(x, approximate) * dy).sum()))(x)
    close(dx, dy * reference.gelu_derivative(x, approximate), 1e-5)
    # vmap runs the elementwise kernel once on the whole batch, also with only one operand batched.
    per_row = jax.vmap(jax.grad(lambda x: ssl_jax.gelu(x, approximate).sum()))(x)
    close(per_row, reference.gelu_derivative(x, approximate), 1e-5)
    _, vjp = jax.vjp(lambda x: ssl_jax.gelu(x, approximate), x[0])
    close(jax.vmap(lambda dy: vjp(dy)[0])(dy), dy * reference.gelu_derivative(x[0], approximate), 1e-5)


def test_gelu_bad_input():
    with pytest.raises(TypeError, match="x must be a float32 JAX or NumPy array, got dtype float64"):
        ssl_jax.gelu(np.ones(3))
    with pytest.raises(TypeError, match="x must be a float32 JAX or NumPy array, got builtins.list"):
        ssl_jax.gelu([1.0])
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        ssl_jax.gelu(jnp.ones(3), "erf")


# --------------------------------------------------------------------- loss --

@pytest.mark.parametrize("transform", EAGER_AND_JIT)
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_lm_loss(rng, transform, with_bias):
    hidden, weight = f32(rng, 2, 4, 8), f32(rng, 13, 8)
    bias = f32(rng, 13) if with_bias else None
    labels = np.array([[3, -1, 12, -1], [0, 0, -1, 7]])
    options = dict(ignore_index=-1, label_smoothing=0.1)
    ref = reference.linear_cross_entropy(hidden, weight, bias, labels, **options)
    loss = transform(lambda *a: ssl_jax.masked_lm_loss(*a, **options))(hidden, weight, bias, jnp.asarray(labels))
    assert loss.dtype == jnp.float32 and loss.shape == ()
    close(loss, ref[0])
    # Scaled by the cotangent: the gradients of 3 * loss.
    grads = transform(jax.grad(lambda *a: 3 * ssl_jax.masked_lm_loss(*a, **options), argnums=(0, 1, 2)))(
        hidden, weight, bias, labels)
    close(grads[0], 3 * ref[3], 1e-4)
    close(grads[1], 3 * ref[4], 1e-4)
    if with_bias:
        close(grads[2], 3 * ref[5], 1e-4)
    else:
        assert grads[2] is None


def test_masked_lm_loss_computes_gradients_only_when_differentiated(rng, monkeypatch):
    calls = []
    original = ops.masked_lm_loss

    def spy(*args, **kwargs):
        calls.append(kwargs["return_grad"])
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "masked_lm_loss", spy)
    hidden, weight, labels = f32(rng, 3, 8), f32(rng, 5, 8), np.array([1, -100, 4])
    ssl_jax.masked_lm_loss(hidden, weight, None, labels).block_until_ready()
    jax.grad(ssl_jax.masked_lm_loss)(hidden, weight, None, labels).block_until_ready()
    assert calls == [False, True]


def test_masked_lm_loss_nothing_labelled(rng):
    hidden, weight = f32(rng, 3, 8), f32(rng, 5, 8)
    labels = np.full(3, -100)
    loss, (d_hidden, d_weight) = jax.value_and_grad(ssl_jax.masked_lm_loss, argnums=(0, 1))(
        hidden, weight, None, labels)
    assert loss == 0
    assert not np.asarray(d_hidden).any() and not np.asarray(d_weight).any()


def test_masked_lm_loss_bad_input():
    hidden, weight = jnp.ones((3, 8)), jnp.ones((5, 8))
    with pytest.raises(TypeError, match="hidden must be a float32 JAX or NumPy array, got dtype int32"):
        ssl_jax.masked_lm_loss(hidden.astype(int), weight, None, jnp.zeros(3, int))
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float32"):
        jax.jit(ssl_jax.masked_lm_loss)(hidden, weight, None, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\), got \(2,\)"):
        ssl_jax.masked_lm_loss(hidden, weight, None, jnp.zeros(2, int))
    with pytest.raises(ValueError, match=r"weight must have shape \(vocab, 8\) to match hidden"):
        ssl_jax.masked_lm_loss(hidden, weight[:, :4], None, jnp.zeros(3, int))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        ssl_jax.masked_lm_loss(hidden, weight, jnp.ones(4), jnp.zeros(3, int))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        ssl_jax.masked_lm_loss(hidden, weight, None, jnp.zeros(3, int), label_smoothing=2.0)
    with pytest.raises(TypeError, match="ignore_index must be a Python int, got 2.5"):
        ssl_jax.masked_lm_loss(hidden, weight, None, jnp.zeros(3, int), ignore_index=2.5)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"labels\[1\] = 5 is outside \[0, 5\)"):
        ssl_jax.masked_lm_loss(hidden, weight, None, jnp.array([0, 5, 1])).block_until_ready()
