// A linear layer for few rows: y = x Wᵀ + b, fast path (compiled once per
// instruction set; the specification is reference.cpp).
//
// Shapes: x (M, K) rows; weight (N, K) rows, the torch.nn.Linear layout;
// bias (N,) or null; y (M, N) rows.
//
// Made for incremental decoding, where M is the batch (one token per row) and
// every step reads all of a model's weights: the time is the weight matrix
// streaming from memory, so W is read exactly once per call and x, being a
// few rows, stays in L1/L2. BLAS libraries pack both operands for large M
// and do poorly here: OpenBLAS took 18-20 ms for GPT-2's 50257 x 768 output
// layer at M = 2..8 (8 GB/s), against 6-8 ms at M = 1.
//
// Each thread takes a contiguous share of W's rows; a tile of kTileRows rows
// of W is dotted with kTileCols rows of x at a time, kTileRows x kTileCols
// vector accumulators (12 of AVX2's 16 registers, 24 of AVX-512's 32), so
// each loaded vector of W feeds kTileCols FMAs.
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int kTileRows = 4;
constexpr int kTileCols = kWidth == 16 ? 6 : 3;
constexpr int64_t kMinWeightsPerThread = 1 << 16;  // below this, a second thread costs more than it saves

// out[c][r] = dot(x row c, W row r) over K, for R rows of W and C rows of x.
template <int R, int C>
void dot_tile(float out[C][R], const float* const w[R], const float* const x[C], int64_t K) {
  Vec acc[C][R];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = splat(0.0f);
  int64_t k = 0;
  for (; k + kWidth <= K; k += kWidth) {
    Vec xv[C];
    for (int c = 0; c < C; ++c) xv[c] = load(x[c] + k);
    for (int r = 0; r < R; ++r) {
      const Vec wv = load(w[r] + k);
      for (int c = 0; c < C; ++c) acc[c][r] = fma(wv, xv[c], acc[c][r]);
    }
  }
  if (k < K) {  // masked loads read nothing past the rows and give zeros
    const int n = static_cast<int>(K - k);
    Vec xv[C];
    for (int c = 0; c < C; ++c) xv[c] = load(x[c] + k, n);
    for (int r = 0; r < R; ++r) {
      const Vec wv = load(w[r] + k, n);
      for (int c = 0; c < C; ++c) acc[c][r] = fma(wv, xv[c], acc[c][r]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) out[c][r] = reduce_add(acc[c][r]);
}

// y[m0 .. m0+C, n0 .. n0+R] for one tile.
template <int R, int C>
void tile(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias, int64_t n0, int64_t m0) {
  const float* w[R];
  const float* xs[C];
  for (int r = 0; r < R; ++r) w[r] = weight.row(n0 + r);
  for (int c = 0; c < C; ++c) xs[c] = x.row(m0 + c);
  float out[C][R];
  dot_tile<R, C>(out, w, xs, x.cols);
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < R; ++r) y.row(m0 + c)[n0 + r] = out[c][r] + (bias ? bias[n0 + r] : 0.0f);
}

// All rows of x against R rows of W from n0, kTileCols rows of x at a time.
template <int R>
void weight_rows(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kTileCols <= x.rows; m0 += kTileCols) tile<R, kTileCols>(y, x, weight, bias, n0, m0);
  switch (x.rows - m0) {  // the remaining rows of x, fewer than kTileCols
    case 1: tile<R, 1>(y, x, weight, bias, n0, m0); break;
    case 2: tile<R, 2>(y, x, weight, bias, n0, m0); break;
    case 3: if constexpr (kTileCols > 3) tile<R, 3>(y, x, weight, bias, n0, m0); break;
    case 4: if constexpr (kTileCols > 4) tile<R, 4>(y, x, weight, bias, n0, m0); break;
    case 5: if constexpr (kTileCols > 5) tile<R, 5>(y, x, weight, bias, n0, m0); break;
    default: break;
  }
}

}  // namespace

void linear_forward(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias) {
  const int64_t N = weight.rows;
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  const int threads = threads_for(N * weight.cols, kMinWeightsPerThread);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n0 = t * kTileRows;
    switch (N - n0 < kTileRows ? N - n0 : kTileRows) {
      case 4: weight_rows<4>(y, x, weight, bias, n0); break;
      case 3: weight_rows<3>(y, x, weight, bias, n0); break;
      case 2: weight_rows<2>(y, x, weight, bias, n0); break;
      default: weight_rows<1>(y, x, weight, bias, n0); break;
    }
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
