// The native module ssl_core._C: build facts, runtime settings and the kernels.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"
#include "ssl_core/runtime.h"

#if SSL_CORE_WITH_CUDA
#include "device_arrays.h"
namespace ssl_core::cuda {
int device_count();
}
#endif

namespace py = pybind11;
using namespace ssl_core;

namespace {

std::string compiler_description() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

void copy_memory(py::handle dst_obj, py::handle src_obj) {
  bindings::RowsArg src = bindings::rows_arg(src_obj, "src");
  py::array dst = bindings::output_array(dst_obj, "dst", bindings::shape_of(src.array));
  if (!(src.array.flags() & py::array::c_style)) throw py::value_error("src must be C-contiguous");
  bindings::require_no_overlap({{"dst", dst}}, {{"src", src.array}});
  py::gil_scoped_release release;
  cpu::copy_memory(dst.mutable_data(), src.array.data(), src.array.nbytes());
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ssl_core native kernels (CPU; CUDA when compiled with it)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "ssl_core: out of memory");
    }
  });

  m.attr("__version__") = SSL_CORE_VERSION;
  m.attr("WITH_CUDA") = static_cast<bool>(SSL_CORE_WITH_CUDA);
  m.attr("CUDA_ARCHITECTURES") = std::string(SSL_CORE_CUDA_ARCHITECTURES);  // "" without CUDA
  m.attr("WITH_OPENMP") = openmp_enabled();
  m.attr("COMPILER") = compiler_description();

  m.def("cuda_device_count", [] {
#if SSL_CORE_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
  });

  m.def("get_num_threads", &num_threads, "Threads the CPU kernels use.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Set the threads the CPU kernels use (n >= 1).");
  m.def("get_cpu_isa", [] { return std::string(isa_name(active_isa())); },
        "The CPU code path in use: 'reference', 'portable', 'avx2' or 'avx512'.");
  m.def("set_cpu_isa", [](const std::string& name) { set_active_isa(isa_from_name(name)); },
        py::arg("name"), "Select the CPU code path; it must be one of supported_cpu_isas().");
  m.def("supported_cpu_isas", [] {
    std::vector<std::string> names;
    for (CpuIsa isa : supported_isas()) names.emplace_back(isa_name(isa));
    return names;
  });
  m.def("copy_memory", &copy_memory, py::arg("dst"), py::arg("src"),
        "Multi-threaded copy of src into dst (float32, same shape); measures memory bandwidth.");

  bindings::bind_norm(m);
  bindings::bind_activation(m);
  bindings::bind_attention(m);
  bindings::bind_loss(m);
  bindings::bind_optimizer(m);
  bindings::bind_linear(m);
#if SSL_CORE_WITH_CUDA
  py::module_ cuda = m.def_submodule("cuda", "The CUDA kernels; every array argument a CUDA array");
  bindings::bind_device_norm(cuda);
  bindings::bind_device_attention(cuda);
  bindings::bind_device_loss(cuda);
#endif
}
