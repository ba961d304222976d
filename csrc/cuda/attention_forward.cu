// Attention forward on the GPU, float32: out = softmax(q k^T * scale + mask) v
// and lse, the natural log-sum-exp of each query's visible scores (+inf and a
// zero output row where no key is visible), which the backward recomputes the
// probabilities from. Semantics: csrc/cpu/reference_attention.cpp; layout and
// masks: attention.h; dropout: philox.h (device version: philox.cuh).
//
// FlashAttention-2 (Dao 2023) structure on CUDA cores (float32 has no tensor
// core path worth having here): one block per (query tile, head, batch row).
// The block keeps its Br queries in shared memory, streams the head's keys and
// values through shared memory Bc = 32 at a time, and keeps per query a
// running max m and an unnormalized output row in registers (online softmax);
// the output is divided by the row sum only once, at the end (deferred
// normalization). The q tile is pre-multiplied by scale * log2(e), so every
// probability is one exp2f of (score - m). The Tq x Tk score matrix never
// reaches global memory: traffic is q, out and lse once, k and v once per
// query tile (mostly from L2: a head's query tiles are adjacent block ids).
//
// Threads: a warp owns 16 query rows; lane = 8 rg + cg owns rows 4 rg .. +3
// of them, key columns 4 cg .. +3 of the score tile (a 4 x 4 register tile),
// and output columns 32 m + 4 cg .. +3 (a 4 x D/8 register tile). The row
// max is reduced over the 8 lanes of a row group with 3 xor-shuffles per row
// and tile; the row sum stays per-lane until the end (the rescale factors are
// the same for every lane of a row). A thread's four key columns are one
// Philox block (philox.cuh), so dropout costs one Philox per 4 weights.
//
// Shared memory, all in float4-readable layouts without bank conflicts:
//   Qt [kMaxD][Br]  q transposed: the score loop reads 4 rows with one LDS.128
//   Kt [kMaxD][Bc]  k transposed: 4 key columns with one LDS.128
//   V  [Bc][kMaxD]  v as is:      4 output columns with one LDS.128
//   Pt [Bc][Br]     probabilities transposed, for the p v product
// The transposed tiles are written column-wise; an XOR swizzle of the 4-float
// group index by bits 2..4 of the other coordinate (swizzle() below) makes
// both those writes and the float4 reads conflict-free without padding.
// Per d of the score loop a thread issues 2 LDS.128 for 16 FMAs; per key of
// the p v loop, 1 + D/32 LDS.128 for D/2 FMAs.
//
// Configurations (head_dim D up to 128; loops run to D, so a narrower D in a
// wider configuration costs only its own FMAs):
//   D <= 32:  Br = 64, 128 threads, 24 KB shared
//   D <= 64:  Br = 64, 128 threads, 40 KB shared
//   D <= 128: Br = 32,  64 threads, 48 KB shared (Pt aliases Kt, which is
//             dead once the scores are in registers: one more barrier a tile)
// Occupancy (A100: 164 KB shared, 64 K registers, 64 warps per SM; ptxas
// for sm_80 reports 72 / 124 / 162 registers a thread for D <= 32 / 64 /
// 128, no spills): D <= 64 runs 4 blocks = 16 warps per SM (shared memory
// and registers both allow 4); D <= 128 runs 3 blocks = 6 warps (shared
// bound; registers would allow 6), with 64 output accumulators a thread.
// Few warps suffice because each thread has 16 independent FMAs per pair of
// shared loads, and 4 x D/8 per key in the p v loop (the usual
// flash-attention trade of registers and tile size for occupancy). Not done:
// prefetching the next k/v tile into registers during the current one (it
// would cost 2 x D/4 more registers a thread), or cp.async (needs sm_80 PTX
// paths the emulator cannot run).
// Everything stays within the 48 KB that needs no cudaFuncSetAttribute
// opt-in, so the same configurations run on sm_86/sm_89 (100 KB per SM, two
// blocks at a time).
//
// Masks: key tiles past the last visible key of the tile's last query
// (key_lengths, causal diagonal aligned bottom-right, prefix) are never
// loaded; tiles wholly visible skip the per-element test. Lengths are clamped
// to [0, Tk] (device memory is not range-checked by the binding). Blocks take
// query tiles from the last one down, so the longest causal tiles start
// first. The mask resolution and test, the parameters shared with the 16-bit
// kernel and their filling, and the block order are in attention_common.cuh.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_common.cuh"
#include "common.cuh"
#include "philox.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kKeyTile = 32;  // Bc; swizzle() assumes 8 groups of 4 columns

