// The dispatching kernel entry points: each forwards to the implementation
// that runtime.h selects (reference, portable, avx2 or avx512).
#include <cstring>

#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"

namespace ssl_core::cpu {
namespace {

template <class Fn>
Fn pick(Fn reference_fn, Fn portable_fn, [[maybe_unused]] Fn avx2_fn, [[maybe_unused]] Fn avx512_fn) {
  switch (active_isa()) {
    case CpuIsa::reference: return reference_fn;
#if SSL_CORE_X86
    case CpuIsa::avx2: return avx2_fn;
    case CpuIsa::avx512: return avx512_fn;
#endif
    default: return portable_fn;
  }
}

}  // namespace

#if SSL_CORE_X86
#define SSL_CORE_PICK(name) pick(reference::name, portable::name, avx2::name, avx512::name)
#else  // the avx2 and avx512 builds do not exist here; never selected
#define SSL_CORE_PICK(name) pick(reference::name, portable::name, portable::name, portable::name)
#endif

void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                        const float* bias, float eps) {
  SSL_CORE_PICK(layer_norm_forward)(y, mean, rstd, x, weight, bias, eps);
}

void layer_norm_backward(RowsView dx, float* dweight, float* dbias, ConstRowsView dy,
                         ConstRowsView x, const float* weight, const float* mean, const float* rstd,
                         bool accumulate) {
  SSL_CORE_PICK(layer_norm_backward)(dx, dweight, dbias, dy, x, weight, mean, rstd, accumulate);
}

void gelu_forward(RowsView y, ConstRowsView x, const float* bias, GeluApproximation approximate) {
  SSL_CORE_PICK(gelu_forward)(y, x, bias, approximate);
}

void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias,
                   GeluApproximation approximate) {
  SSL_CORE_PICK(gelu_backward)(dx, dy, x, bias, approximate);
}

void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options) {
  SSL_CORE_PICK(attention_forward)(out, lse, q, k, v, options);
}

void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, ConstHeadsView q,
                        ConstHeadsView k, ConstHeadsView v, ConstHeadsView out, const float* lse,
                        const AttentionOptions& options) {
  SSL_CORE_PICK(attention_backward)(dq, dk, dv, dout, q, k, v, out, lse, options);
}

CrossEntropyResult linear_cross_entropy(RowsView d_hidden, RowsView d_weight, float* d_bias, ConstRowsView hidden,
                                        ConstRowsView weight, const float* bias, const CrossEntropyLabels& labels,
                                        const CrossEntropyOptions& options) {
  return SSL_CORE_PICK(linear_cross_entropy)(d_hidden, d_weight, d_bias, hidden, weight, bias, labels, options);
}

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWOptions& options) {
  SSL_CORE_PICK(adamw_update)(params, m, v, grads, n, options);
}

void linear_forward(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias) {
  SSL_CORE_PICK(linear_forward)(y, x, weight, bias);
}

void linear_forward_bf16(RowsView y, ConstRowsView x, RowsViewT<const uint16_t> weight, const float* bias) {
  SSL_CORE_PICK(linear_forward_bf16)(y, x, weight, bias);
}

void copy_memory(void* dst, const void* src, int64_t bytes) {
  constexpr int64_t kBlock = 1 << 20;
  const int64_t blocks = (bytes + kBlock - 1) / kBlock;
#pragma omp parallel for num_threads(threads_for(blocks, 1)) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock, size = bytes - begin < kBlock ? bytes - begin : kBlock;
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, size);
  }
}

}  // namespace ssl_core::cpu
