// The CUDA launchers (csrc/cuda/*.cu): the CPU kernels of kernels.h for
// device memory. Arguments are the CPU kernel's, every pointer a device
// pointer, plus the stream the work is queued on; launchers return without
// waiting for it, except linear_cross_entropy, whose loss comes back to the
// host. A launch error throws std::runtime_error naming the kernel.
//
// The same sources build the real CUDA module (nvcc) and the emulated one
// (csrc/simt/, host compiler), where "device memory" is host memory and the
// stream is ignored.
#pragma once

#include "ssl_core/kernels.h"

namespace ssl_core::cuda {

using Stream = void*;  // a cudaStream_t; null is the legacy default stream
using cpu::GeluApproximation;

void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                        const float* bias, float eps, Stream stream);
void layer_norm_backward(RowsView dx, float* dweight, float* dbias, ConstRowsView dy, ConstRowsView x,
                         const float* weight, const float* mean, const float* rstd, bool accumulate,
                         Stream stream);
void gelu_forward(RowsView y, ConstRowsView x, const float* bias, GeluApproximation approximate,
                  Stream stream);
void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias,
                   GeluApproximation approximate, Stream stream);
void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options, Stream stream);
// deterministic: dq is accumulated in a fixed order (no float atomics), so
// repeated calls give bit-identical gradients.
void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, ConstHeadsView q,
                        ConstHeadsView k, ConstHeadsView v, ConstHeadsView out, const float* lse,
                        const AttentionOptions& options, bool deterministic, Stream stream);
// Synchronizes `stream` to bring the loss back.
CrossEntropyResult linear_cross_entropy(RowsView d_hidden, RowsView d_weight, float* d_bias,
                                        ConstRowsView hidden, ConstRowsView weight, const float* bias,
                                        const CrossEntropyLabels& labels, const CrossEntropyOptions& options,
                                        Stream stream);
void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n,
                  const AdamWOptions& options, Stream stream);

// The 16-bit floats of attention_forward_16bit; arrays hold their bits.
enum class HalfType { float16, bfloat16 };
// attention_forward on tensor cores: q, k, v and out 16-bit (of `type`), lse
// float32, softmax and accumulation in float32. head_dim a multiple of 16 in
// [16, 128]; otherwise as attention_forward.
void attention_forward_16bit(HeadsViewT<uint16_t> out, float* lse, HeadsViewT<const uint16_t> q,
                             HeadsViewT<const uint16_t> k, HeadsViewT<const uint16_t> v, HalfType type,
                             const AttentionOptions& options, Stream stream);
// attention_backward on tensor cores: dq, dk, dv, dout, q, k, v and out
// 16-bit (of `type`), lse float32 from the forward; accumulation in float32.
// head_dim a multiple of 16 in [16, 128]; otherwise as attention_backward.
void attention_backward_16bit(HeadsViewT<uint16_t> dq, HeadsViewT<uint16_t> dk, HeadsViewT<uint16_t> dv,
                              HeadsViewT<const uint16_t> dout, HeadsViewT<const uint16_t> q,
                              HeadsViewT<const uint16_t> k, HeadsViewT<const uint16_t> v,
                              HeadsViewT<const uint16_t> out, const float* lse, HalfType type,
                              const AttentionOptions& options, bool deterministic, Stream stream);

}  // namespace ssl_core::cuda
