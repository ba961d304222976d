"""ssl_core.integrations.torch: the kernels as differentiable torch custom operators.

Every value is held to an independent float64 reference: PyTorch's own
F.layer_norm, F.gelu, F.scaled_dot_product_attention and F.cross_entropy (or
an explicit masked softmax where SDPA has no equivalent), evaluated in
float64 with autograd for the gradients, plus torch.autograd.gradcheck's
finite differences in float32. Then the custom-operator machinery
(torch.library.opcheck, torch.compile, FakeTensorMode, torch.export), the
nn.Modules, the argument checks, and zero-copy reading of strided views.
"""

import math
import warnings
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import reference  # noqa: E402
from ssl_core.integrations.torch import (GELU, LayerNorm, _library, _tensors, attention, gelu,  # noqa: E402
                                         layer_norm, masked_lm_loss, masked_lm_loss_and_accuracy)

# float32 results against float64 references, relative to the largest magnitude
# (see assert_close): a result is a short sum of float32 products, a few ulp.
FORWARD_TOL = 1e-5
# Gradients sum over rows or keys and, in softmax and LayerNorm backward,
# subtract nearly equal terms: a few more roundings (tests/test_attention.py).
BACKWARD_TOL = 1e-4
GELU_TOL = 2e-6     # one elementwise function of one float32 value
LOSS_TOL = 2e-6     # tests/test_masked_lm_loss.py's bounds
LOSS_GRAD_TOL = 2e-5


