// LayerNorm over the last dimension, fast path (compiled once per instruction
// set; the specification is reference.cpp).
//
//   forward:  y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
//   backward: xhat = (x - mean) * rstd,  g = dy * weight
//             dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//             dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy
//
// Shapes: x, y, dy, dx (N, C) rows views; weight, bias, dweight, dbias (C,);
// mean, rstd (N,).
//
// Memory traffic: forward reads x once and writes y once (plus 8 bytes a row);
// backward reads dy and x once and writes dx once. Each row (3 KB at C = 768)
// stays in L1 while it is worked on: the statistics are two passes over the
// cached row (sum, then sums of deviations from it), which stays exact for
// rows with a large mean, unlike the one-pass E[x²] - E[x]². The next row is
// prefetched, and outputs too large for the threads' L2 caches are written
// with non-temporal stores, so a large forward moves 2 bytes per byte of x
// instead of the 3 a cached copy moves.
//
// Threads take whole rows. In backward each thread adds dy * xhat and dy into
// per-chunk partial sums; chunks are fixed groups of rows decided by N alone,
// and the partials are summed in chunk order in float64, so dweight and dbias
// are bit-identical for any thread count.
#include <algorithm>
#include <cmath>

#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kMinElementsPerThread = 1 << 14;
constexpr int64_t kMinRowsPerChunk = 32;
constexpr int64_t kMaxChunks = 256;

float row_sum(const float* x, int64_t C) {
  Vec s0 = splat(0.0f), s1 = splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kWidth <= C; j += 2 * kWidth) {
    s0 += load(x + j);
    s1 += load(x + j + kWidth);
  }
  for (; j < C; j += kWidth) {
    const int n = static_cast<int>(C - j < kWidth ? C - j : kWidth);
    s0 += load(x + j, n);
  }
  return reduce_add(s0 + s1);
}

// Sum of (x - mean) and of (x - mean)² over a row. The first is the float32
// rounding error of `mean` times C, which the caller folds back in: a row
// with mean 1e4 and std 1 then keeps its normalized values accurate to a
// few ulps of the mean instead of losing them to a rounded sum.
void row_deviation_sums(const float* x, float mean, int64_t C, float& sum, float& sum_squares) {
  const Vec m = splat(mean);
  Vec s0 = splat(0.0f), s1 = splat(0.0f), q0 = splat(0.0f), q1 = splat(0.0f);
  int64_t j = 0;
  for (; j + 2 * kWidth <= C; j += 2 * kWidth) {
    const Vec d0 = load(x + j) - m, d1 = load(x + j + kWidth) - m;
    s0 += d0;
    s1 += d1;
    q0 = fma(d0, d0, q0);
    q1 = fma(d1, d1, q1);
  }
  for (; j < C; j += kWidth) {
    const int n = static_cast<int>(C - j < kWidth ? C - j : kWidth);
    const Vec d = select(first_lanes(n), load(x + j, n) - m, splat(0.0f));
    s0 += d;
    q0 = fma(d, d, q0);
  }
  sum = reduce_add(s0 + s1);
  sum_squares = reduce_add(q0 + q1);
}

// y = ((x - rough_mean) - correction) * rstd * weight + bias. x - rough_mean is
// exact for x near the mean, so y keeps the row's information even when the
// mean is large against the spread, where x * rstd - mean * rstd would lose it
// to the rounding of two large products.
void normalize_row(float* y, const float* x, const float* weight, const float* bias,
                   float rough_mean, float correction, float rstd, int64_t C, bool streaming) {
  const Vec m = splat(rough_mean), c = splat(correction), rs = splat(rstd);
  write_vectors(y, C, streaming, [&](int64_t j, int n) {
    return fma(((load(x + j, n) - m) - c) * rs, load(weight + j, n), load(bias + j, n));
  });
}

// One row of backward: writes dx, adds this row's terms into the chunk's
// partial dweight/dbias. With a = mean(g) and b = mean(g * xhat):
//   dx = rstd * (g - a - xhat * b) = fma(g, rstd, fma(xhat, -rstd b, -rstd a))
void backward_row(float* dx, float* partial_dweight, float* partial_dbias, const float* dy,
                  const float* x, const float* weight, float mean, float rstd, int64_t C,
                  bool streaming) {
  const Vec m = splat(mean), rs = splat(rstd);
  Vec sum_g = splat(0.0f), sum_g_xhat = splat(0.0f);
  // Tail lanes load as zero, so dy = g = 0 there and they add nothing.
  for (int64_t j = 0; j < C; j += kWidth) {
    const int n = static_cast<int>(C - j < kWidth ? C - j : kWidth);
    const Vec dyv = load(dy + j, n), xv = load(x + j, n);
    const Vec g = dyv * load(weight + j, n);
    const Vec xhat = (xv - m) * rs;
    sum_g += g;
    sum_g_xhat = fma(g, xhat, sum_g_xhat);
    store(partial_dweight + j, fma(dyv, xhat, load(partial_dweight + j, n)), n);
    store(partial_dbias + j, dyv + load(partial_dbias + j, n), n);
  }
  const float a = reduce_add(sum_g) / static_cast<float>(C);
  const float b = reduce_add(sum_g_xhat) / static_cast<float>(C);
  const Vec xhat_coefficient = splat(-rstd * b), constant = splat(-rstd * a);
  write_vectors(dx, C, streaming, [&](int64_t j, int n) {
    const Vec xhat = (load(x + j, n) - m) * rs;
    const Vec g = load(dy + j, n) * load(weight + j, n);
    return fma(g, rs, fma(xhat, xhat_coefficient, constant));
  });
}

