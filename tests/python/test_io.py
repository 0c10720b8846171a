import errno
import gc
import json
import os
import threading
import weakref

import numpy as np
import pytest
import tierlm
from conftest import IO_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm import io
from tierlm.cli import main as cli_main


def make_file(path, size, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def python_read(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def aligned(nbytes, shift=0):
    """A uint8 numpy array whose data starts `shift` bytes after a 4 KiB boundary."""
    raw = np.empty(nbytes + 8192, np.uint8)
    start = (-raw.ctypes.data) % 4096 + shift
    return raw[start : start + nbytes]


SIZE = 5 * 4096 * 3 + 77  # ends mid-page


def test_random_offsets_and_lengths_match_python(tmp_path, backend):
    path = tmp_path / "data.bin"
    make_file(path, SIZE, seed=1)
    rng = np.random.default_rng(2)
    lengths = [1, 4095, 4096, 4097, 8191, 12289, 3, SIZE] + list(rng.integers(1, 20000, 20))
    for direct in (True, False):
        with io.File(path, "r", backend=backend, queue_depth=8, direct=direct) as f:
            assert f.backend == backend
            assert f.size == SIZE
            for length in lengths:
                length = int(length)
                offset = 0 if length == SIZE else int(rng.integers(0, SIZE - length + 1))
                expect = python_read(path, offset, length)
                for buf in (bytearray(length), aligned(length, 1), aligned(length, 0)):
                    assert f.read(buf, offset) == length
                    assert bytes(buf) == expect, (length, offset)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_reads_equal_python_reads(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "property.bin"
    if not path.exists():
        make_file(path, SIZE, seed=3)
    backend = data.draw(st.sampled_from(IO_BACKENDS))
    if backend == "uring" and not io.probe()["uring_available"]:
        backend = "threads"
    offset = data.draw(st.integers(0, SIZE - 1))
    length = data.draw(st.integers(1, SIZE - offset))
    shift = data.draw(st.integers(0, 4095))
    with io.File(path, backend=backend, queue_depth=4) as f:
        buf = aligned(length, shift)
        assert f.pread(buf, offset).result() == length
        assert buf.tobytes() == python_read(path, offset, length)


def test_torch_and_typed_numpy_buffers(tmp_path, backend):
    torch = pytest.importorskip("torch")
    path = tmp_path / "typed.bin"
    data = make_file(path, 4 * 4096 + 12, seed=4)
    with io.File(path, backend=backend) as f:
        t = torch.empty(4096, dtype=torch.float32)  # 16 KiB
        assert f.read(t, 0) == 4 * 4096
        assert t.numpy().tobytes() == data[: 4 * 4096]
        a = np.empty(3, np.float64)
        assert f.pread(a, 7).result() == 24
        assert a.tobytes() == data[7:31]
        with pytest.raises(TypeError, match="C-contiguous"):
            f.read(np.empty((4, 4))[:, 1], 0)
        with pytest.raises(TypeError, match="writable"):
            f.read(b"read-only", 0)


def test_aligned_requests_use_o_direct(tmp_path, backend):
    path = tmp_path / "aligned.bin"
    size = 32 * 4096
    data = make_file(path, size, seed=5)
    with io.File(path, backend=backend) as f:
        if not f.direct:
            pytest.skip(f"no O_DIRECT here: {f.direct_reason}")
        for length in (4096, 8192, 7 * 4096, size):
            buf = aligned(length)
            for offset in range(0, size - length + 1, 5 * 4096):
                assert f.read(buf, offset) == length
                assert buf.tobytes() == data[offset : offset + length]


def test_host_tier_buffers_go_straight_to_the_engine(tmp_path, backend):
    path = tmp_path / "host.bin"
    data = make_file(path, 3 * 4096 + 9, seed=12)
    buf = tierlm.HostTier("1MiB").allocate(3 * 4096)  # page-aligned: O_DIRECT where allowed
    with io.File(path, backend=backend) as f:
        assert f.pread(buf, 0).result() == 3 * 4096
        assert buf.numpy().tobytes() == data[: 3 * 4096]
        with io.File(tmp_path / "copy.bin", "w", backend=backend) as out:
            out.write(buf, 4096)
    assert (tmp_path / "copy.bin").read_bytes() == bytes(4096) + data[: 3 * 4096]


def test_batch_bigger_than_queue_depth(tmp_path, backend):
    path = tmp_path / "batch.bin"
    size = 300 * 1000 + 7
    data = make_file(path, size, seed=6)
    out = np.zeros(size, np.uint8)
    requests = [(out[o : o + 1000], o) for o in range(0, size, 1000)]
    with io.File(path, backend=backend, queue_depth=4) as f:
        futures = f.pread_batch(requests)
        assert len(futures) == 301
        assert [fut.result() for fut in futures] == [len(b) for b, _ in requests]
    assert out.tobytes() == data


def test_concurrent_requests_from_threads(tmp_path, backend):
    path = tmp_path / "shared.bin"
    size = 40 * 4096 + 5
    data = make_file(path, size, seed=7)
    errors = []
    with io.File(path, backend=backend, queue_depth=8) as f:

        def worker(seed):
            rng = np.random.default_rng(seed)
            for _ in range(20):
                pairs = []
                for _ in range(5):
                    n = int(rng.integers(1, 9000))
                    pairs.append((bytearray(n), int(rng.integers(0, size - n))))
                for fut, (buf, offset) in zip(f.pread_batch(pairs), pairs, strict=True):
                    fut.result()
                    if bytes(buf) != data[offset : offset + len(buf)]:
                        errors.append((offset, len(buf)))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_writes_then_reads(tmp_path, backend):
    path = tmp_path / "written.bin"
    size = 17 * 4096 + 3
    data = np.random.default_rng(8).integers(0, 256, size, dtype=np.uint8)
    with io.File(path, "w", backend=backend, queue_depth=4) as f:
        page_aligned = aligned(8 * 4096)
        page_aligned[:] = data[4096 : 9 * 4096]
        pairs = [(page_aligned, 4096), (data[:4096], 0)]
        pairs += [(data[o : o + 999], o) for o in range(9 * 4096, size, 999)]
        for fut in f.pwrite_batch(pairs):
            fut.result()
        f.sync()
        assert f.size == size
        with pytest.raises(tierlm.InvalidArgumentError, match="writing only"):
            f.read(bytearray(1), 0)
    assert path.read_bytes() == data.tobytes()
    with io.File(path, "r+", backend=backend) as f:
        f.write(b"\x01" * 5001, 4095)
        back = bytearray(5003)
        f.read(back, 4094)
    assert bytes(back) == data[4094:4095].tobytes() + b"\x01" * 5001 + data[9096:9097].tobytes()
    with io.File(path, "r", backend=backend) as f, pytest.raises(tierlm.InvalidArgumentError):
        f.write(b"x", 0)
    f.close()  # closing twice is fine
    with pytest.raises(tierlm.InvalidArgumentError, match="closed"):
        f.read(bytearray(1), 0)


def test_missing_file_and_permission(tmp_path, backend):
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        io.File(missing, backend=backend)
    with pytest.raises(FileNotFoundError, match="directory exist"):
        io.File(tmp_path / "no" / "dir.bin", "w", backend=backend)
    denied = tmp_path / "denied.bin"
    denied.write_bytes(b"abc")
    denied.chmod(0)
    if os.geteuid() == 0:  # root ignores modes; a sysfs attribute with no store refuses writers
        denied = "/sys/devices/system/cpu/online"
    try:
        io.File(denied, "r+", backend=backend).close()
    except PermissionError as error:
        assert str(denied) in str(error)
        assert error.errno == errno.EACCES
    except OSError as error:
        pytest.skip(f"no permission error to test here: {error}")
    else:
        pytest.skip(f"could open {denied} for writing")


def test_read_past_end_of_file(tmp_path, backend):
    path = tmp_path / "short.bin"
    make_file(path, 3 * 4096 + 100, seed=9)
    with io.File(path, backend=backend) as f:
        buf = aligned(2 * 4096)
        with pytest.raises(tierlm.CorruptError) as info:
            f.read(buf, 2 * 4096)
        message = str(info.value)
        for part in (str(path), "offset 8192", "8192 bytes", "file size 12388", "truncated?"):
            assert part in message
        fut = f.pread(bytearray(10), 20000)
        with pytest.raises(tierlm.CorruptError, match="truncated"):
            fut.result()


def test_eio_fails_its_future_only(backend):
    # /proc/self/mem at address 0 (never mapped) is a real EIO from the kernel.
    with io.File("/proc/self/mem", backend=backend) as f:
        with pytest.raises(OSError) as info:
            f.read(bytearray(64), 0)
        assert info.value.errno == errno.EIO
        assert "/proc/self/mem" in str(info.value) and "64 bytes at offset 0" in str(info.value)
        secret = np.frombuffer(b"tierlm reads its own memory", np.uint8).copy()
        good = bytearray(secret.nbytes)
        bad, ok = f.pread_batch([(bytearray(8), 4096), (good, secret.ctypes.data)])
        with pytest.raises(OSError, match="Input/output error"):
            bad.result()
        assert ok.result() == secret.nbytes and bytes(good) == secret.tobytes()


def test_enospc_on_write(backend):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with io.File("/dev/full", "w", backend=backend) as f:
        for buf in (b"x", aligned(8192)):
            with pytest.raises(OSError) as info:
                f.write(buf, 0)
            assert info.value.errno == errno.ENOSPC
            assert "/dev/full" in str(info.value) and "at offset 0" in str(info.value)
        with pytest.raises(OSError, match="No space left"):
            f.pwrite(b"abc", 4096).result()


def test_forced_fallback(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    monkeypatch.setenv("TIERLM_IO", "threads")
    assert io.File(path).backend == "threads"
    monkeypatch.setenv("TIERLM_IO", "fast")
    with pytest.raises(tierlm.InvalidArgumentError, match="TIERLM_IO"):
        io.File(path)
    monkeypatch.setenv("TIERLM_IO", "uring")
    assert io.File(path, backend="threads").backend == "threads"  # code wins
    if io.probe()["uring_available"]:
        assert io.File(path).backend == "uring"
    else:
        with pytest.raises(tierlm.UnsupportedError, match="TIERLM_IO=threads"):
            io.File(path)
    monkeypatch.delenv("TIERLM_IO")
    probe = io.probe()
    assert io.File(path).backend == probe["chosen"]
    assert probe["reason"]
    assert probe["uring_available"] <= probe["uring_compiled"]
    with pytest.raises(tierlm.InvalidArgumentError, match="back end"):
        io.File(path, backend="fast")
    with pytest.raises(tierlm.InvalidArgumentError, match="queue depth"):
        io.File(path, queue_depth=0)


def test_future_keeps_buffer_alive(tmp_path, backend):
    path = tmp_path / "alive.bin"
    make_file(path, 1 << 20, seed=10)
    f = io.File(path, backend=backend)
    buf = np.empty(1 << 20, np.uint8)
    ref = weakref.ref(buf)
    fut = f.pread(buf, 0)
    del buf
    gc.collect()
    assert ref() is not None  # held until the request is done
    assert fut.result() == 1 << 20
    del fut
    f.close()
    gc.collect()
    assert ref() is None


def test_registered_buffer(tmp_path, backend):
    path = tmp_path / "fixed.bin"
    data = make_file(path, 8 * 4096 + 1, seed=11)
    with io.File(path, backend=backend) as f:
        buf = aligned(8 * 4096)
        assert f.register_buffer(buf) == (backend == "uring")
        f.read(buf, 1)
        assert buf.tobytes() == data[1:]
        f.unregister_buffer(buf)


def test_drop_cache_and_bench_cli(tmp_path, capsys):
    path = tmp_path / "bench.bin"
    assert cli_main(["bench", "io", str(path), "--create", "1MiB", "--seconds", "0.1"]) == 0
    assert "IOPS" in capsys.readouterr().out
    io.drop_cache(path)
    argv = ["bench", "io", str(path), "--block", "4KiB", "--qd", "3", "--seconds", "0.1"]
    assert cli_main([*argv, "--backend", "threads", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "threads" and result["queue_depth"] == 3
    assert result["requests"] > 0 and result["bytes"] == 4096 * result["requests"]
    assert cli_main(["bench", "io", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


SECCOMP_CHILD = """
import ctypes, json, sys
import tierlm
from tierlm import io
probe = io.probe()
out = {"probe": probe}
try:
    io.File(sys.argv[1], backend="uring")
except tierlm.UnsupportedError as error:
    out["uring_error"] = str(error)
with io.File(sys.argv[1]) as f:
    buf = bytearray(5)
    f.read(buf, 1)
    out["backend"], out["data"] = f.backend, buf.decode()
print(json.dumps(out))
"""


def _forbid_io_uring():
    """Installs a seccomp filter failing io_uring_setup with EPERM, as many containers do."""
    import ctypes
    import struct

    def insn(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)

    program = b"".join(
        [
            insn(0x20, 0, 0, 4),  # load arch
            insn(0x15, 1, 0, 0xC000003E),  # x86_64? skip the next instruction
            insn(0x06, 0, 0, 0x7FFF0000),  # other arch: allow
            insn(0x20, 0, 0, 0),  # load syscall number
            insn(0x15, 0, 1, 425),  # io_uring_setup
            insn(0x06, 0, 0, 0x00050000 | errno.EPERM),  # fail with EPERM
            insn(0x06, 0, 0, 0x7FFF0000),  # allow
        ]
    )
    filters = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def test_auto_falls_back_when_seccomp_forbids_io_uring(tmp_path):
    import platform
    import subprocess
    import sys

    if platform.machine() != "x86_64":
        pytest.skip("the seccomp filter in this test is written for x86_64")
    if not io.probe()["uring_available"]:
        pytest.skip(f"io_uring already unavailable: {io.probe()['reason']}")
    path = tmp_path / "seccomp.bin"
    path.write_bytes(b"0hello")
    env = {k: v for k, v in os.environ.items() if k != "TIERLM_IO"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SECCOMP_CHILD, str(path)],
            preexec_fn=_forbid_io_uring,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot install a seccomp filter here: {error}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["probe"]["uring_available"] is False
    assert out["probe"]["chosen"] == "threads"
    assert "seccomp" in out["probe"]["reason"]
    assert "Operation not permitted" in out["probe"]["reason"]
    assert "TIERLM_IO=threads" in out["uring_error"] and "seccomp" in out["uring_error"]
    assert out["backend"] == "threads" and out["data"] == "hello"


def test_result_releases_the_buffer_at_once(tmp_path):
    # A finished request must not keep its buffer (e.g. host-tier memory) charged.
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)
    tier = tierlm.HostTier(8192)
    with tierlm.io.File(str(path), "r") as f:
        for _ in range(3):
            buf = tier.allocate(4096)
            f.pread(buf.numpy(), 4096).result()
            del buf
            assert tier.stats()["current"] == 0


def test_trace_records_each_request_from_submission_to_landing(tmp_path, backend):
    """io.trace(): every asynchronous request once, in submission order, with its file, offset
    and length, submitted before it landed, both within the block on time.monotonic's clock;
    synchronous reads and requests after the block are not recorded."""
    import time

    path = tmp_path / "data.bin"
    make_file(path, SIZE, seed=3)
    spans = [(0, 1), (4095, 4097), (8192, 4096), (1, SIZE - 1)]
    with io.File(path, "r", backend=backend) as f:
        bufs = [bytearray(n) for _, n in spans]
        with io.trace() as records:
            t0 = time.monotonic()
            f.read(bytearray(3), 5)
            futures = f.pread_batch([(b, o) for b, (o, _) in zip(bufs, spans, strict=True)])
            assert [fu.result() for fu in futures] == [n for _, n in spans]
            t1 = time.monotonic()
            with pytest.raises(tierlm.InvalidArgumentError, match="a recording is already running"):
                with io.trace():
                    pass
        f.pread(bytearray(7), 0).result()
    assert [(r["offset"], r["len"]) for r in records] == spans
    for r in records:
        assert r["path"] == str(path)
        assert t0 <= r["submitted"] <= r["landed"] <= t1
    with io.trace() as again:  # the hook is free again after a refused start
        pass
    assert again == []
