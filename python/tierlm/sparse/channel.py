"""Training-free input-channel sparsity for gated (Llama-family) models, the idea of TEAL,
CATS and R-Sparse: every linear layer skips the weight columns of the input channels whose
magnitude is at or below a threshold calibrated per layer and per input ("site") for a target
sparsity. What is dropped is known before the weights are read, so no predictor can be wrong.

Sites of a decoder layer, each one input shared by the matrices listed:
  attn_in  (q, k, v after the attention norm)   attn_out (o, on the attention output)
  ffn_in   (gate, up after the FFN norm)        ffn_down (down, on silu(gate) * up)
Thresholds are quantiles of |x| from a fixed log-spaced histogram per site, so calibration
memory does not grow with the number of tokens.
"""

import contextlib
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tierlm.sparse.model import run_with_hooks

SITES = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_out": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_down": ("mlp.down_proj",),
}
CHANNEL_JSON = "channel_sparsity.json"
FORMAT_VERSION = 3  # 2: "criterion" and, for "weight_norm", per-channel "scales"; 3: "rotation"
# What a threshold cuts: |x_j| ("magnitude"), or |x_j| * ||column j|| ("weight_norm", the
# criterion of CATS / R-Sparse / WINA: the size of what channel j adds to the outputs).
CRITERIA = ("magnitude", "weight_norm")
# Histogram of log2|x|: 1/64 octave per bin (a threshold within 1.1% of the exact quantile).
_LOG2_LO, _LOG2_HI, _BINS_PER_OCTAVE = -40.0, 24.0, 64
_N_BINS = int((_LOG2_HI - _LOG2_LO) * _BINS_PER_OCTAVE)


class MagnitudeHistogram:
    """Counts of |x| in log-spaced bins (exact zeros counted apart); quantile() inverts it."""

    def __init__(self):
        self.counts = np.zeros(_N_BINS, np.int64)
        self.energy = np.zeros(_N_BINS, np.float64)  # sum of x^2 per bin
        self.zeros = 0

    def add(self, values):
        a = np.abs(np.asarray(values, np.float32).reshape(-1))
        nonzero = a[a > 0]
        self.zeros += a.size - nonzero.size
        pos = (np.log2(nonzero) - _LOG2_LO) * _BINS_PER_OCTAVE
        idx = np.clip(pos.astype(np.int64), 0, _N_BINS - 1)
        self.counts += np.bincount(idx, minlength=_N_BINS)
        self.energy += np.bincount(idx, weights=nonzero.astype(np.float64) ** 2, minlength=_N_BINS)

    def _bin(self, q):
        """The bin holding quantile q, or None when q falls among the exact zeros."""
        if q <= 0 or self.total == 0 or q * self.total - self.zeros <= 0:
            return None
        return int(np.searchsorted(np.cumsum(self.counts), q * self.total - self.zeros))

    def dropped_energy(self, q):
        """Fraction of sum(x^2) carried by the channels a threshold at quantile q drops."""
        b = self._bin(q)
        if b is None:
            return 0.0
        return float(self.energy[: b + 1].sum() / max(self.energy.sum(), 1e-300))

    @property
    def total(self):
        return int(self.counts.sum()) + self.zeros

    def quantile(self, q):
        """The smallest bin edge t with at least a fraction q of |x| <= t (0 when q is 0)."""
        b = self._bin(q)
        return 0.0 if b is None else float(2.0 ** (_LOG2_LO + (b + 1) / _BINS_PER_OCTAVE))


