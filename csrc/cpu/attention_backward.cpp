// Attention backward, fast path: dq, dk, dv from dout, recomputing the
// probabilities from the forward's log-sum-exp instead of storing them.
// (Specification: reference_attention.cpp. Shapes and masks: attention.h.)
//
// FlashAttention-2's order (Dao 2023, algorithm 2): a task owns a range of
// key blocks of one head and, for each, runs over the query blocks that may
// see it, accumulating dk and dv for its keys in place and dq for every query
// in a per-task buffer. Per tile (keys x queries, attention_tiles.h):
//   p^T  = exp(k q^T * scale - lse)          probabilities, recomputed
//   dp^T = v dout^T                          gradient of the probabilities
//   ds^T = p^T o (dp^T - delta)              delta_i = dout_i . out_i
//   dv  += p^T dout,  dk += ds^T q,  dq += ds k   (dk, dq times scale at the end)
// five small products (gemm_tile.h). With dropout, p and dp carry the
// regenerated factors (philox.h). Heads are split over key ranges only as far
// as needed for kMinTasks tasks, a number fixed by the shape alone, and
// partial dq are summed in a fixed order: the results do not depend on the
// thread count.
#include <algorithm>
#include <cmath>

#include "attention_tiles.h"
#include "gemm_tile.h"
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"
#include "ssl_core/simd_math.h"

namespace ssl_core::cpu::SSL_CORE_ISA {
namespace {

constexpr int64_t kKeyBlock = 64;
constexpr int64_t kMinTasks = 8;

struct Shape {
  int64_t B, H, Tq, Tk, D;
  int64_t padded_dim;    // D rounded up to whole vectors
  int64_t query_blocks;  // of kQueryBlock
  int64_t key_blocks;    // of kKeyBlock
  int64_t chunks;        // tasks per head
  bool streaming;        // write gradients with non-temporal stores
};

// Per-thread memory, carved from one allocation made before the threads
// start (an exception must not escape an OpenMP region).
struct BackwardScratch {
  BackwardScratch(Carver& c, const Shape& s) {
    const int64_t queries = s.query_blocks * kQueryBlock, Dp = s.padded_dim;
    q_t = c.take(queries * s.D);
    dout_t = c.take(queries * s.D);
    delta = c.take(queries);
    q_rows = c.take(s.Tq * Dp);
    dout_rows = c.take(s.Tq * Dp);
    dq = c.take(s.Tq * Dp);
    scores = c.take(kKeyBlock * kQueryBlock);
    dscores = c.take(kKeyBlock * kQueryBlock);
    bias = c.take(kKeyBlock * kQueryBlock);
    mask_rows = c.take(kQueryBlock * kKeyBlock);
    dk = c.take(kKeyBlock * Dp);
    dv = c.take(kKeyBlock * Dp);
    keys = c.take(kKeyBlock * Dp);
    values = c.take(kKeyBlock * Dp);
  }
  float *q_t, *dout_t;                // (query_blocks, D, kQueryBlock): scale * q and dout, transposed
  float* delta;                       // (query_blocks * kQueryBlock,)
  float *q_rows, *dout_rows, *dq;     // (Tq, Dp): q and dout contiguous, padded; dq accumulates
  float *scores, *dscores, *bias;     // (kKeyBlock, kQueryBlock)
  float* mask_rows;                   // (kQueryBlock, kKeyBlock): an explicit mask's tile, untransposed
  float *dk, *dv;                     // (kKeyBlock, Dp)
  float *keys, *values;               // (kKeyBlock, Dp): the key block's k and v, contiguous
};

// Turns a tile's scores and dout.v products into the dropped probabilities
// (for dv) and the score gradients over scale (for dk and dq, which are
// scaled once, when written), in place. One loop for each combination of
// mask and dropout, so the common one carries no branches.
template <bool HasBias, bool HasDropout>
void softmax_gradient_rows(float* scores, float* dscores, const float* bias, int64_t nk, int64_t nq,
                           const float* lse, const float* delta, const Dropout& dropout, int64_t b, int64_t h,
                           int64_t i0, int64_t j0) {
  Vec lse_v[kQueryVectors], delta_v[kQueryVectors];
  for (int v = 0; v < kQueryVectors; ++v) {
    const int64_t lanes = std::min<int64_t>(kWidth, nq - v * kWidth);
    lse_v[v] = lanes <= 0 ? splat(0.0f) : lanes == kWidth ? load(lse + v * kWidth)
                                                          : load(lse + v * kWidth, static_cast<int>(lanes));
    delta_v[v] = load(delta + v * kWidth);
  }
  auto row = [&](int64_t j, const Vec* factor) {
    for (int v = 0; v < kQueryVectors; ++v) {
      float* s = scores + j * kQueryBlock + v * kWidth;
      float* ds = dscores + j * kQueryBlock + v * kWidth;
      Vec x = load(s);
      if constexpr (HasBias) x = x + load(bias + j * kQueryBlock + v * kWidth);
      const Vec p = exp(x - lse_v[v]);
      if constexpr (HasDropout) {
        store(ds, p * (load(ds) * factor[v] - delta_v[v]));
        store(s, p * factor[v]);
      } else {
        store(ds, p * (load(ds) - delta_v[v]));
        store(s, p);
      }
    }
  };
  if constexpr (HasDropout) {
    for_each_dropout_row(dropout, b, h, i0, j0, nk, row);
  } else {
    for (int64_t j = 0; j < nk; ++j) row(j, nullptr);
  }
}

void softmax_gradient(float* scores, float* dscores, const float* bias, int64_t nk, int64_t nq,
                      const float* lse, const float* delta, const Dropout& dropout, int64_t b, int64_t h,
                      int64_t i0, int64_t j0) {
  auto run = [&](auto kernel) { kernel(scores, dscores, bias, nk, nq, lse, delta, dropout, b, h, i0, j0); };
  if (bias) {
    dropout.enabled ? run(softmax_gradient_rows<true, true>) : run(softmax_gradient_rows<true, false>);
  } else {
    dropout.enabled ? run(softmax_gradient_rows<false, true>) : run(softmax_gradient_rows<false, false>);
  }
}

// Gradient rows out, with non-temporal stores when the gradients are larger
// than the caches (they are not read again here).
void write_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows, int64_t D,
                float factor, bool streaming) {
  const Vec f = splat(factor);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * src_stride;
    write_vectors(dst + r * dst_stride, D, streaming, [&](int64_t d, int lanes) { return load(row + d, lanes) * f; });
  }
}

