"""Training: the optimizer, gradient clipping and learning-rate schedules."""

from ssl_core.train.optim import AdamW, clip_grad_norm, learning_rate

__all__ = ["AdamW", "clip_grad_norm", "learning_rate"]
