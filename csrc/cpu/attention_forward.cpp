// Attention forward, fast path: out = softmax(q k^T * scale + mask) v, and the
// log-sum-exp of each query's scores that the backward recomputes them from.
// (Specification: reference.cpp. Shapes and masks: attention.h.)
//
// Flash-style (Dao et al. 2022; Dao 2023): a thread takes kQueryBlock queries
// of one head and runs over the keys in blocks, keeping a running max m, sum l
// and unnormalized output per query, so the Tq x Tk score matrix never exists
// in memory; each key block costs two small matrix products (gemm_tile.h) and
// one pass of exp over its kKeyBlock x kQueryBlock scores. Key blocks that no
// query may see (padding, above the causal diagonal) are never visited;
// blocks wholly inside the mask skip the elementwise masking.
//
// Every tile is transposed (keys x queries, attention_tiles.h): the output
// accumulates as out^T (D x queries) = v^T p^T, with v read in place as the
// broadcast operand, so only q needs packing (once per query block).
#include <algorithm>
#include <cmath>

#include "attention_tiles.h"
#include "gemm_tile.h"
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd_math.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kKeyBlock = 128;

// Per-thread tiles, carved from one allocation made before the threads start
// (an exception must not escape an OpenMP region).
struct ForwardScratch {
  static int64_t floats(int64_t D) { return 2 * D * kQueryBlock + 2 * kKeyBlock * kQueryBlock + 2 * kQueryBlock; }
  ForwardScratch(float* base, int64_t D)
      : q_t(base), out_t(q_t + D * kQueryBlock), scores(out_t + D * kQueryBlock),
        bias(scores + kKeyBlock * kQueryBlock), max(bias + kKeyBlock * kQueryBlock), sum(max + kQueryBlock) {}
  float *q_t, *out_t;     // (D, kQueryBlock)
  float *scores, *bias;   // (kKeyBlock, kQueryBlock)
  float *max, *sum;       // (kQueryBlock,) running max and sum of exp
};

// Turns the raw scores of one key block into probabilities relative to the
// updated running max, rescaling the running sum and output to that max.
// A query whose max is still -inf (no visible key yet) keeps exact zeros.
void online_softmax(float* scores, const float* bias, int64_t nk, float scale, float* running_max,
                    float* running_sum, float* out_t, int64_t D) {
  const Vec vscale = splat(scale), minus_inf = splat(kMinusInf);
  for (int v = 0; v < kQueryVectors; ++v) {
    float* col = scores + v * kWidth;
    Vec block_max = minus_inf;
    for (int64_t j = 0; j < nk; ++j) {
      Vec x = load(col + j * kQueryBlock) * vscale;
      if (bias) x = x + load(bias + j * kQueryBlock + v * kWidth);
      store(col + j * kQueryBlock, x);
      block_max = max(block_max, x);
    }
    const Vec old_max = load(running_max + v * kWidth);
    const Vec new_max = max(old_max, block_max);
    const Vec shift = select(greater(new_max, minus_inf), new_max, splat(0.0f));
    const Vec rescale = exp(old_max - shift);
    Vec block_sum = splat(0.0f);
    for (int64_t j = 0; j < nk; ++j) {
      const Vec p = exp(load(col + j * kQueryBlock) - shift);
      store(col + j * kQueryBlock, p);
      block_sum += p;
    }
    store(running_max + v * kWidth, new_max);
    store(running_sum + v * kWidth, fma(load(running_sum + v * kWidth), rescale, block_sum));
    for (int64_t d = 0; d < D; ++d) {
      float* o = out_t + d * kQueryBlock + v * kWidth;
      store(o, load(o) * rescale);
    }
  }
}

void apply_dropout(float* probs, const Dropout& dropout, int64_t b, int64_t h, int64_t i0, int64_t j0,
                   int64_t nk) {
  for_each_dropout_row(dropout, b, h, i0, j0, nk, [&](int64_t j, const Vec* factor) {
    for (int v = 0; v < kQueryVectors; ++v) {
      float* p = probs + j * kQueryBlock + v * kWidth;
      store(p, load(p) * factor[v]);
    }
  });
}

void query_block(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                 const AttentionOptions& options, const Dropout& dropout, int64_t b, int64_t h,
                 int64_t i0, ForwardScratch& s) {
  const int64_t Tq = q.seq, D = q.dim;
  const int64_t nq = std::min(kQueryBlock, Tq - i0);
  const HeadMask hm = head_mask(options.mask, b, h, Tq, k.seq);
  const float* k_head = k.head(b, h);
  const float* v_head = v.head(b, h);

  pack_transposed(s.q_t, q.head(b, h) + i0 * q.seq_stride, q.seq_stride, nq, D);
  std::fill(s.out_t, s.out_t + D * kQueryBlock, 0.0f);
  std::fill(s.max, s.max + kQueryBlock, kMinusInf);
  std::fill(s.sum, s.sum + kQueryBlock, 0.0f);

  const int64_t key_end = visible_key_end(hm, i0 + nq - 1);
  for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, key_end - j0);
    const bool unmasked = tile_unmasked(hm, i0, j0 + nk);
    if (!unmasked && !tile_bias(hm, i0, nq, j0, nk, s.bias)) continue;
    // scores^T (nk x queries) = k_block . q^T
    gemm<false>(nk, kQueryBlock, D, {k_head + j0 * k.seq_stride, k.seq_stride, 1}, s.q_t,
                kQueryBlock, s.scores, kQueryBlock);
    online_softmax(s.scores, unmasked ? nullptr : s.bias, nk, options.scale, s.max,
                   s.sum, s.out_t, D);
    if (dropout.enabled) apply_dropout(s.scores, dropout, b, h, i0, j0, nk);
    // out^T (D x queries) += v_block^T . p^T
    gemm<true>(D, kQueryBlock, nk, {v_head + j0 * v.seq_stride, 1, v.seq_stride}, s.scores,
               kQueryBlock, s.out_t, kQueryBlock);
  }

  float* out_rows = out.head(b, h) + i0 * out.seq_stride;
  float* lse_row = lse + (b * q.heads + h) * Tq + i0;
  for (int64_t i = 0; i < nq; ++i) {
    const float l = s.sum[i];
    const float inv = l > 0 ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < D; ++d) out_rows[i * out.seq_stride + d] = s.out_t[d * kQueryBlock + i] * inv;
    lse_row[i] = l > 0 ? s.max[i] + std::log(l) : std::numeric_limits<float>::infinity();
  }
}

}  // namespace

void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options) {
  const int64_t B = q.batch, H = q.heads;
  const int64_t query_blocks = ceil_div(q.seq, kQueryBlock);
  const int64_t items = B * H * query_blocks;
  const Dropout dropout = make_dropout(options);
  const int threads = threads_for(items, 1);
  const int64_t per_thread = round_up(ForwardScratch::floats(q.dim), 16);
  ScratchBuffer<float> pool(threads * per_thread);
#pragma omp parallel num_threads(threads)
  {
    ForwardScratch scratch(pool.get() + per_thread * thread_index(), q.dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t bh = item / query_blocks;
      query_block(out, lse, q, k, v, options, dropout, bh / H, bh % H, (item % query_blocks) * kQueryBlock,
                  scratch);
    }
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
