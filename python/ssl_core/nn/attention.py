"""Multi-head self-attention on the flash-style kernels (ops.attention_*)."""

import numpy as np

from ssl_core import ops
from ssl_core.nn.layers import Linear


class SelfAttention:
    """One fused QKV projection, attention over (B, T, H, D) views of its
    output (no transposes or copies), and an output projection.

    forward(x, key_lengths=None, prefix_lengths=None, mask=None): x (B, T, C) ->
    (B, T, C). ``key_lengths`` (B,) marks padding keys; ``causal`` (GPT),
    ``prefix_lengths`` (UniLM) and an explicit bool ``mask`` broadcastable to
    (B, H, T, T) as in ops.attention_forward. Attention dropout
    draws its Philox key from the layer's generator, one key per forward, and
    the backward regenerates the same mask from it.
    """

    def __init__(self, params, name, dim, heads, causal=False, dropout_p=0.0, seed=0, out_std=0.02):
        if dim % heads:
            raise ValueError(f"{name}: dim {dim} is not a multiple of heads {heads}")
        self.heads, self.causal, self.dropout_p = heads, causal, dropout_p
        self.qkv = Linear(params, f"{name}.qkv", dim, 3 * dim)
        self.out = Linear(params, f"{name}.out", dim, dim, std=out_std)
        self.training = True
        self.generator = np.random.default_rng(seed)
        self._saved = None

    def forward(self, x, key_lengths=None, prefix_lengths=None, mask=None):
        B, T, C = x.shape
        qkv = self.qkv.forward(x).reshape(B, T, 3, self.heads, C // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        dropout_p = self.dropout_p if self.training else 0.0
        masks = dict(causal=self.causal, key_lengths=key_lengths, prefix_lengths=prefix_lengths, mask=mask,
                     dropout_p=dropout_p, seed=int(self.generator.integers(2**63)) if dropout_p else 0)
        out, lse = ops.attention_forward(q, k, v, **masks)
        self._saved = (q, k, v, out, lse, masks)
        return self.out.forward(out.reshape(B, T, C))

    def decode(self, x, cache, start):
        """Attention of the next T tokens of each row over the row's cached
        tokens and themselves, for incremental decoding: x (B, T, C) at
        positions start[b] .. start[b] + T - 1 (start (B,) integers) ->
        (B, T, C). Their keys and values are first written into ``cache`` (a
        generation.LayerCache). Saves nothing for a backward."""
        B, T, C = x.shape
        qkv = self.qkv.apply(x).reshape(B, T, 3, self.heads, C // self.heads)
        end = cache.write(qkv[:, :, 1], qkv[:, :, 2], start)
        keys, values = cache.view(int(end.max()))
        if T == 1:  # one query per row, which sees all its row's keys
            masks = {"key_lengths": end}
        elif (start == start[0]).all():  # causal, with the diagonal where the kernel puts it (bottom right)
            masks = {"causal": True, "key_lengths": end}
        else:
            positions = start[:, None] + np.arange(T)
            # key_lengths too: a row's positions past its end were never written (np.empty, maybe NaN)
            masks = {"mask": (np.arange(keys.shape[1]) <= positions[:, :, None])[:, None], "key_lengths": end}
        out = ops.attention(qkv[:, :, 0], keys, values, **masks)
        return self.out.apply(out.reshape(B, T, C))

    def backward(self, dy):
        (q, k, v, out, lse, masks), self._saved = self._saved, None
        B, T, H, D = q.shape
        dout = self.out.backward(dy).reshape(B, T, H, D)
        dqkv = np.empty((B, T, 3, H, D), np.float32)
        ops.attention_backward(dout, q, k, v, out, lse, grads=(dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2]),
                               **masks)
        return self.qkv.backward(dqkv.reshape(B, T, 3 * H * D))