def assert_close(got, want, tol, name=""):
    """A float32 result against a float64 one: rtol = tol, atol = tol * max(|want|, 1)."""
    assert got.dtype == torch.float32, name
    assert got.shape == want.shape, name
    want = want.detach()
    finite = want[torch.isfinite(want)]
    size = max(finite.abs().max().item() if finite.numel() else 0.0, 1.0)
    torch.testing.assert_close(got.detach().double(), want, rtol=tol, atol=tol * size, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def randn(gen, *shape, scale=1.0, requires_grad=True):
    return (torch.randn(*shape, generator=gen) * scale).requires_grad_(requires_grad)


def f64(t):
    """A float64 leaf copy of t, needing grad if t does."""
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def grads(output, inputs, dout):
    """Gradients of sum(dout * output) with respect to inputs (None kept as None)."""
    present = [t for t in inputs if t is not None]
    found = iter(torch.autograd.grad(output, present, dout))
    return [None if t is None else next(found) for t in inputs]


def check_grads(got_out, want_out, ours, theirs, tol, gen, names):
    """Backpropagates one random dout through both outputs and compares the gradients."""
    dout = torch.randn(got_out.shape, generator=gen)
    for name, got, want in zip(names, grads(got_out, ours, dout), grads(want_out, theirs, dout.double())):
        if want is None:
            assert got is None, name
        else:
            assert_close(got, want, tol, name)


def gradcheck32(fn, inputs, eps=4e-3, atol=1e-3, rtol=1e-2):
    """torch.autograd.gradcheck on float32 inputs.

    The central difference (f(x + eps) - f(x - eps)) / 2eps has a truncation
    error of about eps^2 |f'''| / 6 and a rounding error of about u |f| / eps,
    u ~ 3e-7 being a few float32 roundings of the kernel's O(1) outputs. With
    eps = 4e-3 these are ~3e-6 and ~1e-4, so atol = 1e-3 and rtol = 1e-2 leave
    a margin of ten while a wrong gradient term (O(0.1) on these inputs) still
    fails. gradcheck warns that float32 inputs will "likely fail": silenced
    here only, since the tolerances are chosen for float32.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Input #\d+ requires gradient and is not a double precision",
                                category=UserWarning)
        assert torch.autograd.gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol)


# ------------------------------------------------------------- references --

def reference_attention(q, k, v, causal=False, key_lengths=None, prefix_lengths=None, mask=None, scale=None,
                        keep=None, dropout_p=0.0):
    """softmax(q k^T * scale, over the allowed keys) v in float64 torch, (B, Tq, H, D)
    layout; a query with no allowed key gives 0. keep: a bool (B, H, Tq, Tk)
    dropout mask, kept weights scaled by 1 / (1 - dropout_p)."""
    q, k, v = (t.double() for t in (q, k, v))
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    i = torch.arange(Tq)[:, None]
    j = torch.arange(Tk)
    allowed = torch.ones(B, H, Tq, Tk, dtype=torch.bool)
    if key_lengths is not None:
        allowed = allowed & (j < key_lengths.long()[:, None, None, None])
    if mask is not None:
        allowed = allowed & mask.broadcast_to(B, H, Tq, Tk)
    if causal or prefix_lengths is not None:
        visible = (j <= i + (Tk - Tq)).expand(B, H, Tq, Tk)  # bottom-right aligned
        if prefix_lengths is not None:
            visible = visible | (j < prefix_lengths.long()[:, None, None, None])
        allowed = allowed & visible
    empty = ~allowed.any(-1, keepdim=True)
    s = torch.where(allowed, s, -math.inf)
    s = torch.where(empty, 0.0, s)  # no NaN (nor NaN gradient) from an all -inf row
    p = torch.where(empty, 0.0, torch.softmax(s, -1))
    if keep is not None:
        p = p * keep / (1 - dropout_p)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def attention_inputs(gen, B, Tq, Tk, H, D):
    return randn(gen, B, Tq, H, D), randn(gen, B, Tk, H, D), randn(gen, B, Tk, H, D)


def dropout_keep(q, k, dropout_p, seed, **options):
    """The kernel's dropout mask, bool (B, H, Tq, Tk), read off its output for
    one-hot values: with v[b, j, h] = e_j (needs D >= Tk), out[b, i, h, j] is
    the weight of key j after dropout, zero where it was dropped."""
    B, Tk, H, D = k.shape
    assert D >= Tk
    probe = torch.zeros(B, Tk, H, D)
    probe[:, torch.arange(Tk), :, torch.arange(Tk)] = 1.0
    with torch.no_grad():
        weights = attention(q, k, probe, dropout_p=dropout_p, seed=seed, **options)[..., :Tk]
    return weights.permute(0, 2, 1, 3) != 0


# ------------------------------------------------------------- LayerNorm --

@pytest.mark.parametrize("with_weight,with_bias,eps", [(True, True, 1e-5), (True, False, 1e-5),
                                                       (False, True, 1e-5), (False, False, 1e-5),
                                                       (True, True, 0.25)])
def test_layer_norm_matches_float64(gen, with_weight, with_bias, eps):
    C = 48
    x = (randn(gen, 2, 7, C, scale=3.0, requires_grad=False) + 1.5).requires_grad_()  # mean far from 0
    weight = randn(gen, C) if with_weight else None
    bias = randn(gen, C) if with_bias else None
    y = layer_norm(x, weight, bias, eps)
    want = F.layer_norm(f64(x), (C,), f64(weight), f64(bias), eps)
    assert_close(y, want, FORWARD_TOL, "y")
    # with or without weight and bias, gradients reach exactly the inputs given
    theirs = [f64(t) for t in (x, weight, bias)]
    want = F.layer_norm(theirs[0], (C,), theirs[1], theirs[2], eps)
    check_grads(y, want, [x, weight, bias], theirs, BACKWARD_TOL, gen, ["dx", "dweight", "dbias"])


@pytest.mark.parametrize("how", ["sum", "transposed", "expanded"])
def test_layer_norm_backward_with_non_contiguous_upstream_gradient(gen, how):
    """autograd hands the backward what the graph gives: y.sum() a stride-0
    expansion, y.transpose(...) a transposed gradient."""
    C = 16
    x, weight, bias = randn(gen, 3, 5, C), randn(gen, C), randn(gen, C)
    theirs = [f64(t) for t in (x, weight, bias)]
    u = torch.randn(3, C, 5, generator=gen)

    def loss(y):
        if how == "sum":
            return y.sum()
        if how == "transposed":
            return (y.transpose(1, 2) * u.to(y.dtype)).sum()
        return (y * u[:1, :, :1].to(y.dtype).transpose(1, 2).expand_as(y)).sum()

    got = torch.autograd.grad(loss(layer_norm(x, weight, bias)), [x, weight, bias])
    want = torch.autograd.grad(loss(F.layer_norm(theirs[0], (C,), theirs[1], theirs[2])), theirs)
    for name, g, w in zip(["dx", "dweight", "dbias"], got, want):
        assert_close(g, w, BACKWARD_TOL, name)


def test_layer_norm_gradcheck(gen):
    x, weight, bias = randn(gen, 2, 3, 6), randn(gen, 6), randn(gen, 6)
    gradcheck32(lambda x, w, b: layer_norm(x, w, b), (x, weight, bias))


# ------------------------------------------------------------------ GELU --

@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_float64(gen, approximate, with_bias):
    C = 40
    x = randn(gen, 3, 5, C, scale=3.0)  # the negative tail, the knee and the near-linear part
    bias = randn(gen, C) if with_bias else None
    y = gelu(x, approximate, bias=bias)
    theirs = [f64(x), f64(bias)]
    want = F.gelu(theirs[0] + theirs[1] if with_bias else theirs[0], approximate=approximate)
    assert_close(y, want, GELU_TOL, "y")
    check_grads(y, want, [x, bias], theirs, 1e-5, gen, ["dx", "dbias"])


def test_gelu_approximations_differ(gen):
    """'none' and 'tanh' are different functions (so the argument reaches the kernel)."""
    x = randn(gen, 64, scale=3.0, requires_grad=False)
    assert (gelu(x, "none") - gelu(x, "tanh")).abs().max() > 1e-4


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_gradcheck(gen, approximate):
    x, bias = randn(gen, 3, 5, scale=2.0), randn(gen, 5)
    gradcheck32(lambda x, b: gelu(x, approximate, bias=b), (x, bias))
    gradcheck32(lambda x: gelu(x, approximate), (x,))


# ------------------------------------------------------------- attention --

def sdpa_reference(q, k, v, **kwargs):
    """F.scaled_dot_product_attention in float64 on the (B, H, T, D) transposes."""
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), **kwargs)
    return out.transpose(1, 2)


@pytest.mark.parametrize("case", ["plain", "causal", "mask_b1qk", "mask_qk", "scale"])
def test_attention_matches_sdpa(gen, case):
    B, T, H, D = 2, 9, 3, 16
    q, k, v = attention_inputs(gen, B, T, T, H, D)
    ours, theirs = {}, {}
    if case == "causal":
        ours, theirs = dict(causal=True), dict(is_causal=True)
    elif case.startswith("mask"):
        shape = (B, 1, T, T) if case == "mask_b1qk" else (T, T)
        mask = (torch.rand(shape, generator=gen) < 0.6) | torch.eye(T, dtype=torch.bool)  # no empty row
        ours, theirs = dict(mask=mask), dict(attn_mask=mask)
    elif case == "scale":
        ours, theirs = dict(scale=0.7), dict(scale=0.7)
    out = attention(q, k, v, **ours)
    q64, k64, v64 = (f64(t) for t in (q, k, v))
    want = sdpa_reference(q64, k64, v64, **theirs)
    assert_close(out, want, FORWARD_TOL, "out")
    check_grads(out, want, [q, k, v], [q64, k64, v64], BACKWARD_TOL, gen, ["dq", "dk", "dv"])


def test_explicit_reference_agrees_with_sdpa(gen):
    """The explicit reference (used where SDPA has no equivalent) is itself right."""
    q, k, v = (f64(t) for t in attention_inputs(gen, 2, 6, 6, 2, 8))
    mask = (torch.rand(2, 1, 6, 6, generator=gen) < 0.6) | torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(reference_attention(q, k, v, causal=True, mask=mask),
                               sdpa_reference(q, k, v, attn_mask=mask & torch.ones(6, 6, dtype=torch.bool).tril()))


def lengths(gen, B, Tk):
    """One full, one empty (every query then sees no key), the rest random."""
    return torch.cat([torch.tensor([Tk, 0]), torch.randint(0, Tk + 1, (B - 2,), generator=gen)])


# name: (B, Tq, Tk, H, D, options(gen, B, H, Tq, Tk))
MASK_CASES = {
    "causal_fewer_queries": (2, 3, 7, 2, 8, lambda g, B, H, Tq, Tk: dict(causal=True)),
    "causal_more_queries": (2, 7, 3, 2, 8, lambda g, B, H, Tq, Tk: dict(causal=True)),  # 4 queries see nothing
    "key_lengths": (3, 5, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(key_lengths=lengths(g, B, Tk))),
    "key_lengths_int32_causal": (3, 6, 6, 1, 8, lambda g, B, H, Tq, Tk: dict(
        causal=True, key_lengths=lengths(g, B, Tk).to(torch.int32))),
    "prefix": (2, 6, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(prefix_lengths=torch.tensor([2, 5]))),
    "prefix_causal_fewer_queries": (2, 4, 7, 2, 8, lambda g, B, H, Tq, Tk: dict(
        causal=True, prefix_lengths=torch.tensor([5, 1], dtype=torch.int16))),
    "prefix_lengths_mask": (3, 5, 5, 2, 8, lambda g, B, H, Tq, Tk: dict(
        prefix_lengths=lengths(g, B, Tk), key_lengths=lengths(g, B, Tk).flip(0),
        mask=torch.rand(B, H, 1, Tk, generator=g) < 0.8)),
    "mask_b1qk": (2, 5, 7, 3, 8, lambda g, B, H, Tq, Tk: dict(mask=torch.rand(B, 1, Tq, Tk, generator=g) < 0.5)),
    "mask_qk": (2, 7, 4, 2, 8, lambda g, B, H, Tq, Tk: dict(mask=torch.rand(Tq, Tk, generator=g) < 0.5)),
    "mask_k": (2, 4, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(mask=torch.rand(Tk, generator=g) < 0.5)),
    "mask_expanded_stride_0": (2, 4, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(
        mask=(torch.rand(1, 1, 1, Tk, generator=g) < 0.6).expand(B, H, Tq, Tk))),
    "mask_transposed_view": (2, 4, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(
        mask=(torch.rand(Tk, Tq, generator=g) < 0.6).t())),
    "causal_lengths_mask_scale": (3, 6, 6, 2, 8, lambda g, B, H, Tq, Tk: dict(
        causal=True, key_lengths=lengths(g, B, Tk), mask=torch.rand(B, 1, Tq, Tk, generator=g) < 0.9, scale=0.9)),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_attention_masks_match_float64(gen, case):
    B, Tq, Tk, H, D, make_options = MASK_CASES[case]
    options = make_options(gen, B, H, Tq, Tk)
    q, k, v = attention_inputs(gen, B, Tq, Tk, H, D)
    out = attention(q, k, v, **options)
    assert out.shape == q.shape and out.dtype == torch.float32
    q64, k64, v64 = (f64(t) for t in (q, k, v))
    want = reference_attention(q64, k64, v64, **options)
    assert_close(out, want, FORWARD_TOL, "out")
    check_grads(out, want, [q, k, v], [q64, k64, v64], BACKWARD_TOL, gen, ["dq", "dk", "dv"])


def test_attention_query_seeing_no_key_gets_zeros_and_zero_gradients(gen):
    q, k, v = attention_inputs(gen, 2, 4, 5, 1, 8)
    out = attention(q, k, v, key_lengths=torch.tensor([5, 0]))
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (out[0] != 0).any()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()


@pytest.mark.parametrize("options", [dict(causal=True, key_lengths=torch.tensor([5, 3])),
                                     dict(prefix_lengths=torch.tensor([2, 4]),
                                          mask=torch.tensor([True, True, False, True, True]))],
                         ids=["causal_lengths", "prefix_mask"])
def test_attention_gradcheck(gen, options):
    q, k, v = attention_inputs(gen, 2, 4, 5, 2, 3)
    gradcheck32(lambda q, k, v: attention(q, k, v, **options), (q, k, v))


def test_attention_fused_qkv_slices_are_read_in_place(gen):
    """q, k and v as slices of one (B, T, 3, H, D) projection: strided views
    (row stride 3 H D), the same results as contiguous copies, and the
    gradients land in the one qkv tensor."""
    B, T, H, D = 2, 7, 2, 8
    qkv = randn(gen, B, T, 3, H, D)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous() and q.stride(1) == 3 * H * D
    out = attention(q, k, v, causal=True)
    copies = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    out_copies = attention(*copies, causal=True)
    torch.testing.assert_close(out, out_copies, rtol=0, atol=0)
    dout = torch.randn(out.shape, generator=gen)
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    for got, want in zip(dqkv.unbind(2), torch.autograd.grad(out_copies, copies, dout)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    qkv64 = f64(qkv)
    want = sdpa_reference(*qkv64.unbind(2), is_causal=True)
    assert_close(out, want, FORWARD_TOL, "out")
    (want_dqkv,) = torch.autograd.grad(want, qkv64, dout.double())
    assert_close(dqkv, want_dqkv, BACKWARD_TOL, "dqkv")


def test_attention_takes_hugging_face_layout_as_transposed_views(gen):
    """HF's (B, H, T, D) tensors, passed as .transpose(1, 2) views, as SDPA on them directly."""
    B, H, T, D = 2, 3, 6, 8
    q_hf, k_hf, v_hf = (randn(gen, B, H, T, D) for _ in range(3))
    mask = torch.rand(B, 1, T, T, generator=gen) < 0.7
    mask |= torch.eye(T, dtype=torch.bool)
    out = attention(q_hf.transpose(1, 2), k_hf.transpose(1, 2), v_hf.transpose(1, 2), mask=mask).transpose(1, 2)
    theirs = [f64(t) for t in (q_hf, k_hf, v_hf)]
    want = F.scaled_dot_product_attention(*theirs, attn_mask=mask)
    assert_close(out, want, FORWARD_TOL, "out")
    check_grads(out, want, [q_hf, k_hf, v_hf], theirs, BACKWARD_TOL, gen, ["dq", "dk", "dv"])


# ----------------------------------------------------- attention dropout --

@pytest.mark.parametrize("dropout_p,causal", [(0.2, False), (0.6, True)])
def test_attention_dropout_matches_reference_with_the_same_mask(gen, dropout_p, causal):
    """The mask read off the kernel is Philox's (tests/reference.py), and out
    and its gradients are those of a float64 reference applying that mask."""
    B, Tq, Tk, H, D, seed = 2, 5, 6, 2, 8, 2**40 + 12345
    q, k, v = attention_inputs(gen, B, Tq, Tk, H, D)
    keep = dropout_keep(q, k, dropout_p, seed, causal=causal)
    allowed = reference_attention(q, k, torch.eye(Tk)[None, :, None, :].expand(B, Tk, H, Tk), causal=causal)
    allowed = allowed.permute(0, 2, 1, 3) != 0
    want_keep = torch.from_numpy(reference.attention_keep(B, H, Tq, Tk, dropout_p, seed))
    assert torch.equal(keep, want_keep & allowed)
    assert 0 < keep.sum() < allowed.sum()  # something was dropped, something kept

    out = attention(q, k, v, causal=causal, dropout_p=dropout_p, seed=seed)
    q64, k64, v64 = (f64(t) for t in (q, k, v))
    want = reference_attention(q64, k64, v64, causal=causal, keep=want_keep, dropout_p=dropout_p)
    assert_close(out, want, FORWARD_TOL, "out")
    check_grads(out, want, [q, k, v], [q64, k64, v64], BACKWARD_TOL, gen, ["dq", "dk", "dv"])


def test_attention_dropout_gradcheck(gen):
    """Finite differences with a fixed seed: the backward regenerates the forward's mask."""
    q, k, v = attention_inputs(gen, 1, 3, 4, 2, 3)
    gradcheck32(lambda q, k, v: attention(q, k, v, causal=True, dropout_p=0.4, seed=7), (q, k, v))


def test_attention_dropout_seed_none_backward_uses_the_forward_mask(gen):
    """seed=None draws the key from torch's generator once, in the forward:
    finite differences of a function that reseeds that generator agree."""
    q, k, v = attention_inputs(gen, 1, 3, 4, 2, 3)

    def fn(q, k, v):
        torch.manual_seed(99)
        return attention(q, k, v, dropout_p=0.4)

    with torch.random.fork_rng():
        gradcheck32(fn, (q, k, v))


def test_attention_dropout_seeds(gen):
    q, k, v = attention_inputs(gen, 2, 8, 8, 2, 8)
    with torch.no_grad():
        def run(**options):
            return attention(q, k, v, dropout_p=0.3, **options)

        assert torch.equal(run(seed=5), run(seed=5))
        assert not torch.equal(run(seed=5), run(seed=6))
        assert torch.equal(run(seed=torch.tensor(5)), run(seed=5))  # a 0-dim int64 tensor is the same key
        assert torch.equal(run(seed=2**63 - 1), run(seed=2**63 - 1))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            first, second = run(), run()
            torch.manual_seed(0)
            again = run()
        assert torch.equal(first, again)
        assert not torch.equal(first, second)  # a fresh key per call
        # no dropout: the seed does not matter
        no_dropout = attention(q, k, v)
        assert torch.equal(attention(q, k, v, dropout_p=0.0, seed=1), no_dropout)
        assert torch.equal(attention(q, k, v, dropout_p=0.0, seed=2), no_dropout)


# ------------------------------------------------------- masked-LM loss --

def loss_inputs(gen, with_bias, ignore_index=-100, B=2, T=9, C=16, V=37):
    hidden, weight = randn(gen, B, T, C), randn(gen, V, C, scale=0.5)
    bias = randn(gen, V) if with_bias else None
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand(B, T, generator=gen) < 0.4] = ignore_index
    labels[0, 0] = ignore_index
    return hidden, weight, bias, labels


