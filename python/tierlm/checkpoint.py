"""Reads Hugging Face safetensors checkpoints (one file, or shards with an index) one tensor at
a time, straight from the file's bytes: no framework, nothing loaded beyond the tensor asked for.
"""

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from tierlm.dtypes import DTYPE_SIZES, safetensors_dtype
from tierlm.errors import CorruptError, NotFoundError, UnsupportedError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_MAX_HEADER = 100 << 20


@dataclass
class Entry:
    file: str  # path of the safetensors file
    dtype: str  # package dtype
    shape: tuple
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptError(f"{path}: {size} bytes is too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise CorruptError(f"{path}: header length {length} does not fit the file ({size} B)")
        try:
            header = json.loads(f.read(length))
        except ValueError as error:
            raise CorruptError(f"{path}: safetensors header is not JSON ({error})") from None
    header.pop("__metadata__", None)
    base, entries = 8 + length, {}
    for name, info in header.items():
        dtype = safetensors_dtype(info["dtype"], name, path)
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != nbytes or base + end > size:
            raise CorruptError(
                f"{path}: tensor {name} ({nbytes} B at offset {base + begin}) does not fit the "
                f"file ({size} B; truncated download?)"
            )
        entries[name] = Entry(path, dtype, shape, base + begin, nbytes)
    return entries


class Checkpoint:
    """The tensors of a checkpoint directory, by checkpoint name."""

    def __init__(self, hf_dir):
        self.dir = os.fspath(hf_dir)
        index = os.path.join(self.dir, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map", {})
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(self.dir, SINGLE)):
            files, weight_map = [SINGLE], None
        else:
            found = sorted(n for n in os.listdir(self.dir) if n.endswith(".safetensors"))
            if not found:
                others = [n for n in os.listdir(self.dir) if n.endswith((".bin", ".pt", ".pth"))]
                hint = (
                    f" (found {', '.join(others[:3])}: re-save it with "
                    "save_pretrained(safe_serialization=True))"
                    if others
                    else ""
                )
                raise NotFoundError(f"{self.dir}: no safetensors weights{hint}")
            files, weight_map = found, None
        self.entries = {}
        for name in files:
            path = os.path.join(self.dir, name)
            if not os.path.exists(path):
                raise NotFoundError(f"{index}: shard {name} is missing from {self.dir}")
            for tensor, entry in _read_header(path).items():
                if weight_map is not None and weight_map.get(tensor) not in (None, name):
                    continue  # the index says another shard owns it
                self.entries[tensor] = entry
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.entries))
            if missing:
                raise CorruptError(
                    f"{index}: tensor {missing[0]} is listed in shard {weight_map[missing[0]]} "
                    f"but that shard does not hold it ({len(missing)} missing)"
                )

    def raw(self, name):
        """Returns the tensor's bytes as a read-only uint8 array backed by the file."""
        entry = self.entries[name]
        if entry.nbytes == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(entry.file, np.uint8, "r", entry.start, (entry.nbytes,))

    def __contains__(self, name):
        return name in self.entries


def check_no_quantization(hf, where):
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "unknown")
        raise UnsupportedError(
            f"{where}: quantized checkpoints ({method}) are not supported; export the "
            "full-precision checkpoint"
        )
