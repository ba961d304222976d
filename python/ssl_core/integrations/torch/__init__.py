"""ssl_core's kernels in PyTorch: differentiable, registered as custom operators.

    import torch
    from ssl_core.integrations.torch import attention, gelu, layer_norm, masked_lm_loss

    q, k, v = (torch.randn(8, 128, 12, 64, requires_grad=True) for _ in range(3))   # (B, T, H, D)
    out = attention(q, k, v, causal=True, dropout_p=0.1)
    out.sum().backward()                                     # q.grad, k.grad, v.grad

The operators are ``torch.ops.ssl_core.{attention, layer_norm, gelu,
masked_lm_loss}`` with their backwards, each with a fake implementation for
``torch.compile``. ``LayerNorm`` and ``GELU`` are drop-in ``nn.Module``s, and
``apply_ssl_core(model)`` patches a Hugging Face BERT or GPT-2 to use them.
"""

from ssl_core.integrations.torch.functional import (attention, gelu, layer_norm, masked_lm_loss,
                                                    masked_lm_loss_and_accuracy)
from ssl_core.integrations.torch.huggingface import apply_ssl_core
from ssl_core.integrations.torch.modules import GELU, LayerNorm

__all__ = ["GELU", "LayerNorm", "apply_ssl_core", "attention", "gelu", "layer_norm", "masked_lm_loss",
           "masked_lm_loss_and_accuracy"]
