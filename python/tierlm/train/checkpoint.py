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
import torch

from tierlm.errors import CorruptError

LATEST = "LATEST"


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
    with open(path, "wb") as f:
        for part in parts:
            mv = memoryview(np.ascontiguousarray(part)).cast("B")
            f.write(mv)
            crc = zlib.crc32(mv, crc)
            size += len(mv)
        f.flush()
        os.fsync(f.fileno())
    return crc, size


def _replace_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def write(directory, name, meta, items, trainer):
    """items: (unit, payload_fn) pairs this rank owns; returns the checkpoint's path."""
    dist = torch.distributed
    multi = trainer.world > 1
    os.makedirs(directory, exist_ok=True)
    if multi:
        # Every rank must use the same directory name.
        box = [f"{name}-{time.time_ns()}" if trainer.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=trainer._pg)
        final_name = box[0]
    else:
        final_name = f"{name}-{time.time_ns()}"
    tmp = os.path.join(directory, f"{final_name}.tmp")
    final = os.path.join(directory, final_name)
    os.makedirs(tmp, exist_ok=True)
    crcs = {}
    for u, payload in items:
        record = meta["units"][u.index]
        crc, size = _write_file(os.path.join(tmp, record["file"]), payload(u))
        crcs[record["file"]] = (crc, size)
    if multi:
        gathered = [None] * trainer.world
        dist.all_gather_object(gathered, crcs, group=trainer._pg)
        for g in gathered:
            crcs.update(g)
    if trainer.rank == 0:
        for record in meta["units"]:
            record["crc32"], record["bytes"] = crcs[record["file"]]
        _replace_atomic(os.path.join(tmp, "manifest.json"), json.dumps(meta, indent=1))
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(directory)
        _replace_atomic(os.path.join(directory, LATEST), final_name + "\n")
        # Older checkpoints and leftovers of interrupted saves go only after LATEST moved on.
        for entry in os.listdir(directory):
            full = os.path.join(directory, entry)
            if entry.startswith("ckpt-") and entry != final_name and os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
    if multi:
        dist.barrier(group=trainer._pg)
    return final


def read_meta(directory):
    """(manifest dict, checkpoint path) of the checkpoint LATEST points to."""
    latest = os.path.join(directory, LATEST)
    try:
        with open(latest) as f:
            name = f.read().strip()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            e.errno, f"resume: {latest} does not exist; no checkpoint was saved in {directory}"
        ) from e
    path = os.path.join(directory, name)
    manifest = os.path.join(path, "manifest.json")
    try:
        with open(manifest) as f:
            meta = json.load(f)
    except FileNotFoundError as e:
        raise CorruptError(f"resume: {manifest} is missing ({latest} points at it)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptError(f"resume: {manifest} is not valid JSON ({e})") from e
    if meta.get("format") != "tierlm-train-checkpoint" or "units" not in meta:
        raise CorruptError(f"resume: {manifest} is not a tierlm training checkpoint manifest")
    return meta, path


def read_file(path, file, meta, want):
    """The bytes of one unit file, checked against the manifest's length and CRC-32."""
    full = os.path.join(path, file)
    record = next(r for r in meta["units"] if r["file"] == file)
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise CorruptError(f"resume: checkpoint file {full} is missing") from e
    if len(data) != record.get("bytes", want) or len(data) != want:
        raise CorruptError(
            f"resume: checkpoint file {full} is {len(data)} bytes, expected {want} "
            "(truncated or from another model)"
        )
    crc = zlib.crc32(data)
    if crc != record.get("crc32"):
        raise CorruptError(
            f"resume: checkpoint file {full} fails its CRC-32 check ({crc:#010x}, manifest "
            f"says {record.get('crc32', 0):#010x}): the file is damaged"
        )
    return data
