"""The ops' dispatch of CUDA arrays: ssl_core.ops given arrays that expose
__cuda_array_interface__ run the CUDA kernels on their memory and return
arrays of the same kind. Here the "device" is the CPU emulator: the arrays
are NumPy memory behind a __cuda_array_interface__, and the kernel module is
ssl_core._simt, which takes the same arguments as ssl_core._C.cuda."""

import numpy as np
import pytest

import ssl_core.ops as ops
from ssl_core.ops import _device


class EmulatedDeviceArray:
    """A minimal third-party CUDA array: host memory the emulator treats as device memory."""

    def __init__(self, host):
        self.host = host
        self.shape, self.dtype, self.ndim = host.shape, host.dtype, host.ndim

    @property
    def __cuda_array_interface__(self):
        interface = dict(self.host.__array_interface__)
        interface.update(version=3, stream=None)
        return interface

    def __getitem__(self, index):
        return EmulatedDeviceArray(self.host[index])

    def reshape(self, shape):
        return EmulatedDeviceArray(self.host.reshape(shape))


EMULATED = _device.ArrayType(
    empty=lambda like, shape, dtype: EmulatedDeviceArray(np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f"
                                                         else np.empty(shape, dtype)),
    from_numpy=lambda like, a: EmulatedDeviceArray(a.copy()),
    to_numpy=lambda a: a.host.copy(),
    stream=lambda like: 0,
)


@pytest.fixture
def device(simt, monkeypatch):
    """Wraps host arrays as emulated device arrays, with ops running on ssl_core._simt."""
    monkeypatch.setattr(_device, "_kernels", simt)
    monkeypatch.setitem(_device._ARRAY_TYPES, EmulatedDeviceArray, EMULATED)
    return lambda a: None if a is None else EmulatedDeviceArray(np.ascontiguousarray(a))


