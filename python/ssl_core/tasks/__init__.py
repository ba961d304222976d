"""Uses of a pretrained encoder: embeddings and similarity, and the metrics
of the downstream tasks (fine-tuning follows)."""

from ssl_core.tasks import metrics
from ssl_core.tasks.embeddings import TextEncoder, TokenVectors, cosine_similarity

__all__ = ["TextEncoder", "TokenVectors", "cosine_similarity", "metrics"]
