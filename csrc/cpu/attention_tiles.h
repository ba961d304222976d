// What the attention forward and backward kernels share: the block sizes, the
// mask of one (query block x key block) tile, dropout factors and packing.
//
// Both kernels work on transposed score tiles S^T (keys x queries): a row
// holds one key against kQueryBlock queries, so every per-query quantity of
// the softmax (running max, sum, log-sum-exp) lives in the lanes of a vector
// and the softmax needs no horizontal reductions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "ssl_core/attention.h"
#include "ssl_core/philox.h"
#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {

constexpr int64_t kQueryBlock = 64;  // queries in a tile: the lanes of S^T rows
static_assert(kQueryBlock % kWidth == 0 && kQueryBlock % 4 == 0, "query block of whole vectors");
constexpr int kQueryVectors = static_cast<int>(kQueryBlock / kWidth);
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Multiply-adds below which another thread costs more to wake than it saves
// (about 0.1 ms of work).
constexpr int64_t kMinWorkPerThread = int64_t{1} << 22;


// The mask arguments resolved for one (batch, head).
struct HeadMask {
  int64_t key_end;     // keys >= key_end are padding
  bool structured;     // causal or prefix: query i sees j <= i + offset or j < prefix
  int64_t offset;      // Tk - Tq (bottom-right alignment)
  int64_t prefix;      // 0 without prefix_lengths
  const uint8_t* bits;  // explicit mask at (b, h, 0, 0), or null
  int64_t bits_query_stride, bits_key_stride;
};

inline HeadMask head_mask(const AttentionMask& m, int64_t b, int64_t h, int64_t Tq, int64_t Tk) {
  HeadMask hm{Tk, m.causal || m.prefix_lengths, Tk - Tq, 0, nullptr, 0, 0};
  if (m.key_lengths) hm.key_end = m.key_lengths[b];
  if (m.prefix_lengths) hm.prefix = m.prefix_lengths[b];
  if (m.mask) {
    hm.bits = m.mask + b * m.mask_strides[0] + h * m.mask_strides[1];
    hm.bits_query_stride = m.mask_strides[2];
    hm.bits_key_stride = m.mask_strides[3];
  }
  return hm;
}

// Keys that some query in [0, last_query] may see lie below this.
inline int64_t visible_key_end(const HeadMask& hm, int64_t last_query) {
  int64_t end = hm.key_end;
  if (hm.structured) {
    const int64_t diagonal = last_query + hm.offset + 1;
    const int64_t reach = diagonal > hm.prefix ? diagonal : hm.prefix;
    if (reach < end) end = reach;
  }
  return end > 0 ? end : 0;
}

// The first query that may see key `key` through the structured masks.
inline int64_t first_query_seeing(const HeadMask& hm, int64_t key) {
  if (!hm.structured || key < hm.prefix) return 0;
  return key - hm.offset > 0 ? key - hm.offset : 0;
}

// True when every query from first_query on may see every key below key_end
// without an elementwise mask.
inline bool tile_unmasked(const HeadMask& hm, int64_t first_query, int64_t key_end) {
  if (hm.bits || key_end > hm.key_end) return false;
  return !hm.structured || key_end - 1 <= first_query + hm.offset || key_end <= hm.prefix;
}

#if defined(__AVX512F__)
// dst[c * dst_stride + r] = factor * src[r * src_stride + c] for a 16 x 16
// block, in registers: pairs of rows interleaved by 32 bits, then by 64, then
// 128-bit lanes gathered in two rounds of shuffles.
inline void transpose_16x16(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                            float factor) {
  const __m512 f = _mm512_set1_ps(factor);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_mul_ps(_mm512_loadu_ps(src + i * src_stride), f);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4i + k], 128-bit lane c: column 4c + k of rows 4i .. 4i + 3.
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 even_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);  // lanes 0, 2 of each
    const __m512 odd_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);   // lanes 1, 3
    const __m512 even_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    const __m512 odd_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
    _mm512_storeu_ps(dst + k * dst_stride, _mm512_shuffle_f32x4(even_lo, even_hi, 0x88));
    _mm512_storeu_ps(dst + (8 + k) * dst_stride, _mm512_shuffle_f32x4(even_lo, even_hi, 0xdd));
    _mm512_storeu_ps(dst + (4 + k) * dst_stride, _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88));
    _mm512_storeu_ps(dst + (12 + k) * dst_stride, _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xdd));
  }
}
#endif

