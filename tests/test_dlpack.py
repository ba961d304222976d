"""ssl_core.ops on other frameworks' CPU arrays (torch tensors, JAX arrays),
read through DLPack: results of the same framework, arrays given in out= and
grads= written in place and returned as they are, and clear errors."""

import numpy as np
import pytest

from ssl_core import ops

import reference

torch = pytest.importorskip("torch")


@pytest.fixture
def jnp():
    return pytest.importorskip("jax.numpy")


def t(array):
    """A torch CPU tensor with a copy of ``array``."""
    return torch.from_numpy(np.array(array))


def close(got, want, tol=1e-5):
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(initial=0.0), 1.0))


def test_torch_in_torch_out(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    weight, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    y = ops.gelu(t(x), "tanh", bias=t(bias))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    close(y, reference.gelu(x.astype(np.float64) + bias, "tanh"))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    close(ops.gelu_backward(t(dy), t(x)), dy * reference.gelu_derivative(x))

    y, mean, rstd = ops.layer_norm_forward(t(x), t(weight), t(bias))
    ref_y, ref_mean, ref_rstd = reference.layer_norm(x, weight, bias, 1e-5)
    assert all(isinstance(a, torch.Tensor) for a in (y, mean, rstd))
    close(y, ref_y)
    close(rstd, ref_rstd)
    close(ops.layer_norm(t(x), t(weight), None), reference.layer_norm(x, weight, 0.0, 1e-5)[0])
    grads = ops.layer_norm_backward(t(dy), t(x), t(weight), mean, rstd)
    for got, want in zip(grads, reference.layer_norm_backward(dy, x, weight, 1e-5)):
        assert isinstance(got, torch.Tensor)
        close(got, want, 1e-4)

    w = rng.standard_normal((5, 8)).astype(np.float32)
    for rows in (3, 4):  # NumPy's matmul and the kernel
        out = ops.linear(t(x[:rows]), t(w), t(bias[:5]))
        assert isinstance(out, torch.Tensor)
        close(out, x[:rows].astype(np.float64) @ w.T + bias[:5])


def test_torch_attention_with_torch_masks(rng):
    B, Tq, Tk, H, D = 2, 5, 6, 2, 8
    q = rng.standard_normal((B, Tq, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, Tk, H, D)).astype(np.float32) for _ in range(2))
    masks = dict(key_lengths=np.array([6, 3]), prefix_lengths=np.array([2, 0]),
                 mask=rng.random((1, H, Tq, Tk)) < 0.8, dropout_p=0.25, seed=2**40 + 3)
    torch_masks = {name: t(m) if isinstance(m, np.ndarray) else m for name, m in masks.items()}
    out, lse = ops.attention_forward(t(q), t(k), t(v), **torch_masks)
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    ref_out, ref_lse = reference.attention(q, k, v, **masks)
    close(out, ref_out)
    close(lse[np.isfinite(ref_lse)], ref_lse[np.isfinite(ref_lse)])
    assert torch.equal(ops.attention(t(q), t(k), t(v), **torch_masks), out)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    grads = ops.attention_backward(t(dout), t(q), t(k), t(v), out, lse, **torch_masks)
    for got, want in zip(grads, reference.attention_backward(dout, q, k, v, **masks)):
        assert isinstance(got, torch.Tensor)
        close(got, want, 1e-4)


def test_torch_loss(rng):
    hidden = rng.standard_normal((2, 3, 8)).astype(np.float32)
    weight, bias = rng.standard_normal((11, 8)).astype(np.float32), rng.standard_normal(11).astype(np.float32)
    labels = np.array([[1, -100, 10], [0, 4, -100]])
    result = ops.masked_lm_loss(t(hidden), t(weight), t(bias), t(labels), label_smoothing=0.1, return_grad=True)
    assert isinstance(result, ops.MaskedLMLoss) and isinstance(result.loss, float)
    ref = reference.linear_cross_entropy(hidden, weight, bias, labels, label_smoothing=0.1)
    assert result.loss == pytest.approx(ref[0], rel=1e-5) and (result.n_valid, result.n_correct) == ref[1:3]
    for got, want in zip(result[3:], ref[3:]):
        assert isinstance(got, torch.Tensor)
        close(got, want, 1e-4)
    # NumPy labels beside torch tensors: the results are still torch tensors.
    mixed = ops.masked_lm_loss(t(hidden), t(weight), None, labels, return_grad=True)
    assert isinstance(mixed.d_hidden, torch.Tensor) and mixed.d_bias is None


