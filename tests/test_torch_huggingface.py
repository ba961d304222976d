"""apply_ssl_core: transformers' BERT and GPT-2 on our kernels give the
outputs and gradients of the unpatched models (the reference), and train."""

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ssl_core.integrations.torch import GELU, LayerNorm, functional  # noqa: E402
from ssl_core.integrations.torch.huggingface import apply_ssl_core  # noqa: E402

VOCAB = 300


def bert(cls=transformers.BertForMaskedLM, **overrides):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, **overrides)
    return cls(config).eval()


def gpt2(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, **overrides)
    return transformers.GPT2LMHeadModel(config).eval()


def patched(model):
    return apply_ssl_core(copy.deepcopy(model))


def batch(B=3, T=12, padding="right", seed=1):
    """ids, a padding mask (right or left padded rows) and 30% MLM labels on real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padding == "right":
        mask[1, T - 4:], mask[2, 5:] = 0, 0
    elif padding == "left":
        mask[1, :4], mask[2, :7] = 0, 0
    labels = torch.where((torch.rand(B, T, generator=g) < 0.3) & (mask == 1), ids, -100)
    labels[0, 0] = ids[0, 0]  # at least one label
    return ids, mask, labels


def assert_same_gradients(reference, ours, rtol=1e-4, atol=1e-6):
    """Each parameter's gradient, to rtol, and to atol relative to its largest
    element (float32 sums of many terms cancel to tiny values)."""
    ours_params = dict(ours.named_parameters())
    for name, param in reference.named_parameters():
        if param.grad is None:
            assert ours_params[name].grad is None, name
            continue
        scale = max(1.0, param.grad.abs().max().item())
        torch.testing.assert_close(ours_params[name].grad, param.grad, rtol=rtol, atol=atol * scale, msg=name)


def assert_masked_lm_matches(reference, padding):
    """The patched copy of a masked-LM model gives the reference's logits,
    loss and gradients, and skips the logits when training with labels."""
    ours = patched(reference)
    ids, mask, labels = batch(padding=padding)
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    assert_same_gradients(reference, ours)
    assert ours.train()(input_ids=ids, attention_mask=mask, labels=labels).logits is None  # the fused path


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_bert_masked_lm_matches_transformers(padding):
    assert_masked_lm_matches(bert(), padding)


def test_bert_pretraining_matches_transformers():
    reference = bert(transformers.BertForPreTraining)
    ours = patched(reference)
    ids, mask, labels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=torch.tensor([0, 1, 1]),
                  token_type_ids=(torch.arange(12) >= 6).long().expand(3, 12))
    expected, got = reference(**kwargs), ours(**kwargs)
    for field in ("loss", "prediction_logits", "seq_relationship_logits"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    assert_same_gradients(reference, ours)
    without_nsp = ours(input_ids=ids, attention_mask=mask, labels=labels)  # transformers: the loss needs both
    assert without_nsp.loss is None


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_gpt2_matches_transformers(padding):
    reference = gpt2()
    ours = patched(reference)
    ids, mask, _ = batch(padding=padding)
    labels = ids.masked_fill(mask == 0, -100)
    expected = reference(ids, attention_mask=mask, labels=labels)
    got = ours(ids, attention_mask=mask, labels=labels)
    real = mask.bool()  # transformers' logits at padded query positions depend on its mask convention
    torch.testing.assert_close(got.logits[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    assert_same_gradients(reference, ours)


@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering", "GPT2Model", "GPT2ForSequenceClassification"])
def test_other_heads_get_the_kernels_and_keep_their_outputs(head):
    cls = getattr(transformers, head)
    reference = (bert(cls) if head.startswith("Bert") else gpt2_like(cls))
    ours = patched(reference)
    assert any(type(m) is LayerNorm for m in ours.modules()) and ours.config._attn_implementation == "ssl_core"
    ids, mask, _ = batch(padding="right")
    expected, got = reference(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    for field in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if getattr(expected, field, None) is not None:
            real = mask.bool() if getattr(expected, field).shape[:2] == mask.shape else slice(None)
            torch.testing.assert_close(getattr(got, field)[real], getattr(expected, field)[real], rtol=1e-5,
                                       atol=1e-5)


OTHER_FAMILIES = {
    "RobertaForMaskedLM": lambda: transformers.RobertaConfig(**SMALL_BERT),
    "ElectraForPreTraining": lambda: transformers.ElectraConfig(embedding_size=16, **SMALL_BERT),
    "ElectraForMaskedLM": lambda: transformers.ElectraConfig(embedding_size=16, **SMALL_BERT),
    "DistilBertForMaskedLM": lambda: transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                                   hidden_dim=64, max_position_embeddings=64),
}
SMALL_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.mark.parametrize("name", sorted(OTHER_FAMILIES))
def test_roberta_electra_distilbert_get_the_kernels_and_keep_outputs_and_gradients(name, monkeypatch):
    torch.manual_seed(0)
    reference = getattr(transformers, name)(OTHER_FAMILIES[name]()).eval()
    ours = patched(reference)
    calls = []
    real = functional.attention
    monkeypatch.setattr(functional, "attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    ids, mask, _ = batch(padding="right")
    expected, got = reference(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2 and sum(type(m) is LayerNorm for m in ours.modules()) >= 5
    real_positions = mask.bool()
    torch.testing.assert_close(got.logits[real_positions], expected.logits[real_positions], rtol=1e-5, atol=1e-5)
    (expected.logits[real_positions] ** 2).sum().backward()
    (got.logits[real_positions] ** 2).sum().backward()
    assert_same_gradients(reference, ours)


@pytest.mark.parametrize("name", ["RobertaForMaskedLM", "ElectraForMaskedLM", "DistilBertForMaskedLM"])
def test_masked_lm_of_the_other_families_computes_the_loss_fused(name):
    torch.manual_seed(0)
    assert_masked_lm_matches(getattr(transformers, name)(OTHER_FAMILIES[name]()).eval(), "right")


def gpt2_like(cls):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return cls(config).eval()


def test_gpt2_loss_over_items_of_the_step_as_the_trainer_passes_it():
    reference = gpt2()
    ours = patched(reference)
    ids, _, _ = batch()
    items = torch.tensor(50)
    torch.testing.assert_close(ours(ids, labels=ids, num_items_in_batch=items).loss,
                               reference(ids, labels=ids, num_items_in_batch=items).loss, rtol=1e-5, atol=1e-6)


def test_gpt2_generation_with_the_cache_is_unchanged():
    reference = gpt2()
    ours = patched(reference)
    prompt = torch.tensor([[5, 17, 33, 2, 9]])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


def test_training_with_labels_skips_the_logits_and_matches_eval_loss():
    reference = bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = patched(reference)
    ids, mask, labels = batch()
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours.train()(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits is None  # never built: the fused loss's point
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    assert ours(input_ids=ids, attention_mask=mask).logits.shape == (3, 12, VOCAB)  # no labels: logits as usual


def test_patched_model_trains_with_dropout():
    model = apply_ssl_core(gpt2().train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, _, _ = batch(B=4, T=16)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


def test_what_is_swapped_and_what_is_kept(monkeypatch):
    reference = bert()
    ours = patched(reference)
    assert ours.config._attn_implementation == "ssl_core"
    layer_norms = [m for m in reference.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(layer_norms) == 2 * 2 + 2  # 2 per layer, the embeddings', the MLM transform's
    assert sum(type(m) is LayerNorm for m in ours.modules()) == len(layer_norms)
    assert [m.approximate for m in ours.modules() if isinstance(m, GELU)] == ["none"] * 3
    assert [m.approximate for m in patched(gpt2()).modules() if isinstance(m, GELU)] == ["tanh"] * 2
    state, expected = ours.state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert all(type(m) is torch.nn.LayerNorm for m in reference.modules() if isinstance(m, torch.nn.LayerNorm))

    calls = []
    real = functional.attention
    monkeypatch.setattr(functional, "attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    ids, mask, _ = batch(padding="right")
    ours(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2  # one per layer
    assert calls[0]["key_lengths"].tolist() == [12, 8, 5] and not calls[0]["causal"]  # padding as lengths
    calls.clear()
    ids, mask, _ = batch(padding="left")
    ours(input_ids=ids, attention_mask=mask)
    assert calls[0]["mask"].shape == (3, 1, 12, 12)  # left padding: the explicit mask


def test_shared_parameters_train_the_same_tensors():
    model = apply_ssl_core(bert())
    ln = model.bert.embeddings.LayerNorm
    ids, mask, labels = batch()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert ln.weight.grad is not None and ln.weight is dict(model.named_parameters())[
        "bert.embeddings.LayerNorm.weight"]


def test_return_dict_false_gives_a_tuple():
    ours = patched(bert())
    ids, mask, labels = batch()
    out = ours(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0 and out[1].shape == (3, 12, VOCAB)


def test_bad_models_and_masks():
    with pytest.raises(TypeError, match="BERT and GPT-2 models and BERT.s kin.*got torch.nn.modules.linear.Linear$"):
        apply_ssl_core(torch.nn.Linear(2, 2))
    albert = transformers.AlbertConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64)
    with pytest.raises(TypeError, match="BERT and GPT-2 models and BERT.s kin.*AlbertModel of model_type 'albert'"):
        apply_ssl_core(transformers.AlbertModel(albert))
    with pytest.raises(TypeError, match="float32 parameters.*float64"):
        apply_ssl_core(bert().double())
    ours = patched(bert())
    ids, _, _ = batch()
    bias = torch.zeros(3, 1, 12, 12)
    bias[..., 3] = -2.0  # an attention bias, not a mask
    with pytest.raises(ValueError, match="attention_mask: .*boolean masks"):
        ours(input_ids=ids, attention_mask=bias)


def test_compiled_patched_model_is_one_graph_and_matches_eager():
    import torch._dynamo

    reference = bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = patched(reference).train()
    ids, mask, labels = batch()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(ours, backend="aot_eager")
    got = compiled(input_ids=ids, attention_mask=mask, labels=labels)
    got.loss.backward()
    assert not torch._dynamo.utils.counters["graph_break"]
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
    expected.loss.backward()
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    assert_same_gradients(reference, ours)


def test_bfloat16_autocast_training_step_matches_transformers():
    """Under CPU autocast, transformers runs the matmuls in bfloat16 and our
    kernels take their outputs in float32: the losses and gradients agree to
    bfloat16's precision (2^-8 relative), not to float32's."""
    reference = bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = patched(reference)
    ids, mask, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, rtol=2e-2, atol=0)
    expected.loss.backward()
    got.loss.backward()
    word = "bert.embeddings.word_embeddings.weight"
    g_ours, g_ref = dict(ours.named_parameters())[word].grad, dict(reference.named_parameters())[word].grad
    assert torch.linalg.norm(g_ours - g_ref) < 0.02 * torch.linalg.norm(g_ref)  # measured: 0.0035
