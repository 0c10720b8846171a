// AVX-512 variant of the sparse FFN kernel (16 floats per step, masked tails).
// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which -Wextra reports
// as uninitialized use; the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/sparse_ffn_impl.hpp"

namespace tierlm::detail {

namespace {

template <DType D>
inline __m512 load16(const char* base, size_t i, __mmask16 m) {
  if constexpr (D == DType::kDTypeF32) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(base) + i);
  } else if constexpr (D == DType::kDTypeF16) {
    return _mm512_cvtph_ps(
        _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(base) + i));
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(base) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

inline __mmask16 tail_mask(size_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

struct Isa {
  template <DType D>
  static float dot(const float* x, const char* w, size_t dim) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load16<D>(w, i, 0xffff), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), load16<D>(w, i + 16, 0xffff), a1);
    }
    for (; i < dim; i += 16) {
      const __mmask16 m = tail_mask(dim - i);
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), load16<D>(w, i, m), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }

  template <DType D>
  static void axpy(float a, const char* w, float* y, size_t dim) {
    const __m512 va = _mm512_set1_ps(a);
    for (size_t i = 0; i < dim; i += 16) {
      const __mmask16 m = tail_mask(dim - i);
      const __m512 r = _mm512_fmadd_ps(va, load16<D>(w, i, m), _mm512_maskz_loadu_ps(m, y + i));
      _mm512_mask_storeu_ps(y + i, m, r);
    }
  }
};

}  // namespace

void sparse_ffn_avx512(const float* x, const SparseFfnRows& rows, const int32_t* slots,
                       size_t n_slots, float* y) {
  sparse_ffn_run<Isa>(x, rows, slots, n_slots, y);
}

}  // namespace tierlm::detail
