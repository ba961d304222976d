"""Uses of a pretrained encoder: embeddings and similarity (fine-tuning
tasks follow)."""

from ssl_core.tasks.embeddings import TextEncoder, TokenVectors, cosine_similarity

__all__ = ["TextEncoder", "TokenVectors", "cosine_similarity"]
