// LayerNorm over the last dimension on the GPU (the CPU op is
// csrc/cpu/layer_norm.cpp, its specification csrc/cpu/reference.cpp).
//
//   forward:  y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
//   backward: xhat = (x - mean) * rstd,  g = dy * weight
//             dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//             dweight = sum over rows of dy * xhat,  dbias = sum over rows of dy
//
// Shapes: x, y, dy, dx (N, C) rows views; weight, bias, dweight, dbias (C,),
// weight and bias may be null (ones, zeros); mean, rstd (N,). y may be x and
// dx may be dy (in place): a warp has its row's sums before it writes, and
// each element is written by the lane that read it.
//
// A warp per row. Rows short enough live in registers (forward up to 2048
// columns, backward, which also holds dy and the dweight/dbias sums, up to
// 1024): lane l holds columns [4l + 128c, 4l + 128c + 4) for c < kChunks, with
// float4 loads (512 bytes per warp per instruction) when every pointer is
// 16-byte aligned and C and the row strides are multiples of 4; otherwise
// lane l holds columns l + 32c, still coalesced. Each row is then read once
// and written once. The statistics are the CPU kernel's two passes over the
// cached row: a rough mean, then the sums of deviations from it and of their
// squares (exact for rows whose mean is large against their spread, unlike
// E[x²] - E[x]²), in float32 with warp-shuffle sums. Longer rows take the
// same passes re-reading the row from global memory (8 KB at 2048 columns,
// L1/L2-resident while the warp works on it); rare in the models here.
//
// Backward writes dx per row the same way and reduces dweight/dbias without
// atomics in two deterministic stages. Stage 1: each lane adds dy * xhat and
// dy of its own columns over the rows of its warp (rows gw, gw + W, ... for
// global warp gw of W, about 4 a warp) into the warp's slice of shared
// memory (2C floats; no other lane touches those columns, so no barrier until
// the end; in registers they would double the kernel's register count), then
// the block sums its 4 slices in warp order into one partial row of 2C floats
// in a scratch buffer (cudaMallocAsync; at most 512 rows, 3 MB at C = 768).
// In the long-row kernel each warp's partial row in the scratch buffer is its
// accumulator instead (at most 512 warps). Stage 2 sums the partials of each column in a fixed
// order (8 interleaved runs, then those 8 in order). The grids depend only on
// N and C, so the results are bit-identical from run to run.
//
// GPU resources (nvcc -arch=sm_80 -Xptxas -v, no spills): 128-thread blocks
// (4 warps, 4 rows at a time). Forward: no shared memory; 32-145 registers
// (56 at C = 768). Backward: 32C bytes of dynamic shared memory (24 KB at
// C = 768), 32-123 registers (96 at C = 768: 5 blocks, 20 warps an SM, each
// warp with 12 float4 loads of a row in flight). Stage 2: 256 threads, 1 KB
// of static shared memory.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace ssl_core::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int64_t kMaxForwardBlocks = 1 << 16;
// Register rows: forward up to 16 float4 a lane (C <= 2048), backward, which
// holds x, dy and the dweight/dbias sums, up to 8 (C <= 1024).
constexpr int kMaxForwardChunks = 16;
constexpr int kMaxBackwardChunks = 8;
// Backward grids: about 4 rows a warp, at most 512 blocks (partial rows) in
// registers, 128 blocks (512 warps, a partial row each) for long rows.
constexpr int64_t kRowsPerWarp = 4;
constexpr int64_t kMaxBackwardBlocks = 512;
constexpr int64_t kMaxLongBackwardBlocks = 128;
// Stage 2: 32 columns a block, 8 threads a column each summing every 8th partial.
constexpr int kFinalizeColumns = 32;
constexpr int kFinalizeGroups = 8;

// Row i of a rows view (RowsViewT::row is a host function).
template <class T>
__device__ __forceinline__ T* row(const RowsViewT<T>& v, int64_t i) {
  return v.data + i * v.row_stride;
}

// weight (or ones) / bias (or zeros) at p + j.
template <int kWidth>
__device__ __forceinline__ void load_or(float* out, const float* p, int64_t j, float fill) {
  if (p) {
    load_floats<kWidth>(out, p + j);
  } else {
#pragma unroll
    for (int e = 0; e < kWidth; ++e) out[e] = fill;
  }
}