def reference_loss(hidden, weight, bias, labels, ignore_index=-100, label_smoothing=0.0):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    loss = F.cross_entropy(logits.reshape(-1, weight.shape[0]), labels.reshape(-1).long(),
                           ignore_index=ignore_index, label_smoothing=label_smoothing)
    valid = labels != ignore_index
    return loss, ((logits.argmax(-1) == labels) & valid).sum()


@pytest.mark.parametrize("with_bias,label_smoothing,ignore_index,labels_dtype", [
    (True, 0.0, -100, torch.int64), (False, 0.0, -100, torch.int64), (True, 0.1, -100, torch.int32),
    (False, 0.3, 5, torch.int64), (True, 0.0, 0, torch.uint8)])
def test_masked_lm_loss_matches_cross_entropy(gen, with_bias, label_smoothing, ignore_index, labels_dtype):
    """ignore_index=5 or 0 is also a class: only its positions are left out."""
    hidden, weight, bias, labels = loss_inputs(gen, with_bias, ignore_index)
    labels = labels.to(labels_dtype)
    loss, n_correct = masked_lm_loss_and_accuracy(hidden, weight, bias, labels, ignore_index=ignore_index,
                                                  label_smoothing=label_smoothing)
    theirs = [f64(t) for t in (hidden, weight, bias)]
    want, want_correct = reference_loss(*theirs, labels, ignore_index, label_smoothing)
    assert loss.shape == () and loss.dtype == torch.float32
    assert n_correct.shape == () and n_correct.dtype == torch.int64 and n_correct.item() == want_correct.item()
    assert_close(loss, want, LOSS_TOL, "loss")
    # through a scaled loss: the backward multiplies the stored gradients by the upstream one
    got = torch.autograd.grad(2.5 * loss, [t for t in (hidden, weight, bias) if t is not None])
    want_grads = torch.autograd.grad(2.5 * want, [t for t in theirs if t is not None])
    for name, g, w in zip(["d_hidden", "d_weight", "d_bias"], got, want_grads):
        assert_close(g, w, LOSS_GRAD_TOL, name)
    assert torch.equal(masked_lm_loss(hidden, weight, bias, labels, ignore_index=ignore_index,
                                      label_smoothing=label_smoothing), loss)


