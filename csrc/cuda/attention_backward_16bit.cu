// Attention backward on tensor cores, 16-bit inputs: dq, dk, dv (float16 or
// bfloat16, passed as their bits) from dout, q, k, v, out (16-bit) and the
// forward's lse (float32). Semantics exactly those of the float32 backward
// (attention_backward.cu, csrc/cpu/reference_attention.cpp): same masks, same
// dropout (philox.cuh), the probabilities recomputed from lse. Every
// accumulation is float32; only the operands of the tensor-core products are
// 16-bit.
//
// FlashAttention-2's backward (Dao 2023, algorithm 2) in three steps, like
// the float32 kernel:
//   1. preprocess: delta_i = dout_i . out_i in float32 (one warp a row); on
//      the atomic path it also zeroes the float32 dq scratch.
//   2. key tile: a block of 4 warps per (64 keys, head, batch row) keeps K
//      and V (16-bit) in shared memory and streams the 64-query tiles that
//      may see its keys (Q, dO, lse, delta). Per query tile, warp w:
//        S, dP (16 x 64) = Q_w K^T, dO_w V^T     wmma, float accumulators
//        P  = exp2(S scale log2e - lse log2e)    float32, 0 where masked
//        dS = P o (dP o F - delta)               F: dropout factors (Philox)
//      and writes P o [kept] and dS as 16-bit rows of the block's P and dS
//      tiles. After a barrier, warp w owns keys 16 w .. 16 w + 15:
//        dV_w += (P o [kept])^T dO      matrix_a = P read col_major (= P^T)
//        dK_w += dS^T Q
//      with dK and dV in wmma accumulator fragments (registers, float32) for
//      the whole query loop; and, on the atomic path, owns queries 16 w ..:
//        dQ_w  = dS_w K  -> atomicAdd into the float32 (B, H, Tq, D) scratch
//      (one 16 x 16 fragment at a time through the warp's scratch).
//   3. dq: atomic path, a conversion kernel dq = 16-bit(scale * scratch).
//      deterministic = true: no float atomics; a dq pass, a block per (64
//      queries, head, batch row), loops over the key tiles in order,
//      recomputing S, dP and dS, dQ in accumulator fragments: bit-identical
//      from run to run (one more pass of two products, as in the float32
//      kernel, rather than Tk / 64 partial copies of dq).
// The fragments' element layout is never assumed: products go to shared
// memory with store_matrix_sync and elementwise work reads them there; the
// final scale factors are uniform (scale for dk and dq, 1 / (1 - p) for dv:
// P holds 0 / 1 dropout masks times probabilities in [0, 1], so no 16-bit
// overflow for p close to 1), applied as x[i] *= c.
//
// Rounding: P and dS are rounded to 16 bits for the products (as
// FlashAttention does): the error terms against the float32 op; S, dP, delta
// and the sums are float32.
//
// S and dP are computed one 16-key column block at a time (2 accumulator
// fragments, 2 x 1.25 KB of scratch a warp instead of 2 x 4.25 KB for the
// whole 16 x 64): lane = 16 h + r then owns row r of the warp's 16 and keys
// 8 h .. 8 h + 7 of the block, read as float4 groups of 4 keys, one Philox
// call (4 dropout words) a group, as in the forward.
//
// Shared memory (16-bit rows padded by 8 elements so that the rows a wmma
// load reads together start in different banks; all wmma pointers 32-byte
// aligned, every ldm a multiple of 16 bytes):
//   K, V, Q, dO   4 x 64 x (kMaxD + 8) 16-bit
//   P, dS         2 x 64 x 72 16-bit
//   per warp      16 x 68 floats: S and dP of a 16-key block (2 x 16 x 20),
//                 the staging of dq fragments for the atomics, and of the
//                 outputs (64 columns at a time)
//   lse, delta    2 x 64 floats
// kMaxD = 32: 56 KB, 64: 72 KB, 128: 104 KB, all opted into with
// cudaFuncSetAttribute (above 48 KB). ptxas (CUDA 13, no spills) gives the
// key-tile kernel 96-128 / 126-168 / 231-254 registers a thread (dK and dV
// fragments: 2 D / 16 accumulators), so blocks per SM, shared memory and
// registers together, are 2 / 2 / 1 on an A100 (164 KB, shared-bound) and
// 4 / 3 / 2 on an H100 (228 KB): 4 to 16 warps. A 32-key variant for
// kMaxD = 128 would halve dK / dV registers but double the K / V reloads. Head dims are multiples of 16 up to
// 128; only kMaxD in {32, 64, 128} is instantiated (D = 16 runs in the 32
// configuration); loops run to the actual D.
//
// Masks exactly as forward and the float32 backward: key tiles at or past
// key_lengths[b] are not loaded (dk, dv rows there written as zeros), causal /
// prefix skips the query tiles before the first query that may see the key
// tile (and, in the dq pass, the key tiles past the last visible key); a
// per-element test otherwise (attention_common.cuh). A fully masked row has
// lse = +inf, so P = dS = 0 and its gradients are zero.
//
// Not done: double-buffered loads (cp.async), a 128-key tile, vectorized
// output stores (outputs go out 16 bits at a time, coalesced along rows).
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_common.cuh"
#include "common.cuh"
#include "philox.cuh"

