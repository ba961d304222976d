// Runtime settings: instruction-set selection and thread count.
#include "ssl_core/runtime.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ssl_core {
namespace {

bool cpu_has(CpuIsa isa) {
#if SSL_CORE_X86 && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  switch (isa) {
    case CpuIsa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    default:
      return true;
  }
#else
  return isa == CpuIsa::reference || isa == CpuIsa::portable;
#endif
}

int default_threads() {
  if (const char* env = std::getenv("SSL_CORE_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) return static_cast<int>(n);
    throw std::invalid_argument(std::string("SSL_CORE_NUM_THREADS must be a whole number >= 1, got '") +
                                env + "'");
  }
#ifdef _OPENMP
  return omp_get_num_procs();  // respects the process's CPU affinity
#else
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
#endif
}

CpuIsa default_isa() {
  if (const char* env = std::getenv("SSL_CORE_CPU_ISA")) {
    std::string name(env);
    if (!name.empty() && name != "auto") {
      CpuIsa isa = isa_from_name(name);
      if (!isa_supported(isa))
        throw std::invalid_argument("SSL_CORE_CPU_ISA=" + name + " is not supported on this machine");
      return isa;
    }
  }
  return best_supported_isa();
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

std::atomic<int>& isa_setting() {
  static std::atomic<int> isa{static_cast<int>(default_isa())};
  return isa;
}

}  // namespace

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::reference: return "reference";
    case CpuIsa::portable: return "portable";
    case CpuIsa::avx2: return "avx2";
    case CpuIsa::avx512: return "avx512";
  }
  return "unknown";
}

CpuIsa isa_from_name(const std::string& name) {
  for (CpuIsa isa : {CpuIsa::reference, CpuIsa::portable, CpuIsa::avx2, CpuIsa::avx512})
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("unknown CPU code path '" + name +
                              "': expected 'reference', 'portable', 'avx2' or 'avx512'");
}

bool isa_supported(CpuIsa isa) {
#if !SSL_CORE_X86
  if (isa == CpuIsa::avx2 || isa == CpuIsa::avx512) return false;
#endif
  return cpu_has(isa);
}

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> out;
  for (CpuIsa isa : {CpuIsa::reference, CpuIsa::portable, CpuIsa::avx2, CpuIsa::avx512})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

CpuIsa best_supported_isa() { return supported_isas().back(); }

CpuIsa active_isa() { return static_cast<CpuIsa>(isa_setting().load(std::memory_order_relaxed)); }

void set_active_isa(CpuIsa isa) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("CPU code path '") + isa_name(isa) +
                                "' is not supported on this machine");
  isa_setting().store(static_cast<int>(isa));
}

int num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
  thread_setting().store(n);
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int threads_in_region() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

bool prefer_streaming_stores(int64_t output_bytes) {
  static const int64_t l2_bytes = [] {
#ifdef _SC_LEVEL2_CACHE_SIZE
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 > 0) return static_cast<int64_t>(l2);
#endif
    return static_cast<int64_t>(1) << 20;
  }();
  return output_bytes > l2_bytes * num_threads();
}

int threads_for(int64_t work_items, int64_t min_items_per_thread) {
  int64_t useful = work_items / (min_items_per_thread > 0 ? min_items_per_thread : 1);
  int n = num_threads();
  if (useful < n) n = static_cast<int>(useful < 1 ? 1 : useful);
  return n;
}

}  // namespace ssl_core
