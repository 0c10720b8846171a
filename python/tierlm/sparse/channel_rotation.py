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

Two bases ("axes"): "input" (rotation "site"), the principal axes of x, where skipping the
smallest channels drops the least of the input; "output" (rotation "output"), the principal
axes of the site's outputs W x: with WᵀW = L Lᵀ (Cholesky) and V the eigenvectors of Lᵀ C L by
decreasing eigenvalue, Q = L V is not orthogonal, but the stored W' = W Q⁻ᵀ has orthonormal
columns, so ‖W x - W' z_kept‖² is exactly the sum of the skipped z_j², and the channels the
threshold keeps are those that add most to the outputs (CATS' criterion, in the basis where it
is exact). Both cost the same bytes and multiply-adds.
"""

import numpy as np

ROTATIONS = ("none", "site", "output")
AXES = {"site": "input", "output": "output"}  # rotation -> the basis it thresholds in
ROTATED_SITES = ("attn_in", "ffn_in")
ROTATION_FILE = "channel_rotations.safetensors"
# Positions at the start of each window left out of the covariances: the attention sinks,
# whose inputs are many times larger than other tokens' and would take the first axes for
# themselves. On SmolLM2-135M at 40% (output axes, 8192 calibration tokens, the same 38.4%
# skipped on held-out text) leaving out 4 gives x1.047 against x1.061 (docs/sparse.md).
SINK_POSITIONS = 4


def collect_covariances(loaded, ids, context=1024, progress=None):
    """Per layer {site: E[x xᵀ] (f64 numpy [n, n])} of the rotated sites' inputs over the
    ids (windows of `context`), the first SINK_POSITIONS of each window left out (all of a
    window when it is no longer than that)."""

    from tierlm.sparse.channel import site_modules
    from tierlm.sparse.model import run_with_hooks

    ids = np.asarray(ids, dtype=np.int64)
    sums = [dict.fromkeys(ROTATED_SITES, 0.0) for _ in loaded.layers]
    hooks = []
    for i, layer in enumerate(loaded.layers):
        for site in ROTATED_SITES:

            def hook(module, args, i=i, site=site):
                x = args[0].detach().double()[:, SINK_POSITIONS:].reshape(-1, module.in_features)
                sums[i][site] = sums[i][site] + (x.T @ x).numpy()

            hooks.append(site_modules(layer, site)[0].register_forward_pre_hook(hook))
    run_with_hooks(loaded, ids, context, hooks, progress)
    starts = range(0, len(ids), context)
    rows = sum(max(0, len(ids[s : s + context]) - SINK_POSITIONS) for s in starts)
    if rows == 0:
        raise ValueError(
            f"{len(ids)} calibration tokens in windows of {context} leave no token after the "
            f"first {SINK_POSITIONS} of each window for the rotation: give more tokens"
        )
    return [{s: c / rows for s, c in layer.items()} for layer in sums]


def _eigenvectors(cov):
    """The eigenvectors of cov (f64 [n, n] columns) by decreasing eigenvalue, each signed so
    that its largest entry is positive (deterministic)."""
    _, v = np.linalg.eigh(np.asarray(cov, np.float64))
    v = v[:, ::-1]
    signs = np.sign(v[np.abs(v).argmax(0), np.arange(v.shape[1])])
    return v * np.where(signs == 0, 1, signs)


def principal_axes(cov):
    """Orthogonal Q [n, n] (f32) whose columns are the eigenvectors of cov by decreasing
    eigenvalue."""
    return np.ascontiguousarray(_eigenvectors(cov)).astype(np.float32)


def output_axes(cov, weight):
    """Q = L V [n, n] (f32) for inputs of covariance cov feeding weight [out, n]: WᵀW = L Lᵀ,
    V the eigenvectors of Lᵀ cov L by decreasing eigenvalue (the module docstring). A ridge
    of 1e-9 of the mean diagonal keeps the Cholesky factor of a rank-deficient WᵀW finite."""
    w = np.asarray(weight, np.float64)
    g = w.T @ w
    g += np.eye(len(g)) * (1e-9 * np.trace(g) / len(g))
    chol = np.linalg.cholesky(g)
    return np.ascontiguousarray(chol @ _eigenvectors(chol.T @ cov @ chol)).astype(np.float32)


def unrotation(q):
    """Q⁻¹ (f64): the kept channels z of x = z Q⁻¹ (Qᵀ for orthogonal Q, to rounding)."""
    return np.linalg.inv(np.asarray(q, np.float64))


def rotated_columns(weight, q):
    """W' = W Q⁻ᵀ for a weight [out, n]: W x = W' (Qᵀ x), f32."""
    return (np.asarray(weight, np.float64) @ unrotation(q).T).astype(np.float32)


class ChannelRotation:
    """Per layer {site: Q} (f32 [n, n]) of the rotated sites; axes: "input" (Q orthogonal)
    or "output" (the module docstring)."""

    def __init__(self, matrices, axes="input"):
        self.matrices = matrices
        self.axes = axes

    @classmethod
    def calibrate(cls, loaded, ids, context=1024, progress=None, axes="input"):
        from tierlm.sparse.channel_bundle import site_weights

        if axes not in AXES.values():
            raise ValueError(f"axes must be one of {sorted(AXES.values())}, got {axes!r}")
        covs = collect_covariances(loaded, ids, context, progress)
        if axes == "input":
            return cls([{s: principal_axes(c) for s, c in layer.items()} for layer in covs])
        matrices = []
        for layer, cov in zip(loaded.layers, covs, strict=True):
            matrices.append(
                {s: output_axes(c, np.concatenate(site_weights(layer, s))) for s, c in cov.items()}
            )
        return cls(matrices, axes)

    def of(self, layer, site):
        """Q of a site, or None when the site is not rotated."""
        return self.matrices[layer].get(site)

    @property
    def nbytes(self):
        return sum(q.nbytes for layer in self.matrices for q in layer.values())

    def to_json(self):
        return {
            "scope": "site",
            "axes": self.axes,
            "file": ROTATION_FILE,
            "sites": list(ROTATED_SITES),
        }

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
        axes = meta.get("axes", "input")
        if axes not in AXES.values():
            raise ValueError(
                f"{where}: rotation axes {axes!r} are not one of {sorted(AXES.values())}"
            )
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
        return cls(matrices, axes)