namespace ssl_core::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 16 * kWarps;  // queries of a query tile = keys of a key tile
constexpr int kSLd = kTile + 4;     // floats per row of a warp's output staging (64 columns)
constexpr int kPLd = kTile + 8;     // 16-bit elements per row of the P and dS tiles
constexpr int kBlockLd = 16 + 4;  // floats per row of a warp's 16 x 16 S and dP blocks
// per warp: S and dP of one 16-key block, or 64 output columns (store_fragments)
constexpr int kScratchBytes = 16 * kSLd * 4;
static_assert(2 * 16 * kBlockLd * 4 <= kScratchBytes && 16 * kBlockLd * 4 % 32 == 0, "S and dP fit the scratch");
constexpr int kPBytes = kTile * kPLd * 2;
static_assert(kScratchBytes % 32 == 0 && kPBytes % 32 == 0, "tiles stay 32-byte aligned");

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

struct Backward16Params {
  uint16_t* dq;
  uint16_t* dk;
  uint16_t* dv;
  const uint16_t* dout;
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  const uint16_t* out;
  // (batch, seq, head) element strides
  int64_t dq_stride[3], dk_stride[3], dv_stride[3], dout_stride[3], q_stride[3], k_stride[3], v_stride[3],
      out_stride[3];
  const float* lse;  // (B, H, Tq)
  float* delta;      // (B, H, Tq) scratch
  float* dq_accum;   // (B, H, Tq, D) scratch, or null (deterministic)
  int64_t batch, heads, q_seq, k_seq, dim;
  float scale, score_scale;  // scale, scale * log2(e)
  DeviceMask mask;
  DeviceDropout dropout;
  bool load_vectorized;  // dout, q, k, v rows 16-byte aligned
  int64_t tiles;         // blocks per (batch, head) of the running kernel
};

template <class V>
void strides_of(int64_t (&s)[3], const V& x) {
  s[0] = x.batch_stride;
  s[1] = x.seq_stride;
  s[2] = x.head_stride;
}

template <int kMaxD>
struct Config {
  static constexpr int kLd = kMaxD + 8;  // 16-bit elements per row of K, V, Q, dO
  static constexpr int kTileBytes = kTile * kLd * 2;
  static_assert(kTileBytes % 32 == 0, "tiles stay 32-byte aligned");
  static constexpr int kScratchOffset = 4 * kTileBytes + 2 * kPBytes;
  static constexpr int kRowsOffset = kScratchOffset + kWarps * kScratchBytes;  // lse, delta
  // + 32: the kernel aligns the dynamic shared memory's base to 32 bytes.
  static constexpr int kSharedBytes = kRowsOffset + 2 * kTile * 4 + 32;
};