// The first column of chunk c of `lane`: chunks of kWidth columns, a warp's
// 32 chunks side by side.
template <int kWidth>
__device__ __forceinline__ int64_t chunk_column(int lane, int64_t c) {
  return kWidth * (lane + 32 * c);
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

struct RowStatistics {
  float rough_mean, correction, rstd;
};

// From a lane's partial sums (already summed over the warp) of x, then of
// (x - rough_mean) and its square: the CPU kernel's formulas.
__device__ __forceinline__ RowStatistics statistics(float rough_mean, float deviation, float squares, int64_t C,
                                                    float eps) {
  const float correction = deviation / static_cast<float>(C);
  // sum (x - m)^2 = sum (x - rough)^2 - C correction^2; clamp the rounding below 0.
  const float var = fmaxf(squares / static_cast<float>(C) - correction * correction, 0.0f);
  return {rough_mean, correction, 1.0f / sqrtf(var + eps)};
}

// A row in registers: kChunks chunks of kWidth columns a lane.
template <int kChunks, int kWidth>
__global__ void __launch_bounds__(kThreads)
    layer_norm_forward_registers(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                                 const float* bias, float eps) {
  constexpr int kSlots = kChunks * kWidth;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t C = x.cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; i < x.rows;
       i += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float* xr = row(x, i);
    float v[kSlots];
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t j = chunk_column<kWidth>(lane, c);
      if (j < C) {
        load_floats<kWidth>(v + c * kWidth, xr + j);
      } else {
#pragma unroll
        for (int e = 0; e < kWidth; ++e) v[c * kWidth + e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < kWidth; ++e) sum += v[c * kWidth + e];
    }
    const float rough_mean = warp_sum(sum) / static_cast<float>(C);
    float deviation = 0.0f, squares = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if (chunk_column<kWidth>(lane, c) >= C) continue;
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        const float d = v[c * kWidth + e] - rough_mean;
        deviation += d;
        squares = fmaf(d, d, squares);
      }
    }
    const RowStatistics s = statistics(rough_mean, warp_sum(deviation), warp_sum(squares), C, eps);
    if (lane == 0) {
      mean[i] = s.rough_mean + s.correction;
      rstd[i] = s.rstd;
    }
    float* yr = row(y, i);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t j = chunk_column<kWidth>(lane, c);
      if (j >= C) continue;
      float w[kWidth], b[kWidth], out[kWidth];
      load_or<kWidth>(w, weight, j, 1.0f);
      load_or<kWidth>(b, bias, j, 0.0f);
#pragma unroll
      for (int e = 0; e < kWidth; ++e)
        out[e] = fmaf(((v[c * kWidth + e] - s.rough_mean) - s.correction) * s.rstd, w[e], b[e]);
      store_floats<kWidth>(yr + j, out);
    }
  }
}

// Rows too long for registers: the same passes, each over the row in global
// memory.
template <int kWidth>
__global__ void __launch_bounds__(kThreads)
    layer_norm_forward_long(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                            const float* bias, float eps) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t C = x.cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; i < x.rows;
       i += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float* xr = row(x, i);
    float sum = 0.0f;
    for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
      float v[kWidth];
      load_floats<kWidth>(v, xr + j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) sum += v[e];
    }
    const float rough_mean = warp_sum(sum) / static_cast<float>(C);
    float deviation = 0.0f, squares = 0.0f;
    for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
      float v[kWidth];
      load_floats<kWidth>(v, xr + j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        const float d = v[e] - rough_mean;
        deviation += d;
        squares = fmaf(d, d, squares);
      }
    }
    const RowStatistics s = statistics(rough_mean, warp_sum(deviation), warp_sum(squares), C, eps);
    if (lane == 0) {
      mean[i] = s.rough_mean + s.correction;
      rstd[i] = s.rstd;
    }
    float* yr = row(y, i);
    for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
      float v[kWidth], w[kWidth], b[kWidth];
      load_floats<kWidth>(v, xr + j);
      load_or<kWidth>(w, weight, j, 1.0f);
      load_or<kWidth>(b, bias, j, 0.0f);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) v[e] = fmaf(((v[e] - s.rough_mean) - s.correction) * s.rstd, w[e], b[e]);
      store_floats<kWidth>(yr + j, v);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

