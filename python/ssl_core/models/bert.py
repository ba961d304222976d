"""BERT (Devlin et al., 2019): a post-LN Transformer encoder with its two
pretraining heads, masked LM and next-sentence (or sentence-order)
prediction, on the layers of ssl_core.nn.

The masked-LM head runs only at labelled positions: their hidden states are
gathered, transformed (dense -> GELU -> LayerNorm) and scored against the
tied word embeddings by ops.masked_lm_loss, which never forms the logits of
the whole batch.
"""

import numpy as np

from ssl_core import ops
from ssl_core.models.base import Model
from ssl_core.models.config import BertConfig, gelu_approximation
from ssl_core.models.inputs import check_batch
from ssl_core.nn import GELU, Dropout, Embedding, LayerNorm, Linear, ParameterStore, TransformerBlock


class Bert(Model):
    """BERT encoder + pooler + masked-LM and next-sentence heads.

    Parameters live in ``self.params`` (one flat buffer, see ParameterStore);
    ``loss_and_backward`` adds gradients to ``self.params.grad``. ``training``
    switches dropout on or off (``train()`` / ``eval()``).
    """

    HEADS = "pretraining"  # which checkpoint names the heads have (huggingface._BERT_HEADS)

    def __init__(self, config=None, seed=0):
        c = self.config = config or BertConfig()
        P, std, eps = ParameterStore(), c.initializer_range, c.layer_norm_eps
        H, approximate = c.hidden_size, gelu_approximation(c.hidden_act)
        self.params = P
        self.word = Embedding(P, "embeddings.word", c.vocab_size, H, std, padding_idx=c.pad_token_id)
        self.position = Embedding(P, "embeddings.position", c.max_position_embeddings, H, std)
        self.token_type = Embedding(P, "embeddings.token_type", c.type_vocab_size, H, std)
        self.embed_ln = LayerNorm(P, "embeddings.ln", H, eps)
        self.embed_drop = Dropout(c.hidden_dropout_prob, seed=(seed, 1))
        self.layers = [
            TransformerBlock(P, f"layers.{i}", H, c.num_attention_heads, c.intermediate_size, pre_ln=False,
                             dropout_p=c.hidden_dropout_prob, attention_dropout_p=c.attention_probs_dropout_prob,
                             approximate=approximate, eps=eps, seed=(seed, 2, i))
            for i in range(c.num_hidden_layers)
        ]
        self._build_heads(P, seed)
        P.allocate(seed)
        if c.pad_token_id is not None:
            self.word.weight.data[c.pad_token_id] = 0.0  # as Hugging Face initializes the padding row
        self.train()

    def _build_heads(self, P, seed):
        """Declare the layers on top of the encoder (subclasses: task heads)."""
        c, H, std = self.config, self.config.hidden_size, self.config.initializer_range
        self.pooler = Linear(P, "pooler", H, H, std=std)
        self.mlm_transform = Linear(P, "mlm.transform", H, H, std=std)
        self.mlm_act = GELU(gelu_approximation(c.hidden_act))
        self.mlm_ln = LayerNorm(P, "mlm.ln", H, c.layer_norm_eps)
        self.mlm_bias = P.add("mlm.bias", (c.vocab_size,), init="zeros", decay=False)
        self.nsp = Linear(P, "nsp", H, 2, std=std)

    # ------------------------------------------------------------ forward --
    def hidden_states(self, input_ids, token_type_ids=None, attention_mask=None):
        """The encoder's output: float32 (B, T, C) for input_ids (B, T)."""
        ids, types, masks = check_batch(input_ids, token_type_ids, attention_mask,
                                        self.config.max_position_embeddings)
        B, T = ids.shape
        types = np.zeros_like(ids) if types is None else types
        x = self.word.forward(ids) + self.position.forward(np.arange(T)) + self.token_type.forward(types)
        x = self.embed_drop.forward(self.embed_ln.forward(x))
        for layer in self.layers:
            x = layer.forward(x, **masks)
        return x

    def pooled_output(self, hidden):
        """tanh(dense(hidden[:, 0])): (B, C), what the sentence-level heads read."""
        return np.tanh(self.pooler.forward(hidden[:, 0]))

    def logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """Masked-LM logits at every position, float32 (B, T, V): for inspection
        and parity checks; training uses only the labelled positions."""
        h = self.hidden_states(input_ids, token_type_ids, attention_mask)
        t = self.mlm_ln.forward(self.mlm_act.forward(self.mlm_transform.forward(h)))
        return t @ self.word.weight.data.T + self.mlm_bias.data

    def next_sentence_logits(self, input_ids, token_type_ids=None, attention_mask=None):
        """(B, 2): class 0 = B follows A (Hugging Face's convention)."""
        return self.nsp.forward(self.pooled_output(self.hidden_states(input_ids, token_type_ids, attention_mask)))

    # ----------------------------------------------------------- training --
    def loss_and_backward(self, batch, token_count=None, sequence_count=None):
        """Pretraining loss of a batch, its gradients added to params.grad.

        batch: dict with ``input_ids`` (B, T) and optionally ``token_type_ids``,
        ``attention_mask`` (B, T), ``labels`` (B, T) masked-LM targets with -100
        where unlabelled, ``next_sentence_label`` (B,) 0 or 1.

        Returns (loss, stats): loss = mean masked-LM cross-entropy + mean
        next-sentence cross-entropy (each where given); stats holds each part,
        its accuracy and the number of labelled positions.

        For gradient accumulation, ``token_count`` and ``sequence_count`` (the
        labelled positions and the sequences of all micro-batches of one
        optimizer step) replace this batch's own counts as the divisors, so
        each token and sentence pair weighs the same whatever micro-batch it
        is in; the losses returned are then this batch's shares.
        """
        return self._loss(batch, token_count, sequence_count, backward=True)

    def evaluate(self, batch):
        """(loss, stats) of a batch as loss_and_backward gives them, without
        the backward pass (for validation; call ``eval()`` first)."""
        return self._loss(batch, None, None, backward=False)

    def _loss(self, batch, token_count, sequence_count, backward):
        h = self.hidden_states(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))
        B, T, C = h.shape
        dh = np.zeros_like(h) if backward else None
        loss, stats = 0.0, {}
        labels = batch.get("labels")
        if labels is not None:
            if not isinstance(labels, np.ndarray) or labels.shape != (B, T):
                raise ValueError(f"labels must be an integer array of shape {(B, T)}")
            rows = np.flatnonzero(labels.reshape(-1) != -100)
            t = self.mlm_ln.forward(self.mlm_act.forward(self.mlm_transform.forward(h.reshape(-1, C)[rows])))
            mlm = ops.masked_lm_loss(t, self.word.weight.data, self.mlm_bias.data, labels.reshape(-1)[rows],
                                     normalizer=token_count, return_grad=backward, accumulate=backward,
                                     grads=(None, self.word.weight.grad, self.mlm_bias.grad) if backward else None)
            if backward:
                dt = self.mlm_transform.backward(self.mlm_act.backward(self.mlm_ln.backward(mlm.d_hidden)))
                dh.reshape(-1, C)[rows] = dt
            loss += mlm.loss
            stats.update(mlm_loss=mlm.loss, mlm_accuracy=mlm.n_correct / max(mlm.n_valid, 1), n_masked=mlm.n_valid)
        next_sentence = batch.get("next_sentence_label")
        if next_sentence is not None:
            pooled = self.pooled_output(h)
            nsp = ops.masked_lm_loss(pooled, self.nsp.weight.data, self.nsp.bias.data, np.asarray(next_sentence),
                                     normalizer=sequence_count, return_grad=backward, accumulate=backward,
                                     grads=(None, self.nsp.weight.grad, self.nsp.bias.grad) if backward else None)
            if backward:
                dh[:, 0] += self.pooler.backward(nsp.d_hidden * (1 - pooled * pooled))
            loss += nsp.loss
            stats.update(nsp_loss=nsp.loss, nsp_accuracy=nsp.n_correct / max(nsp.n_valid, 1))
        if backward:
            self._backward_encoder(dh)
        return loss, stats

    def _backward_encoder(self, dh):
        for layer in reversed(self.layers):
            dh = layer.backward(dh)
        dx = self.embed_ln.backward(self.embed_drop.backward(dh))
        self.word.backward(dx)
        self.position.backward(dx.sum(axis=0))
        self.token_type.backward(dx)