// The block's shared tiles.
template <class T, int kMaxD>
struct Shared {
  uint16_t *k, *v, *q, *dout, *p, *ds;
  float *s, *dp;  // this warp's
  float *lse, *delta;
  __device__ __forceinline__ explicit Shared(int warp) {
    using C = Config<kMaxD>;
    unsigned char* raw = dynamic_shared<unsigned char>();
    unsigned char* base = raw + ((32 - (reinterpret_cast<uintptr_t>(raw) & 31)) & 31);
    k = reinterpret_cast<uint16_t*>(base);
    v = k + kTile * C::kLd;
    q = v + kTile * C::kLd;
    dout = q + kTile * C::kLd;
    p = dout + kTile * C::kLd;
    ds = p + kTile * kPLd;
    s = reinterpret_cast<float*>(base + C::kScratchOffset + warp * kScratchBytes);
    dp = s + 16 * kBlockLd;
    lse = reinterpret_cast<float*>(base + C::kRowsOffset);
    delta = lse + kTile;
  }
  __device__ __forceinline__ const T* as(const uint16_t* x) const { return reinterpret_cast<const T*>(x); }
};

template <class T, int kMaxD>
__device__ __forceinline__ void load_query_tile(const Backward16Params& p, const Shared<T, kMaxD>& t, int64_t b,
                                                int64_t h, int64_t i0) {
  constexpr int kLd = Config<kMaxD>::kLd;
  const int valid = static_cast<int>(p.q_seq - i0 < kTile ? p.q_seq - i0 : kTile);
  const int D = static_cast<int>(p.dim);
  load_tile16<kTile, kLd, kThreads>(t.q, p.q + b * p.q_stride[0] + h * p.q_stride[2] + i0 * p.q_stride[1],
                                    p.q_stride[1], valid, D, p.load_vectorized);
  load_tile16<kTile, kLd, kThreads>(t.dout,
                                    p.dout + b * p.dout_stride[0] + h * p.dout_stride[2] + i0 * p.dout_stride[1],
                                    p.dout_stride[1], valid, D, p.load_vectorized);
  if (threadIdx.x < kTile) {
    const int64_t row = (b * p.heads + h) * p.q_seq + i0 + threadIdx.x;
    const bool in = static_cast<int>(threadIdx.x) < valid;
    t.lse[threadIdx.x] = in ? p.lse[row] * kLog2e : 0.0f;
    t.delta[threadIdx.x] = in ? p.delta[row] : 0.0f;
  }
}

template <class T, int kMaxD>
__device__ __forceinline__ void load_key_tile(const Backward16Params& p, const Shared<T, kMaxD>& t, int64_t b,
                                              int64_t h, int64_t j0, int valid) {
  constexpr int kLd = Config<kMaxD>::kLd;
  const int D = static_cast<int>(p.dim);
  load_tile16<kTile, kLd, kThreads>(t.k, p.k + b * p.k_stride[0] + h * p.k_stride[2] + j0 * p.k_stride[1],
                                    p.k_stride[1], valid, D, p.load_vectorized);
  load_tile16<kTile, kLd, kThreads>(t.v, p.v + b * p.v_stride[0] + h * p.v_stride[2] + j0 * p.v_stride[1],
                                    p.v_stride[1], valid, D, p.load_vectorized);
}