struct Inputs {
  ConstHeadsView dout, q, k, v, out;
  const float* lse;
};

// Packs what every key block of head (b, h) reads: q and dout as contiguous
// rows (read in place, rows H*D floats apart would share a few L1 sets and
// evict each other within one product), the same transposed per query
// block, and delta.
void pack_head(const Inputs& in, const Shape& s, float scale, int64_t b, int64_t h, BackwardScratch& t) {
  const int64_t Dp = s.padded_dim;
  pack_rows(t.q_rows, Dp, in.q.head(b, h), in.q.seq_stride, s.Tq, s.D);
  pack_rows(t.dout_rows, Dp, in.dout.head(b, h), in.dout.seq_stride, s.Tq, s.D);
  for (int64_t qb = 0; qb < s.query_blocks; ++qb) {
    const int64_t i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, s.Tq - i0);
    pack_transposed(t.q_t + qb * s.D * kQueryBlock, t.q_rows + i0 * Dp, Dp, nq, s.D, scale);
    pack_transposed(t.dout_t + qb * s.D * kQueryBlock, t.dout_rows + i0 * Dp, Dp, nq, s.D);
  }
  const float* out = in.out.head(b, h);
  for (int64_t i = 0; i < s.query_blocks * kQueryBlock; ++i)
    t.delta[i] = i < s.Tq ? dot(t.dout_rows + i * Dp, out + i * in.out.seq_stride, s.D) : 0.0f;
}

// One task: key blocks [kb_begin, kb_end) of head (b, h). Writes their dk and
// dv rows, and this task's share of dq (all Tq rows) to dq_rows.
void key_range(const Inputs& in, HeadsView dk, HeadsView dv, float* dq_rows, int64_t dq_stride,
               const Shape& s, const AttentionOptions& options, const Dropout& dropout, int64_t b,
               int64_t h, int64_t kb_begin, int64_t kb_end, BackwardScratch& t) {
  const int64_t D = s.D, Dp = s.padded_dim;
  const HeadMask hm = head_mask(options.mask, b, h, s.Tq, s.Tk);
  const float *k_head = in.k.head(b, h), *v_head = in.v.head(b, h);
  const float* lse = in.lse + (b * s.H + h) * s.Tq;
  const int64_t ks = in.k.seq_stride, vs = in.v.seq_stride;
  pack_head(in, s, options.scale, b, h, t);
  std::fill(t.dq, t.dq + s.Tq * Dp, 0.0f);

  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t j0 = kb * kKeyBlock, nk = std::min(kKeyBlock, s.Tk - j0);
    const int64_t visible = std::max<int64_t>(0, std::min(nk, hm.key_end - j0));  // keys past are padding
    std::fill(t.dk, t.dk + nk * Dp, 0.0f);
    std::fill(t.dv, t.dv + nk * Dp, 0.0f);
    pack_rows(t.keys, Dp, k_head + j0 * ks, ks, visible, D);
    pack_rows(t.values, Dp, v_head + j0 * vs, vs, visible, D);
    const int64_t qb_first = visible > 0 ? first_query_seeing(hm, j0) / kQueryBlock : s.query_blocks;
    for (int64_t qb = qb_first; qb < s.query_blocks; ++qb) {
      const int64_t i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, s.Tq - i0);
      bool unmasked = tile_unmasked(hm, i0, j0 + visible);
      if (!unmasked) {
        const Visibility visibility = tile_bias(hm, i0, nq, j0, visible, t.bias, t.mask_rows);
        if (visibility == Visibility::none) continue;
        unmasked = visibility == Visibility::all;
      }
      const float* q_t = t.q_t + qb * D * kQueryBlock;
      const float* dout_t = t.dout_t + qb * D * kQueryBlock;
      gemm_contiguous_rows<Update::overwrite>(visible, kQueryBlock, D, t.keys, Dp, q_t, kQueryBlock, t.scores,
                                              kQueryBlock);
      gemm_contiguous_rows<Update::overwrite>(visible, kQueryBlock, D, t.values, Dp, dout_t, kQueryBlock,
                                              t.dscores, kQueryBlock);
      softmax_gradient(t.scores, t.dscores, unmasked ? nullptr : t.bias, visible, nq, lse + i0, t.delta + i0,
                       dropout, b, h, i0, j0);
      gemm<Update::accumulate, kQueryBlock, 1>(visible, Dp, nq, {t.scores, kQueryBlock, 1}, t.dout_rows + i0 * Dp,
                                               Dp, t.dv, Dp);
      gemm<Update::accumulate, kQueryBlock, 1>(visible, Dp, nq, {t.dscores, kQueryBlock, 1}, t.q_rows + i0 * Dp,
                                               Dp, t.dk, Dp);
      gemm<Update::accumulate, 1, kQueryBlock>(nq, Dp, visible, {t.dscores, 1, kQueryBlock}, t.keys, Dp,
                                               t.dq + i0 * Dp, Dp);
    }
    write_rows(dk.head(b, h) + j0 * dk.seq_stride, dk.seq_stride, t.dk, Dp, nk, D, options.scale, s.streaming);
    write_rows(dv.head(b, h) + j0 * dv.seq_stride, dv.seq_stride, t.dv, Dp, nk, D, 1.0f, s.streaming);
  }
  write_rows(dq_rows, dq_stride, t.dq, Dp, s.Tq, D, options.scale, s.streaming && s.chunks == 1);
}

}  // namespace

