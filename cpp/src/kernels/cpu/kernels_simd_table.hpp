// The kernel table of one ISA: every SIMD body of kernels_simd.hpp and attention_simd.hpp
// instantiated over the vector type V that the including translation unit defines.
#pragma once

#include "kernels/cpu/attention_simd.hpp"
#include "kernels/cpu/kernels_simd.hpp"

namespace tierlm::detail {
namespace {

template <class V>
KernelTable make_table() {
  return KernelTable{linear<V>, rmsnorm<V>, layernorm<V>,  rope<V>,    silu_mul<V>, relu<V>,
                     gelu<V>,   add<V>,     add_scaled<V>, convert<V>, attention<V>};
}

}  // namespace
}  // namespace tierlm::detail
