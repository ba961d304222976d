"""BERT and GPT against Hugging Face transformers (torch, CPU): the same
weights give the same logits, losses and gradients, and checkpoints move both
ways."""

import json
import logging

import numpy as np
import pytest

from ssl_core.models import GPT, Bert, BertConfig, GPTConfig, from_pretrained, save_pretrained
from ssl_core.models.huggingface import _bert_names, _gpt_names

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, P = 211, 48  # vocabulary and positions: not multiples of any block size


def hf_bert(**overrides):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=P, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, **overrides)
    model = transformers.BertForPreTraining(config)
    with torch.no_grad():  # trained-looking LayerNorm and biases, not ones and zeros
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_gpt():
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=P, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def padded_batch(rng, B=3, T=21):
    ids = rng.integers(0, V, (B, T))
    mask = np.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 5:] = 0
    types = np.zeros_like(ids)
    types[:, 9:] = 1
    return ids, mask, types


def to_torch(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@pytest.fixture
def bert_pair(tmp_path):
    hf = hf_bert()
    hf.save_pretrained(tmp_path / "bert")
    ours = from_pretrained(tmp_path / "bert")
    return hf, ours


@pytest.fixture
def gpt_pair(tmp_path):
    hf = hf_gpt()
    hf.save_pretrained(tmp_path / "gpt")
    return hf, from_pretrained(tmp_path / "gpt")


def test_bert_logits_match_transformers(bert_pair, rng):
    hf, ours = bert_pair
    assert ours.load_report["missing"] == [] and ours.load_report["unused"] == []
    ids, mask, types = padded_batch(rng)
    with torch.no_grad():
        want = hf.eval()(*to_torch(ids, mask, types))
    valid = mask.astype(bool)
    ours.eval()
    np.testing.assert_allclose(ours.logits(ids, types, mask)[valid], want.prediction_logits.numpy()[valid],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.next_sentence_logits(ids, types, mask), want.seq_relationship_logits.numpy(),
                               atol=1e-4, rtol=0)


def test_gpt_logits_match_transformers(gpt_pair, rng):
    hf, ours = gpt_pair
    assert ours.load_report["missing"] == [] and ours.load_report["unused"] == []
    ids, mask, _ = padded_batch(rng)
    with torch.no_grad():
        want = hf.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours.eval().logits(ids, attention_mask=mask)[valid], want[valid], atol=1e-4, rtol=0)


def compare_gradients(ours, hf_params, names, rel=1e-4, atol=1e-9):
    """Our flat-buffer gradients, mapped to checkpoint names, against torch's:
    within ``rel`` of each tensor's largest entry, or ``atol`` for tensors whose
    gradient is zero but for rounding."""
    for name, (theirs, how) in names.items():
        grad = ours.params[name].grad
        parts = np.split(grad, len(theirs)) if how == "concat" else [grad.T if how == "T" else grad]
        for their_name, part in zip(theirs, parts):
            want = hf_params[their_name].grad.numpy()
            scale = np.abs(want).max()
            np.testing.assert_allclose(part, want, rtol=0, atol=rel * scale + atol, err_msg=f"{name} ~ {their_name}")


def test_bert_pretraining_loss_and_gradients_match_autograd(bert_pair, rng):
    hf, ours = bert_pair
    ids, mask, types = padded_batch(rng)
    labels = np.where((rng.random(ids.shape) < 0.3) & (mask == 1), rng.integers(0, V, ids.shape), -100)
    nsp = np.array([0, 1, 1])
    out = hf.train()(*to_torch(ids, mask, types), labels=torch.from_numpy(labels),
                     next_sentence_label=torch.from_numpy(nsp))
    out.loss.backward()
    loss, stats = ours.train().loss_and_backward(dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                                                      labels=labels, next_sentence_label=nsp))
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    assert stats["n_masked"] == (labels != -100).sum()
    compare_gradients(ours, dict(hf.named_parameters()), _bert_names(ours.config))


