"""Atomic training checkpoints: a directory per save, files fsynced, then LATEST flipped.

Layout: DIR/LATEST names DIR/ckpt-<step>-<nonce>/ holding manifest.json (units, sizes,
CRC-32 of every file) and unit-NNNN.bin (params fp32, then exp_avg, exp_avg_sq). A save killed
at any point leaves LATEST pointing at the previous complete checkpoint.
"""

import json
import os
import shutil
import time
import zlib

import numpy as np

from tierlm import writer
from tierlm.errors import CorruptError

FORMAT = "tierlm-train-checkpoint"
VERSION = 1
LATEST = "LATEST"
MANIFEST = "manifest.json"


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path, parts):
    """Writes the byte parts to path (fsynced) and returns their CRC-32 and length."""
    crc = 0
    size = 0
    with writer.writing(path), open(path, "wb") as f:
        for part in parts:
            mv = memoryview(np.ascontiguousarray(part)).cast("B")
            writer.write(f, mv)
            crc = zlib.crc32(mv, crc)
            size += len(mv)
        writer.fsync(f)
    return crc, size


def _replace_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with writer.writing(tmp), open(tmp, "w") as f:
            writer.write(f, text)
            writer.fsync(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(path) or ".")


def _latest_name(directory):
    try:
        with open(os.path.join(directory, LATEST)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def write(directory, name, meta, items, dp):
    """items: (unit, payload_fn) pairs this rank owns; dp: the trainer's DataParallel (ranks
    agree on one directory name and share their files' CRCs). Returns the checkpoint's path.
    A failure to write (ENOSPC, EIO, EFBIG) removes this save's files and raises an OSError
    naming the file; LATEST and the checkpoint it names are left as they were."""
    os.makedirs(directory, exist_ok=True)
    final_name = dp.agree(f"{name}-{time.time_ns()}")
    tmp = os.path.join(directory, f"{final_name}.tmp")
    final = os.path.join(directory, final_name)
    try:
        _write_files(directory, tmp, final, final_name, meta, items, dp)
    except OSError as error:
        latest = _latest_name(directory)
        shutil.rmtree(tmp, ignore_errors=True)
        if latest == final_name:  # only syncing the directory failed: LATEST moved already
            kept = f"LATEST names the new checkpoint {final}, whose files are complete"
        else:
            shutil.rmtree(final, ignore_errors=True)
            kept = (
                f"the previous checkpoint {os.path.join(directory, latest)} (LATEST) is intact"
                if latest
                else "no earlier checkpoint was there"
            )
        raise writer.write_error(error, f"checkpoint save to {directory}", kept) from error
    dp.barrier()
    return final


def _write_files(directory, tmp, final, final_name, meta, items, dp):
    os.makedirs(tmp, exist_ok=True)
    crcs = {}
    for u, payload in items:
        record = meta["units"][u.index]
        crc, size = _write_file(os.path.join(tmp, record["file"]), payload(u))
        crcs[record["file"]] = (crc, size)
    crcs = dp.merge(crcs)
    if dp.rank == 0:
        for record in meta["units"]:
            record["crc32"], record["bytes"] = crcs[record["file"]]
        _replace_atomic(os.path.join(tmp, MANIFEST), json.dumps(meta, indent=1))
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(directory)
        _replace_atomic(os.path.join(directory, LATEST), final_name + "\n")
        # Older checkpoints and leftovers of interrupted saves go only after LATEST moved on.
        for entry in os.listdir(directory):
            full = os.path.join(directory, entry)
            if entry.startswith("ckpt-") and entry != final_name and os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)


def _plain_name(name):
    """True for a file or folder name inside the checkpoint directory (no path, no '..')."""
    return (
        isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\0")
    )


def read_meta(directory):
    """(manifest dict, checkpoint path) of the checkpoint LATEST points to."""
    latest = os.path.join(directory, LATEST)
    try:
        with open(latest, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            e.errno, f"resume: {latest} does not exist; no checkpoint was saved in {directory}"
        ) from e
    name = data.decode("utf-8", "replace").strip()
    if not _plain_name(name):
        raise CorruptError(
            f"resume: {latest} names {name[:80]!r}, not a checkpoint folder inside {directory}"
        )
    path = os.path.join(directory, name)
    manifest = os.path.join(path, MANIFEST)
    try:
        with open(manifest, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as e:
        raise CorruptError(f"resume: {manifest} is missing ({latest} points at it)") from e
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptError(f"resume: {manifest} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "units" not in meta:
        raise CorruptError(f"resume: {manifest} is not a tierlm training checkpoint manifest")
    return meta, path


_CHUNK = 16 << 20  # bytes read at a time when only checking a file


def _open_unit(path, record):
    if not _plain_name(record["file"]):
        raise CorruptError(
            f"resume: {os.path.join(path, MANIFEST)}: unit {record.get('name')!r} has file "
            f"{record['file']!r}, not a file name inside the checkpoint"
        )
    full = os.path.join(path, record["file"])
    try:
        return full, open(full, "rb")
    except FileNotFoundError as e:
        raise CorruptError(f"resume: checkpoint file {full} is missing") from e


def _check(full, record, want, size, crc):
    if size != record.get("bytes", want) or size != want:
        raise CorruptError(
            f"resume: checkpoint file {full} is {size} bytes, expected {want} "
            "(truncated or from another model)"
        )
    if crc != record.get("crc32"):
        said = record.get("crc32")
        said = f"{said:#010x}" if isinstance(said, int) else repr(said)
        raise CorruptError(
            f"resume: checkpoint file {full} fails its CRC-32 check ({crc:#010x}, manifest "
            f"says {said}): the file is damaged"
        )


def verify_file(path, record, want):
    """Checks one unit file (its manifest record) against the manifest's length and CRC-32
    and the `want` bytes the trainer expects, reading it in chunks."""
    full, f = _open_unit(path, record)
    crc = size = 0
    with f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    _check(full, record, want, size, crc)


def read_file(path, record, want):
    """The bytes of one unit file, checked as verify_file checks them."""
    full, f = _open_unit(path, record)
    with f:
        data = f.read()
    _check(full, record, want, len(data), zlib.crc32(data))
    return data
