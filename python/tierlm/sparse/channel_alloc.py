"""Block-wise greedy allocation of input-channel sparsity across the sites of each decoder
layer (the idea of TEAL's greedy optimization, written for tierlm's sites): starting dense,
repeatedly raise by `step` the site whose next step adds the least error to the layer's output
per weight element it saves, the error measured by running the layer on captured calibration
inputs. The walk records the site levels at every layer sparsity it passes, so one walk per
layer serves every target; every layer then gets the target (bytes-weighted within the
layer, so the model skips the target fraction of its linears' weights)."""

import contextlib

from tierlm.sparse.channel import SITES, site_modules, sparsify


def capture_layer_inputs(loaded, ids):
    """Per decoder layer the (args, kwargs) it was called with on ids (one window, dense)."""
    import torch

    captured = [None] * len(loaded.layers)

    def hook(_module, args, kwargs, i):
        captured[i] = (args, dict(kwargs))

    hooks = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: hook(m, a, k, i), with_kwargs=True)
        for i, layer in enumerate(loaded.layers)
    ]
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([list(ids)]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return captured


@contextlib.contextmanager
def _site_cuts(layer, scales):
    """Within the block the layer's sites zero their inputs at or below cuts[site] (a dict
    the caller changes between calls; 0 leaves the site dense)."""
    import torch

    cuts = dict.fromkeys(SITES, 0.0)
    hooks = []
    for site in SITES:
        sc = None if scales is None else torch.from_numpy(scales[site])
        for mod in site_modules(layer, site):

            def pre(_module, args, site=site, sc=sc):
                t = cuts[site]
                return None if t <= 0 else (sparsify(args[0], t, sc),)

            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        yield cuts
    finally:
        for h in hooks:
            h.remove()


def _output(layer, captured):
    out = layer(*captured[0], **captured[1])
    return out[0] if isinstance(out, tuple) else out


def greedy_path(layer, captured, hists, sizes, max_sparsity, step=0.05, cap=0.95, scales=None):
    """The walk of one layer: [(layer sparsity, {site: level})] from all zeros until the
    bytes-weighted sparsity reaches max_sparsity (or every site is at `cap`). hists[site]: a
    MagnitudeHistogram of the site's input (times scales[site] when given, the criterion
    "weight_norm"); sizes[site]: its weight elements. Each step costs
    one run of the layer: a site's marginal cost is measured when it moves and kept while
    others move (the lazy form of the greedy)."""
    import torch

    total = sum(sizes.values())
    level = dict.fromkeys(SITES, 0.0)
    with torch.no_grad(), _site_cuts(layer, scales) as cuts:
        dense = _output(layer, captured)

        def error(levels):
            for s in SITES:
                cuts[s] = hists[s].quantile(levels[s])
            return float(((_output(layer, captured) - dense) ** 2).sum())

        def marginal(site, base):
            if level[site] + step > cap + 1e-9:
                return None
            err = error({**level, site: level[site] + step})
            return (err - base) / (step * sizes[site]), err

        cost = {s: marginal(s, 0.0) for s in SITES}
        path = [(0.0, dict(level))]
        while path[-1][0] < max_sparsity - 1e-9:
            moves = [s for s in SITES if cost[s] is not None]
            if not moves:
                break
            best = min(moves, key=lambda s: cost[s][0])
            level[best] = round(level[best] + step, 6)
            cost[best] = marginal(best, cost[best][1])
            path.append((sum(level[s] * sizes[s] for s in SITES) / total, dict(level)))
    return path


def levels_at(path, target):
    """Site levels of a walk at exactly `target` layer sparsity: the walk's two points around
    it differ in one site, whose level is interpolated (the last point when the walk ends
    below the target)."""
    for (s0, lv0), (s1, lv1) in zip(path, path[1:], strict=False):
        if s1 >= target - 1e-12:
            (site,) = [s for s in SITES if lv1[s] != lv0[s]]
            frac = (target - s0) / (s1 - s0)
            return {**lv0, site: lv0[site] + frac * (lv1[site] - lv0[site])}
    return dict(path[-1][1])