// dst[d][i] = factor * src row i, element d, for i < nq; lanes up to
// kQueryBlock are 0.
inline void pack_transposed(float* dst, const float* src, int64_t row_stride, int64_t nq, int64_t D,
                            float factor = 1.0f) {
  int64_t i0 = 0;
#if defined(__AVX512F__)
  for (; i0 + 16 <= nq; i0 += 16) {
    int64_t d0 = 0;
    for (; d0 + 16 <= D; d0 += 16)
      transpose_16x16(dst + d0 * kQueryBlock + i0, kQueryBlock, src + i0 * row_stride + d0, row_stride, factor);
    for (int64_t i = i0; i < i0 + 16; ++i)
      for (int64_t d = d0; d < D; ++d) dst[d * kQueryBlock + i] = factor * src[i * row_stride + d];
  }
#endif
  for (int64_t i = i0; i < nq; ++i)
    for (int64_t d = 0; d < D; ++d) dst[d * kQueryBlock + i] = factor * src[i * row_stride + d];
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = nq; i < kQueryBlock; ++i) dst[d * kQueryBlock + i] = 0.0f;
}

enum class Visibility { none, some, all };

// bias[j][i] = 0 where query i0 + i may attend to key j0 + j, else -inf, for
// the tile's nk keys and nq queries (lanes past nq are garbage). Returns
// whether no pair, some or all pairs may attend: a tile with none is skipped,
// one with all needs no bias (and gets none). Keys past key_end must already
// be cut off (visible_key_end). `rows` is scratch of kQueryBlock * nk floats
// for an explicit mask.
inline Visibility tile_bias(const HeadMask& hm, int64_t i0, int64_t nq, int64_t j0, int64_t nk, float* bias,
                            float* rows) {
  if (hm.bits) {
    // An explicit mask is contiguous along keys: build the tile a query row
    // at a time (queries x keys), then transpose it.
    bool any = false, all = true;
    for (int64_t i = 0; i < nq; ++i) {
      float* row = rows + i * nk;
      const uint8_t* bits = hm.bits + (i0 + i) * hm.bits_query_stride + j0 * hm.bits_key_stride;
      int64_t seen = nk;  // keys below j0 + seen pass the structured masks
      if (hm.structured) {
        const int64_t reach = i0 + i + hm.offset + 1 > hm.prefix ? i0 + i + hm.offset + 1 : hm.prefix;
        seen = reach - j0 < 0 ? 0 : reach - j0 < nk ? reach - j0 : nk;
      }
      const int64_t step = hm.bits_key_stride;
      uint8_t row_any = 0, row_all = 1;
      if (step == 1) {  // the usual layout, in a loop the compiler vectorizes
        for (int64_t j = 0; j < seen; ++j) {
          row[j] = bits[j] ? 0.0f : kMinusInf;
          row_any |= bits[j];
          row_all &= bits[j];
        }
      } else {
        for (int64_t j = 0; j < seen; ++j) {
          row[j] = bits[j * step] ? 0.0f : kMinusInf;
          row_any |= bits[j * step];
          row_all &= bits[j * step];
        }
      }
      for (int64_t j = seen; j < nk; ++j) row[j] = kMinusInf;
      any |= row_any != 0;
      all &= row_all != 0 && seen == nk;
    }
    if (!any) return Visibility::none;
    if (all) return Visibility::all;
    pack_transposed(bias, rows, nk, nq, nk);
    return Visibility::some;
  }
  // Structured masks alone: query i sees key j iff i >= j - offset or j < prefix.
  if (j0 > i0 + nq - 1 + hm.offset && j0 >= hm.prefix) return Visibility::none;
  float lane_index[kWidth];
  for (int l = 0; l < kWidth; ++l) lane_index[l] = static_cast<float>(l);
  const Vec lanes = load(lane_index), zero = splat(0.0f), minus_inf = splat(kMinusInf);
  for (int64_t j = 0; j < nk; ++j) {
    float* row = bias + j * kQueryBlock;
    const bool in_prefix = j0 + j < hm.prefix;
    // The first query (relative to i0) that sees key j0 + j; exact in float
    // for sequences shorter than 2^24.
    const Vec first = splat(static_cast<float>(j0 + j - hm.offset - i0));
    for (int v = 0; v < kQueryVectors; ++v) {
      const Vec query = lanes + splat(static_cast<float>(v * kWidth));
      store(row + v * kWidth, in_prefix ? zero : select(not_less(query, first), zero, minus_inf));
    }
  }
  return Visibility::some;
}

