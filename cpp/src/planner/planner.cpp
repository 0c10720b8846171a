// Greedy best-fit planner, lower bound and checker. The greedy finds the buffers that
// conflict with the one being placed through a segment tree over time (those live when it
// starts) and an index by first op (those that start later within its lifetime), so each
// placement costs O(log n + conflicts), never a scan over every buffer placed so far.
#include "tierlm/planner/planner.hpp"

#include <algorithm>
#include <bit>
#include <map>
#include <numeric>
#include <queue>
#include <set>

#include "tierlm/core/align.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"

namespace tierlm {

namespace {

// Span entries the area and length orders of kPlanOrderBest may touch per buffer before
// they are dropped.
constexpr uint64_t kPlanMaxWorkPerBuffer = 64;

uint64_t alignment_of(const PlanBuffer& b, uint64_t fallback) {
  return b.alignment != 0 ? b.alignment : fallback;
}

void validate(std::span<const PlanBuffer> buffers, uint64_t alignment) {
  TIERLM_CHECK(alignment >= 1, kErrorInvalidArgument,
               "plan: alignment must be at least 1 byte, got 0");
  for (size_t i = 0; i < buffers.size(); ++i) {
    const PlanBuffer& b = buffers[i];
    TIERLM_CHECK(b.last_op >= b.first_op, kErrorInvalidArgument, "plan: buffer ", i,
                 " ends (last_op ", b.last_op, ") before it starts (first_op ", b.first_op,
                 "); give each buffer first_op <= last_op");
  }
}

// Compressed time: the distinct first/last ops, so a tree over them has <= 2n leaves.
struct Timeline {
  std::vector<int64_t> times;
  int index(int64_t t) const {
    return static_cast<int>(std::lower_bound(times.begin(), times.end(), t) - times.begin());
  }
};

Timeline make_timeline(std::span<const PlanBuffer> buffers) {
  Timeline tl;
  tl.times.reserve(buffers.size() * 2);
  for (const PlanBuffer& b : buffers) {
    tl.times.push_back(b.first_op);
    tl.times.push_back(b.last_op);
  }
  std::sort(tl.times.begin(), tl.times.end());
  tl.times.erase(std::unique(tl.times.begin(), tl.times.end()), tl.times.end());
  return tl;
}

// Memory taken by placed buffers, found by time. A buffer live over ops [f, l] (compressed)
// is stored in the O(log T) canonical nodes of a segment tree over time. Every node keeps
// the union of the memory spans stored at it (own_) and in its subtree (sub_), coalesced.
// The buffers live at some op of a query window are those stored at the window's canonical
// nodes or below them (their sub_) or at those nodes' ancestors (their own_), so a query
// merges O(log T) span lists whose length is the number of holes, not of buffers.
class SpanIndex {
 public:
  explicit SpanIndex(int num_times) {
    leaves_ = 1;
    while (leaves_ < num_times) leaves_ <<= 1;
    nodes_.resize(2 * static_cast<size_t>(leaves_));
  }

  void insert(int first, int last, uint64_t lo, uint64_t hi) {
    walk(first, last);
    for (int node : inside_) {
      add(nodes_[node].own, lo, hi);
      add(nodes_[node].sub, lo, hi);
    }
    for (int node : partial_) add(nodes_[node].sub, lo, hi);
  }

  // Span entries read or moved so far: the cost of this order on this instance.
  uint64_t work() const { return work_; }

  // The occupied spans of buffers live at some op in [first, last], unsorted, may overlap.
  void occupied(int first, int last, std::vector<std::pair<uint64_t, uint64_t>>& out) {
    walk(first, last);
    for (int node : inside_) {
      const Spans& spans = nodes_[node].sub;
      out.insert(out.end(), spans.begin(), spans.end());
    }
    for (int node : partial_) {
      const Spans& spans = nodes_[node].own;
      out.insert(out.end(), spans.begin(), spans.end());
    }
    work_ += out.size();
  }

 private:
  using Spans = std::vector<std::pair<uint64_t, uint64_t>>;
  struct Node {
    Spans own;  // buffers whose canonical node this is
    Spans sub;  // buffers stored here or below
  };

  // inside_: the canonical nodes of [first, last]; partial_: their proper ancestors, which
  // are the nodes on the paths from leaves first and last that stick out of the range.
  void walk(int first, int last) {
    inside_.clear();
    partial_.clear();
    for (int lo = first + leaves_, hi = last + leaves_ + 1; lo < hi; lo >>= 1, hi >>= 1) {
      if (lo & 1) inside_.push_back(lo++);
      if (hi & 1) inside_.push_back(--hi);
    }
    for (int node = (first + leaves_) >> 1; node >= 1; node >>= 1) {
      if (!covered(node, first, last)) partial_.push_back(node);
    }
    for (int node = (last + leaves_) >> 1; node >= 1; node >>= 1) {
      int level = std::bit_width(static_cast<unsigned>(node)) - 1;
      int begin = (node - (1 << level)) * (leaves_ >> level);
      if (begin <= first) break;  // from here up the path is first's, already walked
      if (!covered(node, first, last)) partial_.push_back(node);
    }
  }

