"""Reading and validating a tierlm package (docs/package-format.md) from Python.

`Package.open` checks the manifest, the graph and every weight file's size; `verify` checks the
CRC-32 of tensors on demand; `tensor` maps a tensor's bytes without reading them.
"""

import json
import os
import zlib

import numpy as np

from tierlm.dtypes import NUMPY_DTYPES, PACKAGE_DTYPES, dtype_nbytes, stored_shape, to_f32
from tierlm.errors import CorruptError, InvalidArgumentError, NotFoundError, UnsupportedError
from tierlm.graph import graph_check
from tierlm.package_format import ALIGN, FORMAT, FORMAT_VERSION, GRAPH, MANIFEST
from tierlm.package_schema import check_graph_types, check_manifest_types

_CRC_CHUNK = 16 << 20


class Package:
    """An exported model: manifest, config, graph and tensors, validated on open."""

    def __init__(self, path, manifest, graph):
        self.path = path
        self.manifest = manifest
        self.graph = graph
        self.config = manifest["config"]
        self.architecture = manifest["architecture"]
        self.tensors = manifest["tensors"]

    @classmethod
    def open(cls, path):
        path = os.fspath(path)
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.isdir(path):
            raise NotFoundError(f"{path}: package directory does not exist")
        manifest = _read_json(manifest_path)
        check_manifest_types(manifest, manifest_path)
        if manifest.get("format") != FORMAT:
            raise CorruptError(
                f"{manifest_path}: format is {manifest.get('format')!r}, not {FORMAT}"
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CorruptError(f"{manifest_path}: format_version {version!r} is not valid")
        if version > FORMAT_VERSION:
            raise UnsupportedError(
                f"{manifest_path}: package format version {version} is newer than this tierlm "
                f"reads (version {FORMAT_VERSION}); upgrade tierlm or re-export the model"
            )
        for key in ("architecture", "config", "files", "tensors"):
            if key not in manifest:
                raise CorruptError(f"{manifest_path}: missing key {key!r}")
        _check_files(path, manifest)
        graph = _read_json(os.path.join(path, GRAPH))
        check_graph_types(graph, os.path.join(path, GRAPH))
        graph_check(graph, manifest["tensors"], os.path.join(path, GRAPH))
        return cls(path, manifest, graph)

    def file_path(self, name):
        return os.path.join(self.path, self.tensors[name]["file"])

    def info(self, name):
        if name not in self.tensors:
            raise NotFoundError(f"{self.path}: package has no tensor {name!r}")
        return self.tensors[name]

    def tensor(self, name):
        """Returns a read-only np.memmap of the stored values (bf16 as uint16 bit patterns; a
        block type as its bytes, [rows, row_bytes] uint8)."""
        info = self.info(name)
        dtype = NUMPY_DTYPES[info["dtype"]]
        shape = stored_shape(info["dtype"], info["shape"])
        return np.memmap(self.file_path(name), dtype, "r", info["offset"], shape)

    def array(self, name):
        """Returns the tensor's values as a float32 array (a copy unless stored as f32)."""
        info = self.info(name)
        return to_f32(self.tensor(name), info["dtype"], info["shape"]).reshape(info["shape"])

    def verify(self, names=None):
        """Checks the CRC-32 of the named tensors (all by default); raises CorruptError naming
        the first tensor whose bytes do not match."""
        for name in names or self.tensors:
            info = self.info(name)
            path = self.file_path(name)
            crc = 0
            with open(path, "rb") as f:
                f.seek(info["offset"])
                left = info["nbytes"]
                while left:
                    data = f.read(min(left, _CRC_CHUNK))
                    if not data:
                        raise CorruptError(f"{path}: tensor {name} is cut short (truncated file)")
                    crc = zlib.crc32(data, crc)
                    left -= len(data)
            if crc != info["crc32"]:
                raise CorruptError(
                    f"{path}: tensor {name} ({info['nbytes']} B at offset {info['offset']}) "
                    f"fails its checksum (crc32 {crc:#010x}, manifest says {info['crc32']:#010x}); "
                    "the file is damaged: re-export or re-copy the package"
                )

    def tokenizer_dir(self):
        """The tokenizer directory, or None when the checkpoint had no tokenizer files."""
        tokenizer = self.manifest.get("tokenizer")
        if not tokenizer:
            return None
        name = tokenizer.get("dir")
        if not isinstance(name, str) or os.path.isabs(name) or ".." in name.split("/") or not name:
            raise CorruptError(
                f"{os.path.join(self.path, 'manifest.json')}: tokenizer.dir {name!r} points "
                'outside the package (it must be a relative path without "..")'
            )
        return os.path.join(self.path, name)


def _read_json(path):
    if not os.path.exists(path):
        raise NotFoundError(f"{path}: missing (not a tierlm package, or an unfinished copy)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise CorruptError(f"{path}: not valid JSON ({error})") from None


def _check_files(path, manifest):
    sizes = {}
    for entry in manifest["files"]:
        file = os.path.join(path, entry["name"])
        if not os.path.exists(file):
            first = next(
                (n for n, t in manifest["tensors"].items() if t["file"] == entry["name"]), None
            )
            raise NotFoundError(
                f"{file}: weight file is missing (it holds tensor {first} and others); "
                "re-export or re-copy the package"
            )
        sizes[entry["name"]] = (os.path.getsize(file), entry["size"])
    for name, t in manifest["tensors"].items():
        if t["file"] not in sizes:
            raise CorruptError(f"manifest.json: tensor {name} names unknown file {t['file']}")
        for field in ("offset", "nbytes"):
            if not isinstance(t[field], int) or t[field] < 0:
                raise CorruptError(
                    f"manifest.json: tensor {name}: {field} {t[field]!r} is not a byte count "
                    "(an integer, 0 or more)"
                )
        if t["dtype"] not in PACKAGE_DTYPES:
            raise CorruptError(f"manifest.json: tensor {name} has unknown dtype {t['dtype']!r}")
        try:
            nbytes = dtype_nbytes(t["dtype"], t["shape"], f"manifest.json: tensor {name}")
        except InvalidArgumentError as error:
            raise CorruptError(str(error)) from None
        if t["nbytes"] != nbytes or t["offset"] % ALIGN:
            raise CorruptError(
                f"manifest.json: tensor {name}: nbytes {t['nbytes']} or offset {t['offset']} "
                f"does not fit shape {t['shape']} {t['dtype']} with {ALIGN}-byte alignment"
            )
        actual, _ = sizes[t["file"]]
        if t["offset"] + t["nbytes"] > actual:
            raise CorruptError(
                f"{os.path.join(path, t['file'])}: tensor {name} ({t['nbytes']} B at offset "
                f"{t['offset']}) lies beyond the end of the file ({actual} B): the file is "
                "truncated; re-export or re-copy the package"
            )
    for name, (actual, expected) in sizes.items():
        if actual != expected:
            raise CorruptError(
                f"{os.path.join(path, name)}: size {actual} B, manifest says {expected} B "
                "(damaged or partly copied package)"
            )
