// Arguments of the optimizer kernels (csrc/cpu/adamw.cpp).
#pragma once

#include <cstdint>

namespace ssl_core {

// One AdamW step (Loshchilov & Hutter, 2019) as torch.optim.AdamW takes it:
// step counts from 1; the gradient is multiplied by grad_scale first (global
// norm clipping, loss scaling) without a pass of its own.
struct AdamWOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f, grad_scale = 1.0f;
  int64_t step = 1;
};

}  // namespace ssl_core
