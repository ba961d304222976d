// Fiber stacks and switches (see fiber.h).
#include "simt/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

#if SIMT_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#if SIMT_TSAN
extern "C" {
void* __tsan_get_current_fiber();
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
}
#endif

namespace simt {

namespace {

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

#if SIMT_ASAN
// The OS thread's stack, learnt when the first fiber starts on this thread.
thread_local const void* t_scheduler_stack = nullptr;
thread_local size_t t_scheduler_stack_size = 0;
#endif

}  // namespace

FiberStack::FiberStack() {
  const size_t guard = page_size();
  void* memory = mmap(nullptr, kBytes + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  mprotect(memory, guard, PROT_NONE);  // stacks grow down into the guard page
  base = static_cast<unsigned char*>(memory) + guard;
}

FiberStack::~FiberStack() { munmap(base - page_size(), kBytes + page_size()); }

Fiber::~Fiber() {
#if SIMT_TSAN
  if (stack && tsan_fiber) __tsan_destroy_fiber(tsan_fiber);
#endif
}

void init_scheduler_fiber(Fiber& scheduler) {
  scheduler.stack = nullptr;
#if SIMT_TSAN
  scheduler.tsan_fiber = __tsan_get_current_fiber();
#endif
}

void happens_before(const void* address) {
#if SIMT_TSAN
  __tsan_release(const_cast<void*>(address));
#else
  (void)address;
#endif
}

void happens_after(const void* address) {
#if SIMT_TSAN
  __tsan_acquire(const_cast<void*>(address));
#else
  (void)address;
#endif
}

#if SIMT_UCONTEXT

namespace {
thread_local void (*t_entry)() = nullptr;

void fiber_main() {
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &t_scheduler_stack, &t_scheduler_stack_size);
#endif
  t_entry();
}
}  // namespace

void start_fiber(Fiber& fiber, void (*entry)()) {
  t_entry = entry;  // every fiber of a thread runs the same entry
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = fiber.stack->base;
  fiber.context.uc_stack.ss_size = FiberStack::kBytes;
  fiber.context.uc_link = nullptr;  // entries never return
  makecontext(&fiber.context, &fiber_main, 0);
#if SIMT_TSAN
  // A new ThreadSanitizer fiber for every block: blocks run concurrently on
  // a GPU, so thread i of one block is not ordered after thread i of the last.
  if (fiber.tsan_fiber) __tsan_destroy_fiber(fiber.tsan_fiber);
  fiber.tsan_fiber = __tsan_create_fiber(0);
#endif
}

void switch_fiber(Fiber& from, Fiber& to) {
#if SIMT_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, to.stack ? to.stack->base : t_scheduler_stack,
                                 to.stack ? FiberStack::kBytes : t_scheduler_stack_size);
#endif
#if SIMT_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, to.stack ? 0 : 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
  swapcontext(&from.context, &to.context);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

#else

// simt_switch(save, load): push the callee-saved registers, MXCSR and the x87
// control word on the current stack, store its pointer in *save, continue on
// the stack `load` and pop the same from it. simt_fiber_entry is where a new
// fiber starts: r12 holds the entry function, called on an aligned stack.
extern "C" void simt_switch(void** save, void* load);
asm(R"(
  .text
  .globl simt_switch
  .hidden simt_switch
  .type simt_switch, @function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch, .-simt_switch

  .globl simt_fiber_entry
  .hidden simt_fiber_entry
  .type simt_fiber_entry, @function
simt_fiber_entry:
  andq $-16, %rsp
  callq *%r12
  ud2
  .size simt_fiber_entry, .-simt_fiber_entry
)");
extern "C" void simt_fiber_entry();

void start_fiber(Fiber& fiber, void (*entry)()) {
  // The frame simt_switch pops: control words, r15..r12, rbx, rbp, return address.
  auto* top = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(fiber.stack->base) + FiberStack::kBytes) & ~uintptr_t{15});
  uint64_t* sp = top - 8;
  uint32_t mxcsr;
  uint16_t fpu_control;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  sp[0] = mxcsr | uint64_t{fpu_control} << 32;
  sp[1] = sp[2] = sp[3] = 0;                   // r15, r14, r13
  sp[4] = reinterpret_cast<uint64_t>(entry);  // r12
  sp[5] = sp[6] = 0;                           // rbx, rbp
  sp[7] = reinterpret_cast<uint64_t>(&simt_fiber_entry);
  fiber.sp = sp;
}

void switch_fiber(Fiber& from, Fiber& to) { simt_switch(&from.sp, to.sp); }

#endif

}  // namespace simt
