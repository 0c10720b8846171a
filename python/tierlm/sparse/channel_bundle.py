"""Matrices stored by input channel, for input-channel sparsity (tierlm.sparse.channel): per
decoder layer and site a file `channel-{layer}-{site}.bin` whose row j (at j * row_bytes) is
column j of every matrix of the site, concatenated ([q | k | v], [o], [gate | up], [down]).
Skipping an input channel skips one contiguous row; neighbouring channels coalesce. The file
is zero-padded to a multiple of 4 KiB; `channels.json` lists the layouts.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tierlm.quant import BLOCKS, row_bytes
from tierlm.sparse.bundle import ALIGNMENT, RowFile, to_dtype
from tierlm.sparse.channel import SITES, site_modules

CHANNELS_JSON = "channels.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ChannelLayout(RowFile):
    """One site's file, read like a bundle file (tierlm.sparse.bundle.read_requests):
    n_neurons is the number of input channels (rows), row_elems the summed output widths."""

    file: str
    layer: int
    site: str
    n_neurons: int
    outs: tuple  # output width of each matrix, in SITES order
    dtype: str

    @property
    def row_elems(self):
        return int(sum(self.outs))

    @property
    def row_bytes(self):
        """Block types: each matrix's part is whole blocks along its outputs."""
        if self.dtype in BLOCKS:
            return sum(row_bytes(self.dtype, out, self.file) for out in self.outs)
        return super().row_bytes

    def to_json(self):
        d = asdict(self)
        d.update(outs=list(self.outs), row_bytes=self.row_bytes, nbytes=self.file_bytes)
        return d


def site_weights(layer_module, site):
    """The site's matrices [out_k, in] (nn.Linear layout) as f32 numpy arrays."""
    return [m.weight.detach().float().numpy() for m in site_modules(layer_module, site)]


def write_channel_bundles(loaded, out_dir, dtype="f16", rotation=None):
    """Writes every site's file of every layer of a loaded Llama-family model and
    channels.json; returns the layouts. rotation (channel_rotation.ChannelRotation): the
    sites it rotates get the rotated matrices W Q, whose columns the rotated channels
    pick."""
    from tierlm.sparse.channel_rotation import rotated_columns

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layouts = []
    for i, layer in enumerate(loaded.layers):
        for site in SITES:
            mats = site_weights(layer, site)
            rot = None if rotation is None else rotation.of(i, site)
            if rot is not None:
                mats = [rotated_columns(m, rot) for m in mats]
            cols = np.concatenate([m.T for m in mats], axis=1)  # [in, sum(out)]
            name = f"channel-{i}-{site}.bin"
            lay = ChannelLayout(
                name, i, site, cols.shape[0], tuple(m.shape[0] for m in mats), dtype
            )
            with open(out_dir / name, "wb") as f:
                f.write(np.ascontiguousarray(to_dtype(cols, dtype)).tobytes())
                f.write(b"\0" * (lay.file_bytes - lay.data_bytes))
            layouts.append(lay)
    meta = {
        "format_version": FORMAT_VERSION,
        "alignment": ALIGNMENT,
        "sites": [lay.to_json() for lay in layouts],
    }
    (out_dir / CHANNELS_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return layouts


def load_channel_layouts(directory):
    """{(layer, site): ChannelLayout} from channels.json, each file checked for its size."""
    directory = Path(directory)
    path = directory / CHANNELS_JSON
    if not path.exists():
        raise FileNotFoundError(
            f"{directory}: no {CHANNELS_JSON} (write the channel bundles with "
            "tierlm.sparse.channel_bundle.write_channel_bundles)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta['format_version']} is newer than this tierlm")
    out = {}
    for s in meta["sites"]:
        lay = ChannelLayout(
            s["file"], s["layer"], s["site"], s["n_neurons"], tuple(s["outs"]), s["dtype"]
        )
        size = (directory / lay.file).stat().st_size if (directory / lay.file).exists() else -1
        if size < lay.file_bytes:
            raise ValueError(
                f"{directory / lay.file}: {max(size, 0)} bytes, the layout needs "
                f"{lay.file_bytes} (file missing or truncated: write the bundles again)"
            )
        out[(lay.layer, lay.site)] = lay
    return out
