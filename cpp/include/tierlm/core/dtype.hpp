// Element types of weights and activations, as stored in a package and read by the kernels.
// Shared by the package reader, the weight stores and the kernels, so it lives below all three.
// The quantized types are GGUF's block layouts byte for byte (docs/package-format.md): a row of
// n elements is n / block_elems blocks of block_bytes each.
#pragma once

#include <cstddef>
#include <string>

#include "tierlm/core/export.hpp"

namespace tierlm {

enum class DType {
  kDTypeF32,
  kDTypeF16,
  kDTypeBF16,
  kDTypeQ8_0,
  kDTypeQ4_0,
  kDTypeQ4_1,
  kDTypeQ5_0,
  kDTypeQ5_1,
  kDTypeQ4_K,
  kDTypeQ5_K,
  kDTypeQ6_K,
};

// Elements and bytes of one block: {1, 4} for f32, {32, 34} for q8_0, {256, 144} for q4_k.
struct TIERLM_API DTypeBlock {
  size_t elems;
  size_t bytes;
};
TIERLM_API DTypeBlock dtype_block(DType dtype);
TIERLM_API bool dtype_is_quantized(DType dtype);
// Bytes of a row of n elements; fails (naming the dtype) unless n is a whole number of blocks.
TIERLM_API size_t dtype_row_bytes(DType dtype, size_t n);
// Bytes of one element of an unquantized type (f32, f16, bf16); fails for a block type.
TIERLM_API size_t dtype_size(DType dtype);
TIERLM_API const char* dtype_name(DType dtype);
// Parses the names dtype_name gives (and "float32", "float16", "bfloat16").
TIERLM_API DType dtype_parse(const std::string& name);

}  // namespace tierlm
