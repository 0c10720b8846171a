"""Runs every linear layer of a Llama-family torch model through the native input-channel
sparse pieces from torch hooks (the executor's own path is `tierlm.load(pkg, sparse=True)`
on a calibrated package; this one stays as the Python tools' reference), token by token:
per site the kept channels (|x| > threshold) go through a window of the last k tokens
(tierlm NeuronWindow over channels), the channel rows it asks for are read from the site's
channel bundle with 4 KiB-aligned O_DIRECT requests (neighbours coalesced, one pread_batch)
into a host-tier cache (NeuronCache), evicted rows leave it, and the native kernel sums the
cached columns of the kept channels. Counts per token: channels kept, rows and bytes read,
requests, cache hits.
"""

import numpy as np

from tierlm.sparse.bundle import ALIGNMENT, read_requests
from tierlm.sparse.channel import site_modules
from tierlm.sparse.channel_bundle import load_channel_layouts

_NP = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}
_COUNTERS = ("channels", "channels_kept", "bytes_kept", "rows_read", "bytes_read", "requests")


class _Site:
    """One site's channel cache, window, file and a 4 KiB-aligned staging buffer the size of
    the file (each request lands at its file offset; the executor's path stages in a
    bounded buffer)."""

    def __init__(self, directory, layout, threshold, k, tier, scale=None, rot=None):
        from tierlm import _core
        from tierlm.io import File
        from tierlm.sparse.cache import NeuronCache, NeuronWindow

        self.layout, self.threshold, self.scale = layout, float(threshold), scale
        self.rot = rot  # Q: x is rotated first; the file holds rotated columns
        self.cache = NeuronCache(
            tier, layout.n_neurons, layout.n_neurons, layout.row_elems, layout.dtype
        )
        self.window = NeuronWindow(layout.n_neurons, k)
        self.file = File(directory / layout.file, "r")
        raw = np.empty(layout.file_bytes + ALIGNMENT, np.uint8)
        skip = (-raw.ctypes.data) % ALIGNMENT
        self.staging = raw[skip : skip + layout.file_bytes]
        self.kernel = _core.channel_sparse_linear

    def read(self, ids, counts):
        """Rows of sorted ids as stored, through one batch of aligned requests."""
        lay = self.layout
        requests = read_requests(lay, ids, align=ALIGNMENT)
        for future in self.file.pread_batch(
            [(self.staging[off : off + n], off) for off, n in requests]
        ):
            future.result()
        counts["requests"] += len(requests)
        counts["bytes_read"] += sum(n for _, n in requests)
        counts["rows_read"] += ids.size
        rows = self.staging[: lay.data_bytes].view(_NP[lay.dtype]).reshape(lay.n_neurons, -1)
        return rows[ids]

    def token(self, x, counts):
        """y [row_elems] = sum over kept channels j of x_j * column j (all the site's outputs);
        a rotated site's x is its rotated input."""
        if self.rot is not None:
            x = (x @ self.rot).astype(np.float32)
        score = np.abs(x) if self.scale is None else np.abs(x) * self.scale
        kept = np.flatnonzero(score > self.threshold) if self.threshold > 0 else None
        if kept is None:
            kept = np.arange(x.size)
        load, evict = self.window.step(kept)
        if evict.size:
            self.cache.erase(evict)
        if load.size:
            load = np.sort(load)
            self.cache.insert(load, self.read(load, counts))
        counts["channels"] += x.size
        counts["channels_kept"] += kept.size
        counts["bytes_kept"] += kept.size * self.layout.row_bytes
        rows = self.cache.rows()
        # threshold < 0 in the kernel keeps every cached row: the window's union holds kept.
        cut = self.threshold if self.threshold > 0 else -1.0
        if self.scale is not None and self.threshold > 0:
            # The kernel cuts on |x|: give it x with the dropped channels zeroed instead.
            x, cut = np.where(score > self.threshold, x, np.float32(0)), -1.0
        return self.kernel(
            np.ascontiguousarray(x, np.float32),
            rows,
            self.layout.dtype,
            self.layout.row_elems,
            np.ascontiguousarray(self.cache.neurons(), np.int32),
            cut,
        )