// Stage 1 for rows in registers. partials: (gridDim.x, 2C), block b's
// dweight then dbias over the rows of its warps. Each warp adds its rows'
// terms into its own (2C,) slice of shared memory (only the lane owning a
// column touches it, so no synchronization until the end), then the block
// sums the slices in warp order.
template <int kChunks, int kWidth>
__global__ void __launch_bounds__(kThreads)
    layer_norm_backward_registers(RowsView dx, float* partials, ConstRowsView dy, ConstRowsView x,
                                  const float* weight, const float* mean, const float* rstd) {
  constexpr int kSlots = kChunks * kWidth;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t C = x.cols;
  float* block_sums = dynamic_shared<float>();  // (kWarpsPerBlock, 2C)
  float* warp_dweight = block_sums + warp * 2 * C;
  float* warp_dbias = warp_dweight + C;
  const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int64_t j = chunk_column<kWidth>(lane, c);
    if (j < C) {
      store_floats<kWidth>(warp_dweight + j, zeros);
      store_floats<kWidth>(warp_dbias + j, zeros);
    }
  }

  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; i < x.rows;
       i += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float* xr = row(x, i);
    const float* dyr = row(dy, i);
    const float m = mean[i], rs = rstd[i];
    // xhat, then g = dy * weight, per slot (columns past C: 0, adding nothing).
    float xhat[kSlots], g[kSlots];
    float sum_g = 0.0f, sum_g_xhat = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t j = chunk_column<kWidth>(lane, c);
      float* xs = xhat + c * kWidth;
      float* gs = g + c * kWidth;
      if (j >= C) {
#pragma unroll
        for (int e = 0; e < kWidth; ++e) xs[e] = gs[e] = 0.0f;
        continue;
      }
      float d[kWidth], w[kWidth], pw[kWidth], pb[kWidth];
      load_floats<kWidth>(xs, xr + j);
      load_floats<kWidth>(d, dyr + j);
      load_or<kWidth>(w, weight, j, 1.0f);
      load_floats<kWidth>(pw, warp_dweight + j);
      load_floats<kWidth>(pb, warp_dbias + j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        xs[e] = (xs[e] - m) * rs;
        gs[e] = d[e] * w[e];
        sum_g += gs[e];
        sum_g_xhat = fmaf(gs[e], xs[e], sum_g_xhat);
        pw[e] = fmaf(d[e], xs[e], pw[e]);
        pb[e] += d[e];
      }
      store_floats<kWidth>(warp_dweight + j, pw);
      store_floats<kWidth>(warp_dbias + j, pb);
    }
    const float a = warp_sum(sum_g) / static_cast<float>(C);
    const float b = warp_sum(sum_g_xhat) / static_cast<float>(C);
    const float xhat_coefficient = -rs * b, constant = -rs * a;
    float* dxr = row(dx, i);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t j = chunk_column<kWidth>(lane, c);
      if (j >= C) continue;
      float out[kWidth];
#pragma unroll
      for (int e = 0; e < kWidth; ++e)
        out[e] = fmaf(g[c * kWidth + e], rs, fmaf(xhat[c * kWidth + e], xhat_coefficient, constant));
      store_floats<kWidth>(dxr + j, out);
    }
  }

  __syncthreads();
  float* out = partials + static_cast<int64_t>(blockIdx.x) * 2 * C;
  for (int64_t j = threadIdx.x; j < 2 * C; j += blockDim.x) {
    float total = block_sums[j];
    for (int w = 1; w < kWarpsPerBlock; ++w) total += block_sums[w * 2 * C + j];
    out[j] = total;
  }
}