// Warp `warp`'s rows (queries i0 + 16 warp ..) of the P o [kept] (if kNeedP)
// and dS tiles against the key tile at j0, whose first `k_valid` keys are
// loaded: the 16-key column blocks that hold valid keys (the others are never
// read). Rows past Tq and masked keys get zeros. One column block at a time:
// S and dP (16 x 16 each) through the warp's scratch, then lane 16 h + r
// takes row r, keys 8 h .. 8 h + 7 of the block (two Philox calls).
template <class T, int kMaxD, bool kNeedP>
__device__ __forceinline__ void score_gradients(const Backward16Params& p, const Shared<T, kMaxD>& t,
                                                const HeadMask& m, int64_t b, int64_t h, int64_t i0, int64_t j0,
                                                int k_valid, int warp, int lane) {
  constexpr int kLd = Config<kMaxD>::kLd;
  const int D = static_cast<int>(p.dim);
  const int64_t warp_i0 = i0 + 16 * warp;
  const int r = lane & 15, hh = lane >> 4;
  const int row = 16 * warp + r;  // in the query tile
  const int64_t query = warp_i0 + r;
  const bool in_range = query < p.q_seq;
  const bool all_visible = keys_all_visible(m, warp_i0, j0, kTile);
  const float lse_log2 = t.lse[row], delta = t.delta[row];
  T* P = reinterpret_cast<T*>(t.p) + row * kPLd;
  T* dS = reinterpret_cast<T*>(t.ds) + row * kPLd;
  const int column_blocks = (k_valid + 15) / 16;
  for (int n = 0; n < column_blocks; ++n) {
    {
      Acc s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
      for (int d0 = 0; d0 < D; d0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;  // bt(d, j) = K[j][d] (or V)
        wmma::load_matrix_sync(a, t.as(t.q) + 16 * warp * kLd + d0, kLd);
        wmma::load_matrix_sync(bt, t.as(t.k) + 16 * n * kLd + d0, kLd);
        wmma::mma_sync(s, a, bt, s);
        wmma::load_matrix_sync(a, t.as(t.dout) + 16 * warp * kLd + d0, kLd);
        wmma::load_matrix_sync(bt, t.as(t.v) + 16 * n * kLd + d0, kLd);
        wmma::mma_sync(dp, a, bt, dp);
      }
      wmma::store_matrix_sync(t.s, s, kBlockLd, wmma::mem_row_major);
      wmma::store_matrix_sync(t.dp, dp, kBlockLd, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      const int c = 8 * hh + 4 * g;  // first column of the group in the block
      const int col = 16 * n + c;    // ... in the tile
      const float4 s4 = *reinterpret_cast<const float4*>(t.s + r * kBlockLd + c);
      const float4 dp4 = *reinterpret_cast<const float4*>(t.dp + r * kBlockLd + c);
      const float sv[4] = {s4.x, s4.y, s4.z, s4.w}, dpv[4] = {dp4.x, dp4.y, dp4.z, dp4.w};
      PhiloxWords4 words = {{0u, 0u, 0u, 0u}};
      if (p.dropout.enabled && in_range) words = dropout_words(p.dropout, b, h, query, j0 + col);
      float pv[4], dsv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = j0 + col + e;
        const bool visible = in_range && col + e < k_valid && (all_visible || may_attend(m, query, key));
        const float prob = visible ? exp2f(fmaf(sv[e], p.score_scale, -lse_log2)) : 0.0f;
        bool kept = true;
        if (p.dropout.enabled) kept = words.w[e] >= p.dropout.threshold;
        const float factor = p.dropout.enabled ? (kept ? p.dropout.keep_scale : 0.0f) : 1.0f;
        pv[e] = kept ? prob : 0.0f;  // dv's 1 / (1 - p) is applied at the end
        // Selected, not multiplied: a masked score may be inf or NaN.
        dsv[e] = visible ? prob * (dpv[e] * factor - delta) : 0.0f;
      }
      if (kNeedP) *reinterpret_cast<Four<T>*>(P + col) = four<T>(pv[0], pv[1], pv[2], pv[3]);
      *reinterpret_cast<Four<T>*>(dS + col) = four<T>(dsv[0], dsv[1], dsv[2], dsv[3]);
    }
    __syncwarp();  // S and dP are read before the next block overwrites them
  }
}

