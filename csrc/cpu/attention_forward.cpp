// Attention forward, fast path: out = softmax(q k^T * scale + mask) v, and the
// log-sum-exp of each query's scores that the backward recomputes them from.
// (Specification: reference_attention.cpp. Shapes and masks: attention.h.)
//
// Flash-style (Dao et al. 2022; Dao 2023): a thread takes kQueryBlock queries
// of one head and runs over the keys in blocks, keeping a running max m, sum l
// and unnormalized output per query, so the Tq x Tk score matrix never exists
// in memory; each key block costs two small matrix products (gemm_tile.h) and
// one pass of exp over its kKeyBlock x kQueryBlock scores. Key blocks that no
// query may see (padding, above the causal diagonal) are never visited;
// blocks wholly inside the mask skip the elementwise masking.
//
// Scores are computed transposed (keys x queries, attention_tiles.h) from q
// packed transposed and pre-scaled; the output accumulates as p v with the
// probabilities as the broadcast operand and rows of v as the vectors. A task
// owns a range of query blocks of one head and first copies the head's k and
// v into contiguous rows: read in place, rows H*D floats apart land in a few
// L1 sets and evict each other.
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
constexpr int64_t kMinTasks = 8;  // split heads over query ranges until there are this many tasks

// Per-thread memory, carved from one allocation made before the threads
// start (an exception must not escape an OpenMP region).
struct ForwardScratch {
  ForwardScratch(Carver& c, int64_t Tk, int64_t D, int64_t Dp)
      : keys(c.take(Tk * D)), values(c.take(Tk * Dp)), q_t(c.take(D * kQueryBlock)),
        out(c.take(kQueryBlock * Dp)), scores(c.take(kKeyBlock * kQueryBlock)),
        bias(c.take(kKeyBlock * kQueryBlock)), mask_rows(c.take(kQueryBlock * kKeyBlock)),
        max(c.take(kQueryBlock)), sum(c.take(kQueryBlock)), rescale(c.take(kQueryBlock)) {}
  float *keys, *values;   // (Tk, D) and (Tk, Dp): the head's k and v, contiguous
  float* q_t;             // (D, kQueryBlock): scale * q, transposed
  float* out;             // (kQueryBlock, Dp): unnormalized output
  float *scores, *bias;   // (kKeyBlock, kQueryBlock)
  float* mask_rows;       // (kQueryBlock, kKeyBlock): an explicit mask's tile, untransposed
  float *max, *sum;       // (kQueryBlock,) running max and sum of exp
  float* rescale;         // (kQueryBlock,) factor of the old output for the new max
};

