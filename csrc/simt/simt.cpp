// The emulator's scheduler: fibers, barriers, warp collectives, dynamic
// shared memory and the runtime API subset (see simt.h for the model).
#include "simt/simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

#include "simt/fiber.h"

#if SIMT_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace simt {

thread_local const uint3* current_thread_index = nullptr;
thread_local uint3 block_index{0, 0, 0};
thread_local dim3 block_dim, grid_dim;

namespace {

constexpr size_t kDefaultDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxDynamicShared = 163 * 1024;     // A100 (sm_80), the smaller of our targets
constexpr size_t kGuardBytes = 64;                   // around the dynamic shared memory
constexpr unsigned char kGuardByte = 0xA5, kPoisonByte = 0xFF;  // 0xFFFFFFFF is a NaN

std::atomic<Schedule> g_schedule{Schedule::forward};
std::atomic<bool> g_strict_barriers{false};
std::mutex g_attributes_mutex;
std::map<const void*, size_t> g_max_dynamic_shared;

enum class State { runnable, at_barrier, at_warp, done };

struct Thread {
  Fiber fiber;
  uint3 index{};
  int linear = 0;
  State state = State::runnable;
  const char* file = nullptr;  // where it waits
  int line = 0, column = 0;
  // Its part of a warp collective while waiting.
  Collective kind = Collective::syncwarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 0;
  void (*complete)(void* const*) = nullptr;  // of a matrix operation
};

struct Block {
  std::vector<Thread> threads;
  const std::function<void()>* body = nullptr;
  Fiber scheduler;
  Thread* current = nullptr;
  std::string fault;  // set by a thread; the scheduler throws it
  unsigned char* dynamic_shared = nullptr;
};

thread_local Block* t_block = nullptr;
thread_local std::vector<std::unique_ptr<FiberStack>> t_stacks;  // reused across launches
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_last_message;

std::string where(const char* file, int line, int column = 0) {
  std::string f = file ? file : "?";
  const size_t slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(line) + (column ? ":" + std::to_string(column) : "");
}

std::string thread_name(const Thread& t) {
  std::ostringstream s;
  s << "thread (" << t.index.x << "," << t.index.y << "," << t.index.z << ")";
  return s.str();
}

const char* collective_name(Collective kind) {
  switch (kind) {
    case Collective::syncwarp: return "__syncwarp";
    case Collective::shfl_idx: return "__shfl_sync";
    case Collective::shfl_up: return "__shfl_up_sync";
    case Collective::shfl_down: return "__shfl_down_sync";
    case Collective::shfl_xor: return "__shfl_xor_sync";
    case Collective::ballot: return "__ballot_sync";
    case Collective::any: return "__any_sync";
    case Collective::all: return "__all_sync";
    case Collective::matrix: return "a wmma operation";
  }
  return "?";
}

std::string wait_site(const Thread& t) {
  char mask[16];
  std::snprintf(mask, sizeof mask, "0x%08x", t.mask);
  switch (t.state) {
    case State::runnable: return "runnable";
    case State::done: return "exited";
    case State::at_barrier: return "at __syncthreads (" + where(t.file, t.line) + ")";
    case State::at_warp:
      return std::string("at ") + collective_name(t.kind) + "(mask " + mask + ") (" + where(t.file, t.line) + ")";
  }
  return "?";
}

// Every thread's state, consecutive threads in the same state on one line.
std::string thread_report(const Block& block) {
  std::ostringstream s;
  const auto& ts = block.threads;
  for (size_t i = 0; i < ts.size();) {
    size_t j = i + 1;
    while (j < ts.size() && wait_site(ts[j]) == wait_site(ts[i])) ++j;
    s << "\n  threads " << i << "-" << j - 1 << " " << wait_site(ts[i]);
    i = j;
  }
  return s.str();
}

// Called on a thread's fiber: stop it for good and hand the fault to the
// scheduler, which abandons the block and throws.
[[noreturn]] void fault(const std::string& message) {
  Block& block = *t_block;
  block.fault = message;
  Thread* self = block.current;
  switch_fiber(self->fiber, block.scheduler);
  std::abort();  // never resumed
}

// Hands control back to the scheduler until this thread is runnable again.
void wait() {
  Block& block = *t_block;
  switch_fiber(block.current->fiber, block.scheduler);
}

void thread_main() {
  Block& block = *t_block;
  Thread* self = block.current;
  (*block.body)();
  happens_before(&block.body);  // orders the block before the next one and the host (run_grid)
  self->state = State::done;
  switch_fiber(self->fiber, block.scheduler);
  std::abort();  // never resumed
}

int lanes_in_warp(const Block& block, int warp) {
  return std::min<int>(32, static_cast<int>(block.threads.size()) - warp * 32);
}

// The source lane of `lane`'s shuffle, or -1 for "keep its own value" (PTX
// shfl clamping: a source outside the lane's segment of `width` lanes).
int shuffle_source(const Thread& t, int lane) {
  const int segment = lane & ~(t.width - 1);
  switch (t.kind) {
    case Collective::shfl_idx: return segment + (t.arg & (t.width - 1));
    case Collective::shfl_up: {
      const int src = lane - t.arg;
      return src < segment ? -1 : src;
    }
    case Collective::shfl_down: {
      const int src = lane + t.arg;
      return src >= segment + t.width ? -1 : src;
    }
    case Collective::shfl_xor: {
      const int src = lane ^ t.arg;
      return src >= segment + t.width ? -1 : src;
    }
    default: return -1;
  }
}

// The last lane of a collective arrived: check that the lanes agree and give
// each its result.
void complete_collective(Block& block, int warp, unsigned mask) {
  Thread* lanes = &block.threads[warp * 32];
  const Thread& first = *block.current;
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) {
      const Thread& t = lanes[l];
      if (t.kind != first.kind || t.mask != first.mask || t.width != first.width || t.complete != first.complete)
        fault("mismatched warp collectives in warp " + std::to_string(warp) + ": lane " + std::to_string(l) + " " +
              wait_site(t) + ", lane " + std::to_string(first.linear % 32) + " " + wait_site(first));
      if (t.value) ballot |= 1u << l;
    }
  if (first.kind == Collective::matrix) {
    void* payloads[32];
    for (int l = 0; l < 32; ++l) payloads[l] = reinterpret_cast<void*>(lanes[l].value);
    first.complete(payloads);
  }
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    Thread& t = lanes[l];
    switch (t.kind) {
      case Collective::matrix: t.result = 0; break;
      case Collective::syncwarp: t.result = 0; break;
      case Collective::ballot: t.result = ballot; break;
      case Collective::any: t.result = ballot != 0; break;
      case Collective::all: t.result = ballot == mask; break;
      default: {
        const int src = shuffle_source(t, l);
        if (src >= 0 && !(mask >> src & 1))
          fault(std::string(collective_name(t.kind)) + " in warp " + std::to_string(warp) + ": lane " +
                std::to_string(l) + " reads lane " + std::to_string(src) + ", which is not in the mask (" +
                where(t.file, t.line) + ")");
        t.result = src < 0 ? t.value : lanes[src].value;
      }
    }
  }
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1) lanes[l].state = State::runnable;
}