// factor * acc (16 rows from row0, D columns) as 16-bit into rows < limit of
// a (B, T, H, D) array, through the warp's float scratch (64 columns at a time).
template <class T, int kFragments>
__device__ __forceinline__ void store_fragments(Acc (&acc)[kFragments], float factor, float* scratch, uint16_t* dst,
                                                int64_t seq_stride, int64_t row0, int64_t limit, int D, int lane) {
#pragma unroll
  for (int f = 0; f < kFragments; ++f) {
    if (16 * f < D) {
#pragma unroll
      for (int e = 0; e < acc[f].num_elements; ++e) acc[f].x[e] *= factor;
      wmma::store_matrix_sync(scratch + 16 * (f & 3), acc[f], kSLd, wmma::mem_row_major);
    }
    if ((f & 3) == 3 || f == kFragments - 1) {
      __syncwarp();
      const int c0 = 16 * (f & ~3);
      const int width = D - c0 < 64 ? D - c0 : 64;
      for (int item = lane; item < 16 * width; item += 32) {
        const int row = item / width, col = item - row * width;
        if (row0 + row < limit)
          reinterpret_cast<T*>(dst)[(row0 + row) * seq_stride + c0 + col] =
              Convert<T>::from_float(scratch[row * kSLd + col]);
      }
      __syncwarp();
    }
  }
}

// 1. delta = rowsum(dout o out) in float32, one warp a row; zeroes the dq scratch.
template <class T>
__global__ void __launch_bounds__(256) attention_backward_16bit_preprocess(const Backward16Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;  // (b * H + h) * Tq + i
  const int lane = threadIdx.x % 32;
  if (row >= p.batch * p.heads * p.q_seq) return;  // whole warps
  const int64_t i = row % p.q_seq, bh = row / p.q_seq, h = bh % p.heads, b = bh / p.heads;
  const T* dout = reinterpret_cast<const T*>(p.dout + b * p.dout_stride[0] + i * p.dout_stride[1] +
                                             h * p.dout_stride[2]);
  const T* out = reinterpret_cast<const T*>(p.out + b * p.out_stride[0] + i * p.out_stride[1] + h * p.out_stride[2]);
  float sum = 0.0f;
  for (int64_t d = lane; d < p.dim; d += 32)
    sum = fmaf(Convert<T>::to_float(dout[d]), Convert<T>::to_float(out[d]), sum);
  sum = warp_sum(sum);
  if (lane == 0) p.delta[row] = sum;
  if (p.dq_accum)
    for (int64_t d = lane; d < p.dim; d += 32) p.dq_accum[row * p.dim + d] = 0.0f;
}

// The first query that may see some key at or after `key` (structured masks).
__device__ __forceinline__ int64_t first_query_seeing(const HeadMask& m, int64_t key) {
  if (!m.structured || key < m.prefix) return 0;
  return key - m.diagonal > 0 ? key - m.diagonal : 0;
}