class NativeChannelSparse:
    """Context manager: within it the model's linears (every site of every layer with a
    threshold > 0, or every site with all_sites=True) run through the native channel path.
    `bundle_dir` holds the files of tierlm.sparse.channel_bundle.write_channel_bundles."""

    def __init__(self, loaded, bundle_dir, thresholds, k=4, tier=None, all_sites=False):
        from pathlib import Path

        from tierlm.tiers import HostTier

        self.loaded = loaded
        directory = Path(bundle_dir)
        layouts = load_channel_layouts(directory)
        wanted = [
            (i, site)
            for i, cuts in enumerate(thresholds.layers)
            for site, t in cuts.items()
            if t > 0 or all_sites
        ]
        for key in wanted:
            if key not in layouts:
                raise ValueError(f"{directory}: channels.json has no bundle for layer/site {key}")
        need = sum(layouts[key].data_bytes + 16 * layouts[key].n_neurons for key in wanted)
        self.tier = tier or HostTier(need + 64 * ALIGNMENT)
        scales, rotation = thresholds.scales, thresholds.rotation
        self.sites = {
            key: _Site(
                directory,
                layouts[key],
                thresholds.layers[key[0]][key[1]],
                k,
                self.tier,
                None if scales is None else scales[key[0]][key[1]],
                None if rotation is None else rotation.of(*key),
            )
            for key in wanted
        }
        # Every linear of the model (what dense offload reads per token), and those of the
        # sites left dense (threshold 0), which a token reads whole.
        self.dense_bytes = sum(lay.data_bytes for lay in layouts.values())
        self.dense_site_bytes = sum(
            lay.data_bytes for key, lay in layouts.items() if key not in self.sites
        )
        self.per_token = []  # one dict of counters per token (summed over sites)
        self._first = next(iter(self.sites), None)  # the site that starts a token's record
        self._hooks = []

    def _site_forward(self, key, modules):
        import torch

        site = self.sites[key]
        outs = site.layout.outs
        results = {}

        def pre(_module, args):
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).float().numpy()
            if key == self._first:
                self.per_token += [dict.fromkeys(_COUNTERS, 0) for _ in flat]
            base = len(self.per_token) - len(flat)
            ys = [site.token(row, self.per_token[base + t]) for t, row in enumerate(flat)]
            y = torch.from_numpy(np.stack(ys))
            start = 0
            for mod, width in zip(modules, outs, strict=True):
                part = y[:, start : start + width].reshape(*x.shape[:-1], width)
                if mod.bias is not None:
                    part = part + mod.bias.detach().float()
                results[id(mod)] = part.to(x.dtype)
                start += width

        def post(module, _args, _output):
            return results.pop(id(module))

        hooks = [modules[0].register_forward_pre_hook(pre)]
        hooks += [m.register_forward_hook(post) for m in modules]
        return hooks

    def __enter__(self):
        for (i, site), _ in self.sites.items():
            modules = site_modules(self.loaded.layers[i], site)
            self._hooks += self._site_forward((i, site), modules)
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def reset(self):
        for s in self.sites.values():
            s.cache.clear()
            s.window.reset()
        self.per_token.clear()

    def summary(self):
        """Per-token means of the counters, the sparsity reached and the cache hit rate (over
        the sites run sparse), the bytes of every linear (dense_bytes_per_token), of the sites
        left dense, and what a token reads in all (sparse reads + dense sites)."""
        n = max(1, len(self.per_token))
        total = {c: sum(t[c] for t in self.per_token) for c in _COUNTERS}
        out = {f"{c}_per_token": total[c] / n for c in _COUNTERS}
        out["tokens"] = len(self.per_token)
        out["dense_bytes_per_token"] = self.dense_bytes
        out["dense_site_bytes_per_token"] = self.dense_site_bytes
        out["total_bytes_per_token"] = out["bytes_read_per_token"] + self.dense_site_bytes
        # The fraction of all linear weights a token skips (what the target sparsity means).
        used = out["bytes_kept_per_token"] + self.dense_site_bytes
        out["weight_sparsity"] = 1.0 - used / max(1, self.dense_bytes)
        out["sparsity"] = 1.0 - total["channels_kept"] / max(1, total["channels"])
        out["cache_hit_rate"] = 1.0 - total["rows_read"] / max(1, total["channels_kept"])
        return out