void check_launch_configuration(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  std::ostringstream problem;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64)
    problem << "block (" << block.x << "," << block.y << "," << block.z << ") has " << threads
            << " threads; 1 to 1024 (z at most 64) are allowed";
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u)
    problem << "grid (" << grid.x << "," << grid.y << "," << grid.z << ") is empty or too large";
  else {
    size_t allowed = kDefaultDynamicShared;
    std::lock_guard<std::mutex> lock(g_attributes_mutex);
    auto it = g_max_dynamic_shared.find(kernel);
    if (it != g_max_dynamic_shared.end()) allowed = it->second;
    if (shared_bytes > allowed)
      problem << shared_bytes << " bytes of dynamic shared memory requested, " << allowed
              << " allowed (above 48 KB, raise cudaFuncAttributeMaxDynamicSharedMemorySize first)";
  }
  if (!problem.str().empty()) {
    t_last_error = cudaErrorInvalidConfiguration;
    t_last_message = "invalid configuration argument: " + problem.str();
  }
}

// `exited` has just exited: no lane may be waiting for it in a collective.
void check_waiting_lanes(const Block& block, const Thread& exited) {
  const int warp = exited.linear / 32, lane = exited.linear % 32;
  for (int l = 0; l < lanes_in_warp(block, warp); ++l) {
    const Thread& t = block.threads[warp * 32 + l];
    if (t.state == State::at_warp && (t.mask >> lane & 1))
      throw KernelFault(std::string(collective_name(t.kind)) + " at " + where(t.file, t.line) + " in warp " +
                        std::to_string(warp) + ": mask names lane " + std::to_string(lane) + ", which has exited");
  }
}

// Under AddressSanitizer the guard bytes around the dynamic shared memory
// are poisoned while a block runs, so that reads past it are caught too (the
// guard pattern, checked after each block, catches writes in every build).
struct SharedGuards {
  explicit SharedGuards(std::vector<unsigned char>& shared) : bytes(shared) {
#if SIMT_ASAN
    ASAN_POISON_MEMORY_REGION(bytes.data(), kGuardBytes);
    ASAN_POISON_MEMORY_REGION(bytes.data() + bytes.size() - kGuardBytes, kGuardBytes);
#endif
  }
  ~SharedGuards() {
#if SIMT_ASAN
    ASAN_UNPOISON_MEMORY_REGION(bytes.data(), bytes.size());
#endif
  }
  std::vector<unsigned char>& bytes;
};