// 2. A block per (key tile, head, batch row): dk, dv of its 64 keys; with
//    kAtomicDq, dq by atomicAdd into p.dq_accum.
template <class T, int kMaxD, bool kAtomicDq>
__global__ void __launch_bounds__(kThreads) attention_backward_16bit_key_tile(const Backward16Params p) {
  constexpr int kLd = Config<kMaxD>::kLd, kFragments = kMaxD / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const Shared<T, kMaxD> t(warp);
  const int64_t tile = blockIdx.x % p.tiles, bh = blockIdx.x / p.tiles;
  const int64_t h = bh % p.heads, b = bh / p.heads, j0 = tile * kTile;
  const int64_t Tq = p.q_seq, Tk = p.k_seq;
  const int D = static_cast<int>(p.dim);
  const HeadMask m = head_mask(p.mask, b, h, Tq, Tk);

  Acc dk[kFragments], dv[kFragments];
#pragma unroll
  for (int f = 0; f < kFragments; ++f) {
    wmma::fill_fragment(dk[f], 0.0f);
    wmma::fill_fragment(dv[f], 0.0f);
  }
  const int k_valid = static_cast<int>(m.key_end - j0 < kTile ? m.key_end - j0 : kTile);
  if (k_valid > 0) {  // uniform over the block
    load_key_tile(p, t, b, h, j0, k_valid);
    const int64_t query_tiles = (Tq + kTile - 1) / kTile;
    for (int64_t qt = first_query_seeing(m, j0) / kTile; qt < query_tiles; ++qt) {
      const int64_t i0 = qt * kTile;
      const int q_valid = static_cast<int>(Tq - i0 < kTile ? Tq - i0 : kTile);
      const bool warp_active = 16 * warp < q_valid;
      __syncthreads();  // the previous tile's readers are done
      load_query_tile(p, t, b, h, i0);
      __syncthreads();
      if (warp_active) score_gradients<T, kMaxD, true>(p, t, m, b, h, i0, j0, k_valid, warp, lane);
      __syncthreads();
      if (16 * warp < k_valid) {
        // dV_w += P^T dO, dK_w += dS^T Q over the tile's valid query blocks.
        for (int q0 = 0; q0 < q_valid; q0 += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> pt, dst;  // (j, i) = P[i][j]
          wmma::load_matrix_sync(pt, t.as(t.p) + q0 * kPLd + 16 * warp, kPLd);
          wmma::load_matrix_sync(dst, t.as(t.ds) + q0 * kPLd + 16 * warp, kPLd);
#pragma unroll
          for (int f = 0; f < kFragments; ++f) {
            if (16 * f >= D) break;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> x;
            wmma::load_matrix_sync(x, t.as(t.dout) + q0 * kLd + 16 * f, kLd);
            wmma::mma_sync(dv[f], pt, x, dv[f]);
            wmma::load_matrix_sync(x, t.as(t.q) + q0 * kLd + 16 * f, kLd);
            wmma::mma_sync(dk[f], dst, x, dk[f]);
          }
        }
      }
      if (kAtomicDq && warp_active) {
        // dQ_w += dS_w K, a 16 x 16 block at a time through the warp's scratch.
        float* dq_rows = p.dq_accum + ((b * p.heads + h) * Tq + i0 + 16 * warp) * p.dim;
        for (int f = 0; f < kFragments && 16 * f < D; ++f) {
          Acc acc;
          wmma::fill_fragment(acc, 0.0f);
          for (int k0 = 0; k0 < k_valid; k0 += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> x;
            wmma::load_matrix_sync(a, t.as(t.ds) + 16 * warp * kPLd + k0, kPLd);
            wmma::load_matrix_sync(x, t.as(t.k) + k0 * kLd + 16 * f, kLd);
            wmma::mma_sync(acc, a, x, acc);
          }
          wmma::store_matrix_sync(t.s, acc, 16, wmma::mem_row_major);
          __syncwarp();
#pragma unroll
          for (int e = lane; e < 256; e += 32) {
            const int row = e >> 4, col = e & 15;
            if (16 * warp + row < q_valid) atomicAdd(dq_rows + row * p.dim + 16 * f + col, t.s[e]);
          }
          __syncwarp();
        }
      }
    }
  }
  // The warp's 16 keys (zeros past key_lengths or where no query sees them).
  uint16_t* dk_head = p.dk + b * p.dk_stride[0] + h * p.dk_stride[2];
  uint16_t* dv_head = p.dv + b * p.dv_stride[0] + h * p.dv_stride[2];
  const int64_t row0 = j0 + 16 * warp;
  store_fragments<T>(dk, p.scale, t.s, dk_head, p.dk_stride[1], row0, Tk, D, lane);
  store_fragments<T>(dv, p.dropout.keep_scale, t.s, dv_head, p.dv_stride[1], row0, Tk, D, lane);
}

