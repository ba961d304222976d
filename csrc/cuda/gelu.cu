// GELU and its derivative on the GPU (the CPU op is csrc/cpu/gelu.cpp, its
// specification csrc/cpu/reference.cpp):
//
//   approximate = none: y = x Φ(x) = 0.5 x (1 + erf(x / √2))         (BERT)
//                       dy/dx = Φ(x) + x φ(x)
//   approximate = tanh: y = x s, s = sigmoid(2u), u = √(2/π)(x + 0.044715 x³)
//                       (= 0.5 x (1 + tanh u), GPT-2), dy/dx = s + 2 x s (1 - s) du/dx
//   backward:           dx = dy * dy/dx
//
// The erf form is torch's CUDA formula with erff; for x < 0, 1 + erf cancels,
// which costs at most ~ulp(1) |x| / 2 absolute (1e-7 at x = -3; the CPU
// kernel's erfc-based form is exact in relative terms there, erfcf not being
// one of the emulator's functions). Measured here: within 1.5e-7 x
// max(1, |y|) of float64 over |x| <= 10 for y and dy/dx, as the CPU kernel.
// The tanh form is evaluated as x sigmoid(2u) with 1 - s = e s, e = exp(-2u)
// capped at e^80, as simd_math.h does, so that negative x does not cancel.
// For |x| > 20 both forms return their limits (x or -0; derivative 1 or 0),
// so that ±inf get their limits rather than inf * 0 = NaN; NaN stays NaN.
//
// Shapes: x, y, dy, dx are (N, C) rows views of the same shape; y may be x
// and dx may be dy (each element is read before the same thread writes it).
// With a bias (C,), the input is x + bias (the bias add of the linear layer
// before, fused into this pass).
//
// Memory-bound (forward 8 bytes an element, backward 12): grid-stride loops
// of 256-thread blocks, threadIdx.x/blockIdx.x over the columns and
// threadIdx.y/blockIdx.y over the rows (short rows share a block), with
// float4 loads and stores when every pointer is 16-byte aligned and C and
// the row strides are multiples of 4. Without a bias, views whose rows follow
// each other in memory are one long row, so that few long rows and many short
// ones fill the grid alike. No shared memory, no division per element.
#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;

constexpr float kInvSqrt2 = 0.707106781186547524f;
constexpr float kInvSqrt2Pi = 0.398942280401432678f;
constexpr float kSqrt2OverPi = 0.797884560802865355f;
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu_limit(float x, float value, float at_plus, float at_minus) {
  return fabsf(x) > 20.0f ? (x >= 0.0f ? at_plus : at_minus) : value;
}

// s = sigmoid(2u); also 1 - s (as e s) and du/dx.
__device__ __forceinline__ float sigmoid_of_2u(float x, float& one_minus_s, float& du_dx) {
  const float x2 = x * x;
  const float u = x * fmaf(x2, kSqrt2OverPi * kGeluCubic, kSqrt2OverPi);
  const float e = expf(fminf(u * -2.0f, 80.0f));
  const float s = 1.0f / (1.0f + e);
  one_minus_s = e * s;
  du_dx = fmaf(x2, 3.0f * kSqrt2OverPi * kGeluCubic, kSqrt2OverPi);
  return s;
}

template <bool kTanh>
__device__ __forceinline__ float gelu(float x) {
  float value;
  if constexpr (kTanh) {
    float one_minus_s, du_dx;
    value = x * sigmoid_of_2u(x, one_minus_s, du_dx);
  } else {
    value = 0.5f * x * (1.0f + erff(x * kInvSqrt2));
  }
  return gelu_limit(x, value, x, -0.0f);
}

template <bool kTanh>
__device__ __forceinline__ float gelu_derivative(float x) {
  float d;
  if constexpr (kTanh) {
    float one_minus_s, du_dx;
    const float s = sigmoid_of_2u(x, one_minus_s, du_dx);
    d = fmaf(x * s * one_minus_s, du_dx * 2.0f, s);
  } else {
    const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
    d = fmaf(x * kInvSqrt2Pi, expf(-0.5f * x * x), cdf);
  }
  return gelu_limit(x, d, 1.0f, 0.0f);
}

// x (+ bias) at column j of row xr.
template <int kWidth>
__device__ __forceinline__ void load_input(float* v, const float* xr, const float* bias, int64_t j) {
  load_floats<kWidth>(v, xr + j);
  if (bias) {
    float b[kWidth];
    load_floats<kWidth>(b, bias + j);
#pragma unroll
    for (int e = 0; e < kWidth; ++e) v[e] += b[e];
  }
}