// Runs every thread of one block to its end.
void run_block(Block& block) {
  const bool reverse = g_schedule.load() == Schedule::reverse;
  const int n = static_cast<int>(block.threads.size());
  for (Thread& t : block.threads) {
    t.state = State::runnable;
    start_fiber(t.fiber, &thread_main);
  }
  for (;;) {
    bool ran = false;
    for (int k = 0; k < n; ++k) {
      Thread& t = block.threads[reverse ? n - 1 - k : k];
      if (t.state != State::runnable) continue;
      block.current = &t;
      current_thread_index = &t.index;
      switch_fiber(block.scheduler, t.fiber);
      ran = true;
      if (!block.fault.empty()) throw KernelFault(block.fault);
      if (t.state == State::done) check_waiting_lanes(block, t);
    }
    int done = 0, at_barrier = 0;
    for (const Thread& t : block.threads) {
      done += t.state == State::done;
      at_barrier += t.state == State::at_barrier;
    }
    if (done == n) return;
    if (at_barrier > 0 && at_barrier + done == n) {
      const Thread* first = nullptr;
      for (const Thread& t : block.threads) {
        if (t.state != State::at_barrier) continue;
        if (!first) first = &t;
        if (t.line != first->line || t.column != first->column || std::strcmp(t.file, first->file) != 0)
          throw KernelFault("divergent __syncthreads: " + thread_name(*first) + " waits at " +
                            where(first->file, first->line, first->column) + ", " + thread_name(t) + " at " +
                            where(t.file, t.line, t.column));
      }
      if (done > 0 && g_strict_barriers.load())
        throw KernelFault("__syncthreads at " + where(first->file, first->line) + " reached after " +
                          std::to_string(done) + " threads exited (strict barriers)" + thread_report(block));
      for (Thread& t : block.threads)
        if (t.state == State::at_barrier) t.state = State::runnable;
      continue;
    }
    if (!ran) throw KernelFault("deadlock: no thread can go on" + thread_report(block));
  }
}

}  // namespace

void set_schedule(Schedule schedule) { g_schedule = schedule; }
Schedule schedule() { return g_schedule.load(); }
void set_strict_barriers(bool strict) { g_strict_barriers = strict; }

unsigned char* dynamic_shared_memory() { return t_block->dynamic_shared; }

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxDynamicShared) {
    t_last_error = cudaErrorInvalidValue;
    t_last_message = "invalid argument: " + std::to_string(bytes) + " bytes of dynamic shared memory exceed the " +
                     std::to_string(kMaxDynamicShared) + " of an sm_80 block";
    return t_last_error;
  }
  std::lock_guard<std::mutex> lock(g_attributes_mutex);
  g_max_dynamic_shared[kernel] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

void kernel_fault(const std::string& message) { fault(message); }

void sync_threads(const char* file, int line, int column) {
  Block& block = *t_block;
  Thread& self = *block.current;
  self.state = State::at_barrier;
  self.file = file;
  self.line = line;
  self.column = column;
  happens_before(&block.scheduler);  // the barrier orders what every thread did before it
  wait();
  happens_after(&block.scheduler);
}

void warp_matrix_op(void* payload, void (*complete)(void* const*), const char* file, int line) {
  const Block& block = *t_block;
  const int warp = block.current->linear / 32;
  if (lanes_in_warp(block, warp) < 32)
    fault("wmma at " + where(file, line) + " in warp " + std::to_string(warp) +
          ": matrix operations need a whole warp, and the block's last warp has " +
          std::to_string(lanes_in_warp(block, warp)) + " threads");
  block.current->complete = complete;
  warp_collective(Collective::matrix, 0xffffffffu, reinterpret_cast<uintptr_t>(payload), 0, 32, file, line);
}

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line) {
  Block& block = *t_block;
  Thread& self = *block.current;
  if (kind != Collective::matrix) self.complete = nullptr;
  const int warp = self.linear / 32, lane = self.linear % 32;
  // Built only for a report: this runs on every shuffle.
  auto site = [&] {
    return std::string(collective_name(kind)) + " at " + where(file, line) + " in warp " + std::to_string(warp) +
           ": ";
  };
  if (!(mask >> lane & 1)) fault(site() + "lane " + std::to_string(lane) + " calls it but is not in its mask");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fault(site() + "width " + std::to_string(width) + " is not a power of two in [1, 32]");
  const int lanes = lanes_in_warp(block, warp);
  if (lanes < 32 && (mask >> lanes) != 0)
    fault(site() + "mask names lanes past the block's last thread (the warp has " + std::to_string(lanes) + ")");
  self.kind = kind;
  self.mask = mask;
  self.value = value;
  self.arg = arg;
  self.width = width;
  self.file = file;
  self.line = line;
  self.state = State::at_warp;
  const void* warp_order = &block.threads[warp * 32];  // the ThreadSanitizer sync object of this warp
  happens_before(warp_order);
  bool all_arrived = true;
  for (int l = 0; l < lanes; ++l) {
    if (!(mask >> l & 1)) continue;
    const Thread& t = block.threads[warp * 32 + l];
    if (t.state == State::done) fault(site() + "mask names lane " + std::to_string(l) + ", which has exited");
    if (t.state != State::at_warp) all_arrived = false;
  }
  if (all_arrived)
    complete_collective(block, warp, mask);
  else
    wait();
  happens_after(warp_order);
  return self.result;
}