// 3. deterministic: a block per (query tile, head, batch row) sums dq over
//    the key tiles in order, in accumulator fragments.
template <class T, int kMaxD>
__global__ void __launch_bounds__(kThreads) attention_backward_16bit_dq(const Backward16Params p) {
  constexpr int kLd = Config<kMaxD>::kLd, kFragments = kMaxD / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const Shared<T, kMaxD> t(warp);
  const int64_t tile = blockIdx.x % p.tiles, bh = blockIdx.x / p.tiles;
  const int64_t h = bh % p.heads, b = bh / p.heads, i0 = tile * kTile;
  const int64_t Tq = p.q_seq, Tk = p.k_seq;
  const int D = static_cast<int>(p.dim);
  const HeadMask m = head_mask(p.mask, b, h, Tq, Tk);
  const int q_valid = static_cast<int>(Tq - i0 < kTile ? Tq - i0 : kTile);
  const int64_t warp_i0 = i0 + 16 * warp;
  const bool warp_active = 16 * warp < q_valid;
  const int64_t key_end = visible_key_end(m, i0 + q_valid - 1);
  const int64_t warp_key_end = warp_active ? visible_key_end(m, (warp_i0 + 16 < Tq ? warp_i0 + 16 : Tq) - 1) : 0;

  Acc dq[kFragments];
#pragma unroll
  for (int f = 0; f < kFragments; ++f) wmma::fill_fragment(dq[f], 0.0f);
  load_query_tile(p, t, b, h, i0);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    const int k_valid = static_cast<int>(m.key_end - j0 < kTile ? m.key_end - j0 : kTile);
    __syncthreads();  // the previous key tile's readers are done (and the query tile is loaded)
    load_key_tile(p, t, b, h, j0, k_valid);
    __syncthreads();
    if (!warp_active || j0 >= warp_key_end) continue;  // warp-uniform
    score_gradients<T, kMaxD, false>(p, t, m, b, h, i0, j0, k_valid, warp, lane);
    for (int k0 = 0; k0 < k_valid; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, t.as(t.ds) + 16 * warp * kPLd + k0, kPLd);
#pragma unroll
      for (int f = 0; f < kFragments; ++f) {
        if (16 * f >= D) break;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> x;
        wmma::load_matrix_sync(x, t.as(t.k) + k0 * kLd + 16 * f, kLd);
        wmma::mma_sync(dq[f], a, x, dq[f]);
      }
    }
  }
  if (!warp_active) return;  // no barrier follows
  store_fragments<T>(dq, p.scale, t.s, p.dq + b * p.dq_stride[0] + h * p.dq_stride[2], p.dq_stride[1], warp_i0, Tq,
                     D, lane);
}

// Atomic path, last step: dq = 16-bit(scale * dq_accum), elementwise.
template <class T>
__global__ void __launch_bounds__(256) attention_backward_16bit_write_dq(const Backward16Params p) {
  const int64_t n = p.batch * p.heads * p.q_seq * p.dim;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % p.dim, row = e / p.dim, i = row % p.q_seq, bh = row / p.q_seq, h = bh % p.heads,
                  b = bh / p.heads;
    reinterpret_cast<T*>(p.dq)[b * p.dq_stride[0] + i * p.dq_stride[1] + h * p.dq_stride[2] + d] =
        Convert<T>::from_float(p.scale * p.dq_accum[e]);
  }
}

template <class Kernel>
void opt_in(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
               "attention_backward_16bit: opting in to shared memory above 48 KB");
}

unsigned grid_of(int64_t tiles, const Backward16Params& p) {
  const int64_t blocks = tiles * p.heads * p.batch;
  if (blocks > 0x7fffffff)
    throw std::runtime_error("attention_backward_16bit: " + std::to_string(blocks) +
                             " blocks (tiles x heads x batch) exceed the grid limit of 2^31 - 1");
  return static_cast<unsigned>(blocks);
}

template <class T, int kMaxD>
void launch_tiles(Backward16Params p, bool deterministic, Stream stream) {
  constexpr int shared = Config<kMaxD>::kSharedBytes;
  if (p.k_seq > 0) {
    p.tiles = ceil_div(p.k_seq, kTile);
    auto kernel = deterministic ? attention_backward_16bit_key_tile<T, kMaxD, false>
                                : attention_backward_16bit_key_tile<T, kMaxD, true>;
    opt_in(kernel, shared);
    SSL_CORE_LAUNCH(kernel, grid_of(p.tiles, p), kThreads, shared, stream, p);
    check_launch("attention_backward_16bit_key_tile");
  }
  if (deterministic && p.q_seq > 0) {
    p.tiles = ceil_div(p.q_seq, kTile);
    auto kernel = attention_backward_16bit_dq<T, kMaxD>;
    opt_in(kernel, shared);
    SSL_CORE_LAUNCH(kernel, grid_of(p.tiles, p), kThreads, shared, stream, p);
    check_launch("attention_backward_16bit_dq");
  }
}