struct ForwardParams : AttentionParams<float> {
  bool vectorized;  // D % 4 == 0 and every row 16-byte aligned: float4 global access
};

// Column of element (x, y) in a transposed tile whose rows are indexed by y:
// x's group of four is XORed with bits 2..4 of y, a bijection on every
// aligned 32-column group that keeps groups of four contiguous and aligned.
__device__ __forceinline__ int swizzle(int x, int y) { return x ^ (y & 28); }

// Loads the kRows rows of one head that start at src, seq_stride apart (rows
// from `valid` on and columns from D on as zeros, everything times
// `multiplier`), into shared memory, transposed and swizzled (dst[d][x],
// kRows floats a row of dst) or as they are (dst[x][d], kMaxD a row). A warp covers 4 rows
// x 32 columns an iteration: 8 lanes read 128 contiguous bytes of a row, and
// the 32 lanes' transposed writes land in 32 distinct banks.
template <int kMaxD, int kRows, bool kTranspose>
__device__ __forceinline__ void load_tile(float* dst, const float* src, int64_t seq_stride, int valid, int64_t D,
                                          bool vectorized, float multiplier, int warp, int lane, int warps) {
  constexpr int kChunks = kMaxD / 32;
  const int x_in = lane >> 3, d_in = (lane & 7) * 4;
  for (int it = warp; it < (kRows / 4) * kChunks; it += warps) {
    const int x = (it / kChunks) * 4 + x_in;
    const int d = (it % kChunks) * 32 + d_in;
    float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (x < valid && d < D) {
      const float* row = src + x * seq_stride + d;
      if (vectorized) {
        value = *reinterpret_cast<const float4*>(row);
      } else {
        value.x = row[0];
        if (d + 1 < D) value.y = row[1];
        if (d + 2 < D) value.z = row[2];
        if (d + 3 < D) value.w = row[3];
      }
      value.x *= multiplier;
      value.y *= multiplier;
      value.z *= multiplier;
      value.w *= multiplier;
    }
    if (kTranspose) {
      const int column = swizzle(x, d);
      dst[(d + 0) * kRows + column] = value.x;
      dst[(d + 1) * kRows + column] = value.y;
      dst[(d + 2) * kRows + column] = value.z;
      dst[(d + 3) * kRows + column] = value.w;
    } else {
      *reinterpret_cast<float4*>(dst + x * kMaxD + d) = value;
    }
  }
}

template <int kMaxD, int kWarps>
struct Config {
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kQueryTile = 16 * kWarps;  // Br
  static constexpr int kQFloats = kMaxD * kQueryTile;
  static constexpr int kKFloats = kMaxD * kKeyTile;
  static constexpr int kVFloats = kKeyTile * kMaxD;
  static constexpr int kPFloats = kKeyTile * kQueryTile;
  // Pt in its own space if that fits in 48 KB, else over Kt.
  static constexpr bool kAliasP = (kQFloats + kKFloats + kVFloats + kPFloats) * 4 > 48 * 1024;
  static constexpr int kSharedFloats = kQFloats + kKFloats + kVFloats + (kAliasP ? 0 : kPFloats);
  static constexpr int kSharedBytes = kSharedFloats * 4;
  static_assert(kSharedBytes <= 48 * 1024, "over the 48 KB of shared memory that needs no opt-in");
  static_assert(!kAliasP || kPFloats <= kKFloats, "Pt must fit in Kt");
  static_assert(kMaxD % 32 == 0 && kQueryTile % 32 == 0, "tiles are whole 32-column groups");
};

