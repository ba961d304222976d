"""Drop-in ``torch.nn`` modules on ssl_core's kernels."""

import torch

from ssl_core.integrations.torch import functional


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` over the last axis, on ssl_core's kernel. Same
    parameters and state_dict keys, so it replaces one in place
    (``LayerNorm.like(module)``)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"normalized_shape must be one axis (the last), got {self.normalized_shape}")

    @classmethod
    def like(cls, module):
        """A LayerNorm sharing ``module``'s parameters (a torch.nn.LayerNorm over one axis)."""
        new = cls(module.normalized_shape, module.eps, elementwise_affine=False, device="meta")
        new.elementwise_affine = module.elementwise_affine
        new.weight, new.bias = module.weight, module.bias
        return new

    def forward(self, x):
        if tuple(x.shape[-1:]) != tuple(self.normalized_shape):
            raise ValueError(f"x must have a last axis of {self.normalized_shape[0]} (normalized_shape), "
                             f"got shape {tuple(x.shape)}")
        return functional.layer_norm(x, self.weight, self.bias, self.eps)


class GELU(torch.nn.Module):
    """``torch.nn.GELU(approximate)`` on ssl_core's kernel: ``"none"`` (erf)
    for BERT's "gelu", ``"tanh"`` for GPT-2's "gelu_new"."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return functional.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"
