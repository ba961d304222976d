"""``apply_ssl_core(model)``: a Hugging Face BERT or GPT-2 (or RoBERTa, ELECTRA,
DistilBERT) on ssl_core's kernels.

In the spirit of Liger-Kernel's patching functions: the model object is
changed in place, its parameters and state_dict untouched, so it trains,
saves and loads as before. Four things are swapped:

- attention: the ``"ssl_core"`` implementation registered with transformers'
  ``AttentionInterface`` (flash-style, never stores the (T, T) weights);
- every ``nn.LayerNorm``: ``ssl_core.integrations.torch.LayerNorm``, sharing
  its parameters;
- the GELU activations (BERT's erf "gelu", GPT-2's tanh "gelu_new"): ours;
- the loss: the masked-LM models of each family, ``BertForPreTraining`` and
  ``GPT2LMHeadModel`` compute the language-model loss with the fused
  ``masked_lm_loss``, which never builds the (tokens, vocabulary) logits.
  Training with labels then returns ``logits=None`` (the point is not to
  compute them), as Liger-Kernel does; in eval mode, or without labels, the
  logits are computed as before.

Only this model is changed: other instances of the same classes keep the
Hugging Face code.
"""

import types

import torch

from ssl_core.integrations.torch import functional
from ssl_core.integrations.torch.modules import GELU, LayerNorm

ATTENTION = "ssl_core"
_FAMILIES = ("bert", "gpt2", "roberta", "electra", "distilbert")  # config.model_type values tested here


def apply_ssl_core(model, *, attention=True, layer_norm=True, gelu=True, loss=True):
    """Patch ``model`` in place to run on ssl_core's kernels; each part can be
    left out. Returns the model.

    ``model`` is a transformers BERT or GPT-2 with any head (``BertModel``,
    ``BertForSequenceClassification``, ``GPT2LMHeadModel``, ...), or a
    RoBERTa, ELECTRA or DistilBERT, with float32 parameters on the CPU or a
    CUDA device. Attention, LayerNorm and GELU are swapped in all of them;
    the fused loss replaces the forward of the masked-LM models
    (``BertForMaskedLM``, ``RobertaForMaskedLM``, ``ElectraForMaskedLM``,
    ``DistilBertForMaskedLM``), ``BertForPreTraining`` and ``GPT2LMHeadModel``;
    the other models keep their own loss (over a few classes)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        raise TypeError(f"apply_ssl_core supports transformers' BERT and GPT-2 models and BERT's kin (config."
                        f"model_type {', '.join(map(repr, _FAMILIES))}); got "
                        f"{type(model).__module__}.{type(model).__qualname__}"
                        + (f" of model_type {model_type!r}" if model_type else ""))
    for param_name, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise TypeError(f"apply_ssl_core needs float32 parameters (the kernels compute in float32); "
                            f"{param_name} is {str(param.dtype).replace('torch.', '')}")
        if param.device.type not in ("cpu", "cuda"):
            raise TypeError(f"apply_ssl_core runs on CPU and CUDA; {param_name} is on {param.device}")
    if attention:
        _register_attention()
        model.set_attn_implementation(ATTENTION)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            replacement = _replacement(child, layer_norm, gelu)
            if replacement is not None:
                setattr(parent, child_name, replacement)
    fused_forward = _FUSED_FORWARDS.get(type(model).__name__)
    if loss and fused_forward is not None:
        from transformers.utils import can_return_tuple  # return_dict=False gives a tuple, as before

        model.forward = types.MethodType(can_return_tuple(fused_forward), model)
    return model


def _replacement(module, layer_norm, gelu):
    """Our module standing in for ``module``, or None to keep it."""
    from transformers import activations

    if layer_norm and type(module) is torch.nn.LayerNorm and len(module.normalized_shape) == 1:
        return LayerNorm.like(module)
    if gelu and type(module) is activations.GELUActivation and module.act is torch.nn.functional.gelu:
        return GELU("none")
    tanh_forms = (activations.NewGELUActivation, activations.GELUTanh, activations.PytorchGELUTanh)
    if gelu and type(module) in tanh_forms:
        return GELU("tanh")
    return None


# Attention --------------------------------------------------------------------

def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # boolean masks, None when a flag says it all


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface on ssl_core's kernel.

    Args:
        query: (B, H, Tq, D); key, value: (B, H, Tk, D) (transposed views are fine).
        attention_mask: None (then ``module.is_causal`` decides), a bool mask
            broadcastable to (B, 1, Tq, Tk) (True = attend), or an additive
            float mask of 0 and large negatives.

    Returns:
        ``(out (B, Tq, H, D), None)``: the kernel does not form the weights.
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    masks = _masks(attention_mask, bool(getattr(module, "is_causal", False)), batch=q.shape[0])
    out = functional.attention(q, k, v, scale=scaling, dropout_p=dropout, **masks)
    return out, None


def _masks(attention_mask, causal, batch):
    """The kernel's mask arguments for a transformers attention mask. A pure
    right-padding mask (optionally causal) becomes ``key_lengths``, which lets
    the kernel skip padded blocks; anything else is passed as an explicit mask."""
    if attention_mask is None:
        return dict(causal=causal)
    mask = attention_mask
    if mask.dtype != torch.bool:  # a user's 4-D float mask (transformers makes boolean ones for us)
        allowed = (mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)
        if not bool(allowed.all()):
            raise ValueError("attention_mask: ssl_core's attention takes boolean masks, or additive masks of 0 and "
                             "the dtype's minimum; this one adds other values (a bias), which the kernel cannot apply")
        mask = mask == 0
    # The test reads the mask's values: on CUDA it would stall the stream, and under torch.compile it would
    # break the graph. There, the kernel takes the mask as it is.
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        masks = _right_padding_lengths(mask, batch)
        if masks is not None:
            return masks
    return dict(mask=mask)


def _right_padding_lengths(mask, batch):
    """{key_lengths, causal} if ``mask`` (B|1, 1, Tq, Tk) is exactly right
    padding, with or without the (bottom-right aligned) causal mask; else None."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        return None
    Tq, Tk = mask.shape[-2:]
    rows = mask[:, 0]
    lengths = rows[:, -1].sum(-1)  # the last query sees every valid key, causal or not
    valid = torch.arange(Tk) < lengths[:, None, None]
    causal = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    for is_causal, expected in ((False, valid), (True, valid & causal)):
        if torch.equal(rows, expected.expand_as(rows)):
            return dict(key_lengths=lengths.expand(batch).contiguous(), causal=is_causal)
    return None


