"""A GPT whose matrix weights are bfloat16, for generation on a CPU.

A decoding step at small batch reads every weight from memory once, and
that read is its time: GPT-2 small streams 498 MB of float32 weights a step.
Held as bfloat16 (their high 16 bits, rounded to nearest even), the weights
of every linear layer and of the output layer take half the bytes; the
kernel (ops.linear) widens them to float32 as it loads them and computes in
float32. Embeddings, LayerNorms, biases and the key/value cache stay float32.

The price is the weights' rounding, a relative 2^-9 per weight: logits move
by about a hundredth of their spread, so a greedy continuation can part from
the float32 model's where two tokens are nearly tied.
"""

import copy

from ssl_core import ops
from ssl_core.models.gpt import GPT
from ssl_core.ops.linear import KERNEL_ROWS, from_bfloat16, to_bfloat16


class _BFloat16Linear:
    """A Linear layer's inference with bfloat16 weights. Up to KERNEL_ROWS[1]
    rows of x (decoding steps), the kernel reads the bits; more rows (a long
    prompt's prefill) go to BLAS with a float32 widening of the bits, made on
    first need and kept: widening 124M weights on every prefill took longer
    than the prefill."""

    def __init__(self, layer):
        self.bits = to_bfloat16(layer.weight.data)
        self.bias = layer.bias
        self._widened = None

    def apply(self, x):
        weight = self.bits
        if x.size // x.shape[-1] > KERNEL_ROWS[1]:
            if self._widened is None:
                self._widened = from_bfloat16(self.bits)
            weight = self._widened
        return ops.linear(x, weight, None if self.bias is None else self.bias.data)

    forward = apply  # the full forward (GPT.logits) saves nothing: the copy never runs a backward


def _block(block):
    """A copy of a TransformerBlock with bfloat16 linear layers and its
    dropouts off (LayerNorms and biases shared with the original)."""
    block = copy.copy(block)
    block.attn, block.ffn = copy.copy(block.attn), copy.copy(block.ffn)
    block.drop1, block.drop2 = copy.copy(block.drop1), copy.copy(block.drop2)
    block.set_training(False)
    block.attn.qkv, block.attn.out = _BFloat16Linear(block.attn.qkv), _BFloat16Linear(block.attn.out)
    block.ffn.up, block.ffn.down = _BFloat16Linear(block.ffn.up), _BFloat16Linear(block.ffn.down)
    return block


class BFloat16GPT(GPT):
    """A snapshot of a GPT for generation: ``generate``, ``new_cache``,
    ``next_token_logits`` and ``logits`` as the GPT's, with bfloat16 matrix
    weights and no dropout. Later changes to the original's matrix weights do
    not reach it (make a new copy); it cannot train."""

    def __init__(self, model):  # shares the original's embeddings, LayerNorms and biases
        if not isinstance(model, GPT) or isinstance(model, BFloat16GPT):
            raise TypeError(f"bfloat16_copy takes a float32 GPT, got {type(model).__name__}")
        self.config, self.params = model.config, model.params
        self.wte, self.wpe, self.ln_f = model.wte, model.wpe, model.ln_f
        self.embed_drop = copy.copy(model.embed_drop)
        self.embed_drop.training = False
        self.layers = [_block(layer) for layer in model.layers]
        self._head_bits = to_bfloat16(model.wte.weight.data)
        self.training = False

    @property
    def head_weight(self):
        return self._head_bits

    def train(self, training=True):
        if training:
            raise TypeError("a bfloat16 decoding copy cannot train; train the GPT it was made from")
        return self

    def loss_and_backward(self, batch, token_count=None):
        raise TypeError("a bfloat16 decoding copy cannot train; train the GPT it was made from")

    def evaluate(self, batch):
        raise TypeError("a bfloat16 decoding copy computes no loss; evaluate the GPT it was made from")


def bfloat16_copy(model):
    """A BFloat16GPT of ``model`` (a GPT)."""
    return BFloat16GPT(model)
