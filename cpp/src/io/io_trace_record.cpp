// The recording behind io_trace_record_start / _stop (io.hpp): the engine's trace hook appends
// each submission and marks its landing, under one mutex (a few events per request, only while
// recording).
#include <time.h>

#include <mutex>
#include <utility>

#include "io/io_engine.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/io/io.hpp"

namespace tierlm {

namespace {

std::mutex g_mutex;
bool g_recording = false;
std::vector<IoTraceRecord> g_records;

double monotonic_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

void record(const detail::IoTraceEvent& event) {
  const double now = monotonic_seconds();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_recording) return;
  if (!event.done) {
    g_records.push_back({*event.path, event.offset, event.len, now, -1});
    return;
  }
  // The latest unlanded request of that extent (one extent is not read twice at once).
  for (auto it = g_records.rbegin(); it != g_records.rend(); ++it) {
    if (it->landed < 0 && it->offset == event.offset && it->len == event.len &&
        it->path == *event.path) {
      it->landed = now;
      return;
    }
  }
}

}  // namespace

void io_trace_record_start() {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    TIERLM_CHECK(!g_recording, kErrorInvalidArgument,
                 "io_trace_record_start: a recording is already running; stop it first");
    g_recording = true;
    g_records.clear();
  }
  detail::io_trace_set(record);
}

std::vector<IoTraceRecord> io_trace_record_stop() {
  detail::io_trace_set(nullptr);
  std::lock_guard<std::mutex> lock(g_mutex);
  g_recording = false;
  return std::exchange(g_records, {});
}

}  // namespace tierlm
