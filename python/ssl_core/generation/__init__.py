"""Text generation for GPT models: incremental decoding with a preallocated
key/value cache; greedy decoding, sampling (temperature, top-k, top-p,
repetition penalty) and beam search; stop tokens and stop strings; batches
of prompts of different lengths; bfloat16 weights for faster decoding."""

from ssl_core.generation.api import generate, stream
from ssl_core.generation.bfloat16 import BFloat16GPT
from ssl_core.generation.cache import KVCache
from ssl_core.generation.config import STRATEGIES, GenerationConfig
from ssl_core.generation.text import generate_text, stream_text

__all__ = ["BFloat16GPT", "GenerationConfig", "KVCache", "STRATEGIES", "generate", "generate_text", "stream", "stream_text"]
