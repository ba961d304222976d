// AdamW over a contiguous range of the flat parameter buffer, one pass:
//   p *= 1 - lr * wd
//   m += (1 - beta1) (g - m);   v = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// in the order torch.optim.AdamW evaluates it, so the two agree to rounding.
// Memory-bound (reads p, g, m, v, writes p, m, v: 28 bytes a parameter), so
// it is split over threads in large contiguous blocks.
#include <cmath>

#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kBlock = int64_t{1} << 14;  // floats per task

using Coefficients = AdamWCoefficients;

inline void update(float* p, float* m, float* v, const float* g, const Coefficients& k, int n) {
  const Vec grad = (n == kWidth ? load(g) : load(g, n)) * splat(k.grad_scale);
  Vec mean = n == kWidth ? load(m) : load(m, n), var = n == kWidth ? load(v) : load(v, n);
  mean = fma(splat(k.one_minus_beta1), grad - mean, mean);
  var = fma(splat(k.one_minus_beta2), grad * grad, var * splat(k.beta2));
  const Vec denom = sqrt(var) * splat(k.inv_sqrt_correction2) + splat(k.eps);
  const Vec param = (n == kWidth ? load(p) : load(p, n)) * splat(k.decay);
  const Vec out = param - splat(k.step_size) * (mean / denom);
  if (n == kWidth) {
    store(p, out), store(m, mean), store(v, var);
  } else {
    store(p, out, n), store(m, mean, n), store(v, var, n);
  }
}

}  // namespace

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWOptions& options) {
  const Coefficients k = adamw_coefficients(options);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads_for(blocks, 4)) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = b * kBlock + kBlock < n ? b * kBlock + kBlock : n;
    int64_t i = b * kBlock;
    for (; i + kWidth <= end; i += kWidth) update(params + i, m + i, v + i, grads + i, k, kWidth);
    if (i < end) update(params + i, m + i, v + i, grads + i, k, static_cast<int>(end - i));
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
