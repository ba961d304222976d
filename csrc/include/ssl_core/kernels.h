// The CPU kernel entry points, declared once for each implementation.
//
// `reference` holds the specification: plain loops with float64 accumulation,
// written to be read. `portable`, `avx2` and `avx512` are the same fast source
// (csrc/cpu/<op>.cpp) compiled three times with different instruction sets.
// The unqualified functions in ssl_core::cpu dispatch to the implementation
// chosen by runtime.h (see dispatch.cpp).
//
// Argument order follows llm.c: outputs first, then inputs, then scalars.
// Backward contract: activation gradients are written (=); parameter gradients
// are written, or added to (+=) when `accumulate` is true.
#pragma once

#include "ssl_core/attention.h"
#include "ssl_core/cross_entropy.h"
#include "ssl_core/optimizer.h"
#include "ssl_core/views.h"

namespace ssl_core::cpu {

enum class GeluApproximation { none, tanh };

// Attention shapes (attention.h): q, out, dq, dout (B, Tq, H, D); k, v, dk, dv
// (B, Tk, H, D); lse (B, H, Tq) contiguous.
// Shapes: x, y (N, C); weight, bias (C,); mean, rstd (N,).
// y may be the same memory as x (in place). GELU: bias (C,) or null is added
// to x first (the fused bias + GELU of a feed-forward layer).
// Cross-entropy (cross_entropy.h): hidden, d_hidden (N, C); weight, d_weight
// (V, C); bias, d_bias (V,) or null. d_hidden.data null: no gradients; else
// every row of d_hidden is written (zeros where unlabelled).
// AdamW (optimizer.h): params, m, v, grads (n,) each; params, m, v updated.
// Linear: y (M, N) = x (M, K) weightᵀ + bias, weight (N, K), bias (N,) or null;
// made for few rows of x (decoding), where weight streams from memory once;
// the _bf16 form takes weight as bfloat16 bits (uint16).
#define SSL_CORE_CPU_KERNEL_DECLARATIONS                                          \
  void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, \
                          const float* weight, const float* bias, float eps);    \
  void layer_norm_backward(RowsView dx, float* dweight, float* dbias,            \
                           ConstRowsView dy, ConstRowsView x,                    \
                           const float* weight, const float* mean,               \
                           const float* rstd, bool accumulate);                  \
  void gelu_forward(RowsView y, ConstRowsView x, const float* bias,               \
                    GeluApproximation approximate);                              \
  void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x,             \
                     const float* bias, GeluApproximation approximate);          \
  void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, \
                         ConstHeadsView v, const AttentionOptions& options);             \
  void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, \
                          ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,         \
                          ConstHeadsView out, const float* lse,                          \
                          const AttentionOptions& options);                     \
  CrossEntropyResult linear_cross_entropy(                                               \
      RowsView d_hidden, RowsView d_weight, float* d_bias, ConstRowsView hidden,         \
      ConstRowsView weight, const float* bias, const CrossEntropyLabels& labels,         \
      const CrossEntropyOptions& options);                                               \
  void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n,    \
                    const AdamWOptions& options);                                        \
  void linear_forward(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias);            \
  void linear_forward_bf16(RowsView y, ConstRowsView x, RowsViewT<const uint16_t> weight,              \
                           const float* bias);

namespace reference { SSL_CORE_CPU_KERNEL_DECLARATIONS }
namespace portable { SSL_CORE_CPU_KERNEL_DECLARATIONS }
namespace avx2 { SSL_CORE_CPU_KERNEL_DECLARATIONS }
namespace avx512 { SSL_CORE_CPU_KERNEL_DECLARATIONS }
SSL_CORE_CPU_KERNEL_DECLARATIONS  // dispatching entry points

// A multi-threaded copy, used by the benchmarks to measure the memory
// bandwidth the kernels above are held to. dst and src: `bytes` bytes each.
void copy_memory(void* dst, const void* src, int64_t bytes);

}  // namespace ssl_core::cpu