# The fused language-model losses -------------------------------------------------

def _lm_loss(hidden, decoder, labels, shift=False, num_items_in_batch=None):
    """Mean cross-entropy of ``decoder(hidden)`` against ``labels`` (-100 =
    none), fused; ``shift``: position t predicts labels[t + 1] (GPT-2)."""
    if shift:
        labels = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    labels = labels.to(hidden.device)
    loss = functional.masked_lm_loss(hidden, decoder.weight, decoder.bias, labels)
    if num_items_in_batch is not None:  # transformers' Trainer: a sum over the micro-batch, / the step's items
        loss = loss * (labels != -100).sum() / num_items_in_batch
    return loss


# The masked-LM models: (the encoder, the head's layers before the vocabulary
# projection, the projection) of each.
_MASKED_LM_HEADS = {
    "BertForMaskedLM": lambda m: (m.bert, m.cls.predictions.transform, m.cls.predictions.decoder),
    "RobertaForMaskedLM": lambda m: (m.roberta, lambda x: m.lm_head.layer_norm(functional.gelu(m.lm_head.dense(x))),
                                     m.lm_head.decoder),
    "ElectraForMaskedLM": lambda m: (m.electra, m.generator_predictions, m.generator_lm_head),
    "DistilBertForMaskedLM": lambda m: (m.distilbert, lambda x: m.vocab_layer_norm(m.activation(m.vocab_transform(x))),
                                        m.vocab_projector),
}


def _masked_lm_forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
    from transformers.modeling_outputs import MaskedLMOutput

    encoder, transform, decoder = _MASKED_LM_HEADS[type(self).__name__](self)
    kwargs.pop("return_dict", None)
    outputs = encoder(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
    hidden = transform(outputs[0])
    loss = None if labels is None else _lm_loss(hidden, decoder, labels)
    logits = None if self.training and labels is not None else decoder(hidden)
    return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                          attentions=outputs.attentions)


def _bert_pretraining_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                              inputs_embeds=None, labels=None, next_sentence_label=None, **kwargs):
    from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

    kwargs.pop("return_dict", None)
    outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
    sequence_output, pooled_output = outputs[:2]
    predictions = self.cls.predictions
    hidden = predictions.transform(sequence_output)
    seq_relationship = self.cls.seq_relationship(pooled_output)
    loss = None
    if labels is not None and next_sentence_label is not None:  # as transformers: the loss needs both
        nsp = torch.nn.functional.cross_entropy(seq_relationship.view(-1, 2), next_sentence_label.view(-1))
        loss = _lm_loss(hidden, predictions.decoder, labels) + nsp
    logits = None if self.training and loss is not None else predictions.decoder(hidden)
    return BertForPreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=seq_relationship,
                                    hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def _gpt2_lm_forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                     inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                     use_cache=None, logits_to_keep=0, **kwargs):
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

    kwargs.pop("return_dict", None)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    outputs = self.transformer(input_ids, cache=cache, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, use_cache=use_cache, **kwargs)
    hidden = outputs.last_hidden_state
    loss = None if labels is None else _lm_loss(hidden, self.lm_head, labels, True, num_items_in_batch)
    logits = None
    if not (self.training and labels is not None):
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
    return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, cache=outputs.cache,
                                             hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                             cross_attentions=outputs.cross_attentions)


_FUSED_FORWARDS = {**dict.fromkeys(_MASKED_LM_HEADS, _masked_lm_forward),
                   "BertForPreTraining": _bert_pretraining_forward, "GPT2LMHeadModel": _gpt2_lm_forward}
