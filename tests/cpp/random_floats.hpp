// Normal(0, 1) floats from a seed, the inputs of the kernel and KV cache tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace tierlm::testing {

inline std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace tierlm::testing
