"""Per-step counters of the offload trainer (bytes per tier, seconds per activity), safe to add
to from the optimizer thread, and the StepStats they sum up to at the end of a step."""

import collections
import threading
import time


class StepStats(dict):
    """Per-step counters: bytes per tier, seconds per activity, overlap and tier peaks."""


class StepCounters:
    """Counters of the step in progress; reset() starts the next step."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        with self._lock:
            self._counts = collections.Counter()
            self._t_step = time.perf_counter()

    def add(self, key, amount):
        with self._lock:
            self._counts[key] += amount

    def add_all(self, amounts):
        with self._lock:
            self._counts.update(amounts)

    def summary(self, loss, host, disk):
        """The StepStats of the step so far; host and disk are the tiers' stats() (disk None
        when no state lives on disk)."""
        with self._lock:
            c = collections.Counter(self._counts)
        wall = time.perf_counter() - self._t_step
        background = c["optimizer"] + c["io_job"] + c["comm"]
        exposed = c["wait_optimizer"]
        overlap = 1.0 - min(exposed, background) / background if background > 0 else 1.0
        stats = StepStats(
            loss=loss,
            wall_s=wall,
            compute_s=max(0.0, wall - exposed - c["io_wait"]),
            io_wait_s=c["io_wait"],
            io_wait_forward_s=c["io_wait_forward"],
            io_wait_backward_s=c["io_wait_backward"],
            prefetch_misses=c["prefetch_miss"],
            prefetch_misses_forward=c["prefetch_miss_forward"],
            io_background_s=c["io_job"],
            optimizer_s=c["optimizer"],
            comm_s=c["comm"],
            optimizer_exposed_s=exposed,
            overlap=overlap,
            disk_read_bytes=c["disk_read"],
            disk_write_bytes=c["disk_write"],
            # Every disk transfer lands in or leaves from a host-tier staging buffer.
            host_bytes_in=c["disk_read"],
            host_bytes_out=c["disk_write"],
            host_peak=host["peak"],
            host_budget=host["budget"],
            host_current=host["current"],
            # Parameters copied to the compute device, gradients copied back (0 on the CPU).
            device_bytes_in=c["device_in"],
            device_bytes_out=c["device_out"],
            activation_bytes_offloaded=c["activations_out"],
        )
        if disk is not None:
            stats.update(disk_peak=disk["peak"], disk_budget=disk["budget"])
        return stats