// Turns the scaled scores of one key block into probabilities relative to
// the updated running max, and the running sum to that max; rescale[i] is
// the factor for query i's output so far. A query whose max is still -inf
// (no visible key yet) keeps exact zeros.
void online_softmax(float* scores, const float* bias, int64_t nk, float* running_max, float* running_sum,
                    float* rescale) {
  const Vec minus_inf = splat(kMinusInf);
  for (int v = 0; v < kQueryVectors; ++v) {
    float* col = scores + v * kWidth;
    Vec block_max = minus_inf;
    if (bias) {
      for (int64_t j = 0; j < nk; ++j) {
        const Vec x = load(col + j * kQueryBlock) + load(bias + j * kQueryBlock + v * kWidth);
        store(col + j * kQueryBlock, x);
        block_max = max(block_max, x);
      }
    } else {  // four running maxima: one would wait on the latency of each max
      Vec m1 = minus_inf, m2 = minus_inf, m3 = minus_inf;
      int64_t j = 0;
      for (; j + 4 <= nk; j += 4) {
        block_max = max(block_max, load(col + j * kQueryBlock));
        m1 = max(m1, load(col + (j + 1) * kQueryBlock));
        m2 = max(m2, load(col + (j + 2) * kQueryBlock));
        m3 = max(m3, load(col + (j + 3) * kQueryBlock));
      }
      for (; j < nk; ++j) block_max = max(block_max, load(col + j * kQueryBlock));
      block_max = max(max(block_max, m1), max(m2, m3));
    }
    const Vec old_max = load(running_max + v * kWidth);
    const Vec new_max = max(old_max, block_max);
    const Vec shift = select(greater(new_max, minus_inf), new_max, splat(0.0f));
    const Vec factor = exp(old_max - shift);
    Vec block_sum = splat(0.0f);
    for (int64_t j = 0; j < nk; ++j) {
      const Vec p = exp(load(col + j * kQueryBlock) - shift);
      store(col + j * kQueryBlock, p);
      block_sum += p;
    }
    store(running_max + v * kWidth, new_max);
    store(running_sum + v * kWidth, fma(load(running_sum + v * kWidth), factor, block_sum));
    store(rescale + v * kWidth, factor);
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

struct Inputs {
  ConstHeadsView q, k, v;
  const AttentionOptions& options;
  Dropout dropout;
  int64_t padded_dim;
  bool streaming;  // write the output with non-temporal stores
};

// Output rows and lse of queries [i0, i0 + nq) of head (b, h), whose keys
// and values are in s.keys and s.values.
void query_block(HeadsView out, float* lse, const Inputs& in, const HeadMask& hm, int64_t b, int64_t h,
                 int64_t i0, ForwardScratch& s) {
  const int64_t Tq = in.q.seq, D = in.q.dim, Dp = in.padded_dim;
  const int64_t nq = std::min(kQueryBlock, Tq - i0);
  pack_transposed(s.q_t, in.q.head(b, h) + i0 * in.q.seq_stride, in.q.seq_stride, nq, D, in.options.scale);
  std::fill(s.out, s.out + kQueryBlock * Dp, 0.0f);
  std::fill(s.max, s.max + kQueryBlock, kMinusInf);
  std::fill(s.sum, s.sum + kQueryBlock, 0.0f);

  const int64_t key_end = visible_key_end(hm, i0 + nq - 1);
  for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, key_end - j0);
    bool unmasked = tile_unmasked(hm, i0, j0 + nk);
    if (!unmasked) {
      const Visibility visibility = tile_bias(hm, i0, nq, j0, nk, s.bias, s.mask_rows);
      if (visibility == Visibility::none) continue;
      unmasked = visibility == Visibility::all;
    }
    // scores^T (keys x queries) = k_block . (scale q)^T
    gemm_contiguous_rows<Update::overwrite>(nk, kQueryBlock, D, s.keys + j0 * D, D, s.q_t, kQueryBlock,
                                            s.scores, kQueryBlock);
    online_softmax(s.scores, unmasked ? nullptr : s.bias, nk, s.max, s.sum, s.rescale);
    if (in.dropout.enabled) apply_dropout(s.scores, in.dropout, b, h, i0, j0, nk);
    // out (queries x D) = rescale * out + p . v_block, p read from scores^T
    gemm<Update::rescale_accumulate, 1, kQueryBlock>(nq, Dp, nk, {s.scores, 1, kQueryBlock}, s.values + j0 * Dp,
                                                     Dp, s.out, Dp, s.rescale);
  }

  float* out_rows = out.head(b, h) + i0 * out.seq_stride;
  float* lse_row = lse + (b * in.q.heads + h) * Tq + i0;
  for (int64_t i = 0; i < nq; ++i) {
    const float l = s.sum[i];
    const Vec inv = splat(l > 0 ? 1.0f / l : 0.0f);
    const float* row = s.out + i * Dp;
    write_vectors(out_rows + i * out.seq_stride, D, in.streaming,
                  [&](int64_t d, int lanes) { return load(row + d, lanes) * inv; });
    lse_row[i] = l > 0 ? s.max[i] + std::log(l) : std::numeric_limits<float>::infinity();
  }
}

