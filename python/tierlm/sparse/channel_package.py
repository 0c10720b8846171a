"""Input-channel sparsity in a package (docs/package-format.md, "channels"): per decoder layer
and site a file `channel-{layer}-{site}.bin` written from the package's own matrices, whose
row c is column c of every matrix of the site, plus the thresholds (channel_sparsity.json).
`tierlm.load(pkg, sparse=True)` then runs every site with a threshold > 0 input-channel sparse.

Columns of f32 / f16 / bf16 matrices are the stored values, transposed (exact). Matrices of a
block type are blocked along their input dimension, so a column is no whole block: their
columns are quantized again, as rows of W^T, to q8_0 (or the dtype asked for), whose blocks
then run along the output dimension ("transposed blocking").
"""

import os
import zlib

import numpy as np

from tierlm import writer
from tierlm.errors import CorruptError, InvalidArgumentError, UnsupportedError
from tierlm.quant import BLOCKS
from tierlm.sparse.bundle import ALIGNMENT, to_dtype
from tierlm.sparse.channel import CHANNEL_JSON, SITES, ChannelThresholds
from tierlm.sparse.channel_bundle import ChannelLayout
from tierlm.sparse.channel_rotation import ROTATION_FILE, rotated_columns
from tierlm.sparse.package import (
    read_manifest,
    set_manifest_section,
    stored_tensor,
    tensor_values,
)

# The package's tensors of each site, in tierlm.sparse.channel.SITES order.
SITE_TENSORS = {
    "attn_in": ("attn.q", "attn.k", "attn.v"),
    "attn_out": ("attn.o",),
    "ffn_in": ("ffn.gate", "ffn.up"),
    "ffn_down": ("ffn.down",),
}
CHANNEL_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
_REBLOCKED_DTYPE = "q8_0"  # columns of block-type matrices, unless asked otherwise
_CHUNK_BYTES = 16 << 20


def site_columns_dtype(dtypes, requested):
    """The channel file's dtype for matrices of `dtypes`: `requested`, else their own float
    dtype (copied exactly), else f32 for mixed floats, else q8_0 when any is a block type."""
    if requested is not None:
        if requested not in CHANNEL_DTYPES:
            raise InvalidArgumentError(
                f"channel dtype {requested!r} is not one of {', '.join(CHANNEL_DTYPES)}"
            )
        return requested
    if any(d in BLOCKS for d in dtypes):
        return _REBLOCKED_DTYPE
    return dtypes[0] if len(set(dtypes)) == 1 else "f32"


def _write_site(path, directory, tensors, names, dtype, rot=None):
    """Writes one site's channel file; returns (outs, crc32). rot: Q of a rotated
    site, whose file then holds the rotated matrices' columns (channel_rotation)."""
    outs = tuple(tensors[n]["shape"][0] for n in names)
    n_in = tensors[names[0]]["shape"][1]
    stored = [tensors[n]["dtype"] for n in names]
    exact = all(d == dtype for d in stored) and dtype not in BLOCKS and rot is None
    if dtype in BLOCKS:
        for n, out in zip(names, outs, strict=True):
            if out % BLOCKS[dtype][0]:
                raise UnsupportedError(
                    f"`{n}` has {out} outputs, not whole {dtype} blocks of {BLOCKS[dtype][0]}: "
                    "write the channel files in f16 (dtype='f16', --dtype f16)"
                )
    mats = [
        stored_tensor(directory, tensors, n) if exact else tensor_values(directory, tensors, n)
        for n in names
    ]
    if rot is not None:
        mats = [rotated_columns(np.asarray(m, np.float32), rot) for m in mats]
    lay = ChannelLayout(os.path.basename(path), 0, "", n_in, outs, dtype)
    step = max(1, _CHUNK_BYTES // max(1, lay.row_bytes))
    crc = 0
    with writer.writing(path), open(path, "wb") as f:
        for start in range(0, n_in, step):
            cols = np.concatenate([np.asarray(m[:, start : start + step]).T for m in mats], axis=1)
            if not exact:
                cols = to_dtype(cols, dtype)
            data = np.ascontiguousarray(cols).tobytes()
            crc = zlib.crc32(data, crc)
            writer.write(f, data)
        writer.write(f, b"\0" * (lay.file_bytes - lay.data_bytes))
        writer.fsync(f)
    return outs, crc


def write_package_channels(directory, tensors, config, thresholds, dtype=None):
    """Writes every site's channel file of every layer and the thresholds into the package
    directory being built (or an existing package); returns the manifest section."""
    if config.get("ffn") != "swiglu":
        raise UnsupportedError(
            f"{directory}: input-channel sparsity is for gated (Llama-family) models; this one's "
            f"FFN is {config.get('ffn')!r}"
        )
    if len(thresholds.layers) != config["num_layers"]:
        raise CorruptError(
            f"{CHANNEL_JSON}: thresholds for {len(thresholds.layers)} layers, the package has "
            f"{config['num_layers']}: calibrate on the same model"
        )
    sites = []
    for layer in range(config["num_layers"]):
        for site in SITES:
            names = [f"layers.{layer}.{t}.weight" for t in SITE_TENSORS[site]]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise UnsupportedError(f"{directory}: the package has no tensor {missing[0]}")
            site_dtype = site_columns_dtype([tensors[n]["dtype"] for n in names], dtype)
            file = f"channel-{layer}-{site}.bin"
            rot = None if thresholds.rotation is None else thresholds.rotation.of(layer, site)
            outs, crc = _write_site(
                os.path.join(directory, file), directory, tensors, names, site_dtype, rot
            )
            lay = ChannelLayout(file, layer, site, tensors[names[0]]["shape"][1], outs, site_dtype)
            sites.append({**lay.to_json(), "crc32": crc})
    thresholds.save(directory)
    section = {
        "json": CHANNEL_JSON,
        "alignment": ALIGNMENT,
        "target_sparsity": thresholds.target_sparsity,
        "sites": sites,
    }
    if thresholds.rotation is not None:  # the resident Q: covered by verify like the columns
        with open(os.path.join(directory, ROTATION_FILE), "rb") as f:
            section["rotation_crc32"] = zlib.crc32(f.read())
    return section


def register_channels(package_dir, thresholds, dtype=None):
    """Writes the channel files and thresholds into an existing package and lists them in its
    manifest ("channels", replacing an earlier calibration). Returns the section."""
    manifest = read_manifest(package_dir)
    section = write_package_channels(
        package_dir, manifest["tensors"], manifest["config"], thresholds, dtype
    )
    set_manifest_section(package_dir, "channels", section)
    return section


def copy_channels(hf_dir, out_dir, tensors, config):
    """At export: when the checkpoint directory carries channel_sparsity.json (written there by
    `tierlm sparse calibrate`), writes the channel files from the package being built; returns
    the manifest section or None."""
    if not os.path.isfile(os.path.join(hf_dir, CHANNEL_JSON)):
        return None
    return write_package_channels(out_dir, tensors, config, ChannelThresholds.load(hf_dir))