  bool covered(int node, int first, int last) const {
    int level = std::bit_width(static_cast<unsigned>(node)) - 1;
    int width = leaves_ >> level;
    int begin = (node - (1 << level)) * width;
    return first <= begin && begin + width - 1 <= last;
  }

  // Inserts [lo, hi) into a sorted list of disjoint spans, merging what it meets or touches.
  void add(Spans& spans, uint64_t lo, uint64_t hi) {
    work_ += spans.size() / 8 + 1;  // the memmove below, roughly
    auto begin = std::lower_bound(spans.begin(), spans.end(), std::make_pair(lo, uint64_t{0}));
    if (begin != spans.begin() && std::prev(begin)->second >= lo) --begin;
    auto end = begin;
    while (end != spans.end() && end->first <= hi) {
      lo = std::min(lo, end->first);
      hi = std::max(hi, end->second);
      ++end;
    }
    if (begin == end) {
      spans.insert(begin, {lo, hi});
    } else {
      *begin = {lo, hi};
      spans.erase(begin + 1, end);
    }
  }

  int leaves_ = 1;
  std::vector<Node> nodes_;
  std::vector<int> inside_, partial_;
  uint64_t work_ = 0;
};

// Size order: the conflicts of a buffer are the larger ones placed before it that are live at
// some op of its lifetime; its offset is the best-fitting hole among them, else their top.
// Holes can make an order's span lists long (quadratic time); past `max_work` span entries
// the order gives up and returns a plan with peak UINT64_MAX.
Plan place_best_fit(std::span<const PlanBuffer> buffers, uint64_t alignment, const Timeline& tl,
                    const std::vector<int>& order, PlanOrder which, uint64_t max_work) {
  const size_t n = buffers.size();
  Plan plan;
  plan.order = which;
  plan.offsets.assign(n, 0);
  SpanIndex placed(static_cast<int>(std::max<size_t>(tl.times.size(), 1)));
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // [offset, end) taken during the lifetime
  for (int id : order) {
    const PlanBuffer& b = buffers[id];
    if (b.size == 0) continue;
    const uint64_t a = alignment_of(b, alignment);
    const int first = tl.index(b.first_op), last = tl.index(b.last_op);
    spans.clear();
    placed.occupied(first, last, spans);
    std::sort(spans.begin(), spans.end());
    uint64_t cursor = 0;
    uint64_t best_offset = 0, best_gap = UINT64_MAX;
    for (const auto& [lo, hi] : spans) {
      if (lo > cursor) {
        const uint64_t start = round_up(cursor, a);
        if (start + b.size <= lo && lo - cursor < best_gap) {
          best_gap = lo - cursor;
          best_offset = start;
        }
      }
      cursor = std::max(cursor, hi);
    }
    plan.offsets[id] = best_gap != UINT64_MAX ? best_offset : round_up(cursor, a);
    placed.insert(first, last, plan.offsets[id], plan.offsets[id] + b.size);
    if (placed.work() > max_work) {
      plan.peak = UINT64_MAX;
      return plan;
    }
  }
  plan.peak = plan_peak(buffers, plan.offsets);
  return plan;
}

// Time order: the conflicts of a buffer are exactly the buffers live when it starts, so this
// is a best-fit allocator replaying the lifetimes: a free list of coalesced holes below the
// top of the live buffers, searched by size. O(n log n).
class BestFitArena {
 public:
  uint64_t allocate(uint64_t size, uint64_t a) {
    for (auto it = by_size_.lower_bound({size, 0}); it != by_size_.end(); ++it) {
      const uint64_t lo = it->second, hi = lo + it->first;
      const uint64_t start = round_up(lo, a);
      if (start + size > hi) continue;
      erase_hole(lo);
      if (start > lo) add_hole(lo, start);
      if (start + size < hi) add_hole(start + size, hi);
      return start;
    }
    const uint64_t start = round_up(top_, a);
    if (start > top_) add_hole(top_, start);
    top_ = start + size;
    return start;
  }

  void release(uint64_t lo, uint64_t hi) {
    auto next = holes_.lower_bound(lo);
    if (next != holes_.end() && next->first == hi) {
      hi = next->second;
      erase_hole(next->first);
    }
    auto prev = holes_.lower_bound(lo);
    if (prev != holes_.begin() && std::prev(prev)->second == lo) {
      lo = std::prev(prev)->first;
      erase_hole(lo);
    }
    if (hi == top_) {
      top_ = lo;  // everything from lo up is free now
    } else {
      add_hole(lo, hi);
    }
  }