def test_gpt_loss_and_gradients_match_autograd(gpt_pair, rng):
    hf, ours = gpt_pair
    ids, mask, _ = padded_batch(rng)
    labels = np.where(mask == 1, ids, -100)
    out = hf.train()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     labels=torch.from_numpy(labels))
    out.loss.backward()
    loss, stats = ours.train().loss_and_backward(dict(input_ids=ids, attention_mask=mask))
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    assert stats["n_tokens"] == (labels[:, 1:] != -100).sum()
    compare_gradients(ours, {k.removeprefix("transformer."): v for k, v in hf.named_parameters()} |
                      dict(hf.named_parameters()), _gpt_names(ours.config))


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_saved_checkpoints_load_in_transformers(kind, tmp_path, rng):
    ours = Bert(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=P), seed=3) if kind == "bert" else \
        GPT(GPTConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=P), seed=3)
    save_pretrained(ours, tmp_path / kind)
    cls = transformers.BertForPreTraining if kind == "bert" else transformers.GPT2LMHeadModel
    hf = cls.from_pretrained(tmp_path / kind).eval()
    ids, mask, types = padded_batch(rng)
    valid = mask.astype(bool)
    with torch.no_grad():
        if kind == "bert":
            want = hf(*to_torch(ids, mask, types)).prediction_logits.numpy()
            got = ours.eval().logits(ids, types, mask)
        else:
            want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
            got = ours.eval().logits(ids, attention_mask=mask)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)
    again = from_pretrained(tmp_path / kind)
    np.testing.assert_array_equal(again.params.data, ours.params.data)


def test_bare_encoder_loads_and_reports_its_missing_heads(tmp_path, caplog):
    hf = transformers.BertModel(hf_bert().config)
    hf.save_pretrained(tmp_path / "encoder")
    with caplog.at_level(logging.WARNING, logger="ssl_core"):
        ours = from_pretrained(tmp_path / "encoder")
    missing = set(ours.load_report["missing"])
    assert missing == {"mlm.transform.weight", "mlm.transform.bias", "mlm.ln.weight", "mlm.ln.bias", "mlm.bias",
                       "nsp.weight", "nsp.bias"}
    assert "keep their initialization" in caplog.text and "mlm.bias" in caplog.text
    np.testing.assert_array_equal(ours.params["layers.1.ffn.down.weight"].data,
                                  hf.encoder.layer[1].output.dense.weight.detach().numpy())


def test_tf_era_names_and_missing_prefix_load(tmp_path):
    from safetensors.numpy import save_file

    hf = hf_bert()
    tensors = {}
    for name, value in hf.state_dict().items():
        name = name.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
        tensors[name.replace("LayerNorm.bias", "LayerNorm.beta")] = value.numpy()
    (tmp_path / "old").mkdir()
    save_file(tensors, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ours = from_pretrained(tmp_path / "old")
    assert ours.load_report["missing"] == [] and ours.load_report["unused"] == []
    np.testing.assert_array_equal(ours.params["embeddings.ln.weight"].data,
                                  hf.bert.embeddings.LayerNorm.weight.detach().numpy())


def test_checkpoint_that_does_not_fit_its_config_is_rejected(tmp_path):
    hf = hf_bert()
    hf.save_pretrained(tmp_path / "bert")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "bert" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"intermediate.dense.weight has shape \(128, 64\).*\(96, 64\)"):
        from_pretrained(tmp_path / "bert")
    config["model_type"] = "t5"
    (tmp_path / "bert" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 't5' is not supported"):
        from_pretrained(tmp_path / "bert")


def test_bad_batches_raise_clear_errors(rng):
    bert = Bert(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=P))
    gpt = GPT(GPTConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=P))
    ids = rng.integers(0, V, (2, 8))
    for model in (bert, gpt):
        with pytest.raises(ValueError, match=rf"id {V} is outside \[0, {V}\)"):
            model.hidden_states(np.where(ids == ids[0, 0], V, ids))
        with pytest.raises(ValueError, match=f"more than the model's {P}"):
            model.hidden_states(rng.integers(0, V, (1, P + 1)))
        with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
            model.hidden_states(ids, attention_mask=np.ones((2, 7), int))
        with pytest.raises(ValueError, match="at least one token"):
            model.hidden_states(ids[:0])
        with pytest.raises(TypeError, match="input_ids must be a numpy.ndarray of integers"):
            model.hidden_states(ids.astype(np.float32))
        with pytest.raises(ValueError, match="labels must be"):
            model.loss_and_backward(dict(input_ids=ids, labels=ids[:, :4]))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        bert.hidden_states(ids, token_type_ids=np.zeros((2, 9), int))
    with pytest.raises(ValueError, match="token_type_ids"):
        gpt.hidden_states(ids, token_type_ids=np.zeros_like(ids))


