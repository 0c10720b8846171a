"""Rotated input-channel sparsity (the idea of LaRoSA, written from its paper): before a site's
inputs are thresholded they are turned into a basis where few channels carry the energy, the
principal axes of the site's inputs on calibration text, so that skipping the small rotated
channels drops less of the input than skipping the small original ones. The rotation is
folded into the stored matrices, so the skipped channels are still whole columns.

Per rotated site: z = Qᵀ x with Q orthogonal (the eigenvectors of E[x xᵀ] over the calibration
tokens, by decreasing eigenvalue); the site's matrices become W' = W Q, so W x = W' z exactly,
and the kept channels of z pick columns of W'. Q stays resident (f32 [n, n] per site) and costs
n² multiply-adds per token. Rotated sites: attn_in and ffn_in (q/k/v and gate/up, fed by the
normalized residual stream, whose energy few directions carry); attn_out and ffn_down stay as
they are (a rotation there costs as many bytes as the matrices it would spare: docs/sparse.md).
One model-wide rotation of the normalized residual stream, which would cost nothing per token,
measured worse than none on SmolLM2-135M (x1.16 vs x1.14 at 40%), so it is not offered.
"""

import numpy as np

ROTATIONS = ("none", "site")
ROTATED_SITES = ("attn_in", "ffn_in")
ROTATION_FILE = "channel_rotations.safetensors"


def collect_covariances(loaded, ids, context=1024, progress=None):
    """Per layer {site: E[x xᵀ] (f64 numpy [n, n])} of the rotated sites' inputs over the
    ids (windows of `context`)."""

    from tierlm.sparse.channel import site_modules
    from tierlm.sparse.model import run_with_hooks

    ids = np.asarray(ids, dtype=np.int64)
    sums = [dict.fromkeys(ROTATED_SITES, 0.0) for _ in loaded.layers]
    hooks = []
    for i, layer in enumerate(loaded.layers):
        for site in ROTATED_SITES:

            def hook(module, args, i=i, site=site):
                x = args[0].detach().double().reshape(-1, module.in_features)
                sums[i][site] = sums[i][site] + (x.T @ x).numpy()

            hooks.append(site_modules(layer, site)[0].register_forward_pre_hook(hook))
    run_with_hooks(loaded, ids, context, hooks, progress)
    return [{s: c / len(ids) for s, c in layer.items()} for layer in sums]


def principal_axes(cov):
    """Orthogonal Q [n, n] (f32) whose columns are the eigenvectors of cov by decreasing
    eigenvalue, each signed so that its largest entry is positive (deterministic)."""
    _, v = np.linalg.eigh(np.asarray(cov, np.float64))
    v = v[:, ::-1]
    signs = np.sign(v[np.abs(v).argmax(0), np.arange(v.shape[1])])
    return np.ascontiguousarray(v * np.where(signs == 0, 1, signs)).astype(np.float32)


def rotated_columns(weight, q):
    """W' = W Q for a weight [out, n]: W x = W' (Qᵀ x)."""
    return np.asarray(weight, np.float32) @ q


class ChannelRotation:
    """Per layer {site: Q} (orthogonal f32 [n, n]) of the rotated sites."""

    def __init__(self, matrices):
        self.matrices = matrices

    @classmethod
    def calibrate(cls, loaded, ids, context=1024, progress=None):
        covs = collect_covariances(loaded, ids, context, progress)
        return cls([{s: principal_axes(c) for s, c in layer.items()} for layer in covs])

    def of(self, layer, site):
        """Q of a site, or None when the site is not rotated."""
        return self.matrices[layer].get(site)

    @property
    def nbytes(self):
        return sum(q.nbytes for layer in self.matrices for q in layer.values())

    def to_json(self):
        return {"scope": "site", "file": ROTATION_FILE, "sites": list(ROTATED_SITES)}

    def save(self, directory):
        from safetensors.numpy import save_file

        tensors = {
            f"layers.{i}.{site}.rotation": np.ascontiguousarray(q, np.float32)
            for i, layer in enumerate(self.matrices)
            for site, q in layer.items()
        }
        save_file(tensors, str(directory / ROTATION_FILE))

    @classmethod
    def load(cls, directory, meta, n_layers, where):
        """From the "rotation" entry of a thresholds file and the tensors file beside it;
        a missing file or tensor, or a matrix that is not square, is named."""
        from safetensors.numpy import load_file

        path = directory / meta.get("file", ROTATION_FILE)
        if not path.exists():
            raise ValueError(f"{where}: names rotations in {path}, which is missing")
        tensors = load_file(str(path))
        matrices = []
        for i in range(n_layers):
            matrices.append({})
            for site in meta.get("sites", ROTATED_SITES):
                q = tensors.get(f"layers.{i}.{site}.rotation")
                if q is None or q.ndim != 2 or q.shape[0] != q.shape[1]:
                    raise ValueError(f"{path}: layers.{i}.{site}.rotation is missing or not square")
                matrices[-1][site] = q
        return cls(matrices)
