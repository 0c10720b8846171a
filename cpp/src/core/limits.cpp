// The option range table: bounds that keep a value from exhausting the machine (threads), from
// passing a 32-bit field downstream (tokens, positions) or from meaning nothing (negatives).
#include "tierlm/core/limits.hpp"

#include <stdexcept>

#include "tierlm/core/error.hpp"

namespace tierlm {

namespace {

constexpr int64_t kInt32Max = INT32_MAX;

// A thread per core is the useful most; 1024 leaves room for machines with many cores while
// keeping a typo (threads=10**6) from exhausting the process limit.
constexpr OptionRange kRanges[] = {
    {"threads", 0, 1024, "compute threads; 0 = every core"},
    {"host_budget", 0, UINT64_MAX, "bytes the host tier may hold"},
    {"kv_host_budget", 0, UINT64_MAX, "host bytes the KV cache may hold; 0 = all it needs"},
    {"disk_budget", 0, UINT64_MAX, "bytes the disk tier may hold"},
    {"max_context", 0, kInt32Max, "KV cache tokens; 0 = the model's max_positions"},
    {"prefill_chunk", 0, kInt32Max, "tokens per prefill batch; 0 = a stored plan's or 256"},
    {"max_batch", 1, 1024, "sequences decoded together, each with its own KV cache"},
    {"ring_sections", 0, 4096, "staging sections of the streaming ring; 0 = auto"},
    {"sparse_window", 1, 65536, "tokens whose neurons stay cached; 1 = no window"},
    {"sparse_capacity", 0, kInt32Max, "cached neurons per layer; 0 = auto"},
    {"max_new_tokens", 0, kInt32Max, "tokens to generate"},
    {"top_k", 0, kInt32Max, "candidates sampled from; 0 = no limit"},
    {"seed", 0, UINT64_MAX, "sampling seed"},
    {"repetition_last_n", 0, kInt32Max, "tokens the repetition penalty looks back at; 0 = all"},
    {"token id", 0, kInt32Max, "prompt token ids, below the vocabulary size"},
};

}  // namespace

std::span<const OptionRange> option_ranges() { return kRanges; }

const OptionRange& option_range(std::string_view name) {
  for (const OptionRange& r : kRanges) {
    if (name == r.name) return r;
  }
  throw std::logic_error("no range for option " + std::string(name));
}

std::string option_range_error(std::string_view name, std::string_view value) {
  const OptionRange& r = option_range(name);
  return std::string(name) + " = " + std::string(value) + " is out of range " +
         std::to_string(r.min) + ".." + std::to_string(r.max) + " (" + r.meaning + ")";
}

void option_range_fail(std::string_view name, std::string_view value) {
  throw Error(ErrorCode::kErrorInvalidArgument, 0, option_range_error(name, value));
}

}  // namespace tierlm