// Stage 1 for long rows. partials: (gridDim.x * kWarpsPerBlock, 2C), one
// accumulator row per warp, which only its own lanes' columns touch.
template <int kWidth>
__global__ void __launch_bounds__(kThreads)
    layer_norm_backward_long(RowsView dx, float* partials, ConstRowsView dy, ConstRowsView x, const float* weight,
                             const float* mean, const float* rstd) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t C = x.cols;
  const int64_t global_warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  float* partial_dweight = partials + global_warp * 2 * C;
  float* partial_dbias = partial_dweight + C;
  for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
    const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    store_floats<kWidth>(partial_dweight + j, zeros);
    store_floats<kWidth>(partial_dbias + j, zeros);
  }
  for (int64_t i = global_warp; i < x.rows; i += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float* xr = row(x, i);
    const float* dyr = row(dy, i);
    const float m = mean[i], rs = rstd[i];
    float sum_g = 0.0f, sum_g_xhat = 0.0f;
    for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
      float xv[kWidth], d[kWidth], w[kWidth], pw[kWidth], pb[kWidth];
      load_floats<kWidth>(xv, xr + j);
      load_floats<kWidth>(d, dyr + j);
      load_or<kWidth>(w, weight, j, 1.0f);
      load_floats<kWidth>(pw, partial_dweight + j);
      load_floats<kWidth>(pb, partial_dbias + j);
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        const float xhat = (xv[e] - m) * rs, g = d[e] * w[e];
        sum_g += g;
        sum_g_xhat = fmaf(g, xhat, sum_g_xhat);
        pw[e] = fmaf(d[e], xhat, pw[e]);
        pb[e] += d[e];
      }
      store_floats<kWidth>(partial_dweight + j, pw);
      store_floats<kWidth>(partial_dbias + j, pb);
    }
    const float a = warp_sum(sum_g) / static_cast<float>(C);
    const float b = warp_sum(sum_g_xhat) / static_cast<float>(C);
    const float xhat_coefficient = -rs * b, constant = -rs * a;
    float* dxr = row(dx, i);
    for (int64_t j = chunk_column<kWidth>(lane, 0); j < C; j += 32 * kWidth) {
      float xv[kWidth], d[kWidth], w[kWidth];
      load_floats<kWidth>(xv, xr + j);
      load_floats<kWidth>(d, dyr + j);
      load_or<kWidth>(w, weight, j, 1.0f);
#pragma unroll
      for (int e = 0; e < kWidth; ++e)
        xv[e] = fmaf(d[e] * w[e], rs, fmaf((xv[e] - m) * rs, xhat_coefficient, constant));
      store_floats<kWidth>(dxr + j, xv);
    }
  }
}

// Stage 2: dweight, dbias from the (count, 2C) partials. Column j of a block's
// 32 goes to the 8 threads j + 32g, g < 8; thread g sums partials g, g + 8,
// ... in order, then thread 0 adds the 8 sums in order: a fixed order for any
// schedule, and 8 loads in flight per column instead of a serial chain.
__global__ void __launch_bounds__(kFinalizeColumns * kFinalizeGroups)
    layer_norm_backward_finalize(float* dweight, float* dbias, const float* partials, int64_t count, int64_t C,
                                 bool accumulate) {
  __shared__ float sums[kFinalizeGroups][kFinalizeColumns];
  const int column = static_cast<int>(threadIdx.x) % kFinalizeColumns;
  const int group = static_cast<int>(threadIdx.x) / kFinalizeColumns;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kFinalizeColumns; first < 2 * C;
       first += static_cast<int64_t>(gridDim.x) * kFinalizeColumns) {
    const int64_t j = first + column;
    float total = 0.0f;
    if (j < 2 * C)
      for (int64_t p = group; p < count; p += kFinalizeGroups) total += partials[p * 2 * C + j];
    sums[group][column] = total;
    __syncthreads();
    if (group == 0 && j < 2 * C) {
      total = sums[0][column];
      for (int g = 1; g < kFinalizeGroups; ++g) total += sums[g][column];
      float* out = j < C ? dweight + j : dbias + (j - C);
      *out = accumulate ? *out + total : total;
    }
    __syncthreads();  // sums is reused by the next columns
  }
}

// ---------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------

// Register chunks a lane needs for C columns: 1, 2, 3, 4, 6, 8, 12 or 16 (x 4
// columns x 32 lanes); 0 past max_chunks.
int register_chunks(int64_t C, int max_chunks) {
  const int64_t needed = ceil_div(C, 128);
  int chunks = 0;
  for (int candidate : {1, 2, 3, 4, 6, 8, 12, 16})
    if (chunks == 0 && needed <= candidate) chunks = candidate;
  return chunks <= max_chunks ? chunks : 0;
}

// Calls f(std::integral_constant<int, chunks>) for a register_chunks count.
template <int kMaxChunks, class F>
void with_register_chunks(int chunks, F f) {
  switch (chunks) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
  if constexpr (kMaxChunks >= 16) {
    if (chunks == 12) return f(std::integral_constant<int, 12>{});
    return f(std::integral_constant<int, 16>{});
  }
}

}  // namespace