// One query per head (a decoding step against a key/value cache), without
// dropout. The tiles above would compute kQueryBlock query lanes for one; this
// path takes each score with one dot product and reads k and v in place, key
// by key across a group of heads: in the (B, T, H, D) layout a key's heads are
// contiguous, while one head's keys are H * D floats apart (a stride the
// hardware prefetcher follows poorly). benchmarks/bench_generate.py times it
// against torch's scaled_dot_product_attention.
constexpr int64_t kMaxHeadsPerGroup = 64;
constexpr int64_t kMinSingleQueryWork = int64_t{1} << 18;  // floats of k and v per thread (1 MB)

struct SingleQueryScratch {
  SingleQueryScratch(Carver& c, int64_t heads, int64_t Tk, int64_t Dp)
      : scores(c.take(heads * round_up(Tk, 16))), acc(c.take(heads * Dp)), top(c.take(heads)) {}
  float* scores;  // (heads, Tk rounded up): scores, then probabilities
  float* acc;     // (heads, Dp): unnormalized output
  float* top;     // (heads,): each head's largest score
};

// Heads [h0, h1) of batch row b.
void single_query(HeadsView out, float* lse, const Inputs& in, int64_t b, int64_t h0, int64_t h1,
                  SingleQueryScratch& s) {
  const ConstHeadsView &q = in.q, &k = in.k, &v = in.v;
  const int64_t D = q.dim, Dp = in.padded_dim, stride = round_up(k.seq, 16), n = h1 - h0;
  const HeadMask first = head_mask(in.options.mask, b, h0, 1, k.seq);
  const int64_t end = visible_key_end(first, 0);  // key lengths, causal and prefix are per batch row
  std::fill(s.top, s.top + n, kMinusInf);
  for (int64_t j = 0; j < end; ++j) {
    for (int64_t h = h0; h < h1; ++h) {
      const HeadMask hm = first.bits ? head_mask(in.options.mask, b, h, 1, k.seq) : first;
      const bool visible = !hm.bits || hm.bits[j * hm.bits_key_stride];
      const float score =
          visible ? dot(q.head(b, h), k.head(b, h) + j * k.seq_stride, D) * in.options.scale : kMinusInf;
      s.scores[(h - h0) * stride + j] = score;
      s.top[h - h0] = std::max(s.top[h - h0], score);
    }
  }
  float sums[kMaxHeadsPerGroup];
  for (int64_t i = 0; i < n; ++i) {
    float* row = s.scores + i * stride;
    const Vec top = splat(s.top[i] == kMinusInf ? 0.0f : s.top[i]);
    Vec total = splat(0.0f);
    int64_t j = 0;
    for (; j + kWidth <= end; j += kWidth) {
      const Vec p = exp(load(row + j) - top);
      store(row + j, p);
      total += p;
    }
    if (j < end) {
      const int lanes = static_cast<int>(end - j);
      const Vec p = exp(load(row + j, lanes) - top);
      store(row + j, p, lanes);
      total += select(first_lanes(lanes), p, splat(0.0f));
    }
    sums[i] = reduce_add(total);
  }
  std::fill(s.acc, s.acc + n * Dp, 0.0f);
  for (int64_t j = 0; j < end; ++j) {
    for (int64_t i = 0; i < n; ++i) {
      const float p = s.scores[i * stride + j];
      if (p == 0.0f) continue;  // masked, or too small to count
      const float* value = v.head(b, h0 + i) + j * v.seq_stride;
      float* acc = s.acc + i * Dp;
      int64_t d = 0;
      for (; d + kWidth <= D; d += kWidth) store(acc + d, fma(splat(p), load(value + d), load(acc + d)));
      if (d < D) store(acc + d, fma(splat(p), load(value + d, static_cast<int>(D - d)), load(acc + d)));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    float* out_row = out.head(b, h0 + i);
    float& lse_value = lse[b * q.heads + h0 + i];
    if (s.top[i] == kMinusInf) {  // no visible key
      std::fill(out_row, out_row + D, 0.0f);
      lse_value = std::numeric_limits<float>::infinity();
      continue;
    }
    const Vec inv = splat(1.0f / sums[i]);
    const float* acc = s.acc + i * Dp;
    write_vectors(out_row, D, false, [&](int64_t d, int lanes) { return load(acc + d, lanes) * inv; });
    lse_value = s.top[i] + std::log(sums[i]);
  }
}

void single_query_heads(HeadsView out, float* lse, const Inputs& in) {
  const int64_t B = in.q.batch, H = in.q.heads, Tk = in.k.seq;
  const int threads = threads_for(B * H * Tk * in.q.dim * 2, kMinSingleQueryWork);
  // Split each row's heads into groups when there are fewer rows than threads.
  int64_t groups = B >= threads ? 1 : ceil_div(threads, B);
  groups = std::max(groups, ceil_div(H, kMaxHeadsPerGroup));
  const int64_t per_group = ceil_div(H, groups);
  groups = ceil_div(H, per_group);
  const int64_t per_thread = scratch_floats<SingleQueryScratch>(per_group, Tk, in.padded_dim);
  ScratchBuffer<float> pool(threads * per_thread);
#pragma omp parallel num_threads(threads)
  {
    Carver carver(pool.get() + per_thread * thread_index());
    SingleQueryScratch scratch(carver, per_group, Tk, in.padded_dim);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * groups; ++task) {
      const int64_t b = task / groups, h0 = task % groups * per_group;
      single_query(out, lse, in, b, h0, std::min(H, h0 + per_group), scratch);
    }
  }
}

}  // namespace