 private:
  void add_hole(uint64_t lo, uint64_t hi) {
    holes_.emplace(lo, hi);
    by_size_.emplace(hi - lo, lo);
  }
  void erase_hole(uint64_t lo) {
    auto it = holes_.find(lo);
    by_size_.erase({it->second - it->first, lo});
    holes_.erase(it);
  }

  uint64_t top_ = 0;
  std::map<uint64_t, uint64_t> holes_;               // offset -> end
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // (length, offset): best fit, then lowest
};

Plan place_by_time(std::span<const PlanBuffer> buffers, uint64_t alignment,
                   const std::vector<int>& order) {
  Plan plan;
  plan.order = PlanOrder::kPlanOrderTime;
  plan.offsets.assign(buffers.size(), 0);
  BestFitArena arena;
  using Expiry = std::pair<int64_t, int>;
  std::priority_queue<Expiry, std::vector<Expiry>, std::greater<>> live;
  for (int id : order) {
    const PlanBuffer& b = buffers[id];
    if (b.size == 0) continue;
    while (!live.empty() && live.top().first < b.first_op) {
      const int done = live.top().second;
      arena.release(plan.offsets[done], plan.offsets[done] + buffers[done].size);
      live.pop();
    }
    plan.offsets[id] = arena.allocate(b.size, alignment_of(b, alignment));
    live.emplace(b.last_op, id);
  }
  plan.peak = plan_peak(buffers, plan.offsets);
  return plan;
}

}  // namespace

const char* plan_order_name(PlanOrder order) {
  switch (order) {
    case PlanOrder::kPlanOrderSize:
      return "size";
    case PlanOrder::kPlanOrderTime:
      return "time";
    case PlanOrder::kPlanOrderArea:
      return "area";
    case PlanOrder::kPlanOrderLength:
      return "length";
    case PlanOrder::kPlanOrderBest:
      return "best";
  }
  return "unknown";
}

Plan plan_greedy(std::span<const PlanBuffer> buffers, uint64_t alignment, PlanOrder order) {
  validate(buffers, alignment);
  const size_t n = buffers.size();
  auto length = [&](int i) { return buffers[i].last_op - buffers[i].first_op; };
  std::vector<int> ids(n);
  std::iota(ids.begin(), ids.end(), 0);

  // Orders placed by best fit over the conflicts: each is a key, larger first, then ties.
  auto by_key = [&](auto key) {
    std::vector<int> sorted = ids;
    std::stable_sort(sorted.begin(), sorted.end(), [&](int x, int y) {
      auto kx = key(x), ky = key(y);
      if (kx != ky) return kx > ky;
      return buffers[x].first_op < buffers[y].first_op;
    });
    return sorted;
  };
  auto size = [&](int i) { return std::make_pair(buffers[i].size, length(i)); };
  auto area = [&](int i) {
    return static_cast<double>(buffers[i].size) * static_cast<double>(length(i) + 1);
  };
  auto span = [&](int i) { return std::make_pair(length(i), buffers[i].size); };

  std::vector<PlanOrder> orders;
  if (order == PlanOrder::kPlanOrderBest) {
    orders = {PlanOrder::kPlanOrderSize, PlanOrder::kPlanOrderArea, PlanOrder::kPlanOrderLength,
              PlanOrder::kPlanOrderTime};
  } else {
    orders = {order};
  }
  const bool need_timeline = orders.size() > 1 || orders[0] != PlanOrder::kPlanOrderTime;
  const Timeline tl = need_timeline ? make_timeline(buffers) : Timeline{};
  // With several orders, the extra ones (area, length) are dropped when they turn quadratic
  // on an instance; the size and time orders always run to the end.
  const uint64_t max_work = orders.size() > 1 ? kPlanMaxWorkPerBuffer * n + 1'000'000 : UINT64_MAX;
  // The orders are independent: run them on the compute pool, keep the smallest peak (the
  // first order listed wins ties, so the result does not depend on scheduling).
  std::vector<Plan> plans(orders.size());
  parallel_for(orders.size(), [&](size_t begin, size_t end) {
    for (size_t k = begin; k < end; ++k) {
      switch (orders[k]) {
        case PlanOrder::kPlanOrderSize:
          plans[k] = place_best_fit(buffers, alignment, tl, by_key(size), orders[k], UINT64_MAX);
          break;
        case PlanOrder::kPlanOrderArea:
          plans[k] = place_best_fit(buffers, alignment, tl, by_key(area), orders[k], max_work);
          break;
        case PlanOrder::kPlanOrderLength:
          plans[k] = place_best_fit(buffers, alignment, tl, by_key(span), orders[k], max_work);
          break;
        default: {
          std::vector<int> by_time = ids;
          std::stable_sort(by_time.begin(), by_time.end(), [&](int x, int y) {
            if (buffers[x].first_op != buffers[y].first_op) {
              return buffers[x].first_op < buffers[y].first_op;
            }
            if (buffers[x].size != buffers[y].size) return buffers[x].size > buffers[y].size;
            return length(x) > length(y);
          });
          plans[k] = place_by_time(buffers, alignment, by_time);
        }
      }
    }
  });
  size_t winner = 0;
  for (size_t k = 1; k < plans.size(); ++k) {
    if (plans[k].peak < plans[winner].peak) winner = k;
  }
  Plan best = std::move(plans[winner]);
  best.lower_bound = plan_lower_bound(buffers);
  return best;
}

uint64_t plan_lower_bound(std::span<const PlanBuffer> buffers) {
  // +size at first_op, -size after last_op; ends at t + 1 sort before starts at t + 1.
  std::vector<std::pair<int64_t, int64_t>> events;
  events.reserve(buffers.size() * 2);
  for (const PlanBuffer& b : buffers) {
    if (b.size == 0) continue;
    events.emplace_back(b.first_op, static_cast<int64_t>(b.size));
    events.emplace_back(b.last_op + 1, -static_cast<int64_t>(b.size));
  }
  std::sort(events.begin(), events.end());
  int64_t live = 0, best = 0;
  for (const auto& [t, delta] : events) {
    live += delta;
    best = std::max(best, live);
  }
  return static_cast<uint64_t>(best);
}

uint64_t plan_peak(std::span<const PlanBuffer> buffers, std::span<const uint64_t> offsets) {
  TIERLM_CHECK(buffers.size() == offsets.size(), kErrorInvalidArgument, "plan: ", offsets.size(),
               " offsets for ", buffers.size(), " buffers; give one per buffer");
  uint64_t peak = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].size != 0) peak = std::max(peak, offsets[i] + buffers[i].size);
  }
  return peak;
}

