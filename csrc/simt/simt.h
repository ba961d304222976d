// A CPU emulator of the CUDA execution model, enough to run our unmodified
// .cu kernels with the host compiler (the build includes this header first,
// with SSL_CORE_SIMT defined, in place of the CUDA toolkit's headers).
//
// Model: a grid runs one block at a time on the calling OS thread; each CUDA
// thread of the block is a fiber with its own stack, resumed in a fixed
// round-robin order, so runs are deterministic. A thread runs until it waits:
// at __syncthreads (released when every thread of the block waits at the same
// call site, exited threads counting as arrived) or at a warp collective
// (completed by the last lane of its mask to arrive, which computes every
// lane's result). What a GPU would leave undefined is reported as an error
// instead (simt::KernelFault): a divergent barrier, a lane missing from its
// own mask or a mask naming an exited lane, mismatched collectives, a
// deadlock (with every thread's wait site), a write outside the dynamic
// shared memory. Races do not fault; they show as results that change with
// set_schedule(Schedule::reverse), which runs blocks and threads backwards.
//
// Never defines __CUDACC__ or __CUDA_ARCH__: code that needs them is code the
// emulator cannot run.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define SSL_CORE_SIMT 1

// ---------------------------------------------------------------------------
// Qualifiers. __shared__ variables are thread_local: static storage that
// every fiber of the block (one OS thread) sees, and other OS threads running
// grids of their own do not.
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

// ---------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// The runtime API subset the launchers use
// ---------------------------------------------------------------------------
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
template <class T>
cudaError_t cudaMallocAsync(T** pointer, size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(pointer), bytes, stream);
}
template <class T>
cudaError_t cudaMalloc(T** pointer, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(pointer), bytes);
}

namespace simt {

// Thrown by launch() when a kernel does something a GPU leaves undefined.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { forward, reverse };
void set_schedule(Schedule schedule);
Schedule schedule();
// Strict barriers: a thread that exits while others wait at __syncthreads is
// a fault (on a GPU this is legal only since Volta, and a common bug source).
void set_strict_barriers(bool strict);

extern thread_local const uint3* current_thread_index;
extern thread_local uint3 block_index;
extern thread_local dim3 block_dim, grid_dim;

unsigned char* dynamic_shared_memory();
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// The current thread's part of each collective. `value` is the raw bits of the
// lane's operand (up to 8 bytes); `arg` the source lane, delta or lane mask.
enum class Collective { syncwarp, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, matrix };
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line);
void sync_threads(const char* file, int line, int column);
// A whole-warp matrix operation (wmma.h): once all 32 lanes have arrived,
// complete(payloads) runs once with every lane's payload, indexed by lane.
void warp_matrix_op(void* payload, void (*complete)(void* const* payloads), const char* file, int line);
// Stops the calling CUDA thread with a fault (an emulated device-side error).
[[noreturn]] void kernel_fault(const std::string& message);

// Runs `body` once per thread of each block of `grid`.
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t /*stream*/,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  // Arguments are converted to the parameter types once, as a launch does.
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes,
           [&] { std::apply(kernel, params); });
}

template <class T>
uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp collectives move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <class T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace simt

template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return simt::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}

#define threadIdx (*::simt::current_thread_index)
#define blockIdx (::simt::block_index)
#define blockDim (::simt::block_dim)
#define gridDim (::simt::grid_dim)

// ---------------------------------------------------------------------------
// Synchronization and warp collectives. The default arguments record the
// caller's source position for error reports.
// ---------------------------------------------------------------------------
#if defined(__has_builtin) && __has_builtin(__builtin_COLUMN)
#define SIMT_COLUMN __builtin_COLUMN()
#else
#define SIMT_COLUMN 0  // GCC: two barriers on one line count as one site
#endif
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE(),
                          int column = SIMT_COLUMN) {
  simt::sync_threads(file, line, column);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  simt::warp_collective(simt::Collective::syncwarp, mask, 0, 0, warpSize, file, line);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

#define SIMT_SHUFFLE(name, kind)                                                                      \
  template <class T>                                                                                  \
  T name(unsigned mask, T var, int arg, int width = warpSize, const char* file = __builtin_FILE(),   \
         int line = __builtin_LINE()) {                                                               \
    return simt::from_bits<T>(simt::warp_collective(kind, mask, simt::to_bits(var), arg, width, file, line)); \
  }
SIMT_SHUFFLE(__shfl_sync, simt::Collective::shfl_idx)
SIMT_SHUFFLE(__shfl_up_sync, simt::Collective::shfl_up)
SIMT_SHUFFLE(__shfl_down_sync, simt::Collective::shfl_down)
SIMT_SHUFFLE(__shfl_xor_sync, simt::Collective::shfl_xor)
#undef SIMT_SHUFFLE

inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(
      simt::warp_collective(simt::Collective::ballot, mask, predicate != 0, 0, warpSize, file, line));
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(simt::warp_collective(simt::Collective::any, mask, predicate != 0, 0, warpSize, file, line));
}
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(simt::warp_collective(simt::Collective::all, mask, predicate != 0, 0, warpSize, file, line));
}

// ---------------------------------------------------------------------------
// Atomics. The threads of a grid share one OS thread and are never preempted
// inside a call; the __atomic builtins are for ThreadSanitizer, which sees
// each CUDA thread as a thread of its own and would flag plain updates.
// ---------------------------------------------------------------------------
template <class T, class Update>
T simt_atomic_update(T* address, Update update) {
  T old, desired;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    desired = update(old);
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}
template <class T>
T atomicAdd(T* address, T value) {
  return simt_atomic_update(address, [value](T old) { return static_cast<T>(old + value); });
}
template <class T>
T atomicMax(T* address, T value) {
  return simt_atomic_update(address, [value](T old) { return old < value ? value : old; });
}
template <class T>
T atomicMin(T* address, T value) {
  return simt_atomic_update(address, [value](T old) { return value < old ? value : old; });
}
template <class T>
T atomicExch(T* address, T value) {
  return simt_atomic_update(address, [value](T) { return value; });
}
template <class T>
T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange(address, &compare, &value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value, whether or not it was replaced
}

// ---------------------------------------------------------------------------
// Device intrinsics, computed on the host. Fast-math variants are exact here,
// so tests compare with tolerances, never bit for bit against a GPU.
// ---------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp2f(float x) { return exp2f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline int __float_as_int(float x) { return simt::from_bits<int>(simt::to_bits(x)); }
inline float __int_as_float(int x) { return simt::from_bits<float>(simt::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return simt::from_bits<unsigned>(simt::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return simt::from_bits<float>(simt::to_bits(x)); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <class T>
T __ldg(const T* pointer) {
  return *pointer;
}
inline int max(int a, int b) { return a < b ? b : a; }
inline int min(int a, int b) { return b < a ? b : a; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return b < a ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return b < a ? b : a; }
inline long max(long a, long b) { return a < b ? b : a; }
inline long min(long a, long b) { return b < a ? b : a; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(double a, double b) { return fmin(a, b); }

#include "simt/half.h"
#include "simt/wmma.h"
