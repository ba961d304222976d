"""The feed-forward sublayer and the Transformer block, in BERT's post-LN
order and GPT-2's pre-LN order.

Not fused yet: bias + GELU and residual + LayerNorm are separate passes over
memory (NumPy's add, then the kernel); a fused kernel for each is future work.
"""

from ssl_core.nn.attention import SelfAttention
from ssl_core.nn.layers import GELU, Dropout, LayerNorm, Linear


class FeedForward:
    """Linear(C, 4C) -> GELU -> Linear(4C, C). x (..., C) -> (..., C)."""

    def __init__(self, params, name, dim, hidden, approximate="none", out_std=0.02):
        self.up = Linear(params, f"{name}.up", dim, hidden)
        self.act = GELU(approximate)
        self.down = Linear(params, f"{name}.down", hidden, dim, std=out_std)

    def forward(self, x):
        return self.down.forward(self.act.forward(self.up.forward(x)))

    def backward(self, dy):
        return self.up.backward(self.act.backward(self.down.backward(dy)))


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

    def backward(self, dy):
        if self.pre_ln:
            dh = dy + self.ln2.backward(self.ffn.backward(self.drop2.backward(dy)))
            return dh + self.ln1.backward(self.attn.backward(self.drop1.backward(dh)))
        dh = self.ln2.backward(dy)
        dh = dh + self.ffn.backward(self.drop2.backward(dh))
        dx = self.ln1.backward(dh)
        return dx + self.attn.backward(self.drop1.backward(dx))