void plan_check(std::span<const PlanBuffer> buffers, std::span<const uint64_t> offsets,
                uint64_t alignment) {
  validate(buffers, alignment);
  TIERLM_CHECK(buffers.size() == offsets.size(), kErrorInvalidArgument, "plan: ", offsets.size(),
               " offsets for ", buffers.size(), " buffers; give one per buffer");
  auto describe = [&](size_t i) {
    const PlanBuffer& b = buffers[i];
    std::ostringstream s;
    s << "buffer " << i << " (" << b.size << " bytes at offset " << offsets[i] << ", ops "
      << b.first_op << ".." << b.last_op << ")";
    return s.str();
  };
  for (size_t i = 0; i < buffers.size(); ++i) {
    const uint64_t a = alignment_of(buffers[i], alignment);
    TIERLM_CHECK(offsets[i] % a == 0, kErrorInvalidArgument, "plan: ", describe(i),
                 " is not aligned to ", a, " bytes");
    TIERLM_CHECK(offsets[i] <= UINT64_MAX - buffers[i].size, kErrorInvalidArgument,
                 "plan: ", describe(i), " ends past 2^64");
  }
  // Sweep by first op. The live buffers are disjoint in memory (else we already threw), so a
  // new buffer can only collide with its neighbours by offset.
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t x, size_t y) { return buffers[x].first_op < buffers[y].first_op; });
  std::map<uint64_t, size_t> live;  // offset -> buffer
  using Expiry = std::pair<int64_t, size_t>;
  std::priority_queue<Expiry, std::vector<Expiry>, std::greater<>> expiry;
  for (size_t i : order) {
    const PlanBuffer& b = buffers[i];
    if (b.size == 0) continue;
    while (!expiry.empty() && expiry.top().first < b.first_op) {
      live.erase(offsets[expiry.top().second]);
      expiry.pop();
    }
    auto fail = [&](size_t other) {
      const PlanBuffer& o = buffers[other];
      TIERLM_FAIL(kErrorInvalidArgument, 0, "plan: ", describe(std::min(i, other)), " and ",
                  describe(std::max(i, other)), " overlap in memory while both live (ops ",
                  std::max(b.first_op, o.first_op), "..", std::min(b.last_op, o.last_op), ")");
    };
    auto next = live.lower_bound(offsets[i]);
    if (next != live.end() && next->first < offsets[i] + b.size) fail(next->second);
    if (next != live.begin()) {
      auto prev = std::prev(next);
      if (prev->first + buffers[prev->second].size > offsets[i]) fail(prev->second);
    }
    live.emplace(offsets[i], i);
    expiry.emplace(b.last_op, i);
  }
}

}  // namespace tierlm
