// GGUF's block layouts (ggml-common.h) as records, byte for byte, and the layout of the int8
// activations the quantized dot products read. Shared by the scalar reference and every SIMD level;
// tests/cpp/test_quant_kernels.cpp checks the sizes against dtype_block().
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tierlm::detail {

constexpr size_t kBlock32 = 32;    // elements of a q8_0 / q4_0 / q4_1 / q5_0 / q5_1 block
constexpr size_t kBlock256 = 256;  // elements of a k-type super-block (q4_k, q5_k, q6_k)

// Scales are f16 bit patterns. Nibble types hold element j in the low nibble of qs[j] and
// element j + 16 in its high nibble; q5 types add bit j of qh (little-endian) as bit 4.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
struct BlockQ4_0 {  // (q - 8) * d
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ4_1 {  // q * d + m
  uint16_t d, m;
  uint8_t qs[16];
};
struct BlockQ5_0 {  // (q - 16) * d
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ5_1 {  // q * d + m
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
// Eight sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes (k4_scale_min); element
// 64 i + l sits in the low nibble of qs[32 i + l], element 64 i + 32 + l in its high nibble;
// q5_k adds bit 2 i (resp. 2 i + 1) of qh[l] as bit 4. Value: d * scale * q - dmin * min.
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// Sixteen groups of 16 with int8 scales; per half h of 128 elements, element 128 h + 32 k + l
// takes nibble k / 2 of ql[64 h + 32 (k % 2) + l] and bits 2k, 2k+1 of qh[32 h + l] as bits 4-5.
// Value: d * scale * (q - 32).
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};

static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 &&
              sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// Activations for the 32-block types, one row of nb blocks in three arrays: the int8 values
// q[32 nb], then per block d (x ~ d * q with d = max|x| / 127, q8_0's rule with an f32 scale)
// and s = d * sum(q), which the types with an offset or a minimum need. The blocks of each pair
// (2p, 2p + 1) are interleaved by halves, [x_2p[0:16] x_2p+1[0:16] x_2p[16:32] x_2p+1[16:32]],
// so that one 32-byte load matches the low (then the high) nibbles of two weight blocks; a last
// unpaired block stays in order.
template <bool kConst>
struct Act32Row {
  using Q = std::conditional_t<kConst, const int8_t, int8_t>;
  using F = std::conditional_t<kConst, const float, float>;
  Q* q;
  F* d;
  F* s;
  Act32Row(std::conditional_t<kConst, const void*, void*> row, size_t nb)
      : q(static_cast<Q*>(row)), d(reinterpret_cast<F*>(q + kBlock32 * nb)), s(d + nb) {}
};
// Bytes of one row (64-byte multiples, so that every token's row starts aligned).
constexpr size_t act32_row_bytes(size_t nb) { return (nb * (kBlock32 + 8) + 63) / 64 * 64; }
// Where element j of block b sits in q.
constexpr size_t act32_index(size_t nb, size_t b, size_t j) {
  if (b % 2 == 0 && b + 1 == nb) return kBlock32 * b + j;
  return 64 * (b / 2) + 32 * (j / 16) + 16 * (b % 2) + j % 16;
}

// Activations for the k-types (q8_K-like): one scale per 256, sums[g] = sum of q over the
// 16 elements 16 g .. 16 g + 15 (q6_k's offset of 32 acts on these), sums32[s] = sums[2 s] +
// sums[2 s + 1] (q4_k / q5_k's mins act on these). q comes first and the record fills five cache
// lines, so that in a 64-byte aligned row every 32-byte load of q stays within one line: a load
// split across two lines costs two (the matrix-vector bodies read 7 % more bytes per CPU second
// than with q at byte 36 of 292, docs/kernels.md).
struct ActBlock256 {
  int8_t q[256];
  int16_t sums[16];
  int16_t sums32[8];
  float d;
  uint8_t unused[12];
};
static_assert(sizeof(ActBlock256) == 320);

// The six-bit scales and mins of q4_k / q5_k's 12 packed bytes, as eight bytes each (byte i of
// *scale is sub-block i's): sub-blocks 0-3 in the low six bits of bytes 0-3 (scales) and 4-7
// (mins); sub-blocks 4-7 in the nibbles of bytes 8-11 with their top two bits in the top bits of
// bytes 0-7. Whole words, so that SIMD code moves them to a register without a store.
inline void k4_scale_min(const uint8_t packed[12], uint64_t* scale, uint64_t* min) {
  uint32_t a, b, c;
  std::memcpy(&a, packed, 4);
  std::memcpy(&b, packed + 4, 4);
  std::memcpy(&c, packed + 8, 4);
  const uint32_t scale_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
  const uint32_t min_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
  *scale = uint64_t{scale_hi} << 32 | (a & 0x3f3f3f3fu);
  *min = uint64_t{min_hi} << 32 | (b & 0x3f3f3f3fu);
}

}  // namespace tierlm::detail