def test_layer_norm_forward_and_backward(device, rng):
    x = rng.standard_normal((5, 37)).astype(np.float32)
    w, b = rng.standard_normal(37).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    dy = rng.standard_normal((5, 37)).astype(np.float32)
    y, mean, rstd = ops.layer_norm_forward(device(x), device(w), device(b))
    assert isinstance(y, EmulatedDeviceArray) and y.shape == (5, 37) and mean.shape == (5,)
    want = ops.layer_norm_forward(x, w, b)
    for got, ref in zip((y, mean, rstd), want):
        np.testing.assert_allclose(got.host, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.layer_norm(device(x), device(w), device(b)).host, want[0], rtol=1e-5, atol=1e-5)
    grads = ops.layer_norm_backward(device(dy), device(x), device(w), mean, rstd)
    for got, ref in zip(grads, ops.layer_norm_backward(dy, x, w, *want[1:])):
        np.testing.assert_allclose(got.host, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_with_bias(device, rng, approximate):
    x = rng.standard_normal((3, 50)).astype(np.float32) * 3
    bias = rng.standard_normal(50).astype(np.float32)
    dy = rng.standard_normal((3, 50)).astype(np.float32)
    y = ops.gelu(device(x), approximate, bias=device(bias))
    np.testing.assert_allclose(y.host, ops.gelu(x, approximate, bias=bias), rtol=1e-5, atol=1e-6)
    dx = ops.gelu_backward(device(dy), device(x), approximate, bias=device(bias))
    np.testing.assert_allclose(dx.host, ops.gelu_backward(dy, x, approximate, bias=bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_on_device", [False, True])
def test_attention_with_2d_masks(device, rng, mask_on_device):
    """key_lengths and mask given as host arrays are copied to the device; a
    (Tq, Tk) mask broadcasts as on the CPU."""
    B, T, H, D = 2, 9, 2, 16
    q, k, v, dout = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(4))
    lengths = np.array([9, 4])
    mask = rng.random((T, T)) < 0.8  # broadcast over batch and heads
    kwargs = dict(causal=True, key_lengths=lengths, mask=mask, dropout_p=0.2, seed=7)
    device_kwargs = dict(kwargs, mask=device(mask) if mask_on_device else mask)
    out, lse = ops.attention_forward(device(q), device(k), device(v), **device_kwargs)
    want_out, want_lse = ops.attention_forward(q, k, v, **kwargs)
    np.testing.assert_allclose(out.host, want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lse.host, want_lse, rtol=1e-5, atol=1e-5)
    grads = ops.attention_backward(device(dout), device(q), device(k), device(v), out, lse, **device_kwargs)
    for got, ref in zip(grads, ops.attention_backward(dout, q, k, v, want_out, want_lse, **kwargs)):
        np.testing.assert_allclose(got.host, ref, rtol=1e-4, atol=1e-4)


# (to 16 bits, back to float32, tolerance): bfloat16 travels as uint16 bits. The tolerance: P, dS and the
# gradients are rounded to 16 bits (relative 2^-11 for float16, 2^-8 for bfloat16, each), ~10 units here
# with sums of 20 terms of size ~1.
HALF_TYPES = {
    "float16": (lambda a: a.astype(np.float16), lambda a: a.astype(np.float32), 5e-3),
    "bfloat16": (ops.to_bfloat16, ops.from_bfloat16, 4e-2),
}


@pytest.mark.parametrize("dtype", sorted(HALF_TYPES))
def test_16bit_attention_runs_on_tensor_cores(device, rng, dtype):
    """float16 arrays, and uint16 arrays of bfloat16 bits, take the WMMA kernels
    (forward and backward) and give results of their own dtype."""
    to_16, to_32, tolerance = HALF_TYPES[dtype]
    B, T, H, D = 1, 20, 2, 32
    q, k, v = (to_16(rng.standard_normal((B, T, H, D)).astype(np.float32)) for _ in range(3))
    out, lse = ops.attention_forward(device(q), device(k), device(v), causal=True)
    assert out.dtype == q.dtype and lse.dtype == np.float32
    want_out, want_lse = ops.attention_forward(*map(to_32, (q, k, v)), causal=True)
    np.testing.assert_allclose(lse.host, want_lse, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_32(out.host), want_out, rtol=tolerance, atol=tolerance)
    dout = to_16(rng.standard_normal((B, T, H, D)).astype(np.float32))
    grads = ops.attention_backward(device(dout), device(q), device(k), device(v), out, lse, causal=True)
    # The CPU float32 op on the same 16-bit values, out as the kernel's 16-bit out.
    want = ops.attention_backward(*map(to_32, (dout, q, k, v, out.host)), lse.host, causal=True)
    for got, ref in zip(grads, want):
        assert got.dtype == q.dtype
        np.testing.assert_allclose(to_32(got.host), ref, rtol=tolerance, atol=tolerance)


def test_masked_lm_loss_with_device_labels(device, rng):
    N, C, V = 12, 24, 70
    hidden = rng.standard_normal((N, C)).astype(np.float32)
    weight = rng.standard_normal((V, C)).astype(np.float32) * 0.3
    bias = rng.standard_normal(V).astype(np.float32)
    labels = np.where(rng.random(N) < 0.5, rng.integers(0, V, N), -100)
    got = ops.masked_lm_loss(device(hidden), device(weight), device(bias), device(labels), return_grad=True,
                             label_smoothing=0.1)
    want = ops.masked_lm_loss(hidden, weight, bias, labels, return_grad=True, label_smoothing=0.1)
    assert got.n_valid == want.n_valid and got.n_correct == want.n_correct
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    for g, w in zip(got[3:], want[3:]):
        np.testing.assert_allclose(g.host, w, rtol=1e-4, atol=1e-5)


def test_bad_labels_are_named_before_any_kernel_runs(device, rng):
    hidden = rng.standard_normal((4, 8)).astype(np.float32)
    weight = rng.standard_normal((10, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"labels\[2\] = 10 is outside \[0, 10\)"):
        ops.masked_lm_loss(device(hidden), device(weight), None, device(np.array([1, -100, 10, 3])))


def test_host_and_device_arrays_do_not_mix(device, rng):
    x = rng.standard_normal((2, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="weight is a host array but x is a CUDA array; pass all arrays on the same"):
        ops.layer_norm_forward(device(x), np.ones(8, np.float32), None)
    with pytest.raises(TypeError, match="k is a CUDA array but q is a host array"):
        ops.attention(np.zeros((1, 2, 1, 4), np.float32), device(np.zeros((1, 2, 1, 4), np.float32)),
                      np.zeros((1, 2, 1, 4), np.float32))


def test_unknown_cuda_array_types_are_named(simt, monkeypatch):
    monkeypatch.setattr(_device, "_kernels", simt)

    class Foreign(EmulatedDeviceArray):
        pass

    with pytest.raises(TypeError, match=r"x is a CUDA array of .*Foreign, which ssl_core cannot allocate"):
        ops.gelu(Foreign(np.zeros((2, 3), np.float32)))


def test_device_kernels_check_their_arrays(device, rng):
    x = device(rng.standard_normal((2, 8)).astype(np.float32))
    with pytest.raises(TypeError, match="weight must have dtype float32, got float64"):
        ops.layer_norm_forward(x, device(np.ones(8)), None)
    with pytest.raises(ValueError, match="must have shape \\(8,\\)"):
        ops.layer_norm_forward(x, device(np.ones(7, np.float32)), None)