template <int kMaxD, int kWarps>
__global__ void __launch_bounds__(32 * kWarps) attention_forward_kernel(const ForwardParams p) {
  using C = Config<kMaxD, kWarps>;
  constexpr int Br = C::kQueryTile, Bc = kKeyTile, kOutGroups = kMaxD / 32;
  const float kMinusInf = -INFINITY;

  float* shared = dynamic_shared<float>();
  float* Qt = shared;
  float* Kt = Qt + C::kQFloats;
  float* V = Kt + C::kKFloats;
  float* Pt = C::kAliasP ? Kt : V + C::kVFloats;

  const auto [tile, h, b] = forward_block(p);
  const int64_t Tq = p.q_seq, Tk = p.k_seq, D = p.dim;
  const int64_t i0 = tile * Br;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rg = lane >> 3, cg = lane & 7;
  const int row0 = 16 * warp + 4 * rg;  // this thread's first row in the tile

  // The keys any query of this tile may see: [0, key_end).
  const HeadMask mask = head_mask(p.mask, b, h, Tq, Tk);
  const int64_t key_end = visible_key_end(mask, (i0 + Br < Tq ? i0 + Br : Tq) - 1);

  const float* q_head = p.q + b * p.q_stride[0] + h * p.q_stride[2] + i0 * p.q_stride[1];
  const float* k_head = p.k + b * p.k_stride[0] + h * p.k_stride[2];
  const float* v_head = p.v + b * p.v_stride[0] + h * p.v_stride[2];
  const int q_valid = static_cast<int>(Tq - i0 < Br ? Tq - i0 : Br);
  load_tile<kMaxD, Br, true>(Qt, q_head, p.q_stride[1], q_valid, D, p.vectorized, p.score_scale, warp, lane, kWarps);

  float o[4][4 * kOutGroups];
  float row_max[4], row_sum[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    row_max[i] = kMinusInf;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < 4 * kOutGroups; ++c) o[i][c] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < key_end; j0 += Bc) {
    const int k_valid = static_cast<int>(key_end - j0 < Bc ? key_end - j0 : Bc);
    __syncthreads();  // the previous tile's Kt, V and Pt are consumed (and Qt is written)
    load_tile<kMaxD, Bc, true>(Kt, k_head + j0 * p.k_stride[1], p.k_stride[1], k_valid, D, p.vectorized, 1.0f,
                               warp, lane, kWarps);
    load_tile<kMaxD, Bc, false>(V, v_head + j0 * p.v_stride[1], p.v_stride[1], k_valid, D, p.vectorized, 1.0f,
                                warp, lane, kWarps);
    __syncthreads();

    // s = (scale log2e q) k^T for rows row0 .. +3, keys j0 + 4 cg .. +3.
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      const float4 qv = *reinterpret_cast<const float4*>(Qt + d * Br + swizzle(row0, d));
      const float4 kv = *reinterpret_cast<const float4*>(Kt + d * Bc + swizzle(4 * cg, d));
      const float qs[4] = {qv.x, qv.y, qv.z, qv.w}, ks[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = fmaf(qs[i], ks[e], s[i][e]);
    }

    // Masking, only where some key of the tile is hidden from some query.
    if (!keys_all_visible(mask, i0, j0, Bc)) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t query = i0 + row0 + i;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = j0 + 4 * cg + e;
          if (!(query < Tq && may_attend(mask, query, key))) s[i][e] = kMinusInf;
        }
      }
    }

    // Online softmax: new running max over the 8 lanes of each row group,
    // probabilities relative to it, old output and sum rescaled to it.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float tile_max = fmaxf(fmaxf(s[i][0], s[i][1]), fmaxf(s[i][2], s[i][3]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 2));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullWarp, tile_max, 4));
      const float new_max = fmaxf(row_max[i], tile_max);
      const float shift = new_max == kMinusInf ? 0.0f : new_max;  // no visible key yet: keep zeros
      const float rescale = exp2f(row_max[i] - shift);
      row_max[i] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[i][e] = exp2f(s[i][e] - shift);
        sum += s[i][e];
      }
      row_sum[i] = row_sum[i] * rescale + sum;  // before dropout: the softmax's own normalizer
