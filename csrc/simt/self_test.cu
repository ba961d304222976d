// Kernels that test the emulator (see self_test.h). Plain CUDA: each planted
// bug here is one a GPU would execute silently or hang on.
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "simt/self_test.h"

namespace simt_self_test {

using ssl_core::cuda::check_launch;
using ssl_core::cuda::dynamic_shared;

enum Kind { kShfl, kUp, kDown, kXor, kBallot, kAny, kAll, kSyncwarp };

__global__ void collective_kernel(int kind, const int* values, int* results, unsigned mask, int arg, int width) {
  const int lane = threadIdx.x;
  if (!(mask >> lane & 1)) return;
  const int v = values[lane];
  int r = 0;
  switch (kind) {
    case kShfl: r = __shfl_sync(mask, v, arg, width); break;
    case kUp: r = __shfl_up_sync(mask, v, arg, width); break;
    case kDown: r = __shfl_down_sync(mask, v, arg, width); break;
    case kXor: r = __shfl_xor_sync(mask, v, arg, width); break;
    case kBallot: r = static_cast<int>(__ballot_sync(mask, v)); break;
    case kAny: r = __any_sync(mask, v); break;
    case kAll: r = __all_sync(mask, v); break;
    default: __syncwarp(mask); r = 1;
  }
  results[lane] = r;
}

void warp_collective(const char* kind, const int* values, int* results, unsigned mask, int arg, int width) {
  static const char* names[] = {"shfl", "shfl_up", "shfl_down", "shfl_xor", "ballot", "any", "all", "syncwarp"};
  int k = 0;
  while (k < 8 && std::strcmp(names[k], kind) != 0) ++k;
  if (k == 8) throw std::invalid_argument(std::string("unknown collective ") + kind);
  SSL_CORE_LAUNCH(collective_kernel, 1, 32, 0, nullptr, k, values, results, mask, arg, width);
  check_launch("collective_kernel");
}

__global__ void block_sum_kernel(const float* x, int n, float* out, bool with_barrier) {
  float* partial = dynamic_shared<float>();
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  partial[threadIdx.x] = v;
  if (with_barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int t = 0; t < static_cast<int>(blockDim.x); ++t) total += partial[t];
    *out = total;
  }
}

float block_sum(const float* x, int n, int threads, bool with_barrier) {
  float out = 0.0f;
  SSL_CORE_LAUNCH(block_sum_kernel, 1, threads, threads * sizeof(float), nullptr, x, n, &out, with_barrier);
  check_launch("block_sum_kernel");
  return out;
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void lane_outside_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void source_outside_mask_kernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 20);
}

__global__ void mismatched_kernel(int* out) {
  const int v = static_cast<int>(threadIdx.x);
  out[threadIdx.x] = threadIdx.x % 2 ? __shfl_xor_sync(0xffffffffu, v, 1) : __shfl_down_sync(0xffffffffu, v, 1);
}

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
  }
}

__global__ void overflow_kernel(int floats) {
  float* shared = dynamic_shared<float>();
  shared[threadIdx.x] = 1.0f;
  if (threadIdx.x == 0) shared[floats] = 2.0f;  // one past the end
}

