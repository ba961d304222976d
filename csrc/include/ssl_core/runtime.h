// Process-wide runtime settings of the CPU kernels: which implementation runs
// (instruction set) and how many threads they use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssl_core {

// Ordered from the plainest to the fastest.
enum class CpuIsa { reference = 0, portable = 1, avx2 = 2, avx512 = 3 };

const char* isa_name(CpuIsa isa);
CpuIsa isa_from_name(const std::string& name);  // throws std::invalid_argument
bool isa_supported(CpuIsa isa);                 // compiled in and the CPU has it
CpuIsa best_supported_isa();
std::vector<CpuIsa> supported_isas();

// The implementation the dispatching kernels call. Starts as
// SSL_CORE_CPU_ISA from the environment if set, else best_supported_isa().
CpuIsa active_isa();
void set_active_isa(CpuIsa isa);  // throws std::invalid_argument if unsupported

// Threads the CPU kernels use. Starts as SSL_CORE_NUM_THREADS if set, else
// every core this process may run on.
int num_threads();
void set_num_threads(int n);  // throws std::invalid_argument if n < 1
bool openmp_enabled();

// Threads worth starting for `work_items` independent items when one thread
// should get at least `min_items_per_thread` of them.
// (Not inline: the kernels are compiled per instruction set, and an inline
// function shared by those files could be linked in its AVX-512 form.)
int threads_for(int64_t work_items, int64_t min_items_per_thread);

// The calling thread's number inside a parallel region of the kernels, from
// 0; 0 outside one.
int thread_index();
int threads_in_region();  // how many run the current parallel region; 1 outside one

// Whether a kernel writing `output_bytes` should use non-temporal stores: when
// the output cannot stay in the threads' L2 caches anyway, streaming it to
// memory saves the read-for-ownership of every line it writes.
bool prefer_streaming_stores(int64_t output_bytes);

}  // namespace ssl_core
