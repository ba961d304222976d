// Small matrix products on register tiles: the inner loops of the attention
// kernels (csrc/cpu/attention_*.cpp) and of the fused cross-entropy
// (csrc/cpu/linear_cross_entropy.cpp).
//
//   C (rows x cols) (+)= A (rows x depth) . B (depth x cols)
//
// B and C are row-major with cols a multiple of kWidth (the callers pad them),
// and A is read one element at a time through two strides, A(r, k) =
// a[r * a_row + k * a_k], so the same kernel multiplies by A or by its
// transpose without copying. The micro-kernel keeps a kTileRows x
// kTileVectors block of C in registers and for each k broadcasts one element
// of A per row against kTileVectors vectors of B: the outer-product form of
// BLIS and llm.c's matmul, sized so that the FMA units, not the loads, set
// the pace (6 x 4 zmm: 10 loads feed 24 FMAs).
//
// Why not a BLAS call per tile: the tiles are small (64 x 64 x 64 in the
// backward), and measured once, single-threaded, with a standalone harness
// (not part of benchmarks/; AVX-512, 2 GHz) OpenBLAS's
// sgemm (NumPy's scipy-openblas) reaches about 90 GFLOP/s, packing its
// operands on every call, where this kernel reaches 95-105 reading them in
// place through the strides above, and adds no dependency to the wheel.
#pragma once

#include <cstdint>

#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {

#if defined(__AVX512F__)
constexpr int kTileRows = 6, kTileVectors = 4;  // 24 of 32 registers accumulate
#else
constexpr int kTileRows = 6, kTileVectors = 2;  // 12 of 16
#endif

// A(r, k) = data[r * row_step + k * k_step].
struct StridedA {
  const float* data;
  int64_t row_step, k_step;
};

// How a product treats the C it writes: overwrites it, adds to it, or adds
// to it after scaling row r by row_scale[r] (an online softmax's rescaling
// of its output, at no extra pass). `accumulate` sums the product from zero
// and adds it to C once: a long sum split over many calls (depth blocks of a
// vocabulary, chunks of rows) then rounds like a blocked sum, and a small
// product added to a large C is rounded once, not at every step.
enum class Update { overwrite, accumulate, rescale_accumulate };

// RowStep and KStep, when not 0, fix a.row_step and a.k_step at compile
// time: the broadcasts then address A with constant offsets instead of a
// table of row pointers, which made a 64 x 64 x 64 product about 10% faster
// in a standalone timing (not part of benchmarks/).
template <int Rows, int Vectors, Update Mode, int64_t RowStep, int64_t KStep>
inline void gemm_tile(int64_t depth, StridedA a, const float* __restrict b, int64_t ldb,
                      float* __restrict c, int64_t ldc, const float* row_scale) {
  const int64_t k_step = KStep ? KStep : a.k_step;
  Vec acc[Rows][Vectors];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) {
      if constexpr (Mode == Update::rescale_accumulate) acc[r][v] = load(c + r * ldc + v * kWidth) * splat(row_scale[r]);
      else acc[r][v] = splat(0.0f);
    }
  const float* a_rows[Rows];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) a_rows[r] = a.data + r * a.row_step;
  for (int64_t k = 0; k < depth; ++k) {
    Vec bk[Vectors];
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) bk[v] = load(b + k * ldb + v * kWidth);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const Vec ar = splat(RowStep ? a.data[k * k_step + r * RowStep] : a_rows[r][k * k_step]);
#pragma GCC unroll 8
      for (int v = 0; v < Vectors; ++v) acc[r][v] = fma(ar, bk[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) {
      float* out = c + r * ldc + v * kWidth;
      store(out, Mode == Update::accumulate ? load(out) + acc[r][v] : acc[r][v]);
    }
}