void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options) {
  const int64_t heads = q.batch * q.heads, Tk = k.seq, D = q.dim, Dp = round_up(D, kWidth);
  const int64_t query_blocks = ceil_div(q.seq, kQueryBlock);
  if (heads == 0 || query_blocks == 0) return;
  if (q.seq == 1 && options.dropout_p == 0.0) {
    single_query_heads(out, lse, Inputs{q, k, v, options, make_dropout(options), Dp, false});
    return;
  }
  const int64_t blocks_per_task = ceil_div(query_blocks, std::min(query_blocks, ceil_div(kMinTasks, heads)));
  const int64_t tasks_per_head = ceil_div(query_blocks, blocks_per_task);
  const int64_t tasks = heads * tasks_per_head;
  const bool streaming = prefer_streaming_stores(q.batch * q.seq * q.heads * D * 4);
  const Inputs in{q, k, v, options, make_dropout(options), Dp, streaming};
  const int threads = std::min(threads_for(tasks, 1), threads_for(heads * q.seq * Tk * D, kMinWorkPerThread));
  const int64_t per_thread = scratch_floats<ForwardScratch>(Tk, D, Dp);
  ScratchBuffer<float> pool(threads * per_thread);
#pragma omp parallel num_threads(threads)
  {
    Carver carver(pool.get() + per_thread * thread_index());
    ForwardScratch scratch(carver, Tk, D, Dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / tasks_per_head, b = bh / q.heads, h = bh % q.heads;
      const int64_t qb_begin = task % tasks_per_head * blocks_per_task;
      const int64_t qb_end = std::min(query_blocks, qb_begin + blocks_per_task);
      const HeadMask hm = head_mask(options.mask, b, h, q.seq, Tk);
      const int64_t keys = visible_key_end(hm, std::min(q.seq, qb_end * kQueryBlock) - 1);
      pack_rows(scratch.keys, D, k.head(b, h), k.seq_stride, keys, D);
      pack_rows(scratch.values, Dp, v.head(b, h), v.seq_stride, keys, D);
      for (int64_t qb = qb_begin; qb < qb_end; ++qb)
        query_block(out, lse, in, hm, b, h, qb * kQueryBlock, scratch);
    }
    stream_fence();
  }
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
