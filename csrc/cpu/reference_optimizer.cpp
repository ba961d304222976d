// The specification of the AdamW kernel (adamw.cpp): the same update, one
// element at a time in float64, rounded to float32 once per stored value.
#include <cmath>

#include "ssl_core/kernels.h"

namespace ssl_core::cpu::reference {

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWOptions& o) {
  const double t = static_cast<double>(o.step), lr = o.lr;
  const double correction1 = 1.0 - std::pow(static_cast<double>(o.beta1), t);
  const double correction2 = 1.0 - std::pow(static_cast<double>(o.beta2), t);
  for (int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(grads[i]) * o.grad_scale;
    const double mean = m[i] + (1.0 - o.beta1) * (g - m[i]);
    const double var = o.beta2 * static_cast<double>(v[i]) + (1.0 - o.beta2) * g * g;
    const double denom = std::sqrt(var) / std::sqrt(correction2) + o.eps;
    params[i] = static_cast<float>(params[i] * (1.0 - lr * o.weight_decay) - lr / correction1 * mean / denom);
    m[i] = static_cast<float>(mean);
    v[i] = static_cast<float>(var);
  }
}

}  // namespace ssl_core::cpu::reference