void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                        const float* bias, float eps, Stream stream) {
  const int64_t N = x.rows, C = x.cols;
  if (N == 0 || C == 0) return;
  const bool vector = vectorizable(x) && vectorizable(y) && (!weight || aligned16(weight)) &&
                      (!bias || aligned16(bias));
  const int64_t blocks = std::min(ceil_div(N, kWarpsPerBlock), kMaxForwardBlocks);
  // Scalar rows in registers only up to 1024 columns (32 scalar chunks):
  // more would spill.
  const int chunks = register_chunks(C, vector ? kMaxForwardChunks : kMaxBackwardChunks);
  if (chunks > 0) {
    with_register_chunks<kMaxForwardChunks>(chunks, [&](auto k) {
      constexpr int kChunks = decltype(k)::value;
      if (vector) {
        auto kernel = layer_norm_forward_registers<kChunks, 4>;
        SSL_CORE_LAUNCH(kernel, blocks, kThreads, 0, stream, y, mean, rstd, x, weight, bias, eps);
      } else if constexpr (kChunks <= kMaxBackwardChunks) {
        // Scalar chunks: 4 x as many of 1 column each.
        auto kernel = layer_norm_forward_registers<kChunks * 4, 1>;
        SSL_CORE_LAUNCH(kernel, blocks, kThreads, 0, stream, y, mean, rstd, x, weight, bias, eps);
      }
    });
  } else if (vector) {
    SSL_CORE_LAUNCH(layer_norm_forward_long<4>, blocks, kThreads, 0, stream, y, mean, rstd, x, weight, bias, eps);
  } else {
    SSL_CORE_LAUNCH(layer_norm_forward_long<1>, blocks, kThreads, 0, stream, y, mean, rstd, x, weight, bias, eps);
  }
  check_launch("layer_norm_forward");
}

void layer_norm_backward(RowsView dx, float* dweight, float* dbias, ConstRowsView dy, ConstRowsView x,
                         const float* weight, const float* mean, const float* rstd, bool accumulate,
                         Stream stream) {
  const int64_t N = x.rows, C = x.cols;
  if (C == 0) return;
  if (N == 0) {
    // No rows: the sums are empty.
    if (!accumulate) {
      check_cuda(cudaMemsetAsync(dweight, 0, C * sizeof(float), static_cast<cudaStream_t>(stream)),
                 "layer_norm_backward: cudaMemsetAsync");
      check_cuda(cudaMemsetAsync(dbias, 0, C * sizeof(float), static_cast<cudaStream_t>(stream)),
                 "layer_norm_backward: cudaMemsetAsync");
    }
    return;
  }
  const bool vector = vectorizable(x) && vectorizable(dy) && vectorizable(dx) && (!weight || aligned16(weight));
  const int chunks = register_chunks(C, kMaxBackwardChunks);
  const int64_t blocks = std::min(ceil_div(N, kWarpsPerBlock * kRowsPerWarp),
                                  chunks > 0 ? kMaxBackwardBlocks : kMaxLongBackwardBlocks);
  const int64_t partial_rows = chunks > 0 ? blocks : blocks * kWarpsPerBlock;

  float* partials = nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&partials), partial_rows * 2 * C * sizeof(float), s),
             "layer_norm_backward: cudaMallocAsync");
  // The scratch buffer is freed (stream-ordered) whatever happens below.
  struct Free {
    float* p;
    cudaStream_t s;
    ~Free() { cudaFreeAsync(p, s); }
  } free_partials{partials, s};

  if (chunks > 0) {
    const size_t shared_bytes = kWarpsPerBlock * 2 * C * sizeof(float);  // <= 32 KB
    with_register_chunks<kMaxBackwardChunks>(chunks, [&](auto k) {
      constexpr int kChunks = decltype(k)::value;
      if (vector) {
        auto kernel = layer_norm_backward_registers<kChunks, 4>;
        SSL_CORE_LAUNCH(kernel, blocks, kThreads, shared_bytes, stream, dx, partials, dy, x, weight, mean, rstd);
      } else {
        auto kernel = layer_norm_backward_registers<kChunks * 4, 1>;
        SSL_CORE_LAUNCH(kernel, blocks, kThreads, shared_bytes, stream, dx, partials, dy, x, weight, mean, rstd);
      }
    });
  } else if (vector) {
    SSL_CORE_LAUNCH(layer_norm_backward_long<4>, blocks, kThreads, 0, stream, dx, partials, dy, x, weight, mean,
                    rstd);
  } else {
    SSL_CORE_LAUNCH(layer_norm_backward_long<1>, blocks, kThreads, 0, stream, dx, partials, dy, x, weight, mean,
                    rstd);
  }
  check_launch("layer_norm_backward");
  const int64_t finalize_blocks = std::min<int64_t>(ceil_div(2 * C, kFinalizeColumns), 4096);
  SSL_CORE_LAUNCH(layer_norm_backward_finalize, finalize_blocks, kFinalizeColumns * kFinalizeGroups, 0, stream,
                  dweight, dbias, static_cast<const float*>(partials), partial_rows, C, accumulate);
  check_launch("layer_norm_backward_finalize");
}

}  // namespace ssl_core::cuda
