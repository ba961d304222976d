"""Public kernel API: each op validates its arguments and dispatches on the
array type (NumPy arrays run the CPU kernels)."""

from ssl_core.ops.activation import gelu, gelu_backward
from ssl_core.ops.attention import attention, attention_backward, attention_forward
from ssl_core.ops.layer_norm import layer_norm, layer_norm_backward, layer_norm_forward
from ssl_core.ops.linear import from_bfloat16, linear, to_bfloat16
from ssl_core.ops.loss import MaskedLMLoss, masked_lm_loss

__all__ = [
    "MaskedLMLoss",
    "from_bfloat16",
    "attention",
    "attention_backward",
    "attention_forward",
    "gelu",
    "gelu_backward",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "linear",
    "masked_lm_loss",
    "to_bfloat16",
]
