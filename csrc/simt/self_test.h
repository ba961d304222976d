// Kernels that test the emulator itself (self_test.cu): warp collectives
// against their specification, and planted bugs it must report. Only built
// into ssl_core._simt. Host pointers throughout: the emulator's device
// memory is host memory.
#pragma once

#include <cstdint>

namespace simt_self_test {

// Each of the 32 lanes of one warp whose bit is set in `mask` calls the
// collective `kind` ("shfl", "shfl_up", "shfl_down", "shfl_xor", "ballot",
// "any", "all", "syncwarp") with values[lane] (a predicate for the votes) and
// `arg` (source lane, delta or lane mask); results[lane] receives its result
// (lanes outside the mask leave theirs untouched).
void warp_collective(const char* kind, const int* values, int* results, unsigned mask, int arg, int width);

// Sum of x (n elements) by one block of `threads` threads through shared
// memory; without the barrier between the writes and the reads, a race.
float block_sum(const float* x, int n, int threads, bool with_barrier);

// One warp computes d = a b + c for 16 x 16 tiles with nvcuda::wmma: a
// row-major, b column-major (so b holds the transpose's rows), as 16-bit bits
// (float16, or bfloat16 when `bfloat16`); c and d float32 row-major. With
// `assume_layout`, d is written from the accumulator fragment as if it had
// the sm_80 register layout, a bug the scrambled fragments must expose.
void wmma_gemm(const uint16_t* a, const uint16_t* b_transposed, const float* c, float* d, bool bfloat16,
               bool assume_layout);
// A wmma load from a pointer that is not 256-bit aligned (a fault).
void wmma_misaligned();
// float32 -> 16-bit bits and back, by the emulator's conversions.
void to_half(const float* x, uint16_t* bits, int n, bool bfloat16);
void from_half(const uint16_t* bits, float* x, int n, bool bfloat16);

// Planted bugs, each launched on a small block; the emulator must throw.
void divergent_barrier();
void lane_outside_mask();   // a lane calls __shfl_xor_sync without its bit
void exited_lane_in_mask();
void source_lane_outside_mask();
void mismatched_collectives();
void deadlock();            // half a warp at a barrier, half at a shuffle naming them
void dynamic_shared_overflow(int bytes);  // writes one float past `bytes`
void too_much_dynamic_shared();           // 64 KB without raising the limit
void exit_before_barrier();               // legal; a fault under strict barriers

// Out-of-bounds shared memory that only the sanitizer builds can see (never
// call these in an unsanitized process: they are undefined behaviour there).
void static_shared_overflow();  // writes one float past a static __shared__ array
float dynamic_shared_overread(int bytes);  // reads one float past the dynamic shared memory

}  // namespace simt_self_test