// Dropout: factor 1/(1 - p) where the weight is kept, 0 where dropped.
struct Dropout {
  bool enabled;
  uint32_t threshold;
  float keep_scale;
  uint64_t seed;
};

inline Dropout make_dropout(const AttentionOptions& options) {
  return {options.dropout_p > 0, dropout_threshold(options.dropout_p),
          static_cast<float>(1.0 / (1.0 - options.dropout_p)), options.seed};
}

// factors[w][v] (w < 4 keys from the 4-aligned key j4, v < kQueryVectors):
// the dropout factors of queries i0 + v * kWidth + lane (see philox.h).
inline void dropout_factors(const Dropout& dropout, int64_t b, int64_t h, int64_t i0, int64_t j4,
                            Vec factors[4][kQueryVectors]) {
  PhiloxLanes lane{};
  for (int l = 0; l < kWidth; ++l) lane[l] = static_cast<uint32_t>(l);
  const PhiloxLanes zero{};
  for (int v = 0; v < kQueryVectors; ++v) {
    const PhiloxLanes query = lane + static_cast<uint32_t>(i0 + v * kWidth);
    const PhiloxBlocks words = philox4x32(zero + static_cast<uint32_t>(j4 / 4), query,
                                          zero + static_cast<uint32_t>(h), zero + static_cast<uint32_t>(b),
                                          dropout.seed);
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &dropout.keep_scale, sizeof scale_bits);
    for (int w = 0; w < 4; ++w) {
      const PhiloxLanes kept = (PhiloxLanes)(words.w[w] >= dropout.threshold);  // all ones or 0
      const PhiloxLanes bits = kept & scale_bits;
      std::memcpy(&factors[w][v], &bits, sizeof bits);
    }
  }
}

// Calls body(j, factor[kQueryVectors]) for each key row j < nk of a tile that
// starts at key j0 (a multiple of 4).
template <class Body>
inline void for_each_dropout_row(const Dropout& dropout, int64_t b, int64_t h, int64_t i0, int64_t j0,
                                 int64_t nk, Body body) {
  Vec factors[4][kQueryVectors];
  for (int64_t g = 0; g < nk; g += 4) {
    dropout_factors(dropout, b, h, i0, j0 + g, factors);
    for (int64_t w = 0; w < 4 && g + w < nk; ++w) body(g + w, factors[w]);
  }
}

// dst rows of `padded` floats (a multiple of kWidth): the first D from src
// rows, then zeros.
inline void pack_rows(float* dst, int64_t padded, const float* src, int64_t row_stride, int64_t rows,
                      int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = dst + r * padded;
    const float* in = src + r * row_stride;
    int64_t d = 0;
    for (; d + kWidth <= D; d += kWidth) store(out + d, load(in + d));
    if (d < padded) store(out + d, d < D ? load(in + d, static_cast<int>(D - d)) : splat(0.0f));
    for (d += kWidth; d < padded; d += kWidth) store(out + d, splat(0.0f));
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  Vec sum = splat(0.0f);
  int64_t d = 0;
  for (; d + kWidth <= n; d += kWidth) sum = fma(load(a + d), load(b + d), sum);
  if (d < n) sum = fma(load(a + d, static_cast<int>(n - d)), load(b + d, static_cast<int>(n - d)), sum);
  return reduce_add(sum);
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
