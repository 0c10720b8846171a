// Replacement policies of the expert cache, behind one interface: the store tells the policy
// which expert (key) it used, and asks it which of the evictable cached experts to drop.
// LRU drops the least recently used; LFU ("frequency-weighted") drops the one with the least
// use count, each count decaying by half every `half_life` steps so that old popularity fades.
// "stream" is no cache at all, the dense-offload baseline: the store reads every disk-homed
// expert of a layer on every step (and the next layer's with prefetch), its slots reused in
// LRU order.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace tierlm::detail {

enum class ExpertPolicyKind { kExpertPolicyLru, kExpertPolicyLfu, kExpertPolicyStream };

// "lru" | "lfu" | "stream"; throws kErrorInvalidArgument naming the option otherwise.
ExpertPolicyKind expert_policy_parse(const std::string& name);
const char* expert_policy_name(ExpertPolicyKind kind);

class ExpertPolicy {
 public:
  virtual ~ExpertPolicy() = default;
  // A new step begins (steps order the uses).
  virtual void step() = 0;
  // Key `key` was used this step (a hit, or a read into the cache).
  virtual void touch(int key) = 0;
  // The index in candidates (keys of evictable cached experts, non-empty) to evict.
  virtual size_t victim(std::span<const int> candidates) const = 0;
};

// keys: 0..keys-1 (every expert of every moe layer). rates (empty, or one per key): each
// expert's expected uses per step from a usage profile, which seed LFU's counts at the level
// that use rate keeps them at, so the profile's favourites outlast one-off uses from the first
// step on (LRU has no counts to seed). Allocates its tables here, never after.
std::unique_ptr<ExpertPolicy> expert_policy_create(ExpertPolicyKind kind, size_t keys,
                                                   std::span<const double> rates = {});

}  // namespace tierlm::detail