def test_masked_lm_loss_has_accuracy_worth_checking(gen):
    """A head that predicts its labels: n_correct counts them, not just zero."""
    hidden, weight, bias, labels = loss_inputs(gen, True)
    labels = torch.where(labels == -100, labels, (hidden @ weight.T + bias).argmax(-1))
    loss, n_correct = masked_lm_loss_and_accuracy(hidden, weight, bias, labels)
    assert n_correct.item() == (labels != -100).sum().item() > 0


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_masked_lm_loss_with_every_position_ignored(gen, label_smoothing):
    hidden, weight, bias, labels = loss_inputs(gen, True)
    labels = torch.full_like(labels, -100)
    garbage = torch.full((4 * hidden.numel() + weight.numel(),), 7.0)  # freed memory the outputs might reuse
    del garbage
    loss, n_correct = masked_lm_loss_and_accuracy(hidden, weight, bias, labels, label_smoothing=label_smoothing)
    assert loss.item() == 0.0 and n_correct.item() == 0
    for name, g in zip(["d_hidden", "d_weight", "d_bias"], torch.autograd.grad(loss, (hidden, weight, bias))):
        assert torch.equal(g, torch.zeros_like(g)), name


def test_masked_lm_loss_without_grad(gen):
    """Under no_grad nothing is differentiated (no gradients computed) and the
    loss is the same; the raw operator called without gradients says so on backward."""
    hidden, weight, bias, labels = loss_inputs(gen, True)
    loss = masked_lm_loss(hidden, weight, bias, labels)
    with torch.no_grad():
        quiet = masked_lm_loss(hidden, weight, bias, labels)
    assert not quiet.requires_grad and quiet.item() == loss.item()
    raw = _library.masked_lm_loss(hidden, weight, bias, labels, -100, 0.0, False)[0]
    assert raw.item() == loss.item()
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        raw.backward()


def test_masked_lm_loss_gradcheck(gen):
    hidden, weight, bias, labels = loss_inputs(gen, True, B=2, T=3, C=4, V=5)
    labels[1, 1] = 3  # at least one label besides the ignored (0, 0)
    gradcheck32(lambda h, w, b: masked_lm_loss(h, w, b, labels, label_smoothing=0.1), (hidden, weight, bias))


# ------------------------------------------------------------ zero-copy --

def test_kernel_view_is_the_tensors_memory():
    """What the CPU kernels are given: a NumPy view of the tensor's memory
    (same address, same strides), not a copy."""
    qkv = torch.randn(2, 5, 3, 2, 8)
    k = qkv[:, :, 1]
    view = _tensors.kernel_view(k)
    assert view.ctypes.data == k.data_ptr()
    assert view.strides == tuple(4 * s for s in k.stride()) and view.shape == tuple(k.shape)
    view[1, 2, 0, 3] = 42.0
    assert qkv[1, 2, 1, 0, 3].item() == 42.0
    assert _tensors.kernel_view(None) is None


def test_strided_views_give_the_results_of_their_contiguous_copies(gen):
    """Rows any stride apart (a slice of a wider tensor, at an offset)."""
    C = 24
    wide = randn(gen, 4, 3, 2 * C + 5, requires_grad=False)
    x = wide[..., 5:5 + C]
    assert not x.is_contiguous() and x.storage_offset() == 5
    dense = x.contiguous()
    weight, bias = randn(gen, C, requires_grad=False), randn(gen, C, requires_grad=False)
    assert torch.equal(layer_norm(x, weight, bias), layer_norm(dense, weight, bias))
    assert torch.equal(gelu(x, "tanh", bias=bias), gelu(dense, "tanh", bias=bias))
    head = randn(gen, 11, C, requires_grad=False)
    labels = torch.randint(0, 11, (4, 3), generator=gen)
    assert torch.equal(masked_lm_loss(x, head, None, labels), masked_lm_loss(dense, head, None, labels))
    # and the gradients of the strided input, through every op
    for op in (lambda t: layer_norm(t, weight, bias), lambda t: gelu(t, bias=bias)):
        leaf_wide, leaf_dense = wide.clone().requires_grad_(), dense.clone().requires_grad_()
        dy = torch.randn(dense.shape, generator=gen)
        (g_wide,) = torch.autograd.grad(op(leaf_wide[..., 5:5 + C]), leaf_wide, dy)
        (g_dense,) = torch.autograd.grad(op(leaf_dense), leaf_dense, dy)
        assert torch.equal(g_wide[..., 5:5 + C], g_dense)
        assert (g_wide[..., :5] == 0).all() and (g_wide[..., 5 + C:] == 0).all()


# ------------------------------------------------------- double backward --

def test_double_backward_is_a_clear_error(gen):
    """None of the backwards is differentiable: differentiating a gradient
    again must fail loudly, naming the operator, not give a wrong number."""
    x = randn(gen, 3, 8)
    q, k, v = attention_inputs(gen, 1, 3, 3, 1, 4)
    for fn, inputs in [(lambda x: layer_norm(x), (x,)), (lambda x: gelu(x, "tanh"), (x,)),
                       (lambda q, k, v: attention(q, k, v), (q, k, v))]:
        y = fn(*inputs)
        first = torch.autograd.grad((y * y).sum(), inputs, create_graph=True)
        with pytest.raises(RuntimeError, match=r"ssl_core\.\w+_backward.*no autograd formula was registered"):
            torch.autograd.grad(sum(g.sum() for g in first), inputs)


def test_masked_lm_loss_double_backward_is_an_error_or_right(gen):
    hidden, weight, _, labels = loss_inputs(gen, False, B=1, T=5, C=8, V=11)
    loss = masked_lm_loss(hidden, weight, None, labels)
    (d_hidden,) = torch.autograd.grad(loss, hidden, create_graph=True)
    try:
        (got,) = torch.autograd.grad(loss + (d_hidden ** 2).sum(), hidden)
    except RuntimeError:
        return  # a clear error is acceptable
    h64, w64 = f64(hidden), f64(weight)
    loss64 = reference_loss(h64, w64, None, labels)[0]
    (d64,) = torch.autograd.grad(loss64, h64, create_graph=True)
    (want,) = torch.autograd.grad(loss64 + (d64 ** 2).sum(), h64)
    assert_close(got, want, LOSS_GRAD_TOL, "d(loss + |d_hidden|^2)/d_hidden")


# ------------------------------------------------------------- opcheck --

