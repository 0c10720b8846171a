// Names and block geometry of the element types (tierlm/core/dtype.hpp).
#include "tierlm/core/dtype.hpp"

#include <iterator>

#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  DTypeBlock block;
};

// GGUF's block sizes (ggml-common.h): q8_0 = f16 scale + 32 int8; q4_0 = f16 + 16 nibble bytes;
// q4_1 = 2 f16 + 16; q5_0 = f16 + 4 high-bit bytes + 16; q5_1 = 2 f16 + 4 + 16; q4_k = 2 f16 +
// 12 scale bytes + 128; q5_k = 2 f16 + 12 + 32 + 128; q6_k = 128 + 64 + 16 scales + f16.
constexpr DTypeInfo kDTypes[] = {
    {DType::kDTypeF32, "f32", {1, 4}},       {DType::kDTypeF16, "f16", {1, 2}},
    {DType::kDTypeBF16, "bf16", {1, 2}},     {DType::kDTypeQ8_0, "q8_0", {32, 34}},
    {DType::kDTypeQ4_0, "q4_0", {32, 18}},   {DType::kDTypeQ4_1, "q4_1", {32, 20}},
    {DType::kDTypeQ5_0, "q5_0", {32, 22}},   {DType::kDTypeQ5_1, "q5_1", {32, 24}},
    {DType::kDTypeQ4_K, "q4_k", {256, 144}}, {DType::kDTypeQ5_K, "q5_k", {256, 176}},
    {DType::kDTypeQ6_K, "q6_k", {256, 210}},
};

const DTypeInfo& info(DType dtype) {
  for (const DTypeInfo& i : kDTypes)
    if (i.dtype == dtype) return i;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown dtype value ", static_cast<int>(dtype));
}

}  // namespace

DTypeBlock dtype_block(DType dtype) { return info(dtype).block; }

bool dtype_is_quantized(DType dtype) { return info(dtype).block.elems > 1; }

size_t dtype_row_bytes(DType dtype, size_t n) {
  const DTypeBlock b = info(dtype).block;
  if (n % b.elems != 0)
    TIERLM_FAIL(kErrorInvalidArgument, 0, "a row of ", n, " elements is not a whole number of ",
                dtype_name(dtype), " blocks (", b.elems, " elements each)");
  return n / b.elems * b.bytes;
}

size_t dtype_size(DType dtype) {
  const DTypeBlock b = info(dtype).block;
  if (b.elems != 1)
    TIERLM_FAIL(kErrorInvalidArgument, 0, dtype_name(dtype),
                " is a block type: its size is per block of ", b.elems,
                " elements (use dtype_row_bytes)");
  return b.bytes;
}

const char* dtype_name(DType dtype) { return info(dtype).name; }

DType dtype_parse(const std::string& name) {
  if (name == "float32") return DType::kDTypeF32;
  if (name == "float16") return DType::kDTypeF16;
  if (name == "bfloat16") return DType::kDTypeBF16;
  for (const DTypeInfo& i : kDTypes)
    if (name == i.name) return i.dtype;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown dtype '", name,
              "' (expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k)");
}

}  // namespace tierlm
