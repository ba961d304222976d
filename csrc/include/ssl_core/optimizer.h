// Arguments of the optimizer kernels (csrc/cpu/adamw.cpp).
#pragma once

#include <cmath>
#include <cstdint>

namespace ssl_core {

// One AdamW step (Loshchilov & Hutter, 2019) as torch.optim.AdamW takes it:
// step counts from 1; the gradient is multiplied by grad_scale first (global
// norm clipping, loss scaling) without a pass of its own.
struct AdamWOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f, grad_scale = 1.0f;
  int64_t step = 1;
};

// The step's scalars, computed once in float64 on the host, so that the CPU
// and CUDA kernels round the same way: each element then does
//   g = grad * grad_scale;  m += (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2
//   p = p * decay - step_size * m / (sqrt(v) * inv_sqrt_correction2 + eps)
struct AdamWCoefficients {
  float decay, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_sqrt_correction2, eps, grad_scale;
};

inline AdamWCoefficients adamw_coefficients(const AdamWOptions& o) {
  const double t = static_cast<double>(o.step);
  return {static_cast<float>(1.0 - static_cast<double>(o.lr) * o.weight_decay),
          1.0f - o.beta1,
          o.beta2,
          1.0f - o.beta2,
          static_cast<float>(o.lr / (1.0 - std::pow(static_cast<double>(o.beta1), t))),
          static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(static_cast<double>(o.beta2), t))),
          o.eps,
          o.grad_scale};
}

}  // namespace ssl_core
