// io_trace_begin / io_trace_end (tierlm/io/io.hpp): the engine's trace hook (io_engine.hpp)
// stamped with the clock and kept in memory. Diagnostics only: it takes a lock and may
// allocate on every request while it runs, and costs nothing when it does not.
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/clock.hpp"
#include "io/io_engine.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {

namespace {

struct TraceLog {
  std::mutex mutex;
  detail::Clock::time_point start;
  std::vector<IoTraceRecord> records;
  // Requests in flight by (file, offset, length): their indices in records, oldest first.
  std::map<std::tuple<const std::string*, uint64_t, size_t>, std::vector<size_t>> pending;
};

TraceLog& trace_log() {
  static TraceLog* log = new TraceLog;  // never destroyed: a reaper may still call in at exit
  return *log;
}

void record(const detail::IoTraceEvent& e) {
  TraceLog& log = trace_log();
  const double t = detail::seconds_since(log.start);
  std::lock_guard lock(log.mutex);
  auto& waiting = log.pending[{e.path, e.offset, e.len}];
  if (!e.done) {
    waiting.push_back(log.records.size());
    log.records.push_back({*e.path, e.offset, e.len, t, -1.0});
  } else if (!waiting.empty()) {  // submitted before io_trace_begin: not logged
    log.records[waiting.front()].done = t;
    waiting.erase(waiting.begin());
  }
}

}  // namespace

void io_trace_begin() {
  TraceLog& log = trace_log();
  {
    std::lock_guard lock(log.mutex);
    log.records.clear();
    log.pending.clear();
    log.start = detail::Clock::now();
  }
  detail::io_trace_set(record);
}

std::vector<IoTraceRecord> io_trace_end() {
  detail::io_trace_set(nullptr);
  TraceLog& log = trace_log();
  std::lock_guard lock(log.mutex);
  log.pending.clear();
  return std::move(log.records);
}

}  // namespace tierlm
