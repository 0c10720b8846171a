// What the streaming weight store reports: counters since load of the ring's reads and
// waits, the I/O path it uses, and one event per streamed layer for timelines.
#pragma once

#include <cstdint>
#include <string>

#include "tierlm/core/export.hpp"

namespace tierlm {

struct TIERLM_API StreamStats {
  bool streaming = false;             // weights stream through a ring (else all resident)
  int64_t ring_sections = 0;          // staging sections of the ring
  uint64_t bytes_read_per_token = 0;  // streamed bytes per forward pass (one decode token)
  uint64_t stream_bytes_read = 0;     // bytes read by the ring since load
  double io_wait_seconds = 0.0;       // time data() and rows() spent waiting on reads
  double read_busy_seconds = 0.0;     // sum over chunks of issue -> reads complete (as seen)
  uint64_t layer_waits = 0;           // end_layer calls of streamed layers
  uint64_t chunk_waits = 0;           // data() calls that waited for a chunk's reads
  uint64_t row_bytes_read = 0;        // embedding rows read on demand
  uint64_t ring_restarts = 0;         // out-of-order layer accesses that drained the ring
  bool io_direct = false;             // reads use O_DIRECT
  std::string io_direct_reason;       // why not, when io_direct is false
  bool io_registered = false;         // sections registered with the I/O engine
  std::string io_backend;

  // The counters over an interval that began at `before`; settings as now.
  StreamStats since(const StreamStats& before) const {
    StreamStats d = *this;
    d.stream_bytes_read -= before.stream_bytes_read;
    d.io_wait_seconds -= before.io_wait_seconds;
    d.read_busy_seconds -= before.read_busy_seconds;
    d.layer_waits -= before.layer_waits;
    d.chunk_waits -= before.chunk_waits;
    d.row_bytes_read -= before.row_bytes_read;
    d.ring_restarts -= before.ring_restarts;
    return d;
  }
  // Share of the time reads were in flight that ran behind compute (100 when none waited).
  double overlap_pct() const {
    return read_busy_seconds > 0 ? 100.0 * (1.0 - io_wait_seconds / read_busy_seconds) : 100.0;
  }
};

// One entry per end_layer of a streamed layer (kept in a fixed buffer).
struct TIERLM_API StreamEvent {
  double t = 0;     // seconds since the store was made, at the layer's end
  double wait = 0;  // seconds the layer's data() calls waited for reads
  int layer = 0;
  uint64_t bytes_read = 0;  // total streamed bytes read so far (completed)
};

}  // namespace tierlm
