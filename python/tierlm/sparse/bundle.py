"""Row-column bundling (LLM in a flash, section 3.2): per FFN layer a file in which neuron
i's up-projection row, gate row (gated FFNs) and down-projection column lie next to each
other, so one contiguous read fetches one neuron; reads of adjacent neurons coalesce.

Layout of `ffn-bundle-{layer}.bin` (described by bundles.json, see docs/sparse.md):
row i at offset i * row_bytes holds [up_i | gate_i | down[:, i]] in the file's dtype; the
file starts 4 KiB-aligned and is zero-padded to a multiple of 4 KiB. Biases stay resident
(they are tiny) and are not in the bundle.
"""

import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tierlm import writer

ALIGNMENT = 4096
BUNDLES_JSON = "bundles.json"
FORMAT_VERSION = 1
_ESIZE = {"f32": 4, "f16": 2, "bf16": 2}


@dataclass(frozen=True)
class BundleLayout:
    file: str
    n_neurons: int
    dim: int
    gated: bool
    dtype: str

    @property
    def row_elems(self):
        return (3 if self.gated else 2) * self.dim

    @property
    def row_bytes(self):
        return self.row_elems * _ESIZE[self.dtype]

    @property
    def data_bytes(self):
        return self.n_neurons * self.row_bytes

    @property
    def file_bytes(self):
        return -(-self.data_bytes // ALIGNMENT) * ALIGNMENT

    crc32: int | None = None  # zlib CRC-32 of the rows, when known

    def to_json(self):
        d = asdict(self)
        if d["crc32"] is None:
            del d["crc32"]
        d.update(row_elems=self.row_elems, row_bytes=self.row_bytes, nbytes=self.file_bytes)
        return d


def to_dtype(a, dtype):
    """f32 array -> the stored element type (f16 and bf16 as uint16 words for bf16)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "f32":
        return a
    if dtype == "f16":
        return a.astype(np.float16)
    if dtype == "bf16":  # round to nearest even
        bits = a.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    raise ValueError(f"unknown dtype '{dtype}' (f32, f16, bf16)")


def from_dtype(a, dtype):
    """Stored rows -> f32."""
    if dtype == "bf16":
        return (np.asarray(a, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a).astype(np.float32)


def bundle_rows(up, down, gate=None):
    """Bundled rows [ffn, row_elems] (f32) from up [ffn, d], down [d, ffn], gate [ffn, d]."""
    up = np.asarray(up, np.float32)
    down = np.asarray(down, np.float32)
    ffn, dim = up.shape
    if down.shape != (dim, ffn):
        raise ValueError(f"down has shape {down.shape}, expected {(dim, ffn)} for up {up.shape}")
    parts = [up]
    if gate is not None:
        gate = np.asarray(gate, np.float32)
        if gate.shape != up.shape:
            raise ValueError(f"gate has shape {gate.shape}, expected {up.shape}")
        parts.append(gate)
    parts.append(down.T)
    return np.concatenate(parts, axis=1)


def write_bundle(path, up, down, gate=None, dtype="f16"):
    """Writes one layer's bundled file; returns its layout."""
    path = Path(path)
    rows = to_dtype(bundle_rows(up, down, gate), dtype)
    layout = BundleLayout(path.name, rows.shape[0], np.shape(up)[1], gate is not None, dtype)
    data = np.ascontiguousarray(rows).tobytes()
    with writer.writing(path), open(path, "wb") as f:
        writer.write(f, data)
        writer.write(f, b"\0" * (layout.file_bytes - layout.data_bytes))
        writer.fsync(f)
    return replace(layout, crc32=zlib.crc32(data))


def write_bundle_stored(path, up, down, gate=None, dtype="f16", chunk_bytes=16 << 20):
    """Like write_bundle, from arrays already in the stored dtype (f32 / f16 arrays, bf16 as
    uint16 words; e.g. a package's memory-mapped tensors): bytes are copied, never rounded
    again, and `chunk_bytes` of rows are assembled at a time so memory stays small."""
    path = Path(path)
    ffn, dim = up.shape
    if down.shape != (dim, ffn) or (gate is not None and gate.shape != up.shape):
        raise ValueError(f"bundle {path.name}: up {up.shape}, down {down.shape} do not match")
    layout = BundleLayout(path.name, ffn, dim, gate is not None, dtype)
    step = max(1, chunk_bytes // layout.row_bytes)
    crc = 0
    with writer.writing(path), open(path, "wb") as f:
        for s in range(0, ffn, step):
            e = min(ffn, s + step)
            parts = [np.asarray(up[s:e])]
            if gate is not None:
                parts.append(np.asarray(gate[s:e]))
            parts.append(np.asarray(down[:, s:e]).T)
            data = np.ascontiguousarray(np.concatenate(parts, axis=1)).tobytes()
            crc = zlib.crc32(data, crc)
            writer.write(f, data)
        writer.write(f, b"\0" * (layout.file_bytes - layout.data_bytes))
        writer.fsync(f)
    # CRC-32 of the rows (not the padding): tierlm.load(..., verify=True) checks it.
    return replace(layout, crc32=crc)


def write_bundles_json(out_dir, layouts):
    meta = {
        "format_version": FORMAT_VERSION,
        "alignment": ALIGNMENT,
        "layers": [layout.to_json() for layout in layouts],
    }
    (Path(out_dir) / BUNDLES_JSON).write_text(json.dumps(meta, indent=2) + "\n")


def write_bundles(out_dir, layers, dtype="f16"):
    """Writes ffn-bundle-{i}.bin for each (up, down, gate or None) and bundles.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layouts = [
        write_bundle(out_dir / f"ffn-bundle-{i}.bin", up, down, gate, dtype)
        for i, (up, down, gate) in enumerate(layers)
    ]
    write_bundles_json(out_dir, layouts)
    return layouts


def write_model_bundles(loaded, out_dir, dtype="f16"):
    """Bundles every FFN layer of a loaded OPT model (tierlm.sparse.model.LoadedModel)."""
    layers = []
    for i in range(loaded.num_layers):
        up, _, down, _ = loaded.ffn(i)
        layers.append((up, down, None))
    return write_bundles(out_dir, layers, dtype)


def load_layouts(directory):
    meta = json.loads((Path(directory) / BUNDLES_JSON).read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{directory}/{BUNDLES_JSON}: bundle format {meta['format_version']} is newer than "
            f"this tierlm reads ({FORMAT_VERSION})"
        )
    keys = ("file", "n_neurons", "dim", "gated", "dtype")
    return [BundleLayout(**{k: layer[k] for k in keys}) for layer in meta["layers"]]


def read_requests(layout, neurons, align=None):
    """Coalesced reads (offset, length) fetching the rows of `neurons` (sorted unique ids).

    Adjacent neurons merge into one request. With `align` (e.g. 4096, for O_DIRECT) each
    request is widened to aligned boundaries and requests that then touch are merged.
    """
    ids = np.asarray(neurons, dtype=np.int64)
    if ids.size == 0:
        return []
    if np.any(np.diff(ids) <= 0):
        raise ValueError("neuron ids must be sorted and unique")
    if ids[0] < 0 or ids[-1] >= layout.n_neurons:
        raise ValueError(
            f"neuron ids must lie in 0 .. {layout.n_neurons - 1} (got {ids[0]} .. {ids[-1]})"
        )
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = ids[np.concatenate([[0], breaks])]
    ends = ids[np.concatenate([breaks - 1, [ids.size - 1]])] + 1
    rb = layout.row_bytes
    requests = [(int(s) * rb, int(e - s) * rb) for s, e in zip(starts, ends, strict=True)]
    if not align:
        return requests
    merged = []
    for off, length in requests:
        lo = off // align * align
        hi = min(-(-(off + length) // align) * align, layout.file_bytes)
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in merged]


def read_rows(source, layout, neurons):
    """The bundled rows of sorted unique `neurons` as stored ([n, row_elems], file dtype),
    read through tierlm's I/O engine: one batch of coalesced requests, each landing directly
    in its place in the result. `source` is a path or an open tierlm.io.File."""
    from tierlm.io import File

    ids = np.asarray(neurons, dtype=np.int64)
    np_dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[layout.dtype]
    out = np.empty((ids.size, layout.row_elems), dtype=np_dtype)
    buf = out.reshape(-1).view(np.uint8)
    requests, pos = [], 0
    for off, length in read_requests(layout, ids):
        requests.append((buf[pos : pos + length], off))
        pos += length
    if not requests:
        return out
    file = source if isinstance(source, File) else File(source, "r")
    for future in file.pread_batch(requests):
        future.result()
    return out