@dataclass
class ChannelThresholds:
    """Per layer a threshold per site: channels with |x| * scale <= t are skipped (0: keep
    all). scales: None (criterion "magnitude", every scale 1) or per layer {site: [scale
    per input channel]} (criterion "weight_norm", site_scales). rotation: None or the
    ChannelRotation whose rotated inputs the thresholds cut (channel_rotation)."""

    target_sparsity: float
    layers: list  # [{site: threshold}]
    calibration_tokens: int = 0
    metrics: dict = field(default_factory=dict)
    scales: list | None = None
    rotation: object = None  # channel_rotation.ChannelRotation

    @property
    def criterion(self):
        return "magnitude" if self.scales is None else "weight_norm"

    def save(self, directory):
        version = 1 if self.scales is None else 2
        out = {
            "format_version": FORMAT_VERSION if self.rotation is not None else version,
            "method": "input_channel_magnitude",
            "criterion": self.criterion,
            "target_sparsity": self.target_sparsity,
            "calibration_tokens": self.calibration_tokens,
            "sites": {k: list(v) for k, v in SITES.items()},
            "thresholds": self.layers,
            "metrics": self.metrics,
        }
        if self.scales is not None:
            out["scales"] = [
                {site: [float(v) for v in np.asarray(sc)] for site, sc in layer.items()}
                for layer in self.scales
            ]
        if self.rotation is not None:
            out["rotation"] = self.rotation.to_json()
            self.rotation.save(Path(directory))
        path = Path(directory) / CHANNEL_JSON
        path.write_text(json.dumps(out, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory):
        path = Path(directory) / CHANNEL_JSON
        meta = json.loads(path.read_text())
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: format {meta['format_version']} is newer than this tierlm")
        for i, layer in enumerate(meta["thresholds"]):
            unknown = set(layer) - set(SITES)
            if unknown:
                raise ValueError(f"{path}: layer {i} names unknown sites {sorted(unknown)}")
        scales = meta.get("scales")
        if (scales is None) != (meta.get("criterion", "magnitude") == "magnitude"):
            raise ValueError(
                f"{path}: criterion {meta.get('criterion')!r} with scales {scales is not None}"
            )
        rotation = None
        if "rotation" in meta:
            from tierlm.sparse.channel_rotation import ChannelRotation

            rotation = ChannelRotation.load(
                path.parent, meta["rotation"], len(meta["thresholds"]), path
            )
        return cls(
            meta["target_sparsity"],
            meta["thresholds"],
            meta.get("calibration_tokens", 0),
            meta.get("metrics", {}),
            None
            if scales is None
            else [
                {site: np.asarray(v, np.float32) for site, v in layer.items()} for layer in scales
            ],
            rotation,
        )


def site_modules(layer, site):
    """The torch modules of one site of a decoder layer."""
    out = []
    for name in SITES[site]:
        mod = layer
        for part in name.split("."):
            mod = getattr(mod, part)
        out.append(mod)
    return out


def site_scales(layer, site):
    """Per input channel of a site, the L2 norm of its column over the site's matrices
    ([q | k | v], [o], [gate | up], [down]): f32 numpy [in]."""
    import torch

    w = torch.cat([m.weight.detach().float() for m in site_modules(layer, site)], 0)
    return w.norm(dim=0).numpy()


def collect_histograms(loaded, ids, context=1024, progress=None, scales=None, rotation=None):
    """Per layer {site: MagnitudeHistogram} of the site's input (times scales[layer][site]
    when given; rotated when `rotation` rotates the site) over the ids (windows of
    `context`). progress(done_tokens, total_tokens) is called after each window."""

    ids = np.asarray(ids, dtype=np.int64)
    hists = [{s: MagnitudeHistogram() for s in SITES} for _ in loaded.layers]
    hooks = []
    for i, layer in enumerate(loaded.layers):
        for site in SITES:
            scale = None if scales is None else scales[i][site]
            rot = None if rotation is None else rotation.of(i, site)

            def hook(_module, args, h=hists[i][site], scale=scale, rot=rot):
                x = args[0].detach().float().numpy()
                x = x if rot is None else x @ rot
                h.add(x if scale is None else x * scale)

            hooks.append(site_modules(layer, site)[0].register_forward_pre_hook(hook))
    run_with_hooks(loaded, ids, context, hooks, progress)
    return hists


def site_weight_elems(loaded, layer, site):
    """Weight elements of a site (what skipping all of its channels saves)."""
    return sum(m.weight.numel() for m in site_modules(loaded.layers[layer], site))


def allocate(hists, sizes, target, step=0.01, cap=0.95):
    """Per-site sparsities whose size-weighted mean is `target`, chosen greedily: each step
    raises the site whose next `step` drops the least input energy (sum of x^2) per weight
    element saved. Sites whose inputs are heavy-tailed (few large channels) take more.
    hists / sizes: {key: MagnitudeHistogram} / {key: weight elements}."""
    total = sum(sizes.values())
    level = dict.fromkeys(hists, 0.0)
    cost = {k: hists[k].dropped_energy(step) for k in hists}
    saved = 0.0
    while saved < target * total - 1e-9:
        k = min((k for k in hists if level[k] + step <= cap + 1e-9), key=cost.get, default=None)
        if k is None:
            break
        level[k] += step
        saved += step * sizes[k]
        nxt = hists[k].dropped_energy(level[k] + step)
        cost[k] = nxt - hists[k].dropped_energy(level[k])
    return level


ALLOCATIONS = ("uniform", "greedy", "energy", "walk")


def calibrate(
    loaded,
    ids,
    target_sparsity,
    context=1024,
    progress=None,
    allocation="uniform",
    greedy_tokens=256,
    criterion="magnitude",
    rotation="none",
    walk_tokens=1024,
    log=None,
):
    """Thresholds that skip a fraction `target_sparsity` of the weight elements the model's
    linears would read, on the calibration ids. allocation="uniform" (default): that fraction
    of every site's input channels; "greedy": per layer, the site fractions of the block-wise
    greedy walk (channel_alloc) on the first `greedy_tokens` calibration tokens, every layer
    at the target; "energy": per-site fractions from allocate() (on SmolLM2-135M at 0.4 it
    costs far more perplexity than uniform: docs/sparse.md); "walk": one level per site type
    in every layer, from the walk on the model's loss over the last `walk_tokens`
    calibration tokens (channel_walk; log(line) gets its steps). criterion: what is compared
    with the thresholds (CRITERIA). rotation: "none", or "site": the inputs of q/k/v
    and gate/up are thresholded in the basis of their principal axes (channel_rotation); the
    covariances come from the even windows of `context` calibration ids, the thresholds from
    the odd ones (split_windows); "output": the same sites in the basis of their outputs'
    principal axes (channel_rotation's docstring)."""
    from tierlm.sparse.channel_rotation import AXES, ROTATIONS, ChannelRotation

    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    if rotation != "none" and (criterion != "magnitude" or allocation == "greedy"):
        raise ValueError(
            f"rotation {rotation!r} runs with criterion magnitude and allocation uniform, "
            f"energy or walk, not {criterion!r} / {allocation!r}"
        )
    t0 = time.monotonic()
    scales = None
    if criterion == "weight_norm":
        scales = [{s: site_scales(layer, s) for s in SITES} for layer in loaded.layers]
    rot, threshold_ids = None, ids
    if rotation != "none" and target_sparsity > 0:
        rotation_ids, threshold_ids = split_windows(ids, context)
        rot = ChannelRotation.calibrate(loaded, rotation_ids, context, axes=AXES[rotation])
    hists = collect_histograms(loaded, threshold_ids, context, progress, scales, rot)
    flat = {(i, s): h[s] for i, h in enumerate(hists) for s in SITES}
    if allocation == "energy" and target_sparsity > 0:
        sizes = {k: site_weight_elems(loaded, *k) for k in flat}
        level = allocate(flat, sizes, target_sparsity)
    elif allocation == "walk" and target_sparsity > 0:
        from tierlm.sparse.channel_walk import walk_site_levels

        sizes = {s: site_weight_elems(loaded, 0, s) for s in SITES}
        walk = walk_site_levels(
            loaded, ids[-walk_tokens:], hists, sizes, target_sparsity, rot, scales, log=log
        )
        level = {k: walk[k[1]] for k in flat}
    elif allocation == "greedy" and target_sparsity > 0:
        level = _greedy_levels(loaded, ids[:greedy_tokens], hists, target_sparsity, scales)
    else:
        level = dict.fromkeys(flat, float(target_sparsity))
    layers = [{s: flat[(i, s)].quantile(level[(i, s)]) for s in SITES} for i in range(len(hists))]
    metrics = {
        "calibration_seconds": time.monotonic() - t0,
        "allocation": allocation,
        "site_sparsity": [{s: round(level[(i, s)], 4) for s in SITES} for i in range(len(hists))],
    }
    metrics["rotation"] = rotation
    return ChannelThresholds(float(target_sparsity), layers, int(len(ids)), metrics, scales, rot)


def split_windows(ids, context):
    """(even, odd) windows of `context` ids, each joined (the halves of the ids when they fill
    fewer than two windows). A rotation fits the principal axes of the tokens it is computed
    on, so there the small rotated channels are smaller than on any other text: quantiles
    taken on those same tokens skip less than the target on held-out text (SmolLM2-135M,
    output axes at 0.4 on 2048 tokens: 31% of the weights). Rotation on one set, quantiles
    on the other, so the thresholds are measured on text the rotation has not seen."""
    ids = np.asarray(ids)
    starts = range(0, len(ids), context)
    if len(starts) < 2:
        return ids[: len(ids) // 2], ids[len(ids) // 2 :]
    windows = [ids[s : s + context] for s in starts]
    return np.concatenate(windows[0::2]), np.concatenate(windows[1::2])


def _greedy_levels(loaded, ids, hists, target, scales):
    """{(layer, site): level} of every layer's greedy walk at the target (channel_alloc)."""
    from tierlm.sparse.channel_alloc import capture_layer_inputs, greedy_path, levels_at

    captured = capture_layer_inputs(loaded, ids)
    level = {}
    for i, layer in enumerate(loaded.layers):
        sizes = {s: site_weight_elems(loaded, i, s) for s in SITES}
        scale = None if scales is None else scales[i]
        path = greedy_path(layer, captured[i], hists[i], sizes, target, scales=scale)
        level.update({(i, s): v for s, v in levels_at(path, target).items()})
        captured[i] = None
    return level


def sparsify(x, t, scale=None, rot=None, counts=None):
    """x (torch) with the channels whose |x| (times scale, a torch vector) is <= t zeroed;
    with rot = (Q, Q⁻¹) (torch), the channels of the rotated x Q, rotated back. counts: a
    list [skipped, seen] the channels are added to, when given."""
    z = x if rot is None else x @ rot[0]
    a = z.abs() if scale is None else z.abs() * scale
    keep = a > t
    if counts is not None:
        counts[0] += int(keep.numel() - keep.sum())
        counts[1] += keep.numel()
    return z * keep if rot is None else (z * keep) @ rot[1]


@contextlib.contextmanager
def channel_sparse_mode(loaded, thresholds, counts=None):
    """Within the block every linear of a site sees its input with the channels at or below
    the threshold set to zero (the torch reference of the native path). A threshold of 0
    leaves the site untouched, so 0% sparsity is the dense model, bit for bit. counts: a
    dict that gets {(layer, site): [channels skipped, channels seen]} of the sites cut."""
    import torch

    from tierlm.sparse.channel_rotation import unrotation

    hooks = []
    for i, (layer, cuts) in enumerate(zip(loaded.layers, thresholds.layers, strict=True)):
        for site, t in cuts.items():
            if t <= 0:
                continue
            sc = None if thresholds.scales is None else torch.from_numpy(thresholds.scales[i][site])
            rot = None if thresholds.rotation is None else thresholds.rotation.of(i, site)
            if rot is not None:
                back = torch.from_numpy(unrotation(rot).astype(np.float32))
                rot = (torch.from_numpy(rot), back)

            def pre(_module, args, t=t, sc=sc, rot=rot, c=None):
                return (sparsify(args[0], t, sc, rot, c),)

            for j, mod in enumerate(site_modules(layer, site)):
                c = None if counts is None or j else counts.setdefault((i, site), [0, 0])
                hooks.append(mod.register_forward_pre_hook(functools.partial(pre, c=c)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def weight_sparsity(loaded, counts):
    """The fraction of all linears' weight elements skipped, from channel_sparse_mode's
    counts (sites not in counts skip nothing)."""
    total = skipped = 0
    for i in range(len(loaded.layers)):
        for site in SITES:
            n = site_weight_elems(loaded, i, site)
            total += n
            c = counts.get((i, site))
            skipped += 0.0 if c is None else n * c[0] / max(c[1], 1)
    return skipped / total


def greedy_top1_agreement(loaded, thresholds, prompt_ids, dense_new):
    """The sparse model, fed the prompt and dense's greedy continuation dense_new, picks its
    own top-1 at each of those positions. Returns the agreeing fraction."""
    import torch

    seq = torch.tensor([list(prompt_ids) + list(dense_new)])
    with channel_sparse_mode(loaded, thresholds), torch.no_grad():
        logits = loaded.model(input_ids=seq).logits[0]
    picks = logits[len(prompt_ids) - 1 : -1].argmax(-1).numpy()
    return float(np.mean(picks == np.asarray(dense_new)))


def dense_reference(loaded, held_ids, n_new=256, prompt_tokens=64, context=1024):
    """What quality() compares with, computed once for any number of sparse settings:
    dense held-out perplexity and top-1 ids, the prompt and dense's n_new greedy tokens."""
    from tierlm.sparse.quality import greedy, perplexity_and_top1

    ppl, top = perplexity_and_top1(loaded, held_ids, context)
    prompt = list(np.asarray(held_ids[:prompt_tokens]).tolist())
    new = greedy(loaded, prompt, n_new) if n_new else []
    return {"perplexity": ppl, "top1": top, "prompt": prompt, "greedy": new, "context": context}


def quality(loaded, thresholds, held_ids, n_new=256, prompt_tokens=64, context=1024, dense=None):
    """Held-out perplexity (sparse vs dense), teacher-forced top-1 agreement over held_ids and
    greedy top-1 agreement over n_new generated tokens; `dense`: dense_reference() of the
    same arguments, when already computed."""
    from tierlm.sparse.quality import perplexity_and_top1

    dense = dense or dense_reference(loaded, held_ids, n_new, prompt_tokens, context)
    counts = {}
    with channel_sparse_mode(loaded, thresholds, counts):
        ppl, top = perplexity_and_top1(loaded, held_ids, context)
    out = {
        "target_sparsity": thresholds.target_sparsity,
        "held_out_sparsity": weight_sparsity(loaded, counts),
        "held_out_tokens": int(len(held_ids)),
        "dense_perplexity": dense["perplexity"],
        "perplexity": ppl,
        "perplexity_ratio": ppl / dense["perplexity"],
        "teacher_forced_top1": float(np.mean(top == dense["top1"])),
    }
    if n_new:
        new = dense["greedy"]
        out["greedy_top1"] = greedy_top1_agreement(loaded, thresholds, dense["prompt"], new)
        out["greedy_tokens"] = len(new)
    return out
