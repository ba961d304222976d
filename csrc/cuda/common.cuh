// What every CUDA kernel file shares: launching (on a GPU, or on the CPU
// emulator of csrc/simt/ when SSL_CORE_SIMT is defined), launch errors,
// dynamic shared memory and warp reductions. Kernels stay portable CUDA C++:
// no inline PTX and no __CUDA_ARCH__ branches, so that the emulator runs
// exactly the code a GPU would.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ssl_core/cuda_kernels.h"

// 16-bit floats and the warp matrix (tensor core) API: the toolkit's headers
// under nvcc, the emulator's own (csrc/simt/half.h, wmma.h) otherwise.
#ifndef SSL_CORE_SIMT
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

// SSL_CORE_LAUNCH(kernel, grid, block, shared_bytes, stream, args...) is
// kernel<<<grid, block, shared_bytes, stream>>>(args...). For a template
// kernel, take a pointer first (auto k = kern<T, 64>;) so that its commas do
// not split the macro's arguments.
#ifdef SSL_CORE_SIMT
#define SSL_CORE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  ::simt::launch(kernel, dim3(grid), dim3(block), shared_bytes, static_cast<cudaStream_t>(stream), __VA_ARGS__)
#else
#define SSL_CORE_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

namespace ssl_core::cuda {

// Throws if the last launch (or any earlier asynchronous call) failed.
inline void check_launch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string(kernel) + ": " + cudaGetErrorString(error));
}

inline void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The launch's dynamic shared memory (the shared_bytes of SSL_CORE_LAUNCH).
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef SSL_CORE_SIMT
  return reinterpret_cast<T*>(::simt::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char ssl_core_dynamic_shared[];
  return reinterpret_cast<T*>(ssl_core_dynamic_shared);
#endif
}

// float4 access: a pointer on a 16-byte boundary; a rows view whose every
// row starts on one and holds whole groups of 4.
inline bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

template <class T>
bool vectorizable(const RowsViewT<T>& v) {
  return aligned16(v.data) && v.cols % 4 == 0 && (v.rows <= 1 || v.row_stride % 4 == 0);
}

// kWidth (1 or 4) consecutive floats at p, as one float4 access when 4.
template <int kWidth>
__device__ __forceinline__ void load_floats(float* out, const float* p) {
  if constexpr (kWidth == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
    out[0] = *p;
  }
}

template <int kWidth>
__device__ __forceinline__ void store_floats(float* p, const float* in) {
  if constexpr (kWidth == 4)
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
  else
    *p = in[0];
}

// float32 to and from the 16-bit types of the tensor-core kernels.
template <class T>
struct Convert;
template <>
struct Convert<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// Four 16-bit values, one 8-byte store.
template <class T>
struct alignas(8) Four {
  T v[4];
};

template <class T>
__device__ __forceinline__ Four<T> four(float a, float b, float c, float d) {
  return Four<T>{{Convert<T>::from_float(a), Convert<T>::from_float(b), Convert<T>::from_float(c),
                  Convert<T>::from_float(d)}};
}

constexpr unsigned kFullWarp = 0xffffffffu;

// Sum / max over the 32 lanes of a full warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(kFullWarp, value, offset));
  return value;
}

}  // namespace ssl_core::cuda
