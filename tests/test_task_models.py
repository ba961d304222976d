"""BERT task models (sequence, pair, token classification, question
answering) against Hugging Face's BertFor... classes: the same weights give
the same logits, losses and gradients; checkpoints move both ways; a
pretrained encoder starts a task with a fresh head."""

import numpy as np
import pytest

from ssl_core.models import (BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
                             from_pretrained, save_pretrained)
from ssl_core.models.huggingface import _bert_names
from test_models import V, compare_gradients, hf_bert, padded_batch, to_torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LABELS = ["negative", "neutral", "positive"]


def hf_task(architecture, **config):
    torch.manual_seed(0)
    base = hf_bert().config
    base.update(config)
    model = getattr(transformers, architecture)(base)
    with torch.no_grad():  # heads with non-trivial biases
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


CASES = {
    "single-label": ("BertForSequenceClassification",
                     dict(num_labels=3, id2label=dict(enumerate(LABELS)), label2id={x: i for i, x in
                                                                                   enumerate(LABELS)})),
    "regression": ("BertForSequenceClassification", dict(num_labels=1, problem_type="regression")),
    "multi-label": ("BertForSequenceClassification", dict(num_labels=4, problem_type="multi_label_classification")),
    "tokens": ("BertForTokenClassification", dict(num_labels=5)),
    "qa": ("BertForQuestionAnswering", {}),
}


def task_batch(case, rng, ids, mask, types):
    B, T = ids.shape
    if case == "single-label":
        return {"labels": np.array([0, 2, 1])}
    if case == "regression":
        return {"labels": rng.normal(size=B).astype(np.float32)}
    if case == "multi-label":
        return {"labels": (rng.random((B, 4)) < 0.5).astype(np.float32)}
    if case == "tokens":
        labels = rng.integers(0, 5, (B, T))
        labels[(mask == 0) | (rng.random((B, T)) < 0.3)] = -100  # padding and later sub-tokens
        return {"labels": labels}
    # a start beyond the sequence (ignored) and a negative end (counted as [CLS])
    return {"start_positions": np.array([3, 0, T + 2]), "end_positions": np.array([7, -1, 4])}


@pytest.mark.parametrize("case", CASES)
def test_logits_loss_and_gradients_match_transformers(case, tmp_path, rng):
    architecture, config = CASES[case]
    hf = hf_task(architecture, **config)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert type(ours).__name__ == architecture and ours.load_report["missing"] == []
    ids, mask, types = padded_batch(rng)
    targets = task_batch(case, rng, ids, mask, types)

    ours.eval(), hf.eval()
    with torch.no_grad():
        out = hf(*to_torch(ids, mask, types))
    if case == "qa":
        start, end = ours.logits(ids, types, mask)
        np.testing.assert_allclose(start, out.start_logits.numpy(), atol=2e-5)
        np.testing.assert_allclose(end, out.end_logits.numpy(), atol=2e-5)
    else:
        np.testing.assert_allclose(ours.logits(ids, types, mask), out.logits.numpy(), atol=2e-5)

    ours.train(), hf.train()  # dropout is 0 in these configs: train mode is deterministic
    out = hf(*to_torch(ids, mask, types), **{k: torch.from_numpy(v) for k, v in targets.items()})
    out.loss.backward()
    loss, _ = ours.loss_and_backward({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, **targets})
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    # (The QA bias's gradient is a sum of softmax minus one-hot over positions:
    # zero but for rounding, hence the absolute floor.)
    compare_gradients(ours, dict(hf.named_parameters()), _bert_names(ours.config, ours.HEADS), atol=1e-6)
    evaluated, _ = ours.evaluate({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, **targets})
    assert evaluated == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_our_task_checkpoints_load_in_transformers(case, tmp_path, rng):
    architecture, config = CASES[case]
    ours = from_pretrained(str(_saved(hf_task(architecture, **config), tmp_path / "hf"))).eval()
    save_pretrained(ours, tmp_path / "ours")
    theirs = getattr(transformers, architecture).from_pretrained(tmp_path / "ours").eval()
    if case == "single-label":
        assert theirs.config.id2label == dict(enumerate(LABELS))
    if case in ("regression", "multi-label"):
        assert theirs.config.problem_type == config["problem_type"]
    ids, mask, types = padded_batch(rng)
    with torch.no_grad():
        out = theirs(*to_torch(ids, mask, types))
    expected = out.start_logits.numpy() if case == "qa" else out.logits.numpy()
    got = ours.logits(ids, types, mask)
    np.testing.assert_allclose(got[0] if case == "qa" else got, expected, atol=2e-5)
    again = from_pretrained(str(tmp_path / "ours"))
    assert type(again) is type(ours) and again.labels == ours.labels
    np.testing.assert_array_equal(again.params.data, ours.params.data)