def test_torch_out_and_grads_are_written_in_place_and_returned(rng):
    wide = torch.from_numpy(rng.standard_normal((6, 12)).astype(np.float32))
    x = wide[:, 2:10]  # strided rows: read and written through the same memory, no copy
    expected = reference.gelu(x.numpy())
    assert ops.gelu(x, out=x) is x
    close(wide[:, 2:10], expected)

    weight, bias = torch.ones(8), torch.zeros(8)
    out = (torch.empty(6, 8), torch.empty(6), torch.empty(6))
    result = ops.layer_norm_forward(x, weight, bias, out=out)
    assert all(got is given for got, given in zip(result, out))
    close(out[0], reference.layer_norm(x.numpy(), 1.0, 0.0, 1e-5)[0])
    y = torch.empty(6, 8)
    assert ops.layer_norm(x, weight, bias, out=y) is y

    # Gradients into slices of one (B, T, 3, H, D) tensor, as for a fused QKV projection.
    qkv = torch.from_numpy(rng.standard_normal((1, 4, 3, 2, 8)).astype(np.float32))
    q, k, v = qkv.unbind(2)
    out, lse = ops.attention_forward(q, k, v, causal=True)
    d_qkv = torch.zeros_like(qkv)
    grads = tuple(d_qkv.unbind(2))
    result = ops.attention_backward(torch.ones_like(out), q, k, v, out, lse, causal=True, grads=grads)
    assert all(got is given for got, given in zip(result, grads))
    want = reference.attention_backward(np.ones(out.shape), q.numpy(), k.numpy(), v.numpy(), causal=True)
    for i in range(3):
        close(d_qkv[:, :, i], want[i], 1e-4)

    hidden, w = torch.randn(3, 8), torch.randn(5, 8)
    d_weight = torch.ones(5, 8)
    result = ops.masked_lm_loss(hidden, w, None, torch.tensor([1, 2, -100]), return_grad=True,
                                grads=(None, d_weight, None), accumulate=True)
    assert result.d_weight is d_weight and isinstance(result.d_hidden, torch.Tensor)
    fresh = ops.masked_lm_loss(hidden, w, None, torch.tensor([1, 2, -100]), return_grad=True)
    close(d_weight, 1 + fresh.d_weight.numpy().astype(np.float64))


def test_jax_in_jax_out(rng, jnp):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    y = ops.gelu(jnp.asarray(x))
    assert isinstance(y, type(jnp.zeros(1))) and y.dtype == jnp.float32
    close(y, reference.gelu(x))
    weight = rng.standard_normal(8).astype(np.float32)
    y, mean, rstd = ops.layer_norm_forward(jnp.asarray(x), jnp.asarray(weight), weight)  # mixed with NumPy
    assert all(isinstance(a, type(y)) for a in (mean, rstd))
    close(y, reference.layer_norm(x, weight, weight, 1e-5)[0])
    close(ops.linear(jnp.asarray(x), jnp.asarray(x[:3])), x.astype(np.float64) @ x[:3].T.astype(np.float64))

    q = rng.standard_normal((2, 3, 1, 8)).astype(np.float32)
    out, lse = ops.attention_forward(*(jnp.asarray(q),) * 3, key_lengths=jnp.array([3, 1]), causal=True)
    assert isinstance(out, type(y)) and isinstance(lse, type(y))
    close(out, reference.attention(q, q, q, key_lengths=[3, 1], causal=True)[0])

    weight = rng.standard_normal((5, 8)).astype(np.float32)
    result = ops.masked_lm_loss(jnp.asarray(x), jnp.asarray(weight), None, jnp.array([0, 4, -100, 2]),
                                return_grad=True)
    ref = reference.linear_cross_entropy(x, weight, None, np.array([0, 4, -100, 2]))
    assert result.loss == pytest.approx(ref[0], rel=1e-5)
    assert isinstance(result.d_weight, type(y))
    close(result.d_weight, ref[4], 1e-4)


def test_read_only_inputs_are_accepted(rng):
    """JAX exports its arrays read-only; the kernels only read their inputs."""
    def read_only(array):
        array = np.array(array)
        array.flags.writeable = False
        return array

    x = read_only(rng.standard_normal((3, 8)).astype(np.float32))
    ones, zeros = read_only(np.ones(8, np.float32)), read_only(np.zeros(8, np.float32))
    close(ops.gelu(x, bias=zeros), reference.gelu(x))
    close(ops.gelu_backward(x, x), x * reference.gelu_derivative(x))
    y, mean, rstd = ops.layer_norm_forward(x, ones, zeros)
    ops.layer_norm_backward(read_only(y), x, ones, read_only(mean), read_only(rstd))
    q = read_only(rng.standard_normal((2, 3, 1, 8)).astype(np.float32))
    masks = dict(key_lengths=read_only([3, 1]), prefix_lengths=read_only([1, 0]), mask=read_only(np.eye(3) < 1))
    out, lse = ops.attention_forward(q, q, q, **masks)
    close(out, reference.attention(q, q, q, **masks)[0])
    ops.attention_backward(read_only(out), q, q, q, read_only(out), read_only(lse), **masks)
    weight = read_only(rng.standard_normal((5, 8)).astype(np.float32))
    ops.masked_lm_loss(x, weight, read_only(np.zeros(5, np.float32)), read_only([0, 1, 2]), return_grad=True)
    close(ops.linear(x, weight, kernel=True), x.astype(np.float64) @ weight.T)