// All rows of one strip of `Vectors` vector columns.
template <int Vectors, Update Mode, int64_t RowStep, int64_t KStep>
void gemm_strip(int64_t rows, int64_t depth, StridedA a, const float* b, int64_t ldb, float* c,
                int64_t ldc, const float* row_scale) {
  int64_t r = 0;
  for (; r + kTileRows <= rows; r += kTileRows)
    gemm_tile<kTileRows, Vectors, Mode, RowStep, KStep>(depth, {a.data + r * a.row_step, a.row_step, a.k_step},
                                                        b, ldb, c + r * ldc, ldc, row_scale + r);
  const StridedA rest{a.data + r * a.row_step, a.row_step, a.k_step};
  float* c_rest = c + r * ldc;
  const float* scale_rest = row_scale + r;
  switch (rows - r) {  // the last rows, in one tile of their own height
    case 1: return gemm_tile<1, Vectors, Mode, RowStep, KStep>(depth, rest, b, ldb, c_rest, ldc, scale_rest);
    case 2: return gemm_tile<2, Vectors, Mode, RowStep, KStep>(depth, rest, b, ldb, c_rest, ldc, scale_rest);
    case 3: return gemm_tile<3, Vectors, Mode, RowStep, KStep>(depth, rest, b, ldb, c_rest, ldc, scale_rest);
    case 4: return gemm_tile<4, Vectors, Mode, RowStep, KStep>(depth, rest, b, ldb, c_rest, ldc, scale_rest);
    case 5: return gemm_tile<5, Vectors, Mode, RowStep, KStep>(depth, rest, b, ldb, c_rest, ldc, scale_rest);
    default: return;
  }
}
static_assert(kTileRows == 6, "gemm_strip handles remainders of up to 5 rows");

template <int Vectors, Update Mode, int64_t RowStep, int64_t KStep>
void gemm_strip_of_width(int vectors, int64_t rows, int64_t depth, StridedA a, const float* b,
                         int64_t ldb, float* c, int64_t ldc, const float* row_scale) {
  if constexpr (Vectors > 1) {
    if (vectors < Vectors)
      return gemm_strip_of_width<Vectors - 1, Mode, RowStep, KStep>(vectors, rows, depth, a, b, ldb, c, ldc,
                                                                   row_scale);
  }
  gemm_strip<Vectors, Mode, RowStep, KStep>(rows, depth, a, b, ldb, c, ldc, row_scale);
}

// C = A B, C += A B or C = diag(row_scale) C + A B, by Mode. cols % kWidth == 0.
// RowStep and KStep, when not 0, must equal a.row_step and a.k_step.
template <Update Mode, int64_t RowStep = 0, int64_t KStep = 0>
void gemm(int64_t rows, int64_t cols, int64_t depth, StridedA a, const float* b, int64_t ldb,
          float* c, int64_t ldc, const float* row_scale = nullptr) {
  for (int64_t col = 0; col < cols; col += kTileVectors * kWidth) {
    const int64_t left = (cols - col) / kWidth;
    const int vectors = static_cast<int>(left < kTileVectors ? left : kTileVectors);
    gemm_strip_of_width<kTileVectors, Mode, RowStep, KStep>(vectors, rows, depth, a, b + col, ldb, c + col, ldc,
                                                            row_scale);
  }
}

// gemm for an A whose rows are contiguous and row_step apart, with that step
// fixed at compile time for the common head dims.
template <Update Mode>
void gemm_contiguous_rows(int64_t rows, int64_t cols, int64_t depth, const float* a, int64_t row_step,
                          const float* b, int64_t ldb, float* c, int64_t ldc) {
  switch (row_step) {
    case 32: return gemm<Mode, 32, 1>(rows, cols, depth, {a, 32, 1}, b, ldb, c, ldc);
    case 64: return gemm<Mode, 64, 1>(rows, cols, depth, {a, 64, 1}, b, ldb, c, ldc);
    case 128: return gemm<Mode, 128, 1>(rows, cols, depth, {a, 128, 1}, b, ldb, c, ldc);
    default: return gemm<Mode>(rows, cols, depth, {a, row_step, 1}, b, ldb, c, ldc);
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