def _saved(model, path):
    model.save_pretrained(path)
    return path


def test_a_pretrained_encoder_starts_a_task_with_a_fresh_head(tmp_path, rng):
    hf = hf_bert()
    hf.save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path), task="classify", labels=LABELS)
    assert isinstance(model, BertForSequenceClassification) and model.labels == LABELS
    assert sorted(model.load_report["missing"]) == ["classifier.bias", "classifier.weight"]
    assert "cls.seq_relationship.weight" in model.load_report["unused"]
    np.testing.assert_array_equal(model.params["layers.1.ln2.weight"].data,
                                  hf.bert.encoder.layer[1].output.LayerNorm.weight.detach().numpy())
    tokens = from_pretrained(str(tmp_path), task="tokens", labels=5)
    assert isinstance(tokens, BertForTokenClassification) and tokens.num_labels == 5
    assert isinstance(from_pretrained(str(tmp_path), task="qa"), BertForQuestionAnswering)


def test_dropout_of_the_head_follows_train_eval_and_reseeding(rng):
    from ssl_core.models import BertConfig

    config = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=48, classifier_dropout=0.5)
    model = BertForSequenceClassification(config, labels=2)
    ids = rng.integers(0, V, (2, 9))
    model.reseed_dropout(1, 2)
    a = model.logits(ids)
    model.reseed_dropout(1, 2)
    np.testing.assert_array_equal(model.logits(ids), a)
    assert model.head_drop.generator in model.dropout_generators()
    model.eval()
    assert not model.head_drop.training
    np.testing.assert_array_equal(model.logits(ids), model.logits(ids))


def test_bad_labels_are_reported(rng):
    from ssl_core.models import BertConfig

    config = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=48)
    ids = rng.integers(0, V, (2, 9))
    with pytest.raises(ValueError, match=r"labels must be \(2,\) integer class ids"):
        BertForSequenceClassification(config, labels=3).loss_and_backward({"input_ids": ids, "labels": np.ones(2)})
    with pytest.raises(ValueError, match=r"multi-label labels must have shape \(2, 3\)"):
        BertForSequenceClassification(config, labels=3, problem_type="multi_label_classification") \
            .loss_and_backward({"input_ids": ids, "labels": np.ones(2)})
    with pytest.raises(ValueError, match="problem_type must be one of"):
        BertForSequenceClassification(config, labels=3, problem_type="ranking")
    with pytest.raises(ValueError, match="labels must be a positive count or distinct names"):
        BertForSequenceClassification(config, labels=["a", "a"])
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(2, 9\)"):
        BertForTokenClassification(config, labels=3).loss_and_backward({"input_ids": ids, "labels": np.ones(2, int)})
    with pytest.raises(ValueError, match=r"start_positions must be \(2,\) integer positions"):
        BertForQuestionAnswering(config).loss_and_backward(
            {"input_ids": ids, "start_positions": np.zeros(3, int), "end_positions": np.zeros(2, int)})
    with pytest.raises(ValueError, match="task must be one of"):
        from_pretrained(".", task="summarize")
