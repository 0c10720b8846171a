"""File I/O through tierlm's engine (io_uring or a pread/pwrite thread pool).

Buffers are any C-contiguous CPU buffer: numpy arrays, torch CPU tensors, bytearray,
memoryview. A request reads or writes the buffer's whole size. Asynchronous calls return a
Future; the buffer is kept alive until its request completes, even if the Future is dropped.
"""

import contextlib
import threading

from tierlm import _core

__all__ = ["File", "Future", "InFlight", "drop_cache", "probe", "trace"]


def probe():
    """{"chosen", "reason", "uring_compiled", "uring_available"}: what `auto` picks and why."""
    return _core.io_probe()


def drop_cache(path):
    """Drops the file's pages from the page cache (posix_fadvise DONTNEED)."""
    _core.io_drop_cache(str(path))


@contextlib.contextmanager
def trace():
    """Records the engine's requests while the block runs, to see when the disk is busy: yields a
    list that receives, when the block ends, one dict per request in submission order: path,
    offset, len, submitted and landed (time.monotonic seconds; landed -1 while in flight). One
    recording at a time."""
    records = []
    _core.io_trace_record_start()
    try:
        yield records
    finally:
        records.extend(_core.io_trace_record_stop())


@contextlib.contextmanager
def _buffer_errors(what, buf):
    try:
        yield
    except TypeError as error:
        got = "" if buf is None else f"; got {type(buf).__name__}"
        raise TypeError(
            f"tierlm.io: {what} needs C-contiguous CPU buffers (numpy array, torch CPU tensor, "
            f"bytearray), writable for reads{got}"
        ) from error


class Future:
    """One asynchronous request. result() waits (without the GIL) and returns bytes moved."""

    __slots__ = ("_native", "_buffer", "_inflight")

    def __init__(self, native, buffer, inflight):
        self._native = native
        self._buffer = buffer
        self._inflight = inflight

    def result(self):
        try:
            return self._native.result()
        finally:
            # Done: the buffer (maybe tier memory) is the caller's again at once.
            self._buffer = None
            self._inflight.discard(self._native)

    def done(self):
        return self._native.done()

    def __repr__(self):
        return f"<tierlm.io.Future {'done' if self.done() else 'pending'}>"


class InFlight:
    """Buffers of requests in flight, so they outlive Futures the caller dropped (the native
    engine holds raw pointers). track() makes the Future of a native request; entries leave
    when its result() is taken, or in a sweep of finished ones. Every object that submits
    requests (a File, a DiskTier) keeps one; a lock makes it safe from several threads."""

    def __init__(self):
        self._requests = {}
        self._sweep_at = 64
        self._lock = threading.Lock()

    def track(self, native, buffer):
        """The Future of native request `native` reading into or writing from `buffer`."""
        with self._lock:
            self._requests[id(native)] = (native, buffer)
            if len(self._requests) >= self._sweep_at:
                self._requests = {k: v for k, v in self._requests.items() if not v[0].done()}
                self._sweep_at = max(64, 2 * len(self._requests))
        return Future(native, buffer, self)

    def discard(self, native):
        with self._lock:
            self._requests.pop(id(native), None)

    def wait_all(self):
        with self._lock:
            requests, self._requests = self._requests, {}
        for native, _ in requests.values():
            native.wait()

    def clear(self):
        with self._lock:
            self._requests = {}


class File:
    """A file opened for the engine: mode "r", "w" (create/truncate) or "r+".

    backend: "auto" (io_uring when the machine allows, else threads; TIERLM_IO overrides),
    "uring" or "threads". Requests whose buffer, offset and length are 4 KiB aligned use
    O_DIRECT where the file system allows (direct=False turns that off).
    """

    def __init__(self, path, mode="r", backend="auto", queue_depth=32, direct=True, threads=0):
        self._native = _core.File(str(path), mode, backend, queue_depth, direct, threads)
        self._inflight = InFlight()

    # Synchronous: return the bytes transferred (always the buffer's size) or raise.
    def read(self, buf, offset=0):
        with _buffer_errors("read", buf):
            return self._native.read(buf, offset)

    def write(self, buf, offset=0):
        with _buffer_errors("write", buf):
            return self._native.write(buf, offset)

    # Asynchronous: return a Future.
    def pread(self, buf, offset=0):
        with _buffer_errors("pread", buf):
            return self._inflight.track(self._native.pread(buf, offset), buf)

    def pwrite(self, buf, offset=0):
        with _buffer_errors("pwrite", buf):
            return self._inflight.track(self._native.pwrite(buf, offset), buf)

    def pread_batch(self, requests):
        """requests: [(buf, offset), ...], submitted at once; returns one Future each."""
        requests = list(requests)
        with _buffer_errors("pread_batch", None):
            natives = self._native.pread_batch(requests)
        return [self._inflight.track(n, buf) for n, (buf, _) in zip(natives, requests, strict=True)]

    def pwrite_batch(self, requests):
        requests = list(requests)
        with _buffer_errors("pwrite_batch", None):
            natives = self._native.pwrite_batch(requests)
        return [self._inflight.track(n, buf) for n, (buf, _) in zip(natives, requests, strict=True)]

    def register_buffer(self, buf):
        """Registers buf with the ring (fixed buffer); False where impossible. Keeps buf alive."""
        ok = self._native.register_buffer(buf)
        if ok:
            self._registered = getattr(self, "_registered", []) + [buf]
        return ok

    def unregister_buffer(self, buf):
        self._native.unregister_buffer(buf)
        self._registered = [b for b in getattr(self, "_registered", []) if b is not buf]

    @property
    def size(self):
        return self._native.size

    @property
    def path(self):
        return self._native.path

    @property
    def backend(self):
        return self._native.backend

    @property
    def direct(self):
        return self._native.direct

    @property
    def direct_reason(self):
        return self._native.direct_reason

    @property
    def queue_depth(self):
        return self._native.queue_depth

    @property
    def closed(self):
        return self._native.closed

    def sync(self):
        self._native.sync()

    def close(self):
        """Waits for requests in flight, then closes the file."""
        self._native.close()
        self._inflight.clear()
        self._registered = []

    def __del__(self):
        # Finish requests before the buffers they write into can be collected.
        native = getattr(self, "_native", None)
        if native is not None and not native.closed:
            native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{self.backend}, direct={self.direct}"
        return f"<tierlm.io.File {self.path!r} ({state})>"