def test_torch_bad_input():
    x = torch.ones(4, 8)
    with pytest.raises(TypeError, match=r"x is a torch.Tensor that requires grad.*ssl_core.integrations.torch.*"
                                        r"x.detach\(\)"):
        ops.gelu(x.clone().requires_grad_())
    with pytest.raises(TypeError, match="weight is a torch.Tensor that requires grad"):
        ops.layer_norm(x, torch.ones(8, requires_grad=True), None)
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        ops.gelu(x.double())
    with pytest.raises(TypeError, match=r"x \(torch.Tensor of dtype torch.bfloat16\) cannot be viewed"):
        ops.gelu(x.bfloat16())
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray of integers, got an array of float32"):
        ops.masked_lm_loss(x, torch.ones(5, 8), None, torch.ones(4))
    with pytest.raises(ValueError, match="x must have a contiguous last axis"):  # an error, not a silent copy
        ops.gelu(x.T)
    with pytest.raises(ValueError, match="q must have a contiguous last axis"):
        q = torch.ones(1, 2, 1, 8)
        ops.attention(q.transpose(1, 3).contiguous().transpose(1, 3), q, q)
    with pytest.raises(TypeError, match=r"x is a torch.Tensor on a device DLPack does not know .*CPU kernels"):
        ops.gelu(torch.empty(3, device="meta"))


def test_jax_bad_input(jnp):
    x = jnp.ones((4, 8))
    with pytest.raises(TypeError, match=r"out is a read-only .* \(JAX arrays are immutable\).* leave out=None"):
        ops.gelu(x, out=jnp.zeros((4, 8)))
    with pytest.raises(TypeError, match=r"grads\[1\] is a read-only"):
        ops.masked_lm_loss(x, jnp.ones((5, 8)), None, np.zeros(4, int), return_grad=True,
                           grads=(None, jnp.zeros((5, 8)), None))
    with pytest.raises(TypeError, match=r"x \(.* of dtype bfloat16\) cannot be viewed as a NumPy array"):
        ops.gelu(jnp.ones(3, jnp.bfloat16))
    with pytest.raises(TypeError, match="x must have dtype float32, got int32"):
        ops.gelu(jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="bias is a jax.numpy array but x is a torch array; pass arrays of one "
                                        "framework"):
        ops.gelu(torch.ones(4, 8), bias=jnp.zeros(8))
    with pytest.raises(TypeError, match="k is a torch array but q is a jax.numpy array"):
        ops.attention(jnp.ones((1, 2, 1, 8)), torch.ones(1, 2, 1, 8), np.ones((1, 2, 1, 8), np.float32))


class OnDevice:
    """A DLPack array on some device, without __cuda_array_interface__."""

    def __init__(self, device_type):
        self.device_type = device_type

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be exported")

    def __dlpack_device__(self):
        return (self.device_type, 0)


class CpuWithoutNamespace:
    """A CPU DLPack array of a framework with no __array_namespace__ to make results of."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_other_dlpack_objects():
    with pytest.raises(TypeError, match=r"x is a .*OnDevice on a CUDA device without __cuda_array_interface__; "
                                        r"ssl_core.ops run CPU arrays .* \(CuPy arrays, CUDA torch tensors\)"):
        ops.gelu(OnDevice(2))
    with pytest.raises(TypeError, match="dy is a .*OnDevice on a Metal device"):
        ops.gelu_backward(OnDevice(8), np.ones(3, np.float32))
    with pytest.raises(TypeError, match="bias is a .*CpuWithoutNamespace, which ssl_core.ops can read through "
                                        r"DLPack but cannot make results of.*np.from_dlpack\(bias\)"):
        ops.gelu(np.ones(3, np.float32), bias=CpuWithoutNamespace(np.zeros(3, np.float32)))
    # Lists are not DLPack arrays: the usual error, which names what is accepted.
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray of float32 \(or a CPU array with __dlpack__"):
        ops.layer_norm([[1.0, 2.0]], None, None)