template <class T>
void run(const Backward16Params& p, bool deterministic, Stream stream) {
  const int64_t rows = p.batch * p.heads * p.q_seq;
  if (rows > 0) {
    SSL_CORE_LAUNCH(attention_backward_16bit_preprocess<T>, static_cast<unsigned>(ceil_div(rows, 8)), 256, 0,
                    stream, p);
    check_launch("attention_backward_16bit_preprocess");
  }
  if (p.dim <= 32)
    launch_tiles<T, 32>(p, deterministic, stream);
  else if (p.dim <= 64)
    launch_tiles<T, 64>(p, deterministic, stream);
  else
    launch_tiles<T, 128>(p, deterministic, stream);
  if (!deterministic && rows > 0) {
    const int64_t blocks = ceil_div(rows * p.dim, 256);
    SSL_CORE_LAUNCH(attention_backward_16bit_write_dq<T>, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256,
                    0, stream, p);
    check_launch("attention_backward_16bit_write_dq");
  }
}

}  // namespace

void attention_backward_16bit(HeadsViewT<uint16_t> dq, HeadsViewT<uint16_t> dk, HeadsViewT<uint16_t> dv,
                              HeadsViewT<const uint16_t> dout, HeadsViewT<const uint16_t> q,
                              HeadsViewT<const uint16_t> k, HeadsViewT<const uint16_t> v,
                              HeadsViewT<const uint16_t> out, const float* lse, HalfType type,
                              const AttentionOptions& options, bool deterministic, Stream stream) {
  const int64_t D = q.dim;
  if (q.batch == 0 || q.heads == 0 || (q.seq == 0 && k.seq == 0)) return;
  if (D < 16 || D > 128 || D % 16 != 0)
    throw std::invalid_argument("attention_backward_16bit: head_dim must be a multiple of 16 in [16, 128], got " +
                                std::to_string(D));
  Backward16Params p{};
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.dout = dout.data;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  strides_of(p.dq_stride, dq);
  strides_of(p.dk_stride, dk);
  strides_of(p.dv_stride, dv);
  strides_of(p.dout_stride, dout);
  strides_of(p.q_stride, q);
  strides_of(p.k_stride, k);
  strides_of(p.v_stride, v);
  strides_of(p.out_stride, out);
  p.lse = lse;
  p.batch = q.batch;
  p.heads = q.heads;
  p.q_seq = q.seq;
  p.k_seq = k.seq;
  p.dim = D;
  p.scale = options.scale;
  p.score_scale = options.scale * kLog2e;
  p.mask = make_device_mask(options.mask);
  p.dropout = make_device_dropout(options);
  p.load_vectorized = rows_aligned(dout, 16) && rows_aligned(q, 16) && rows_aligned(k, 16) && rows_aligned(v, 16);

  // Scratch: delta, then (atomic path) the float32 dq accumulator.
  const int64_t rows = q.batch * q.heads * q.seq;
  const int64_t scratch_floats = rows + (deterministic ? 0 : rows * D);
  float* scratch = nullptr;
  if (scratch_floats > 0)
    check_cuda(cudaMallocAsync(&scratch, static_cast<size_t>(scratch_floats) * sizeof(float),
                               static_cast<cudaStream_t>(stream)),
               "attention_backward_16bit: scratch");
  p.delta = scratch;
  p.dq_accum = deterministic || rows == 0 ? nullptr : scratch + rows;
  try {
    if (type == HalfType::float16)
      run<__half>(p, deterministic, stream);
    else
      run<__nv_bfloat16>(p, deterministic, stream);
  } catch (...) {
    if (scratch) cudaFreeAsync(scratch, static_cast<cudaStream_t>(stream));
    throw;
  }
  if (scratch)
    check_cuda(cudaFreeAsync(scratch, static_cast<cudaStream_t>(stream)), "attention_backward_16bit: scratch");
}

}  // namespace ssl_core::cuda