template <int kWidth, bool kTanh>
__global__ void __launch_bounds__(kThreads) gelu_forward_kernel(RowsView y, ConstRowsView x, const float* bias) {
  const int64_t C = x.cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * kWidth;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < x.rows;
       r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const float* xr = x.data + r * x.row_stride;
    float* yr = y.data + r * y.row_stride;
    // Not unrolled: unrolling this grid-stride loop made ptxas spill in the
    // scalar tanh kernels (sm_80 and sm_90), for no gain in a memory-bound loop.
#pragma unroll 1
    for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kWidth; j < C; j += step) {
      float v[kWidth];
      load_input<kWidth>(v, xr, bias, j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) v[e] = gelu<kTanh>(v[e]);
      store_floats<kWidth>(yr + j, v);
    }
  }
}

template <int kWidth, bool kTanh>
__global__ void __launch_bounds__(kThreads)
    gelu_backward_kernel(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias) {
  const int64_t C = x.cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * kWidth;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < x.rows;
       r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const float* xr = x.data + r * x.row_stride;
    const float* dyr = dy.data + r * dy.row_stride;
    float* dxr = dx.data + r * dx.row_stride;
    // Not unrolled: unrolling this grid-stride loop made ptxas spill in the
    // scalar tanh kernels (sm_80 and sm_90), for no gain in a memory-bound loop.
#pragma unroll 1
    for (int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kWidth; j < C; j += step) {
      float v[kWidth], d[kWidth];
      load_input<kWidth>(v, xr, bias, j);
      load_floats<kWidth>(d, dyr + j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) v[e] = d[e] * gelu_derivative<kTanh>(v[e]);
      store_floats<kWidth>(dxr + j, v);
    }
  }
}

// One long row when the rows follow each other in memory.
template <class T>
RowsViewT<T> flattened(const RowsViewT<T>& v) {
  return {v.data, 1, v.rows * v.cols, v.rows * v.cols};
}

// The launch over a rows x cols view: threadIdx.x / blockIdx.x over the
// columns, threadIdx.y / blockIdx.y over the rows. Short rows share a block
// (blockDim.x is the smallest power of two from 32 covering a row), so that
// rows of 64 columns do not leave most of a 256-thread block idle.
struct Launch {
  dim3 grid, block;
};

Launch launch_for(int64_t rows, int64_t cols, int width) {
  const int64_t per_row = ceil_div(cols, width);
  unsigned threads_x = 32;
  while (threads_x < static_cast<unsigned>(kThreads) && threads_x < per_row) threads_x *= 2;
  const unsigned threads_y = kThreads / threads_x;
  const int64_t x = std::clamp<int64_t>(ceil_div(per_row, threads_x), 1, 1024);
  const int64_t y = std::clamp<int64_t>(ceil_div(rows, threads_y), 1,
                                        std::min<int64_t>(65535, std::max<int64_t>(1, kMaxBlocks / x)));
  return {dim3(static_cast<unsigned>(x), static_cast<unsigned>(y)), dim3(threads_x, threads_y)};
}

}  // namespace

void gelu_forward(RowsView y, ConstRowsView x, const float* bias, GeluApproximation approximate, Stream stream) {
  if (x.rows == 0 || x.cols == 0) return;
  if (!bias && x.contiguous() && y.contiguous()) {
    x = flattened(x);
    y = flattened(y);
  }
  const bool vector = vectorizable(x) && vectorizable(y) && (!bias || aligned16(bias));
  const Launch launch = launch_for(x.rows, x.cols, vector ? 4 : 1);
  auto kernel = gelu_forward_kernel<1, false>;
  if (approximate == GeluApproximation::tanh)
    kernel = vector ? gelu_forward_kernel<4, true> : gelu_forward_kernel<1, true>;
  else if (vector)
    kernel = gelu_forward_kernel<4, false>;
  SSL_CORE_LAUNCH(kernel, launch.grid, launch.block, 0, stream, y, x, bias);
  check_launch("gelu_forward");
}

void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias, GeluApproximation approximate,
                   Stream stream) {
  if (x.rows == 0 || x.cols == 0) return;
  if (!bias && x.contiguous() && dy.contiguous() && dx.contiguous()) {
    x = flattened(x);
    dy = flattened(dy);
    dx = flattened(dx);
  }
  const bool vector = vectorizable(x) && vectorizable(dy) && vectorizable(dx) && (!bias || aligned16(bias));
  const Launch launch = launch_for(x.rows, x.cols, vector ? 4 : 1);
  auto kernel = gelu_backward_kernel<1, false>;
  if (approximate == GeluApproximation::tanh)
    kernel = vector ? gelu_backward_kernel<4, true> : gelu_backward_kernel<1, true>;
  else if (vector)
    kernel = gelu_backward_kernel<4, false>;
  SSL_CORE_LAUNCH(kernel, launch.grid, launch.block, 0, stream, dx, dy, x, bias);
  check_launch("gelu_backward");
}

}  // namespace ssl_core::cuda
