// The module ssl_core._simt: the CUDA kernels of csrc/cuda/ run on the CPU
// emulator of csrc/simt/, with the bindings of ssl_core._C.cuda (NumPy arrays
// stand in for device arrays), plus the emulator's own controls and
// self-tests. Made for the test suite; it runs every kernel one simulated
// thread at a time, so it is slow.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>

#include "device_arrays.h"
#include "simt/self_test.h"
#include "simt/simt.h"

namespace py = pybind11;

namespace {

void set_schedule(const std::string& name) {
  if (name == "forward")
    simt::set_schedule(simt::Schedule::forward);
  else if (name == "reverse")
    simt::set_schedule(simt::Schedule::reverse);
  else
    throw py::value_error("schedule must be 'forward' or 'reverse', got '" + name + "'");
}

using Ints = py::array_t<int, py::array::c_style | py::array::forcecast>;

py::array_t<int> warp_collective(const std::string& kind, Ints values, unsigned mask, int arg, int width, int fill) {
  if (values.ndim() != 1 || values.shape(0) != 32) throw py::value_error("values must have shape (32,)");
  py::array_t<int> results(32);
  std::fill(results.mutable_data(), results.mutable_data() + 32, fill);
  simt_self_test::warp_collective(kind.c_str(), values.data(), results.mutable_data(), mask, arg, width);
  return results;
}

float block_sum(py::array_t<float, py::array::c_style | py::array::forcecast> x, int threads, bool with_barrier) {
  return simt_self_test::block_sum(x.data(), static_cast<int>(x.size()), threads, with_barrier);
}

using Bits = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;
using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::array_t<float> wmma_gemm(Bits a, Bits b_transposed, Floats c, bool bfloat16, bool assume_layout) {
  for (auto* array : {static_cast<py::array*>(&a), static_cast<py::array*>(&b_transposed), static_cast<py::array*>(&c)})
    if (array->size() != 256) throw py::value_error("a, b_transposed and c must have 256 elements (16 x 16)");
  py::array_t<float> d({16, 16});
  simt_self_test::wmma_gemm(a.data(), b_transposed.data(), c.data(), d.mutable_data(), bfloat16, assume_layout);
  return d;
}

py::array_t<uint16_t> to_half(Floats x, bool bfloat16) {
  py::array_t<uint16_t> bits(x.size());
  simt_self_test::to_half(x.data(), bits.mutable_data(), static_cast<int>(x.size()), bfloat16);
  return bits;
}

py::array_t<float> from_half(Bits bits, bool bfloat16) {
  py::array_t<float> x(bits.size());
  simt_self_test::from_half(bits.data(), x.mutable_data(), static_cast<int>(bits.size()), bfloat16);
  return x;
}

}  // namespace

PYBIND11_MODULE(_simt, m) {
  m.doc() = "ssl_core's CUDA kernels on the CPU SIMT emulator (for tests; see csrc/simt/simt.h)";
  py::register_exception<simt::KernelFault>(m, "KernelFault", PyExc_RuntimeError);

  m.def("set_schedule", &set_schedule, py::arg("name"),
        "Run blocks and threads 'forward' (the default) or in 'reverse' order; a race shows as a difference.");
  m.def("get_schedule", [] { return simt::schedule() == simt::Schedule::forward ? "forward" : "reverse"; });
  m.def("set_strict_barriers", &simt::set_strict_barriers, py::arg("strict"),
        "Fault when a thread exits while others wait at __syncthreads.");

  ssl_core::bindings::bind_device_norm(m);
  ssl_core::bindings::bind_device_attention(m);
  ssl_core::bindings::bind_device_loss(m);

  py::module_ self_test = m.def_submodule("self_test", "Kernels that test the emulator itself");
  self_test.def("warp_collective", &warp_collective, py::arg("kind"), py::arg("values"), py::arg("mask"),
                py::arg("arg") = 0, py::arg("width") = 32, py::arg("fill") = -1);
  self_test.def("block_sum", &block_sum, py::arg("x"), py::arg("threads"), py::arg("with_barrier"));
  self_test.def("divergent_barrier", &simt_self_test::divergent_barrier);
  self_test.def("lane_outside_mask", &simt_self_test::lane_outside_mask);
  self_test.def("exited_lane_in_mask", &simt_self_test::exited_lane_in_mask);
  self_test.def("source_lane_outside_mask", &simt_self_test::source_lane_outside_mask);
  self_test.def("mismatched_collectives", &simt_self_test::mismatched_collectives);
  self_test.def("deadlock", &simt_self_test::deadlock);
  self_test.def("dynamic_shared_overflow", &simt_self_test::dynamic_shared_overflow, py::arg("bytes"));
  self_test.def("too_much_dynamic_shared", &simt_self_test::too_much_dynamic_shared);
  self_test.def("exit_before_barrier", &simt_self_test::exit_before_barrier);
  self_test.def("wmma_gemm", &wmma_gemm, py::arg("a"), py::arg("b_transposed"), py::arg("c"), py::arg("bfloat16"),
                py::arg("assume_layout") = false);
  self_test.def("wmma_misaligned", &simt_self_test::wmma_misaligned);
  self_test.def("to_half", &to_half, py::arg("x"), py::arg("bfloat16"));
  self_test.def("from_half", &from_half, py::arg("bits"), py::arg("bfloat16"));
}