def test_initialization_follows_the_originals():
    gpt = GPT(GPTConfig(vocab_size=V, n_embd=256, n_layer=8, n_head=4, n_positions=P))
    assert abs(gpt.params["layers.0.attn.qkv.weight"].data.std() - 0.02) < 5e-4
    assert abs(gpt.params["layers.3.ffn.down.weight"].data.std() - 0.02 / 4) < 2e-4  # 1 / sqrt(2 * 8)
    assert (gpt.params["layers.3.ln1.weight"].data == 1).all() and (gpt.params["ln_f.bias"].data == 0).all()
    bert = Bert(BertConfig.preset("mini", vocab_size=V))
    assert bert.config.hidden_size == 256 and bert.config.num_hidden_layers == 4
    assert abs(bert.params["embeddings.word.weight"].data.std() - 0.02) < 5e-4
    assert not bert.params["mlm.bias"].decay and bert.params["layers.0.ffn.up.weight"].decay


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_accumulated_micro_batches_weigh_every_token_alike(kind, rng):
    """Two micro-batches with the step's counts as divisors give the gradient
    of the whole batch, although they hold different numbers of labels."""
    def model():
        if kind == "bert":
            return Bert(BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=P, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0), seed=5)
        return GPT(GPTConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=2, n_positions=P, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0), seed=5)

    ids, mask, types = padded_batch(rng, B=4, T=12)
    batch = dict(input_ids=ids, attention_mask=mask)
    if kind == "bert":
        labels = np.where(rng.random(ids.shape) < np.array([[0.1], [0.6], [0.3], [0.9]]), ids, -100)
        batch.update(token_type_ids=types, labels=labels, next_sentence_label=np.array([0, 1, 1, 0]))
        counts = dict(token_count=int((labels != -100).sum()), sequence_count=4)
    else:
        counts = dict(token_count=int((mask[:, 1:] == 1).sum()))
    whole = model()
    loss, _ = whole.loss_and_backward(batch)
    parts = model()
    losses = [parts.loss_and_backward({k: v[rows] for k, v in batch.items()}, **counts)[0]
              for rows in (slice(0, 1), slice(1, 4))]
    assert sum(losses) == pytest.approx(loss, rel=1e-6)
    scale = np.abs(whole.params.grad).max()
    np.testing.assert_allclose(parts.params.grad, whole.params.grad, rtol=0, atol=1e-6 * scale)


def test_pytorch_bin_checkpoint_loads_through_torch(tmp_path, rng):
    hf = hf_gpt()
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # the pre-safetensors format
    (tmp_path / "bin" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ours = from_pretrained(tmp_path / "bin")
    assert ours.load_report["missing"] == []
    np.testing.assert_array_equal(ours.params["layers.1.attn.qkv.weight"].data,
                                  hf.transformer.h[1].attn.c_attn.weight.detach().numpy().T)
    (tmp_path / "bin" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        from_pretrained(tmp_path / "bin")