def opcheck_samples(name):
    """(operator, args) samples for torch.library.opcheck, built fresh."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s, grad=True: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    if name == "layer_norm":
        return [(r(3, 8), r(8), r(8), 1e-5), (r(2, 3, 8), None, None, 0.1)]
    if name == "layer_norm_backward":
        x, w = r(3, 8, grad=False), r(8, grad=False)
        _, mean, rstd = torch.ops.ssl_core.layer_norm(x, w, None, 1e-5)
        return [(r(3, 8, grad=False), x, w, mean, rstd), (r(3, 8, grad=False), x, None, mean, rstd)]
    if name == "gelu":
        return [(r(3, 8), r(8), "tanh"), (r(2, 3, 8), None, "none")]
    if name == "gelu_backward":
        return [(r(3, 8, grad=False), r(3, 8, grad=False), r(8, grad=False), "none")]
    seed = torch.tensor(11)
    q, k, v = r(2, 4, 2, 8), r(2, 5, 2, 8), r(2, 5, 2, 8)
    samples = [(q, k, v, torch.tensor([5, 2]), None, None, True, 0.35, 0.0, seed),
               (q, k, v, None, torch.tensor([1, 3]), torch.rand(2, 1, 4, 5, generator=g) < 0.8, False, 0.35, 0.2,
                seed)]
    if name == "attention":
        return samples
    if name == "attention_backward":
        result = []
        for sample in samples:
            plain = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in sample)
            out, lse = torch.ops.ssl_core.attention(*plain)
            result.append((torch.randn(out.shape, generator=g), *plain[:3], out, lse, *plain[3:]))
        return result
    if name == "masked_lm_loss_backward":
        shapes = [(), (2, 3, 8), (11, 8), (2, 3, 8), (11, 8)]  # no derivative: inputs without grad
        return [(*(r(s, grad=False) for s in shapes), r(11, grad=False)),
                (*(r(s, grad=False) for s in shapes), r(0, grad=False))]
    assert name == "masked_lm_loss"
    labels = torch.tensor([[1, -100, 3], [10, 0, -100]])
    return [(r(2, 3, 8), r(11, 8), r(11), labels, -100, 0.1, True),
            (r(2, 3, 8), r(11, 8), None, labels, -100, 0.0, True),
            (r(2, 3, 8, grad=False), r(11, 8, grad=False), None, labels, -100, 0.0, False)]


@pytest.mark.parametrize("name", ["layer_norm", "layer_norm_backward", "gelu", "gelu_backward", "attention",
                                  "attention_backward", "masked_lm_loss", "masked_lm_loss_backward"])
def test_opcheck(name):
    """Schema, fake implementation, autograd registration and AOT dispatch of each operator."""
    op = getattr(torch.ops.ssl_core, name)
    for args in opcheck_samples(name):
        torch.library.opcheck(op, args)


# -------------------------------------------- torch.compile, fake, export --

def every_op(x, w, b, q, k, v, key_lengths, mask, head, head_bias, labels):
    # eps given: dynamic=True cannot trace the default (test_torch_compile_dynamic_layer_norm_default_eps)
    y = gelu(layer_norm(x, w, b, 1e-5), "tanh", bias=b)
    a = attention(q, k, v, causal=True, key_lengths=key_lengths, mask=mask, dropout_p=0.25, seed=3)
    a2 = attention(q, k, v, dropout_p=0.5)  # seed=None: a key from torch's generator
    loss, n_correct = masked_lm_loss_and_accuracy(y, head, head_bias, labels, label_smoothing=0.1)
    return loss, n_correct, y, a, a2


def every_op_inputs(seed=0, T=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    labels = torch.randint(0, 11, (2, T), generator=g)
    labels[0, 0] = -100
    return (r(2, T, 8), r(8), r(8), r(2, T, 2, 8), r(2, T + 1, 2, 8), r(2, T + 1, 2, 8), torch.tensor([T + 1, 2]),
            torch.rand(T, T + 1, generator=g) < 0.8, r(11, 8), r(11), labels)


def run_with_grads(fn, inputs):
    """fn's outputs and the gradients of a combination of them, after torch.manual_seed(5)."""
    torch.manual_seed(5)
    loss, n_correct, y, a, a2 = fn(*inputs)
    total = loss + (y * y).mean() + a.square().mean() + a2.mean()
    leaves = [t for t in inputs if t.requires_grad]
    return [loss, n_correct, y, a, a2, *torch.autograd.grad(total, leaves)]


def check_compiled(backend, tol, **compile_options):
    torch._dynamo.reset()
    compiled = torch.compile(every_op, fullgraph=True, backend=backend, **compile_options)
    with torch.random.fork_rng():
        for T in (4, 6) if compile_options.get("dynamic") else (4,):
            eager, got = run_with_grads(every_op, every_op_inputs(T=T)), run_with_grads(compiled, every_op_inputs(T=T))
            for i, (e, c) in enumerate(zip(eager, got)):
                assert c.shape == e.shape and c.dtype == e.dtype, i
                torch.testing.assert_close(c, e, rtol=tol, atol=tol, msg=lambda m: f"result {i}: {m}")
    torch._dynamo.reset()


def test_torch_compile_aot_eager_matches_eager():
    """fullgraph: no graph break in any wrapper; the same outputs (dropout with
    seed=None too, after torch.manual_seed) and gradients as eager."""
    check_compiled("aot_eager", 1e-6)


def test_torch_compile_dynamic_shapes():
    check_compiled("aot_eager", 1e-6, dynamic=True)


@pytest.mark.parametrize("how", ["default_eps", "module"])
def test_torch_compile_dynamic_layer_norm_default_eps(how):
    fn = LayerNorm(8) if how == "module" else layer_norm
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    try:
        for n in (3, 5):
            x = torch.randn(n, 8)
            torch.testing.assert_close(compiled(x), fn(x))
    finally:
        torch._dynamo.reset()


# Inductor compiles C++ with the system compiler (g++ is here): about 15 s on
# 2 cores with a cold cache, 2 s with its on-disk cache warm, hence `slow`.
# Its own code emits a DeprecationWarning (torch.jit.script_method), not
# ours: ignored by message.
# Inductor draws random numbers its own way unless fallback_random is set: with
# seed=None it picks another key than eager would (repeatable under
# torch.manual_seed all the same), as it does for torch's own dropout.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_inductor_matches_eager():
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        check_compiled("inductor", 1e-5)  # inductor fuses and reorders the pointwise glue