void attention_backward(HeadsView dq, HeadsView dk, HeadsView dv, ConstHeadsView dout, ConstHeadsView q,
                        ConstHeadsView k, ConstHeadsView v, ConstHeadsView out, const float* lse,
                        const AttentionOptions& options) {
  Shape s{q.batch, q.heads, q.seq, k.seq, q.dim, round_up(q.dim, kWidth),
          ceil_div(q.seq, kQueryBlock), ceil_div(k.seq, kKeyBlock), 1,
          prefer_streaming_stores((q.seq + 2 * k.seq) * q.batch * q.heads * q.dim * 4)};
  const int64_t heads = s.B * s.H;
  if (heads == 0) return;
  s.chunks = std::max<int64_t>(1, std::min(s.key_blocks, ceil_div(kMinTasks, heads)));
  const int64_t blocks_per_chunk = std::max<int64_t>(1, ceil_div(s.key_blocks, s.chunks));
  s.chunks = std::max<int64_t>(1, ceil_div(s.key_blocks, blocks_per_chunk));
  const int64_t tasks = heads * s.chunks;
  const Inputs in{dout, q, k, v, out, lse};
  const Dropout dropout = make_dropout(options);

  // Chunks of a split head write their share of dq here, summed below.
  ScratchBuffer<float> partial_dq(s.chunks > 1 ? tasks * s.Tq * s.D : 0);
  const int threads = std::min(threads_for(tasks, 1), threads_for(heads * s.Tq * s.Tk * s.D, kMinWorkPerThread));
  const int64_t per_thread = scratch_floats<BackwardScratch>(s);
  ScratchBuffer<float> pool(threads * per_thread);
#pragma omp parallel num_threads(threads)
  {
    Carver carver(pool.get() + per_thread * thread_index());
    BackwardScratch scratch(carver, s);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / s.chunks, chunk = task % s.chunks, b = bh / s.H, h = bh % s.H;
      const int64_t kb_begin = chunk * blocks_per_chunk;
      const int64_t kb_end = std::min(s.key_blocks, kb_begin + blocks_per_chunk);
      float* dq_rows = s.chunks > 1 ? partial_dq.get() + task * s.Tq * s.D : dq.head(b, h);
      const int64_t dq_stride = s.chunks > 1 ? s.D : dq.seq_stride;
      key_range(in, dk, dv, dq_rows, dq_stride, s, options, dropout, b, h, kb_begin, kb_end, scratch);
    }
    stream_fence();  // make streamed gradients visible before the region ends
    if (s.chunks > 1) {
#pragma omp for schedule(static)
      for (int64_t row = 0; row < heads * s.Tq; ++row) {
        const int64_t bh = row / s.Tq, i = row % s.Tq;
        float* dst = dq.head(bh / s.H, bh % s.H) + i * dq.seq_stride;
        const float* src = partial_dq.get() + (bh * s.chunks * s.Tq + i) * s.D;
        std::copy(src, src + s.D, dst);
        for (int64_t c = 1; c < s.chunks; ++c)
          for (int64_t d = 0; d < s.D; ++d) dst[d] += src[c * s.Tq * s.D + d];
      }
    }
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
