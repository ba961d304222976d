// Fibers for the emulator: one per CUDA thread, each with its own stack.
//
// On x86-64 a fiber switch saves the callee-saved registers and the stack
// pointer and loads another's (fiber.cpp, a few instructions): ucontext's
// swapcontext also saves the signal mask with a system call each switch. The
// float32 attention tests (test_cuda_attention.py and _backward.py, pytest and all) took
// 13-14 s with the former and 27-31 s with the latter here. ucontext is the
// portable fallback (-DSIMT_UCONTEXT=1), and what the sanitizer builds use,
// with the fiber annotations AddressSanitizer and ThreadSanitizer need.
#pragma once

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#endif
// SIMT_TSAN=1 is also set by hand for the scheduler compiled without
// instrumentation into a ThreadSanitizer program (see CMakeLists.txt).
#if defined(__SANITIZE_THREAD__) && !defined(SIMT_TSAN)
#define SIMT_TSAN 1
#endif
#if !defined(SIMT_UCONTEXT) && (!defined(__x86_64__) || defined(SIMT_ASAN) || defined(SIMT_TSAN))
#define SIMT_UCONTEXT 1
#endif
#if SIMT_UCONTEXT
#include <ucontext.h>
#endif

namespace simt {

// An mmap'ed stack with an inaccessible guard page below it, so that a
// kernel overflowing its stack faults at once instead of corrupting another.
struct FiberStack {
  static constexpr size_t kBytes = 256 * 1024;
  FiberStack();
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  unsigned char* base = nullptr;  // lowest usable byte
};

struct Fiber {
  Fiber() = default;
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  ~Fiber();
  FiberStack* stack = nullptr;  // null for the scheduler, which runs on the OS thread's stack
#if SIMT_UCONTEXT
  ucontext_t context;
#else
  void* sp = nullptr;
#endif
  void* tsan_fiber = nullptr;  // ThreadSanitizer's record of this fiber
};

// The scheduler's fiber: the OS thread it is called on.
void init_scheduler_fiber(Fiber& scheduler);
// Prepares `fiber` to run entry() from the top of its stack on the next switch.
void start_fiber(Fiber& fiber, void (*entry)());
// Saves the running context in `from` and resumes `to`. A switch to a fiber
// (not the scheduler) is a happens-before edge for ThreadSanitizer; a switch
// back to the scheduler is not, so that CUDA threads are ordered only by
// what orders them on a GPU (barriers, warp collectives, atomics).
void switch_fiber(Fiber& from, Fiber& to);

// ThreadSanitizer happens-before annotations on an address (no-ops otherwise).
void happens_before(const void* address);
void happens_after(const void* address);

}  // namespace simt
