// One bind_* function per group of ops; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace ssl_core::bindings {

void bind_norm(pybind11::module_& m);
void bind_activation(pybind11::module_& m);
void bind_attention(pybind11::module_& m);
void bind_loss(pybind11::module_& m);
void bind_optimizer(pybind11::module_& m);
void bind_linear(pybind11::module_& m);

}  // namespace ssl_core::bindings
