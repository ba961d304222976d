// GELU and its derivative, fast path (compiled once per instruction set; the
// specification is reference.cpp).
//
//   approximate = none: y = x Φ(x)                (BERT; Φ = normal CDF, erf form)
//   approximate = tanh: y = x sigmoid(2u), u = √(2/π)(x + 0.044715 x³)   (GPT-2)
//   backward:           dx = dy * dy/dx
//
// Shapes: x, y, dy, dx are (N, C) rows views of the same shape; y may be x
// and dx may be dy (in place). With a bias (C,), the input is x + bias: the
// bias add of the linear layer before, fused into this pass (it would be a
// pass over memory of its own).
//
// Memory traffic: forward reads and writes 4 bytes an element, backward reads
// 8 and writes 4. The arithmetic (one exp, one reciprocal and a degree-8
// polynomial an element, simd_math.h) costs about as much as that traffic on
// a 2-core AVX-512 machine, so the kernel is a single streaming pass split
// into fixed-size segments across threads, with non-temporal stores for
// outputs larger than the L2 caches (benchmarks/bench_gelu.py: fwd+bwd at
// 1.1-1.4x of copy time).
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd_math.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kSegment = 1 << 14;  // elements per task: 64 KB of input
constexpr int64_t kMinElementsPerThread = 1 << 15;

// Calls body(row, begin, end) over the (rows, cols) index space split into
// segments of at most kSegment elements, in parallel. A contiguous view is
// treated as one long row so that few, long rows still split evenly.
template <class Body>
void for_each_segment(int64_t rows, int64_t cols, bool contiguous, Body body) {
  if (contiguous && rows > 1) {
    cols *= rows;
    rows = 1;
  }
  const int64_t per_row = (cols + kSegment - 1) / kSegment;
  const int64_t tasks = rows * per_row;
  const int threads = threads_for(rows * cols, kMinElementsPerThread);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t row = task / per_row, begin = (task % per_row) * kSegment;
      body(row, begin, begin + kSegment < cols ? begin + kSegment : cols);
    }
    stream_fence();  // make streamed stores visible before the region ends
  }
}

// y = f(x (+ bias)). With a bias, segments stay inside rows (the bias is
// indexed by column).
template <class F>
void map_unary(RowsView y, ConstRowsView x, const float* bias, F f) {
  const bool streaming = prefer_streaming_stores(y.size() * 4);
  for_each_segment(x.rows, x.cols, !bias && x.contiguous() && y.contiguous(),
                   [&](int64_t row, int64_t begin, int64_t end) {
                     const float* xr = x.data + row * x.row_stride + begin;
                     const float* br = bias + begin;
                     write_vectors(y.data + row * y.row_stride + begin, end - begin, streaming, [&](int64_t j, int n) {
                       return f(bias ? load(xr + j, n) + load(br + j, n) : load(xr + j, n));
                     });
                   });
}

// dx = dy * derivative(x (+ bias))
template <class F>
void map_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias, F derivative) {
  const bool streaming = prefer_streaming_stores(dx.size() * 4);
  const bool contiguous = !bias && x.contiguous() && dy.contiguous() && dx.contiguous();
  for_each_segment(x.rows, x.cols, contiguous, [&](int64_t row, int64_t begin, int64_t end) {
    const float* xr = x.data + row * x.row_stride + begin;
    const float* dyr = dy.data + row * dy.row_stride + begin;
    const float* br = bias + begin;
    write_vectors(dx.data + row * dx.row_stride + begin, end - begin, streaming, [&](int64_t j, int n) {
      return load(dyr + j, n) * derivative(bias ? load(xr + j, n) + load(br + j, n) : load(xr + j, n));
    });
  });
}

}  // namespace

void gelu_forward(RowsView y, ConstRowsView x, const float* bias, GeluApproximation approximate) {
  if (approximate == GeluApproximation::tanh)
    map_unary(y, x, bias, [](Vec v) { return gelu_tanh(v); });
  else
    map_unary(y, x, bias, [](Vec v) { return gelu_erf(v); });
}

void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias,
                   GeluApproximation approximate) {
  if (approximate == GeluApproximation::tanh)
    map_backward(dx, dy, x, bias, [](Vec v) { return gelu_tanh_derivative(v); });
  else
    map_backward(dx, dy, x, bias, [](Vec v) { return gelu_erf_derivative(v); });
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
