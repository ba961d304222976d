// A linear layer for few rows: y = x Wᵀ + b, fast path (compiled once per
// instruction set; the specification is reference.cpp).
//
// Shapes: x (M, K) rows; weight (N, K) rows, the torch.nn.Linear layout,
// float32 or bfloat16 (uint16 bits, widened to float32 as they load: half the
// memory traffic, the same float32 arithmetic); bias (N,) or null; y (M, N).
//
// Made for incremental decoding, where M is the batch (one token per row) and
// every step reads all of a model's weights: the time is the weight matrix
// streaming from memory, so W is read from memory once per call and x, being
// a few rows, stays in L1/L2. BLAS libraries pack both operands for large M
// and do poorly here: OpenBLAS took 18-20 ms for GPT-2's 50257 x 768 output
// layer at M = 2..8 (8 GB/s), against 6-8 ms at M = 1.
//
// Each thread takes a contiguous share of W's rows. A tile dots R rows of W
// with C rows of x, R x C vector accumulators in registers, and C is all of
// x's rows up to kMaxCols, so each vector of W is loaded once and used C
// times (more rows take several passes).
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

// Accumulators per tile: 12 of AVX2's (and SSE's) 16 vector registers, 24 of
// AVX-512's 32, leaving room for the C vectors of x and one of W.
constexpr int kAccumulators = kWidth == 16 ? 24 : 12;
constexpr int kMaxCols = kWidth == 16 ? 12 : 8;
// Bytes of W ahead of the loads that are prefetched. The hardware prefetcher
// alone fell behind at 8 rows of x (min over 40 calls, GPT-2's output layer:
// 8.0 ms, against 5.8 ms with this and 5.4 ms for one row).
constexpr int64_t kPrefetchBytes = 8192;
constexpr int64_t kMinWeightsPerThread = 1 << 16;  // below this, a second thread costs more than it saves

// Rows of W per tile for C rows of x: as many as the accumulators allow, up
// to 4 (at least 4 independent FMA chains hide the FMA latency when C is 1).
constexpr int rows_for(int C) { return kAccumulators / C >= 4 ? 4 : kAccumulators / C >= 1 ? kAccumulators / C : 1; }

inline Vec load_weights(const float* p) { return load(p); }
inline Vec load_weights(const float* p, int n) { return load(p, n); }
inline Vec load_weights(const uint16_t* p) { return load_bf16(p); }
inline Vec load_weights(const uint16_t* p, int n) { return load_bf16(p, n); }

// out[c][r] = dot(x row c, W row r) over K, for R rows of W and C rows of x.
template <int R, int C, class T>
void dot_tile(float out[C][R], const T* const w[R], const float* const x[C], int64_t K) {
  constexpr int64_t kLine = 64 / sizeof(T), kAhead = kPrefetchBytes / sizeof(T);  // in elements of W
  Vec acc[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = splat(0.0f);
  int64_t k = 0;
  for (; k + kWidth <= K; k += kWidth) {
    for (int r = 0; r < R; ++r) {
      if (k % kLine == 0) __builtin_prefetch(w[r] + k + kAhead);  // a cache line, once
      const Vec wv = load_weights(w[r] + k);
      for (int c = 0; c < C; ++c) acc[c][r] = fma(wv, load(x[c] + k), acc[c][r]);
    }
  }
  if (k < K) {  // masked loads read nothing past the rows and give zeros
    const int n = static_cast<int>(K - k);
    for (int r = 0; r < R; ++r) {
      const Vec wv = load_weights(w[r] + k, n);
      for (int c = 0; c < C; ++c) acc[c][r] = fma(wv, load(x[c] + k, n), acc[c][r]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c][r] = reduce_add(acc[c][r]);
}

// y[0 .. C, n0 .. n0 + R) for one tile (x and y hold exactly C rows).
template <int R, int C, class T>
void tile(RowsView y, ConstRowsView x, RowsViewT<const T> weight, const float* bias, int64_t n0) {
  const T* w[R];
  const float* xs[C];
  for (int r = 0; r < R; ++r) w[r] = weight.row(n0 + r);
  for (int c = 0; c < C; ++c) xs[c] = x.row(c);
  float out[C][R];
  dot_tile<R, C>(out, w, xs, x.cols);
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) y.row(c)[n0 + r] = out[c][r] + (bias ? bias[n0 + r] : 0.0f);
}

// tile<rows_of_w, rows_of_x> for run-time counts up to R and C.
template <int R, int C, class T>
void any_tile(int rows_of_w, int rows_of_x, RowsView y, ConstRowsView x, RowsViewT<const T> weight,
              const float* bias, int64_t n0) {
  if (rows_of_x < C) {
    if constexpr (C > 1) any_tile<R, C - 1>(rows_of_w, rows_of_x, y, x, weight, bias, n0);
  } else if (rows_of_w < R) {
    if constexpr (R > 1) any_tile<R - 1, C>(rows_of_w, rows_of_x, y, x, weight, bias, n0);
  } else {
    tile<R, C>(y, x, weight, bias, n0);
  }
}

template <class T>
void linear(RowsView y, ConstRowsView x, RowsViewT<const T> weight, const float* bias) {
  // More rows of x than kMaxCols: one pass over W per kMaxCols of them. (Going
  // over each tile of W again from L1 instead was slower at 16 rows: x's rows
  // no longer fit in L1.)
  for (int64_t m0 = 0; m0 < x.rows; m0 += kMaxCols) {
    const int cols = static_cast<int>(x.rows - m0 < kMaxCols ? x.rows - m0 : kMaxCols), rows = rows_for(cols);
    const RowsView y_part{y.row(m0), cols, y.cols, y.row_stride};
    const ConstRowsView x_part{x.row(m0), cols, x.cols, x.row_stride};
    const int64_t N = weight.rows, tiles = (N + rows - 1) / rows;
    const int threads = threads_for(N * weight.cols, kMinWeightsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t n0 = t * rows;
      const int rows_of_w = static_cast<int>(N - n0 < rows ? N - n0 : rows);
      any_tile<4, kMaxCols>(rows_of_w, cols, y_part, x_part, weight, bias, n0);
    }
  }
}

}  // namespace

void linear_forward(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias) {
  linear(y, x, weight, bias);
}

void linear_forward_bf16(RowsView y, ConstRowsView x, RowsViewT<const uint16_t> weight, const float* bias) {
  linear(y, x, weight, bias);
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