#pragma unroll
      for (int c = 0; c < 4 * kOutGroups; ++c) o[i][c] *= rescale;
    }

    if (p.dropout.enabled) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t query = i0 + row0 + i;
        if (query >= Tq) continue;
        const PhiloxWords4 words = dropout_words(p.dropout, b, h, query, j0 + 4 * cg);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = words.w[e] >= p.dropout.threshold ? s[i][e] * p.dropout.keep_scale : 0.0f;
      }
    }

    if (C::kAliasP) __syncthreads();  // Pt overwrites Kt: every thread's scores must be done
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = 4 * cg + e;
      *reinterpret_cast<float4*>(Pt + key * Br + swizzle(row0, key)) = make_float4(s[0][e], s[1][e], s[2][e], s[3][e]);
    }
    __syncthreads();

    // o += p v over the tile's valid keys (the rest have p = 0 and v = 0).
#pragma unroll 2
    for (int key = 0; key < k_valid; ++key) {
      const float4 pv = *reinterpret_cast<const float4*>(Pt + key * Br + swizzle(row0, key));
      const float ps[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
      for (int m = 0; m < kOutGroups; ++m) {
        if (32 * m >= D) break;
        const float4 vv = *reinterpret_cast<const float4*>(V + key * kMaxD + 32 * m + 4 * cg);
        const float vs[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[i][4 * m + e] = fmaf(ps[i], vs[e], o[i][4 * m + e]);
      }
    }
  }

  // Deferred normalization: the row sums over the 8 lanes of each row group.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float sum = row_sum[i];
    sum += __shfl_xor_sync(kFullWarp, sum, 1);
    sum += __shfl_xor_sync(kFullWarp, sum, 2);
    sum += __shfl_xor_sync(kFullWarp, sum, 4);
    const int64_t query = i0 + row0 + i;
    if (query >= Tq) continue;
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (cg == 0 && p.lse) p.lse[(b * p.heads + h) * Tq + query] = row_lse(row_max[i], sum);
    float* out_row = p.out + b * p.out_stride[0] + query * p.out_stride[1] + h * p.out_stride[2];
#pragma unroll
    for (int m = 0; m < kOutGroups; ++m) {
      const int64_t d = 32 * m + 4 * cg;
      if (d >= D) break;
      const float4 value = make_float4(o[i][4 * m] * inverse, o[i][4 * m + 1] * inverse, o[i][4 * m + 2] * inverse,
                                       o[i][4 * m + 3] * inverse);
      if (p.vectorized) {
        *reinterpret_cast<float4*>(out_row + d) = value;
      } else {
        out_row[d] = value.x;
        if (d + 1 < D) out_row[d + 1] = value.y;
        if (d + 2 < D) out_row[d + 2] = value.z;
        if (d + 3 < D) out_row[d + 3] = value.w;
      }
    }
  }
}

template <int kMaxD, int kWarps>
void launch(const ForwardParams& params, Stream stream) {
  using C = Config<kMaxD, kWarps>;
  const unsigned blocks = forward_blocks(params, "attention_forward");
  auto kernel = attention_forward_kernel<kMaxD, kWarps>;
  SSL_CORE_LAUNCH(kernel, blocks, C::kThreads, C::kSharedBytes, stream, params);
  check_launch("attention_forward");
}

}  // namespace

void attention_forward(HeadsView out, float* lse, ConstHeadsView q, ConstHeadsView k, ConstHeadsView v,
                       const AttentionOptions& options, Stream stream) {
  const int64_t D = q.dim;
  if (q.batch == 0 || q.heads == 0 || q.seq == 0) return;
  if (D < 1 || D > 128)
    throw std::invalid_argument("attention_forward: head_dim must be in [1, 128], got " + std::to_string(D));
  ForwardParams p{};
  fill_attention_params(p, out, lse, q, k, v, options);
  p.vectorized = D % 4 == 0 && rows_aligned(q, 16) && rows_aligned(k, 16) && rows_aligned(v, 16) &&
                 rows_aligned(out, 16);

  if (D <= 32) {
    p.query_tiles = ceil_div(q.seq, Config<32, 4>::kQueryTile);
    launch<32, 4>(p, stream);
  } else if (D <= 64) {
    p.query_tiles = ceil_div(q.seq, Config<64, 4>::kQueryTile);
    launch<64, 4>(p, stream);
  } else {
    p.query_tiles = ceil_div(q.seq, Config<128, 2>::kQueryTile);
    launch<128, 2>(p, stream);
  }
}

}  // namespace ssl_core::cuda
