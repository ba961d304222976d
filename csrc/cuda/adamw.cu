// AdamW over the flat parameter buffer on the GPU (the CPU op is
// csrc/cpu/adamw.cpp, its specification csrc/cpu/reference_optimizer.cpp):
//   p *= 1 - lr * wd
//   m += (1 - beta1) (g - m);   v = beta2 v + (1 - beta2) g^2     (g = grads * grad_scale)
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// in the order torch.optim.AdamW evaluates it, with the step's coefficients
// computed once on the host in float64, exactly as the CPU kernel does.
//
// Memory-bound (reads p, g, m, v and writes p, m, v: 28 bytes a parameter):
// a grid-stride loop of 256-thread blocks over float4s when the four
// pointers are 16-byte aligned (a ParameterStore's buffer is; its runs may
// start anywhere), else over single floats. The last n % 4 elements of the
// vector path go to the first threads as scalars. No shared memory.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

using Coefficients = AdamWCoefficients;

// One element: the CPU kernel's operations in its order.
__device__ __forceinline__ void update(float& p, float& m, float& v, float g, const Coefficients& k) {
  const float grad = g * k.grad_scale;
  m = fmaf(k.one_minus_beta1, grad - m, m);
  v = fmaf(k.one_minus_beta2, grad * grad, v * k.beta2);
  const float denom = sqrtf(v) * k.inv_sqrt_correction2 + k.eps;
  p = p * k.decay - k.step_size * (m / denom);
}

__global__ void __launch_bounds__(kThreads)
    adamw_vector_kernel(float* params, float* m, float* v, const float* grads, int64_t n, Coefficients k) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t vectors = n / 4;
  float4* p4 = reinterpret_cast<float4*>(params);
  float4* m4 = reinterpret_cast<float4*>(m);
  float4* v4 = reinterpret_cast<float4*>(v);
  const float4* g4 = reinterpret_cast<const float4*>(grads);
  for (int64_t i = first; i < vectors; i += step) {
    float4 p = p4[i], mi = m4[i], vi = v4[i];
    const float4 g = g4[i];
    update(p.x, mi.x, vi.x, g.x, k);
    update(p.y, mi.y, vi.y, g.y, k);
    update(p.z, mi.z, vi.z, g.z, k);
    update(p.w, mi.w, vi.w, g.w, k);
    p4[i] = p, m4[i] = mi, v4[i] = vi;
  }
  const int64_t tail = vectors * 4 + first;
  if (tail < n) update(params[tail], m[tail], v[tail], grads[tail], k);
}

__global__ void __launch_bounds__(kThreads)
    adamw_scalar_kernel(float* params, float* m, float* v, const float* grads, int64_t n, Coefficients k) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    update(params[i], m[i], v[i], grads[i], k);
}

}  // namespace

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWOptions& options,
                  Stream stream) {
  if (n <= 0) return;
  const Coefficients k = adamw_coefficients(options);
  const bool vector = aligned16(params) && aligned16(m) && aligned16(v) && aligned16(grads);
  const int64_t work = vector ? std::max<int64_t>(n / 4, 1) : n;
  const int64_t blocks = std::min(ceil_div(work, kThreads), kMaxBlocks);
  if (vector)
    SSL_CORE_LAUNCH(adamw_vector_kernel, blocks, kThreads, 0, stream, params, m, v, grads, n, k);
  else
    SSL_CORE_LAUNCH(adamw_scalar_kernel, blocks, kThreads, 0, stream, params, m, v, grads, n, k);
  check_launch("adamw_update");
}

}  // namespace ssl_core::cuda
