"""Layers with explicit forward and backward, their parameters in one flat
buffer (``ParameterStore``)."""

from ssl_core.nn.attention import SelfAttention
from ssl_core.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear, scatter_add_rows
from ssl_core.nn.parameters import Parameter, ParameterStore
from ssl_core.nn.transformer import FeedForward, TransformerBlock

__all__ = [
    "Dropout",
    "Embedding",
    "FeedForward",
    "GELU",
    "LayerNorm",
    "Linear",
    "Parameter",
    "ParameterStore",
    "SelfAttention",
    "TransformerBlock",
    "scatter_add_rows",
]