__global__ void exit_before_barrier_kernel(int* out) {
  if (threadIdx.x >= 8) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

template <class T>
__global__ void wmma_gemm_kernel(const T* a, const T* b_transposed, const float* c, float* d, bool assume_layout) {
  using namespace nvcuda;
  __shared__ __align__(32) T a_tile[256];
  __shared__ __align__(32) T b_tile[256];
  __shared__ __align__(32) float c_tile[256];
  for (int i = threadIdx.x; i < 256; i += 32) {
    a_tile[i] = a[i];
    b_tile[i] = b_transposed[i];
    c_tile[i] = c[i];
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a_tile, 16);
  wmma::load_matrix_sync(fb, b_tile, 16);
  wmma::load_matrix_sync(acc, c_tile, 16, wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  if (!assume_layout) {
    wmma::store_matrix_sync(c_tile, acc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int i = threadIdx.x; i < 256; i += 32) d[i] = c_tile[i];
    return;
  }
  // The sm_80 accumulator layout of mma.m16n8k16, twice: not what wmma promises.
  const int lane = threadIdx.x;
  for (int i = 0; i < acc.num_elements; ++i) {
    const int row = lane / 4 + 8 * ((i / 2) % 2), col = (lane % 4) * 2 + i % 2 + 8 * (i / 4);
    d[row * 16 + col] = acc.x[i];
  }
}

__global__ void wmma_misaligned_kernel(const __half* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a + 1, 16);
}

void wmma_gemm(const uint16_t* a, const uint16_t* b_transposed, const float* c, float* d, bool bfloat16,
               bool assume_layout) {
  if (bfloat16) {
    SSL_CORE_LAUNCH(wmma_gemm_kernel<__nv_bfloat16>, 1, 32, 0, nullptr, reinterpret_cast<const __nv_bfloat16*>(a),
                    reinterpret_cast<const __nv_bfloat16*>(b_transposed), c, d, assume_layout);
  } else {
    SSL_CORE_LAUNCH(wmma_gemm_kernel<__half>, 1, 32, 0, nullptr, reinterpret_cast<const __half*>(a),
                    reinterpret_cast<const __half*>(b_transposed), c, d, assume_layout);
  }
  check_launch("wmma_gemm_kernel");
}

void wmma_misaligned() {
  alignas(32) static __half a[512];
  SSL_CORE_LAUNCH(wmma_misaligned_kernel, 1, 32, 0, nullptr, a);
}

void to_half(const float* x, uint16_t* bits, int n, bool bfloat16) {
  for (int i = 0; i < n; ++i) bits[i] = bfloat16 ? __float2bfloat16(x[i]).bits : __float2half(x[i]).bits;
}

void from_half(const uint16_t* bits, float* x, int n, bool bfloat16) {
  for (int i = 0; i < n; ++i)
    x[i] = bfloat16 ? __bfloat162float(__nv_bfloat16{bits[i]}) : __half2float(__half{bits[i]});
}

__global__ void static_overflow_kernel(float* out) {
  __shared__ float tile[32];
  tile[threadIdx.x + 1] = 1.0f;  // thread 31 writes tile[32]
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

__global__ void overread_kernel(int floats, float* out) {
  const float* shared = dynamic_shared<float>();
  if (threadIdx.x == 0) *out = shared[floats];  // one past the end
}

void static_shared_overflow() {
  float out[32];
  SSL_CORE_LAUNCH(static_overflow_kernel, 1, 32, 0, nullptr, out);
}

float dynamic_shared_overread(int bytes) {
  float out = 0.0f;
  SSL_CORE_LAUNCH(overread_kernel, 1, 32, bytes, nullptr, bytes / static_cast<int>(sizeof(float)), &out);
  return out;
}

void divergent_barrier() {
  int out[32];
  SSL_CORE_LAUNCH(divergent_barrier_kernel, 1, 32, 0, nullptr, out);
}

void lane_outside_mask() {
  int out[32];
  SSL_CORE_LAUNCH(lane_outside_mask_kernel, 1, 32, 0, nullptr, out);
}

void exited_lane_in_mask() {
  int out[32];
  SSL_CORE_LAUNCH(exited_lane_kernel, 1, 32, 0, nullptr, out);
}

void source_lane_outside_mask() {
  int out[32];
  SSL_CORE_LAUNCH(source_outside_mask_kernel, 1, 32, 0, nullptr, out);
}

void mismatched_collectives() {
  int out[32];
  SSL_CORE_LAUNCH(mismatched_kernel, 1, 32, 0, nullptr, out);
}

void deadlock() {
  int out[32];
  SSL_CORE_LAUNCH(deadlock_kernel, 1, 32, 0, nullptr, out);
}

void dynamic_shared_overflow(int bytes) {
  const int floats = bytes / static_cast<int>(sizeof(float));
  SSL_CORE_LAUNCH(overflow_kernel, 1, floats < 32 ? floats : 32, bytes, nullptr, floats);
  check_launch("overflow_kernel");
}

void too_much_dynamic_shared() {
  SSL_CORE_LAUNCH(overflow_kernel, 1, 32, 64 * 1024, nullptr, 16 * 1024 - 1);
  check_launch("overflow_kernel");
}

void exit_before_barrier() {
  int out[32];
  SSL_CORE_LAUNCH(exit_before_barrier_kernel, 1, 32, 0, nullptr, out);
}

}  // namespace simt_self_test
