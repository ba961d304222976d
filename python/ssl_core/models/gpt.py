"""GPT-2 (Radford et al., 2019): a pre-LN causal Transformer decoder whose
output layer is tied to its token embeddings, on the layers of ssl_core.nn.
The next-token loss goes through ops.masked_lm_loss with every position
labelled but padding, so the (B·T, V) logits are never formed in training.
"""

import math

import numpy as np

from ssl_core import ops
from ssl_core.models.base import Model
from ssl_core.models.config import GPTConfig, gelu_approximation
from ssl_core.models.inputs import check_batch
from ssl_core.nn import Dropout, Embedding, LayerNorm, ParameterStore, TransformerBlock


class GPT(Model):
    """GPT-2 decoder with its tied language-model head.

    Parameters live in ``self.params``; ``loss_and_backward`` adds gradients
    to ``self.params.grad``. The residual projections start with std
    0.02 / sqrt(2 * n_layer), as GPT-2 initializes them.
    """

    def __init__(self, config=None, seed=0):
        c = self.config = config or GPTConfig()
        P, std = ParameterStore(), c.initializer_range
        self.params = P
        self.wte = Embedding(P, "wte", c.vocab_size, c.n_embd, std)
        self.wpe = Embedding(P, "wpe", c.n_positions, c.n_embd, std)
        self.embed_drop = Dropout(c.embd_pdrop, seed=(seed, 1))
        self.layers = [
            TransformerBlock(P, f"layers.{i}", c.n_embd, c.n_head, c.inner_size, pre_ln=True, causal=True,
                             dropout_p=c.resid_pdrop, attention_dropout_p=c.attn_pdrop,
                             approximate=gelu_approximation(c.activation_function), eps=c.layer_norm_epsilon,
                             seed=(seed, 2, i), out_std=std / math.sqrt(2 * c.n_layer))
            for i in range(c.n_layer)
        ]
        self.ln_f = LayerNorm(P, "ln_f", c.n_embd, c.layer_norm_epsilon)
        P.allocate(seed)
        self.train()

    def hidden_states(self, input_ids, token_type_ids=None, attention_mask=None):
        """The final LayerNorm's output: float32 (B, T, C) for input_ids (B, T).
        GPT-2 has no token types: token_type_ids must be None."""
        if token_type_ids is not None:
            raise ValueError("GPT takes no token_type_ids")
        ids, _, masks = check_batch(input_ids, None, attention_mask, self.config.n_positions)
        x = self.embed_drop.forward(self.wte.forward(ids) + self.wpe.forward(np.arange(ids.shape[1])))
        for layer in self.layers:
            x = layer.forward(x, **masks)
        return self.ln_f.forward(x)

    @property
    def head_weight(self):
        """The output layer's weight (V, C): the token embeddings, tied."""
        return self.wte.weight.data

    def logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """Next-token logits at every position, float32 (B, T, V)."""
        return ops.linear(self.hidden_states(input_ids, token_type_ids, attention_mask), self.head_weight)

    def new_cache(self, batch, capacity):
        """An empty key/value cache (generation.KVCache) for ``batch`` rows of
        up to ``capacity`` positions."""
        from ssl_core.generation.cache import KVCache

        return KVCache(self, batch, capacity)

    def next_token_logits(self, input_ids, cache, lengths=None):
        """Incremental decoding: feed each row's next tokens, get the logits
        of the token after them, float32 (B, V).

        input_ids (B, T): the tokens that follow what ``cache`` holds (all of
        each prompt, at first); with ``lengths`` (B,), row b's are
        input_ids[b, :lengths[b]] (right padding). Their keys and values go
        into the cache, whose lengths advance. Inference only: no dropout,
        nothing saved for a backward; the LayerNorm and the output layer run
        on each row's last token alone.
        """
        B, T = input_ids.shape
        start = cache.lengths
        count = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        positions = start[:, None] + np.arange(T)
        x = self.wte.weight.data[input_ids] + self.wpe.weight.data[positions]
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.decode(x, layer_cache, start)
        cache.lengths = start + count
        last = self.ln_f.apply(x[np.arange(B), count - 1])
        return ops.linear(last, self.head_weight)

    def bfloat16_copy(self):
        """A copy for generation whose linear layers and output layer hold
        bfloat16 weights: half the bytes a decoding step streams from memory
        (generation.bfloat16). A snapshot of the current weights."""
        from ssl_core.generation.bfloat16 import BFloat16GPT

        return BFloat16GPT(self)

    def generate(self, input_ids, attention_mask=None, tokenizer=None, **options):
        """Continue prompts: ``generation.generate`` with this model (its
        docstring lists the options, e.g. strategy="greedy" | "sample" |
        "beam", max_new_tokens, temperature, top_k, top_p)."""
        from ssl_core.generation import generate

        return generate(self, input_ids, attention_mask, tokenizer=tokenizer, **options)

    def loss_and_backward(self, batch, token_count=None):
        """Mean next-token cross-entropy of a batch; gradients added to params.grad.

        batch: ``input_ids`` (B, T), optional ``attention_mask`` (B, T) and
        ``labels`` (B, T) (default: input_ids, -100 where attention_mask is 0).
        Position t predicts labels[:, t + 1], as GPT2LMHeadModel shifts them.
        Returns (loss, stats) with the loss, next-token accuracy and the count
        of predicted tokens. ``token_count``: the predicted tokens of all
        micro-batches of one optimizer step, as the divisor instead of this
        batch's count (gradient accumulation weighted by tokens).
        """
        return self._loss(batch, token_count, backward=True)

    def evaluate(self, batch):
        """(loss, stats) of a batch without the backward pass (validation)."""
        return self._loss(batch, None, backward=False)

    def _loss(self, batch, token_count, backward):
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        h = self.hidden_states(ids, attention_mask=mask)
        labels = batch.get("labels")
        if labels is None:
            labels = ids if mask is None else np.where(np.asarray(mask) != 0, ids, -100)
        if not isinstance(labels, np.ndarray) or labels.shape != ids.shape:
            raise ValueError(f"labels must be an integer array of the shape of input_ids {ids.shape}")
        targets = np.full(labels.shape, -100, np.int64)
        targets[:, :-1] = labels[:, 1:]
        dh = np.empty_like(h) if backward else None
        lm = ops.masked_lm_loss(h, self.wte.weight.data, None, targets, normalizer=token_count,
                                return_grad=backward, accumulate=backward,
                                grads=(dh, self.wte.weight.grad, None) if backward else None)
        stats = {"lm_loss": lm.loss, "lm_accuracy": lm.n_correct / max(lm.n_valid, 1), "n_tokens": lm.n_valid}
        if not backward:
            return lm.loss, stats
        dx = self.ln_f.backward(dh)
        for layer in reversed(self.layers):
            dx = layer.backward(dx)
        dx = self.embed_drop.backward(dx)
        self.wte.backward(dx)
        self.wpe.backward(dx.sum(axis=0))
        return lm.loss, stats
