"""Training: the optimizer, gradient clipping, learning-rate schedules and
pretraining runs with checkpoints."""

from ssl_core.train.config import PretrainConfig
from ssl_core.train.optim import AdamW, clip_grad_norm, learning_rate
from ssl_core.train.loop import TrainingDiverged
from ssl_core.train.pretrain import Pretraining

__all__ = ["AdamW", "PretrainConfig", "Pretraining", "TrainingDiverged", "clip_grad_norm", "learning_rate"]
