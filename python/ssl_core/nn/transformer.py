"""The feed-forward sublayer and the Transformer block, in BERT's post-LN
order and GPT-2's pre-LN order.

Fused: the first feed-forward bias into its GELU (one pass over the widest
activation instead of two: at 4096 x 1024, NumPy's broadcast bias add alone
took 7 ms, as long as the GELU kernel). Not fused: residual + LayerNorm, whose
add measured 0.3 ms at 4096 x 256 (C is 4x narrower than the FFN).
"""

from ssl_core import ops
from ssl_core.nn.attention import SelfAttention
from ssl_core.nn.layers import Dropout, LayerNorm, Linear


class FeedForward:
    """Linear(C, 4C) -> GELU -> Linear(4C, C). x (..., C) -> (..., C).

    The first layer's bias is applied by the GELU kernel (ops.gelu's
    ``bias``); the parameter keeps its name, ``{name}.up.bias``."""

    def __init__(self, params, name, dim, hidden, approximate="none", out_std=0.02):
        self.up = Linear(params, f"{name}.up", dim, hidden, bias=False)
        self.up_bias = params.add(f"{name}.up.bias", (hidden,), init="zeros", decay=False)
        self.approximate = approximate
        self.down = Linear(params, f"{name}.down", hidden, dim, std=out_std)
        self._pre = None

    def forward(self, x):
        self._pre = self.up.forward(x)  # x W^T, without the bias
        return self.down.forward(ops.gelu(self._pre, self.approximate, bias=self.up_bias.data))

    def apply(self, x):
        """The forward without saving anything for a backward (inference)."""
        return self.down.apply(ops.gelu(self.up.apply(x), self.approximate, bias=self.up_bias.data))

    def backward(self, dy):
        pre, self._pre = self._pre, None
        dh = self.down.backward(dy)
        dpre = ops.gelu_backward(dh, pre, self.approximate, bias=self.up_bias.data, out=dh)
        self.up_bias.grad += dpre.reshape(-1, dpre.shape[-1]).sum(axis=0)
        return self.up.backward(dpre)


class TransformerBlock:
    """Self-attention and feed-forward sublayers with residual connections.

    post-LN (BERT):  h = LN1(x + drop(attn(x)));     y = LN2(h + drop(ffn(h)))
    pre-LN (GPT-2):  h = x + drop(attn(LN1(x)));      y = h + drop(ffn(LN2(h)))

    forward(x, **masks): x (B, T, C) -> (B, T, C); masks as SelfAttention takes.
    """

    def __init__(self, params, name, dim, heads, hidden, *, pre_ln, causal=False, dropout_p=0.0,
                 attention_dropout_p=0.0, approximate="none", eps=1e-12, seed=0, out_std=0.02):
        self.pre_ln = pre_ln
        self.attn = SelfAttention(params, f"{name}.attn", dim, heads, causal=causal,
                                  dropout_p=attention_dropout_p, seed=(seed, 0), out_std=out_std)
        self.ln1 = LayerNorm(params, f"{name}.ln1", dim, eps)
        self.ffn = FeedForward(params, f"{name}.ffn", dim, hidden, approximate, out_std=out_std)
        self.ln2 = LayerNorm(params, f"{name}.ln2", dim, eps)
        self.drop1, self.drop2 = Dropout(dropout_p, (seed, 1)), Dropout(dropout_p, (seed, 2))

    def set_training(self, training):
        self.attn.training = self.drop1.training = self.drop2.training = training

    def forward(self, x, **masks):
        if self.pre_ln:
            h = x + self.drop1.forward(self.attn.forward(self.ln1.forward(x), **masks))
            return h + self.drop2.forward(self.ffn.forward(self.ln2.forward(h)))
        h = self.ln1.forward(x + self.drop1.forward(self.attn.forward(x, **masks)))
        return self.ln2.forward(h + self.drop2.forward(self.ffn.forward(h)))

    def decode(self, x, cache, start):
        """The forward of inference against a key/value cache: x (B, T, C), the
        next T tokens of each row, which sit at positions start[b] .. start[b]
        + T - 1 (start (B,) integers); cache: the layer's LayerCache, which
        takes their keys and values. Saves nothing for a backward."""
        attend = self.attn.decode
        if self.pre_ln:
            h = x + attend(self.ln1.apply(x), cache, start)
            return h + self.ffn.apply(self.ln2.apply(h))
        h = self.ln1.apply(x + attend(x, cache, start))
        return self.ln2.apply(h + self.ffn.apply(h))

    def backward(self, dy):
        if self.pre_ln:
            dh = dy + self.ln2.backward(self.ffn.backward(self.drop2.backward(dy)))
            return dh + self.ln1.backward(self.attn.backward(self.drop1.backward(dh)))
        dh = self.ln2.backward(dy)
        dh = dh + self.ffn.backward(self.drop2.backward(dh))
        dx = self.ln1.backward(dh)
        return dx + self.attn.backward(self.drop1.backward(dx))