void run_grid(const void* kernel, dim3 grid, dim3 block_shape, size_t shared_bytes,
              const std::function<void()>& body) {
  check_launch_configuration(kernel, grid, block_shape, shared_bytes);
  if (t_last_error != cudaSuccess) return;
  if (t_block) throw KernelFault("a kernel launched another kernel (dynamic parallelism is not emulated)");

  const int n = static_cast<int>(block_shape.x * block_shape.y * block_shape.z);
  while (static_cast<int>(t_stacks.size()) < n) t_stacks.push_back(std::make_unique<FiberStack>());
  Block block;
  block.body = &body;
  block.threads = std::vector<Thread>(n);
  init_scheduler_fiber(block.scheduler);
  for (int i = 0; i < n; ++i) {
    Thread& t = block.threads[i];
    t.linear = i;
    t.index = {i % block_shape.x, (i / block_shape.x) % block_shape.y, i / (block_shape.x * block_shape.y)};
    t.fiber.stack = t_stacks[i].get();
  }
  // The dynamic shared memory, between guard bytes that must stay intact.
  std::vector<unsigned char> shared(shared_bytes + 2 * kGuardBytes);
  block.dynamic_shared = shared.data() + kGuardBytes;

  struct Restore {
    ~Restore() {
      t_block = nullptr;
      current_thread_index = nullptr;
    }
  } restore;
  t_block = &block;
  grid_dim = grid;
  block_dim = block_shape;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const bool reverse = g_schedule.load() == Schedule::reverse;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = reverse ? blocks - 1 - k : k;
    block_index = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                   static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
#if SIMT_TSAN
    // Fresh stacks for every block: a reused stack's old frames would look
    // like another fiber's writes (ThreadSanitizer forgets unmapped memory).
    if (k > 0)
      for (int i = 0; i < n; ++i) {
        t_stacks[i] = std::make_unique<FiberStack>();
        block.threads[i].fiber.stack = t_stacks[i].get();
      }
#endif
    std::fill(shared.begin(), shared.end(), kGuardByte);
    std::fill(shared.begin() + kGuardBytes, shared.end() - kGuardBytes, kPoisonByte);
    {
      SharedGuards guards(shared);
      run_block(block);
    }
    // ThreadSanitizer sees the blocks of a grid as ordered, one after the
    // other: static __shared__ arrays (thread-local here) are the same memory
    // for every block and would look shared between them. Races between
    // blocks show instead as results that change with the schedule.
    happens_after(&block.body);
    for (size_t i = 0; i < kGuardBytes; ++i)
      if (shared[i] != kGuardByte || shared[shared.size() - 1 - i] != kGuardByte)
        throw KernelFault("block (" + std::to_string(block_index.x) + "," + std::to_string(block_index.y) + "," +
                          std::to_string(block_index.z) + ") wrote outside its " + std::to_string(shared_bytes) +
                          " bytes of dynamic shared memory");
  }
}

}  // namespace simt

// ---------------------------------------------------------------------------
// Runtime API: device memory is host memory; streams are ignored (every call
// completes before it returns, which is one valid ordering of a stream).
// ---------------------------------------------------------------------------
using simt::t_last_error;
using simt::t_last_message;

cudaError_t cudaGetLastError() {
  const cudaError_t error = t_last_error;
  t_last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return t_last_message.empty() ? "invalid argument" : t_last_message.c_str();
  }
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  // Fresh device memory is not zeroed on a GPU: poison it so that a kernel
  // reading what it never wrote gets NaNs rather than a lucky zero.
  *pointer = bytes ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr;
  if (bytes && !*pointer) return t_last_error = cudaErrorMemoryAllocation;
  if (bytes) std::memset(*pointer, 0xFF, bytes);
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** pointer, size_t bytes, cudaStream_t) { return cudaMalloc(pointer, bytes); }
cudaError_t cudaFreeAsync(void* pointer, cudaStream_t) { return cudaFree(pointer); }

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
