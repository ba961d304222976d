"""Model configurations, their presets and their Hugging Face config.json form."""

import dataclasses


class _HuggingFaceConfig:
    """config.json conversion shared by the configs: our fields are named as
    Hugging Face names them, so only model_type and architectures are added."""

    MODEL_TYPE = ARCHITECTURE = None

    def to_hf(self):
        return {"model_type": self.MODEL_TYPE, "architectures": [self.ARCHITECTURE], **dataclasses.asdict(self)}

    @classmethod
    def from_hf(cls, config):
        """Our fields from a config.json dict; its other keys are ignored."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


# Presets: (layers, width) of BERT-base and the compact models of Turc et al.
# (2019); heads are width / 64 (at least 2), the feed-forward 4 x width.
SIZES = {"base": (12, 768), "small": (4, 512), "mini": (4, 256), "tiny": (2, 128)}


@dataclasses.dataclass
class BertConfig(_HuggingFaceConfig):
    MODEL_TYPE, ARCHITECTURE = "bert", "BertForPreTraining"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"  # "gelu" (erf) or "gelu_new" / "gelu_pytorch_tanh" (tanh)
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    classifier_dropout: float = None  # dropout before a task head; None: hidden_dropout_prob
    pad_token_id: int = 0  # its embedding row starts at zero and is never trained

    @classmethod
    def preset(cls, name, **overrides):
        """BERT-base and the compact models of Turc et al. (2019): tiny (2 layers,
        128 wide), mini (4, 256), small (4, 512)."""
        layers, hidden = SIZES[name]
        return cls(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=max(hidden // 64, 2),
                   intermediate_size=4 * hidden, **overrides)


@dataclasses.dataclass
class GPTConfig(_HuggingFaceConfig):
    MODEL_TYPE, ARCHITECTURE = "gpt2", "GPT2LMHeadModel"

    vocab_size: int = 50257
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_positions: int = 1024
    n_inner: int = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    initializer_range: float = 0.02

    @classmethod
    def preset(cls, name, **overrides):
        """GPT-2 small ("base", 124M with GPT-2's vocabulary) and narrower
        models of BERT's compact shapes: tiny (2 layers, 128 wide), mini (4,
        256), small (4, 512)."""
        layers, width = SIZES[name]
        return cls(n_layer=layers, n_embd=width, n_head=max(width // 64, 2), **overrides)

    @property
    def inner_size(self):
        return self.n_inner or 4 * self.n_embd


def gelu_approximation(activation):
    """ops.gelu's ``approximate`` for a Hugging Face activation name."""
    forms = {"gelu": "none", "gelu_python": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
             "gelu_fast": "tanh"}
    if activation not in forms:
        raise ValueError(f"unsupported activation {activation!r}; expected one of {sorted(forms)}")
    return forms[activation]