// Asks for the next row while this one is computed on: rows are short (3 KB
// at C = 768), too short for the hardware prefetcher to ramp up on its own.
void prefetch_row(const float* p, int64_t C) {
  if (C > 8192) return;  // long rows: the hardware prefetcher does it
  for (int64_t j = 0; j < C; j += 16) __builtin_prefetch(p + j);
}

}  // namespace

void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                        const float* bias, float eps) {
  const int64_t N = x.rows, C = x.cols;
  const int threads = threads_for(N * C, kMinElementsPerThread);
  const bool streaming = prefer_streaming_stores(N * C * 4);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) {
      const float* xr = x.row(i);
      if (i + 1 < N) prefetch_row(x.row(i + 1), C);
      const float rough_mean = row_sum(xr, C) / static_cast<float>(C);
      float deviation, squares;
      row_deviation_sums(xr, rough_mean, C, deviation, squares);
      const float correction = deviation / static_cast<float>(C);
      const float m = rough_mean + correction;
      // Σ(x - m)² = Σ(x - rough)² - C correction²; clamp the rounding below 0.
      const float var = std::max(squares / static_cast<float>(C) - correction * correction, 0.0f);
      const float rs = 1.0f / std::sqrt(var + eps);
      mean[i] = m;
      rstd[i] = rs;
      normalize_row(y.row(i), xr, weight, bias, rough_mean, correction, rs, C, streaming);
    }
    stream_fence();  // this thread's streamed rows are visible before the region ends
  }
}

void layer_norm_backward(RowsView dx, float* dweight, float* dbias, ConstRowsView dy,
                         ConstRowsView x, const float* weight, const float* mean, const float* rstd,
                         bool accumulate) {
  const int64_t N = x.rows, C = x.cols;
  int64_t rows_per_chunk = (N + kMaxChunks - 1) / kMaxChunks;
  if (rows_per_chunk < kMinRowsPerChunk) rows_per_chunk = kMinRowsPerChunk;
  const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;

  // partials[c] holds chunk c's dweight (C floats) then its dbias (C floats).
  ScratchBuffer<float> partials(chunks * 2 * C);
  const int threads = threads_for(N * C, kMinElementsPerThread);
  const bool streaming = prefer_streaming_stores(N * C * 4);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < chunks; ++c) {
      float* pw = partials.get() + c * 2 * C;
      float* pb = pw + C;
      for (int64_t j = 0; j < 2 * C; ++j) pw[j] = 0.0f;
      const int64_t end = (c + 1) * rows_per_chunk < N ? (c + 1) * rows_per_chunk : N;
      for (int64_t i = c * rows_per_chunk; i < end; ++i) {
        if (i + 1 < N) {
          prefetch_row(dy.row(i + 1), C);
          prefetch_row(x.row(i + 1), C);
        }
        backward_row(dx.row(i), pw, pb, dy.row(i), x.row(i), weight, mean[i], rstd[i], C,
                     streaming);
      }
    }
    stream_fence();
    // Then the partials summed in chunk order, in float64, a block of columns
    // per task: in the same parallel region, since waking the threads for a
    // second one cost about 1 ms here once they sleep soon after a kernel
    // (GOMP_SPINCOUNT, python/ssl_core/__init__.py).
    constexpr int64_t kColumnBlock = 256;
    const int64_t blocks = (2 * C + kColumnBlock - 1) / kColumnBlock;
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t begin = blk * kColumnBlock;
      const int64_t width = 2 * C - begin < kColumnBlock ? 2 * C - begin : kColumnBlock;
      double total[kColumnBlock] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const float* p = partials.get() + c * 2 * C + begin;
        for (int64_t j = 0; j < width; ++j) total[j] += p[j];
      }
      for (int64_t j = 0; j < width; ++j) {
        const int64_t col = begin + j;
        float* out = col < C ? dweight + col : dbias + (col - C);
        *out = static_cast<float>(accumulate ? *out + total[j] : total[j]);
      }
    }
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