def test_fake_tensor_mode_gives_shapes_and_dtypes():
    """The fake implementations (also under autograd), without running a kernel."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode() as mode:
        inputs = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in every_op_inputs()]
        inputs = [t.requires_grad_() if t.is_floating_point() else t for t in inputs]
        loss, n_correct, y, a, a2 = every_op(*inputs)
        assert all(isinstance(t, FakeTensor) for t in (loss, n_correct, y, a, a2))
        assert (loss.shape, loss.dtype) == ((), torch.float32)
        assert (n_correct.shape, n_correct.dtype) == ((), torch.int64)
        assert y.shape == (2, 4, 8) and a.shape == a2.shape == (2, 4, 2, 8)
        grads_ = torch.autograd.grad(loss + y.sum() + a.sum() + a2.sum(), [t for t in inputs if t.requires_grad])
        assert [g.shape for g in grads_] == [t.shape for t in inputs if t.requires_grad]
        mean_rstd = torch.ops.ssl_core.layer_norm(inputs[0], None, None, 1e-5)
        assert [t.shape for t in mean_rstd] == [(2, 4, 8), (2, 4), (2, 4)]
        out, lse = torch.ops.ssl_core.attention(*inputs[3:6], None, None, None, False, 1.0, 0.0, torch.tensor(0))
        assert out.shape == (2, 4, 2, 8) and lse.shape == (2, 2, 4) and lse.dtype == torch.float32


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.act = LayerNorm(8), GELU("tanh")
        self.head = torch.nn.Parameter(torch.randn(11, 8))

    def forward(self, x, q, k, v, key_lengths, labels):
        y = self.act(self.norm(x))
        a = attention(q, k, v, key_lengths=key_lengths, mask=torch.ones(3, 5, dtype=torch.bool))
        loss, n_correct = masked_lm_loss_and_accuracy(y, self.head, None, labels)
        return y, a, loss, n_correct


def test_torch_export():
    g = torch.Generator().manual_seed(3)
    args = (torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 2, 4, generator=g),
            torch.randn(2, 5, 2, 4, generator=g), torch.randn(2, 5, 2, 4, generator=g), torch.tensor([4, 2]),
            torch.tensor([[1, -100, 3], [10, 0, 2]]))
    module = Head()
    program = torch.export.export(module, args)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"ssl_core.layer_norm.default", "ssl_core.gelu.default", "ssl_core.attention.default",
            "ssl_core.masked_lm_loss.default"} <= targets
    got, want = program.module()(*args), module(*args)
    assert [t.shape for t in got] == [(2, 3, 8), (2, 3, 2, 4), (), ()]
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w, rtol=0, atol=0)


# --------------------------------------------------------------- modules --

@pytest.mark.parametrize("options", [dict(), dict(bias=False), dict(elementwise_affine=False)],
                         ids=["affine", "no_bias", "no_affine"])
def test_layer_norm_like_shares_parameters(gen, options):
    C = 12
    original = torch.nn.LayerNorm(C, eps=1e-3, **options)
    with torch.no_grad():
        for p in original.parameters():
            p.normal_(generator=gen)
    ours = LayerNorm.like(original)
    assert ours.weight is original.weight and ours.bias is original.bias
    assert [id(p) for p in ours.parameters()] == [id(p) for p in original.parameters()]
    assert ours.eps == original.eps and ours.normalized_shape == original.normalized_shape
    assert list(ours.state_dict()) == list(original.state_dict())
    x = randn(gen, 3, 4, C)
    y = ours(x)
    x64 = f64(x)
    params64 = [f64(p) for p in (original.weight, original.bias)]
    want = F.layer_norm(x64, (C,), *params64, eps=1e-3)
    assert_close(y, want, FORWARD_TOL, "y")
    dy = torch.randn(y.shape, generator=gen)
    y.backward(dy)
    want.backward(dy.double())
    assert_close(x.grad, x64.grad, BACKWARD_TOL, "dx")
    for p, p64 in zip((original.weight, original.bias), params64):
        if p is not None:  # the gradient lands in the shared parameter
            assert_close(p.grad, p64.grad, BACKWARD_TOL, "dparam")
    with torch.no_grad():  # and a change to the original is seen by ours
        if original.weight is not None:
            original.weight.mul_(2)
            assert_close(ours(x), F.layer_norm(x64, (C,), 2 * params64[0], params64[1], eps=1e-3), FORWARD_TOL)


@pytest.mark.parametrize("options", [dict(), dict(bias=False), dict(elementwise_affine=False)],
                         ids=["affine", "no_bias", "no_affine"])
def test_layer_norm_module_is_a_drop_in_replacement(gen, options):
    ours, theirs = LayerNorm(16, **options), torch.nn.LayerNorm(16, **options)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(generator=gen)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = randn(gen, 5, 16, requires_grad=False)
    want = F.layer_norm(x.double(), (16,), f64(theirs.weight), f64(theirs.bias))
    assert_close(ours(x), want, FORWARD_TOL)
    with pytest.raises(ValueError, match="normalized_shape must be one axis"):
        LayerNorm((3, 4))


def test_layer_norm_module_rejects_an_input_of_another_width():
    with pytest.raises((ValueError, RuntimeError), match="normalized_shape|8"):
        LayerNorm(8, elementwise_affine=False)(torch.randn(2, 5))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_module(gen, approximate):
    module = GELU(approximate)
    assert list(module.parameters()) == [] and f"approximate='{approximate}'" in repr(module)
    x = randn(gen, 4, 9, scale=3.0)
    y = module(x)
    x64 = f64(x)
    want = torch.nn.GELU(approximate)(x64)
    assert_close(y, want, GELU_TOL)
    check_grads(y, want, [x], [x64], 1e-5, gen, ["dx"])
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        GELU("erf")


# ----------------------------------------------------------- bad inputs --

def small():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return SimpleNamespace(x=r(4, 8), w=r(8), q=r(2, 5, 2, 4), k=r(2, 6, 2, 4), v=r(2, 6, 2, 4), h=r(2, 3, 8),
                           head=r(11, 8), hb=r(11), labels=torch.tensor([[1, 2, -100], [10, 0, 4]]))


def _attn(s, **options):
    return attention(s.q, s.k, s.v, **options)


def _loss(s, hidden=None, weight=None, bias=None, labels=None, **options):
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return masked_lm_loss(pick(hidden, s.h), pick(weight, s.head), bias, pick(labels, s.labels), **options)


META = torch.device("meta")  # stands in for another device (a CUDA one here has none)

# (id, call, exception, match): every message names the argument at fault.
BAD_CALLS = [
    ("ln_x_list", lambda s: layer_norm(s.x.tolist()), TypeError, r"^x must be a torch\.Tensor, got builtins\.list"),
    ("ln_x_numpy", lambda s: layer_norm(s.x.numpy()), TypeError, r"^x must be a torch\.Tensor"),
    ("ln_x_float64", lambda s: layer_norm(s.x.double()), TypeError, r"^x must be a float32 tensor, got float64"),
    ("ln_x_float16", lambda s: layer_norm(s.x.half()), TypeError, r"^x must be a float32 tensor, got float16"),
    ("ln_x_int", lambda s: layer_norm(s.x.long()), TypeError, r"^x must be a float32 tensor, got int64"),
    ("ln_x_meta", lambda s: layer_norm(s.x.to(META)), TypeError, r"^x is on device meta"),
    ("ln_weight_meta", lambda s: layer_norm(s.x, s.w.to(META)), TypeError, r"^weight is on device meta"),
    ("ln_bias_float64", lambda s: layer_norm(s.x, None, s.w.double()), TypeError, r"^bias must be a float32"),
    ("ln_x_transposed", lambda s: layer_norm(s.x.t()), ValueError, r"^x must have a contiguous last axis"),
    ("ln_weight_shape", lambda s: layer_norm(s.x, s.w[:7]), ValueError, r"^weight must have shape \(8,\)"),
    ("ln_bias_2d", lambda s: layer_norm(s.x, None, s.w[None]), ValueError, r"^bias must have shape \(8,\)"),
    ("ln_eps_negative", lambda s: layer_norm(s.x, eps=-1e-5), ValueError, r"^eps must be finite and >= 0"),
    ("ln_eps_nan", lambda s: layer_norm(s.x, eps=math.nan), ValueError, r"^eps must be finite and >= 0"),
    ("ln_eps_inf", lambda s: layer_norm(s.x, eps=math.inf), ValueError, r"^eps must be finite and >= 0"),
    ("gelu_x_list", lambda s: gelu([1.0]), TypeError, r"^x must be a torch\.Tensor"),
    ("gelu_x_float64", lambda s: gelu(s.x.double()), TypeError, r"^x must be a float32 tensor, got float64"),
    ("gelu_x_int", lambda s: gelu(s.x.int()), TypeError, r"^x must be a float32 tensor, got int32"),
    ("gelu_bias_float16", lambda s: gelu(s.x, bias=s.w.half()), TypeError, r"^bias must be a float32"),
    ("gelu_bias_meta", lambda s: gelu(s.x, bias=s.w.to(META)), TypeError, r"^bias is on device meta"),
    ("gelu_bias_shape", lambda s: gelu(s.x, bias=s.w[:5]), ValueError, r"^bias must have shape \(8,\)"),
    ("gelu_approximate", lambda s: gelu(s.x, "erf"), ValueError, r"^approximate must be 'none' or 'tanh', got 'erf'"),
    ("gelu_approximate_none", lambda s: gelu(s.x, None), ValueError, r"^approximate must be 'none' or 'tanh'"),
    ("gelu_x_transposed", lambda s: gelu(s.x.t()), ValueError, r"^x must have a contiguous last axis"),
    ("attn_q_list", lambda s: attention(s.q.tolist(), s.k, s.v), TypeError, r"^q must be a torch\.Tensor"),
    ("attn_q_int", lambda s: attention(s.q.long(), s.k, s.v), TypeError, r"^q must be a float32 or float16"),
    ("attn_q_float64", lambda s: attention(s.q.double(), s.k, s.v), TypeError, r"^q must be a float32 or float16"),
    ("attn_k_float64", lambda s: attention(s.q, s.k.double(), s.v), TypeError, r"^k must be a float32 tensor"),
    ("attn_v_float16", lambda s: attention(s.q, s.k, s.v.half()), TypeError, r"^v must be a float32 tensor"),
    ("attn_float16_on_cpu", lambda s: attention(s.q.half(), s.k.half(), s.v.half()), TypeError,
     r"^q, k and v are float16 on the CPU"),
    ("attn_bfloat16_on_cpu", lambda s: attention(*(t.bfloat16() for t in (s.q, s.k, s.v))), TypeError,
     r"^q, k and v are bfloat16 on the CPU; the CPU kernels compute in float32"),
    ("attn_k_meta", lambda s: attention(s.q, s.k.to(META), s.v), TypeError, r"^k is on device meta"),
    ("attn_q_meta", lambda s: attention(s.q.to(META), s.k.to(META), s.v.to(META)), TypeError,
     r"^q is on device meta"),
    ("attn_v_transposed", lambda s: attention(s.q, s.k, s.v.transpose(-1, -2).contiguous().transpose(-1, -2)),
     ValueError, r"^v must have a contiguous last axis"),
    ("attn_q_3d", lambda s: attention(s.q[0], s.k[0], s.v[0]), ValueError, r"^q, k and v must have 4 dimensions"),
    ("attn_k_batch", lambda s: attention(s.q, s.k[:1], s.v[:1]), ValueError, r"^q \(2, 5, 2, 4\) and k"),
    ("attn_v_length", lambda s: attention(s.q, s.k, s.v[:, :5]), ValueError, r"^k and v must have the same shape"),
    ("attn_mask_int", lambda s: _attn(s, mask=torch.ones(5, 6, dtype=torch.int64)), TypeError,
     r"^mask must be a bool tensor, got int64"),
    ("attn_mask_float", lambda s: _attn(s, mask=torch.zeros(5, 6)), TypeError, r"^mask must be a bool tensor"),
    ("attn_mask_meta", lambda s: _attn(s, mask=torch.ones(5, 6, dtype=torch.bool, device=META)), TypeError,
     r"^mask is on device meta"),
    ("attn_mask_shape", lambda s: _attn(s, mask=torch.ones(5, 5, dtype=torch.bool)), ValueError,
     r"^mask of shape \(5, 5\) cannot be broadcast"),
    ("attn_key_lengths_float", lambda s: _attn(s, key_lengths=torch.tensor([1.0, 2.0])), TypeError,
     r"^key_lengths must be a int64"),
    ("attn_key_lengths_list", lambda s: _attn(s, key_lengths=[1, 2]), TypeError,
     r"^key_lengths must be a torch\.Tensor"),
    ("attn_key_lengths_shape", lambda s: _attn(s, key_lengths=torch.tensor([1, 2, 3])), ValueError,
     r"^key_lengths must have shape \(2,\)"),
    ("attn_key_lengths_range", lambda s: _attn(s, key_lengths=torch.tensor([1, 7])), ValueError,
     r"^key_lengths\[1\] = 7 is outside \[0, 6\]"),
    ("attn_key_lengths_negative", lambda s: _attn(s, key_lengths=torch.tensor([-1, 2])), ValueError,
     r"^key_lengths\[0\] = -1 is outside"),
    ("attn_prefix_lengths_range", lambda s: _attn(s, prefix_lengths=torch.tensor([9, 1])), ValueError,
     r"^prefix_lengths\[0\] = 9 is outside"),
    ("attn_prefix_lengths_meta", lambda s: _attn(s, prefix_lengths=torch.tensor([1, 1], device=META)), TypeError,
     r"^prefix_lengths is on device meta"),
    ("attn_dropout_1", lambda s: _attn(s, dropout_p=1.0), ValueError, r"^dropout_p must be in \[0, 1\), got 1\.0"),
    ("attn_dropout_negative", lambda s: _attn(s, dropout_p=-0.1), ValueError, r"^dropout_p must be in \[0, 1\)"),
    ("attn_dropout_nan", lambda s: _attn(s, dropout_p=math.nan), ValueError, r"^dropout_p must be in \[0, 1\)"),
    ("attn_seed_negative", lambda s: _attn(s, dropout_p=0.1, seed=-1), ValueError,
     r"^seed must be in \[0, 2\*\*63\), got -1"),
    ("attn_seed_too_large", lambda s: _attn(s, dropout_p=0.1, seed=2**63), ValueError,
     r"^seed must be in \[0, 2\*\*63\)"),
    ("attn_seed_float", lambda s: _attn(s, dropout_p=0.1, seed=1.0), TypeError,
     r"^seed must be an integer or None, got float"),
    ("attn_seed_str", lambda s: _attn(s, dropout_p=0.1, seed="1"), TypeError, r"^seed must be an integer"),
    ("attn_seed_float_tensor", lambda s: _attn(s, dropout_p=0.1, seed=torch.tensor(1.0)), TypeError,
     r"^seed must be an integer or a 0-dim int64 tensor"),
    ("attn_seed_1d_tensor", lambda s: _attn(s, dropout_p=0.1, seed=torch.tensor([1])), TypeError,
     r"^seed must be an integer or a 0-dim int64 tensor"),
    ("attn_seed_negative_tensor", lambda s: _attn(s, dropout_p=0.1, seed=torch.tensor(-5)), ValueError,
     r"^seed must be in \[0, 2\*\*6[34]\), got -5"),
    ("attn_scale_nan", lambda s: _attn(s, scale=math.nan), ValueError, r"^scale must be finite"),
    ("loss_hidden_list", lambda s: masked_lm_loss([1.0], s.head, None, s.labels), TypeError,
     r"^hidden must be a torch\.Tensor"),
    ("loss_hidden_float64", lambda s: _loss(s, hidden=s.h.double()), TypeError, r"^hidden must be a float32"),
    ("loss_hidden_float16", lambda s: _loss(s, hidden=s.h.half()), TypeError, r"^hidden must be a float32"),
    ("loss_weight_float64", lambda s: _loss(s, weight=s.head.double()), TypeError, r"^weight must be a float32"),
    ("loss_weight_meta", lambda s: _loss(s, weight=s.head.to(META)), TypeError, r"^weight is on device meta"),
    ("loss_bias_int", lambda s: _loss(s, bias=s.hb.long()), TypeError, r"^bias must be a float32"),
    ("loss_labels_float", lambda s: _loss(s, labels=s.labels.float()), TypeError, r"^labels must be a int64"),
    ("loss_labels_bool", lambda s: _loss(s, labels=s.labels > 0), TypeError, r"^labels must be a int64"),
    ("loss_labels_meta", lambda s: _loss(s, labels=s.labels.to(META)), TypeError, r"^labels is on device meta"),
    ("loss_hidden_transposed", lambda s: _loss(s, hidden=s.h.transpose(1, 2).contiguous().transpose(1, 2)),
     ValueError, r"^hidden must have a contiguous last axis"),
    ("loss_weight_transposed", lambda s: _loss(s, weight=s.head.t().contiguous().t()), ValueError,
     r"^weight must have a contiguous last axis"),
    ("loss_labels_too_large", lambda s: _loss(s, labels=torch.tensor([[1, 2, 11], [0, 0, 0]])), ValueError,
     r"^labels\[0, 2\] = 11 is outside \[0, 11\)"),
    ("loss_labels_negative", lambda s: _loss(s, labels=torch.tensor([[1, 2, 3], [0, -1, 0]])), ValueError,
     r"^labels\[1, 1\] = -1 is outside \[0, 11\).*ignore_index=-100"),
    ("loss_labels_shape", lambda s: _loss(s, labels=s.labels[:, :2]), ValueError,
     r"^labels must have the shape of hidden without its last axis"),
    ("loss_bias_shape", lambda s: _loss(s, bias=s.hb[:10]), ValueError, r"^bias must have shape \(11,\)"),
    ("loss_weight_width", lambda s: _loss(s, weight=s.head[:, :7].contiguous()), ValueError,
     r"^weight must have shape \(vocab, 8\)"),
    ("loss_label_smoothing", lambda s: _loss(s, label_smoothing=1.5), ValueError, r"^label_smoothing must be in"),
    ("loss_label_smoothing_nan", lambda s: _loss(s, label_smoothing=math.nan), ValueError,
     r"^label_smoothing must be in"),
]


@pytest.mark.parametrize("call,exception,match", [case[1:] for case in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_rejects_bad_arguments(call, exception, match):
    with pytest.raises(exception, match=match):
        call(small())


# Arguments whose messages once did not name them, or spoke of NumPy to a torch user.
UNNAMED_BEFORE = [
    ("ln_eps_str", lambda s: layer_norm(s.x, eps="a"), r"^eps"),          # "could not convert string to float"
    ("attn_dropout_str", lambda s: _attn(s, dropout_p="a"), r"^dropout_p"),
    ("attn_scale_str", lambda s: _attn(s, scale="a"), r"^scale"),
    # "weight must be C-contiguous; pass numpy.ascontiguousarray(weight)": a torch user has no NumPy array
    ("ln_weight_strided", lambda s: layer_norm(s.x, torch.randn(8, 2)[:, 0]), r"^weight(?!.*numpy)"),
    ("gelu_bias_strided", lambda s: gelu(s.x, bias=torch.randn(8, 2)[:, 0]), r"^bias(?!.*numpy)"),
    ("loss_bias_strided", lambda s: _loss(s, bias=torch.randn(11, 2)[:, 0]), r"^bias(?!.*numpy)"),
]


@pytest.mark.parametrize("call,match", [case[1:] for case in UNNAMED_BEFORE], ids=[c[0] for c in UNNAMED_BEFORE])
def test_scalar_and_layout_errors_name_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(small())


def test_masked_lm_loss_rejects_a_float_ignore_index():
    with pytest.raises(TypeError, match="ignore_index"):  # not truncated to 2
        _loss(small(), labels=torch.tensor([[1, 2, 3], [10, 0, 4]]), ignore_index=2.5)


@pytest.mark.parametrize("B,Tq,Tk", [(0, 5, 6), (2, 0, 6), (2, 5, 0)])
def test_attention_with_an_empty_axis(B, Tq, Tk):
    q = torch.randn(B, Tq, 2, 4, requires_grad=True)
    k, v = (torch.randn(B, Tk, 2, 4, requires_grad=True) for _ in range(2))
    out = attention(q, k, v)
    assert out.shape == q.shape and (out == 0).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert (dq == 0).all()


def test_empty_inputs_to_the_other_ops():
    """No rows: empty results, zero parameter gradients, a loss of 0."""
    x = torch.randn(0, 8, requires_grad=True)
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    y = layer_norm(x, w, b)
    assert y.shape == (0, 8)
    dx, dw, db = torch.autograd.grad(y.sum(), (x, w, b))
    assert dx.shape == (0, 8) and (dw == 0).all() and (db == 0).all()
    y = gelu(x, bias=b)
    assert y.shape == (0, 8)
    dx, db = torch.autograd.grad(y.sum(), (x, b))
    assert dx.shape == (0, 8) and (db == 0).all()
    head = torch.randn(5, 8, requires_grad=True)
    loss = masked_lm_loss(x, head, None, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    dx, dhead = torch.autograd.grad(loss, (x, head))
    assert dx.shape == (0, 8) and (dhead == 0).all()


# ------------------------------------------------------------- autocast --

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_widens_16bit_inputs_to_float32(gen, dtype):
    """Inside torch.autocast the operators take 16-bit inputs, compute on their
    float32 values and return float32; the gradients reach the 16-bit leaves
    in their dtype. Reference: the same ops on the widened inputs, outside autocast."""
    x = torch.randn(3, 5, 16, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn(16, generator=gen, requires_grad=True)
    head = torch.randn(11, 16, generator=gen).to(dtype).requires_grad_()
    labels = torch.randint(0, 11, (3, 5), generator=gen)

    def run(x, head):
        h = gelu(layer_norm(x, weight, None), "tanh")
        q = h.reshape(3, 5, 2, 8)
        out = attention(q, q, q, causal=True)
        return out, masked_lm_loss(out.reshape(3, 5, 16), head, None, labels)

    with torch.autocast("cpu", dtype=dtype):
        out, loss = run(x, head)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    dx, dweight, dhead = torch.autograd.grad(loss, (x, weight, head))
    assert dx.dtype == dtype and dhead.dtype == dtype and dweight.dtype == torch.float32

    x32, head32 = (t.detach().float().requires_grad_() for t in (x, head))
    weight.grad = None
    out32, loss32 = run(x32, head32)
    assert torch.equal(out, out32) and torch.equal(loss, loss32)
    want = torch.autograd.grad(loss32, (x32, weight, head32))
    for got, ref in zip((dx, dweight, dhead), want):
        assert torch.equal(got, ref.to(got.dtype))


def test_16bit_inputs_outside_autocast_are_an_error(gen):
    x = torch.randn(3, 16, generator=gen).bfloat16()
    with pytest.raises(TypeError, match=r"^x must be a float32 tensor, got bfloat16; convert it with \.float\(\)"):
        layer_norm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer_norm(x).dtype == torch.float32


def test_loss_backward_twice_with_retain_graph_accumulates_exactly(gen):
    """A plain loss.backward() hands autograd the saved gradients themselves
    (no scaling pass); a retained graph must still give them unchanged the
    second time, and a scaled loss the scaled ones."""
    hidden, weight, bias, labels = loss_inputs(gen, True, B=2, T=5, C=8, V=11)
    loss = masked_lm_loss(hidden, weight, bias, labels)
    loss.backward(retain_graph=True)
    once = [t.grad.clone() for t in (hidden, weight, bias)]
    loss.backward(retain_graph=True)
    (3 * loss).backward()
    for t, first in zip((hidden, weight, bias), once):
        torch.testing.assert_close(t.grad, 5 * first, rtol=1e-6, atol=1e-7)  # 1 + 1 + 3, rounded
