"""AdamW over a model's flat parameter buffer, global gradient-norm clipping
and learning-rate schedules."""

import math

import numpy as np

from ssl_core import _C


class AdamW:
    """AdamW (Loshchilov & Hutter, 2019) as torch.optim.AdamW defines it, on
    one fused native kernel over the flat buffers of a ParameterStore.

    Weight decay applies to the parameters declared with ``decay=True`` (not
    biases and LayerNorm); ``decay_embeddings=False`` also exempts embedding
    tables. The buffer is updated in a few contiguous runs of equal decay.
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay_embeddings=True):
        if not (lr >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps > 0 and weight_decay >= 0):
            raise ValueError(f"AdamW needs lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0; got lr={lr}, "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, tuple(betas), eps, weight_decay
        self.m = np.zeros_like(params.data)
        self.v = np.zeros_like(params.data)
        self.step_count = 0
        self.runs = _decay_runs(params, decay_embeddings)

    def step(self, lr=None, grad_scale=1.0):
        """One update from params.grad (times grad_scale), at ``lr`` or the
        optimizer's own."""
        lr = self.lr if lr is None else lr
        self.step_count += 1
        data, grad = self.params.data, self.params.grad
        for begin, end, decay in self.runs:
            _C.adamw_update(data[begin:end], grad[begin:end], self.m[begin:end], self.v[begin:end], lr,
                            self.betas[0], self.betas[1], self.eps, self.weight_decay if decay else 0.0,
                            grad_scale, self.step_count)

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "step": self.step_count}

    def load_state_dict(self, state):
        if state["m"].shape != self.m.shape or state["v"].shape != self.v.shape:
            raise ValueError(f"optimizer state for {state['m'].shape[0]} parameters, this model has {self.m.shape[0]}")
        self.m[...], self.v[...], self.step_count = state["m"], state["v"], int(state["step"])


def _decay_runs(params, decay_embeddings):
    """[(begin, end, decay)] covering the whole buffer, adjacent runs merged;
    the alignment gaps between parameters hold zeros and go with a neighbour."""
    runs = []
    for p in sorted(params, key=lambda p: p.offset):
        decay = p.decay and (decay_embeddings or not p.embedding)
        if runs and runs[-1][2] == decay:
            runs[-1][1] = p.offset + p.size
        else:
            runs.append([runs[-1][1] if runs else 0, p.offset + p.size, decay])
    if runs:
        runs[-1][1] = params.data.size
    return [tuple(r) for r in runs]


def clip_grad_norm(params, max_norm):
    """The global L2 norm of params.grad, and the factor (<= 1) that brings it
    to max_norm: pass it to AdamW.step(grad_scale=...) instead of rescaling
    the gradients in a pass of their own. Non-finite norms give factor 0."""
    grad = params.grad
    # Squares summed by BLAS in float32 blocks, the blocks in float64: no
    # float64 copy of the buffer, and no error growing with its size.
    block = 1 << 16
    norm = math.sqrt(sum(float(np.dot(grad[i:i + block], grad[i:i + block])) for i in range(0, grad.size, block)))
    if not math.isfinite(norm):
        return norm, 0.0
    return norm, min(1.0, max_norm / (norm + 1e-6))


def learning_rate(step, base_lr, schedule="linear", warmup_steps=0, total_steps=None, min_lr=0.0):
    """The learning rate at optimizer step ``step`` (from 1): linear warmup over
    ``warmup_steps``, then "constant", "linear" decay to min_lr at total_steps,
    or "cosine" decay to min_lr at total_steps."""
    if warmup_steps and step <= warmup_steps:
        return base_lr * step / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'constant', 'linear' or 'cosine', got {schedule!r}")
    if not total_steps or total_steps <= warmup_steps:
        raise ValueError(f"a {schedule} schedule needs total_steps > warmup_steps, got {total_steps}")
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if schedule == "linear":
        return min_lr + (base_lr - min_lr) * (1.0 - progress)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
