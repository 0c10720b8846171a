"""Low-rank activation predictors (LLM in a flash, section 3.1): per layer
x -> W1 [d, r] -> W2 [r, ffn] + b -> sigmoid, predicting which FFN neurons are positive
after the ReLU, from the layer's FFN input (after the FFN layer norm).

Trained with a balanced loss (positives weighted by negatives / positives, per layer) on
activations collected from calibration text. Stored as predictors.safetensors (tensors
`layers.{i}.predictor.down` [r, d] and `layers.{i}.predictor.up` [ffn, r], `.up_bias`
[ffn], the nn.Linear layout) beside predictors.json (ranks, thresholds, metrics); see
docs/sparse.md.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tierlm.sparse.spill import CHUNK_ROWS, RowSpill

PREDICTORS_FILE = "predictors.safetensors"
PREDICTORS_JSON = "predictors.json"
FORMAT_VERSION = 1
# Tokens per forward while collecting FFN inputs: the window's attention and activations are
# what the collection holds, so it is capped (SmolLM2's 8192 positions would cost GBs).
COLLECT_CONTEXT = 2048


def default_ranks(num_layers, hidden, rank=None, last_rank=None, last_layers=None):
    """Ranks per layer: `rank` for most layers and a larger `last_rank` for the last ones,
    as the paper does (128 for most layers of OPT 6.7B and 1024 for the last four)."""
    rank = rank or max(8, hidden // 8)
    last_rank = last_rank or min(hidden, 2 * rank)
    last_layers = num_layers // 3 if last_layers is None else last_layers
    return [last_rank if i >= num_layers - last_layers else rank for i in range(num_layers)]


@dataclass
class LayerPredictor:
    down: np.ndarray  # [r, d]   (first low-rank projection)
    up: np.ndarray  # [ffn, r]
    up_bias: np.ndarray  # [ffn]
    threshold: float = 0.5  # on the sigmoid output

    @property
    def rank(self):
        return self.down.shape[0]

    def logits(self, x):
        return (np.asarray(x, dtype=np.float32) @ self.down.T) @ self.up.T + self.up_bias

    def predict(self, x):
        """Boolean [tokens, ffn]: neurons predicted active for each row of x [tokens, d]."""
        return self.logits(x) > _logit(self.threshold)


def _logit(p):
    return float(np.log(p / (1.0 - p)))


@dataclass
class Predictors:
    layers: list
    metrics: dict = field(default_factory=dict)
    # "relu", or "silu_threshold" for gated FFNs: neuron i counts when |silu(x·gate_i)| >
    # act_thresholds[layer], calibrated so that target_sparsity of the activations are dropped
    activation: str = "relu"
    act_thresholds: list | None = None
    target_sparsity: float | None = None

    @property
    def ranks(self):
        return [p.rank for p in self.layers]

    @property
    def thresholds(self):
        return [p.threshold for p in self.layers]

    def save(self, directory):
        from safetensors.numpy import save_file

        directory = Path(directory)
        tensors = {}
        for i, p in enumerate(self.layers):
            tensors[f"layers.{i}.predictor.down"] = np.ascontiguousarray(p.down, np.float32)
            tensors[f"layers.{i}.predictor.up"] = np.ascontiguousarray(p.up, np.float32)
            tensors[f"layers.{i}.predictor.up_bias"] = np.ascontiguousarray(p.up_bias, np.float32)
        save_file(tensors, str(directory / PREDICTORS_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "file": PREDICTORS_FILE,
            "activation": self.activation,
            "num_layers": len(self.layers),
            "ranks": self.ranks,
            "thresholds": self.thresholds,
            "metrics": self.metrics,
        }
        if self.activation == "silu_threshold":
            meta["act_thresholds"] = [float(t) for t in self.act_thresholds]
            meta["target_sparsity"] = self.target_sparsity
        (directory / PREDICTORS_JSON).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory):
        from safetensors.numpy import load_file

        directory = Path(directory)
        meta_path = directory / PREDICTORS_JSON
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{directory}: no {PREDICTORS_JSON} (train predictors with `tierlm sparse train`)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: predictor format version {meta['format_version']} is newer than "
                f"this tierlm reads ({FORMAT_VERSION}); upgrade tierlm"
            )
        tensors = load_file(str(directory / meta["file"]))
        layers = []
        for i in range(meta["num_layers"]):
            try:
                layers.append(
                    LayerPredictor(
                        tensors[f"layers.{i}.predictor.down"],
                        tensors[f"layers.{i}.predictor.up"],
                        tensors[f"layers.{i}.predictor.up_bias"],
                        float(meta["thresholds"][i]),
                    )
                )
            except KeyError as missing:
                raise ValueError(f"{directory / meta['file']}: missing tensor {missing}") from None
        return cls(
            layers,
            meta.get("metrics", {}),
            meta.get("activation", "relu"),
            meta.get("act_thresholds"),
            meta.get("target_sparsity"),
        )


def activation_labels(x, up, up_bias):
    """True active set: relu(x · up^T + b) > 0, as booleans [tokens, ffn]."""
    return (np.asarray(x, np.float32) @ up.T + up_bias) > 0


def silu_magnitudes(x, gate, gate_bias):
    """|silu(x · gate^T + b)| [tokens, ffn] of a gated FFN."""
    g = np.asarray(x, np.float32) @ gate.T + gate_bias
    return np.abs(g / (1.0 + np.exp(-g)))


def calibrate_threshold(magnitude_chunks, target_sparsity):
    """The |silu| threshold below which `target_sparsity` of the activations fall, from
    chunks of magnitudes (arrays): the upper edge of the quantile's bin of a log2 histogram
    (within 1.1% of the exact quantile), so memory does not grow with the chunks."""
    from tierlm.sparse.channel import MagnitudeHistogram

    hist = MagnitudeHistogram()
    for m in magnitude_chunks:
        hist.add(m)
    return hist.quantile(target_sparsity)


def train_layer(
    x, labels, rank, epochs=8, batch=512, lr=3e-3, seed=0, threshold=0.5, min_steps=400
):
    """Fits one layer's predictor with torch on (x [n, d], labels [n, ffn] bool): `epochs`
    passes, and at least `min_steps` optimizer steps when the data is small."""
    x = np.ascontiguousarray(x, np.float32)
    labels = np.ascontiguousarray(labels, bool)
    return fit_chunks(
        [len(x)],
        lambda _c: (x, labels),
        float(labels.mean()),
        rank,
        epochs,
        batch,
        lr,
        seed,
        threshold,
        min_steps,
    )


def fit_chunks(
    sizes,
    read_chunk,
    density,
    rank,
    epochs=8,
    batch=512,
    lr=3e-3,
    seed=0,
    threshold=0.5,
    min_steps=400,
):
    """Fits one layer's predictor on data in chunks: read_chunk(c) gives chunk c's (x [n_c, d]
    f32, labels [n_c, ffn] bool), sizes[c] its rows; `density` is the labels' mean. Each
    epoch visits the chunks in a random order and each chunk's rows in a random order, so
    only one chunk is in memory; one chunk is plain shuffled minibatch training."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x0, y0 = read_chunk(0)
    d, ffn = x0.shape[1], y0.shape[1]
    # Balanced: missing a firing neuron costs as much in total as reading the idle ones.
    pos_weight = torch.tensor((1.0 - density) / max(density, 1e-6))
    down = torch.nn.Linear(d, rank, bias=False)
    up = torch.nn.Linear(rank, ffn, bias=True)
    with torch.no_grad():  # start from the neurons' base rates
        up.bias.fill_(float(np.log(max(density, 1e-6) / max(1 - density, 1e-6))))
    params = list(down.parameters()) + list(up.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    per_epoch = sum(max(1, -(-n // batch)) for n in sizes)
    epochs = max(epochs, -(-min_steps // per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    held = (0, x0, y0)  # the chunk in memory: with one chunk, read once
    for _ in range(epochs):
        order = torch.randperm(len(sizes), generator=gen).tolist() if len(sizes) > 1 else [0]
        for c in order:
            if held[0] != c:
                held = (c, *read_chunk(c))
            xt, yt = torch.from_numpy(held[1]), torch.from_numpy(held[2])
            rows = torch.randperm(xt.shape[0], generator=gen)
            for start in range(0, xt.shape[0], batch):
                idx = rows[start : start + batch]
                loss = loss_fn(up(down(xt[idx])), yt[idx].float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return LayerPredictor(
        down.weight.detach().numpy().copy(),
        up.weight.detach().numpy().copy(),
        up.bias.detach().numpy().copy(),
        threshold,
    )


def layer_metrics(pred, labels):
    """Recall, precision and densities of a boolean prediction against the true labels."""
    tp = int(np.logical_and(pred, labels).sum())
    return counts_metrics(tp, int(pred.sum()), int(labels.sum()), labels.size)


def counts_metrics(tp, n_pred, n_true, size):
    """layer_metrics from its counts (true positives, predicted, true, all), which chunks
    add up."""
    return {
        "recall": tp / n_true if n_true else 1.0,
        "precision": tp / n_pred if n_pred else 1.0,
        "true_density": n_true / size,
        "predicted_density": n_pred / size,
    }


def recall_at_precision(logits, labels, precision=0.5):
    """The largest recall any cut on the logits reaches while the precision of the neurons it
    selects stays >= `precision` (0 when none does): how good a predictor is, whatever its
    threshold."""
    order = np.argsort(-np.asarray(logits, np.float32).reshape(-1), kind="stable")
    hits = np.cumsum(np.asarray(labels, bool).reshape(-1)[order])
    n_true = int(hits[-1]) if hits.size else 0
    if n_true == 0:
        return 1.0
    ok = hits >= precision * np.arange(1, hits.size + 1)
    return float(hits[ok].max() / n_true) if ok.any() else 0.0


def keep_all(p):
    """A predictor of p's shape that selects every neuron for any input: the dense fallback
    of a layer whose predictor misses too many (logits = 30, sigmoid 1 - 1e-13)."""
    return LayerPredictor(
        np.zeros_like(p.down), np.zeros_like(p.up), np.full_like(p.up_bias, 30.0), p.threshold
    )


def split_ids(ids, held_out_fraction=0.1):
    """Calibration ids split into a training head and a held-out tail."""
    cut = int(len(ids) * (1.0 - held_out_fraction))
    return ids[:cut], ids[cut:]


def train_predictors(
    loaded,
    train_ids,
    held_ids,
    ranks,
    epochs=8,
    min_steps=400,
    max_tokens=32768,
    seed=0,
    threshold=0.5,
    progress=None,
    target_sparsity=None,
    min_recall=0.0,
    collect_progress=None,
    spill_dir=None,
    chunk_rows=CHUNK_ROWS,
):
    """Trains one predictor per layer of a loaded model (tierlm.sparse.model) and measures it
    on held-out ids. Returns Predictors with per-layer metrics.

    ReLU FFNs: labels relu(x·up + b) > 0. Gated SiLU FFNs (lossy): target_sparsity (0..1) is
    required; per layer the threshold t is the target_sparsity quantile of |silu(x·gate + b)|
    over the training tokens (calibrate_threshold) and the labels are |silu(x·gate + b)| > t.

    Memory stays bounded whatever the token count: the FFN inputs are spilled to temporary
    files (under spill_dir, default the system's temporary directory: tokens x hidden x
    layers x 4 bytes, plus a bit per neuron and token of one layer's labels) and every pass
    reads `chunk_rows` rows at a time; in memory are the model, one window of the
    collection (COLLECT_CONTEXT tokens at most) and one chunk (chunk_rows x (hidden +
    2 ffn) x 4 bytes, about).

    A layer whose held-out recall is below min_recall falls back to dense: its predictor
    selects every neuron (keep_all), its metrics say "fallback": "dense" and keep the trained
    recall. Each layer also reports recall_at_precision_0.5 (over the first chunk of the
    held-out tokens). collect_progress(done, total) follows the collection of activations
    (tokens through the model)."""
    import torch

    from tierlm.sparse.model import collect_ffn_inputs

    gated = getattr(loaded, "gated", False)
    if gated and not (target_sparsity is not None and 0.0 < target_sparsity < 1.0):
        raise ValueError(
            "a gated SiLU FFN has no exact zeros: give a target sparsity in (0, 1) "
            "(--target-sparsity) to calibrate the thresholds (lossy)"
        )
    if len(ranks) != loaded.num_layers:
        raise ValueError(f"{len(ranks)} ranks given for a model of {loaded.num_layers} layers")
    t0 = time.time()
    cap = max_tokens or max(len(train_ids), len(held_ids))
    n_train = min(len(train_ids), cap)
    n_all = n_train + min(len(held_ids), cap)

    def report(offset):
        def f(done, _total):
            if collect_progress:
                collect_progress(offset + done, n_all)

        return f

    n_layers, hidden, ffn = loaded.num_layers, loaded.hidden_size, loaded.ffn_dim
    with (
        RowSpill(n_layers, hidden, directory=spill_dir) as xs_train,
        RowSpill(n_layers, hidden, directory=spill_dir) as xs_held,
    ):
        for spill, ids, offset in ((xs_train, train_ids, 0), (xs_held, held_ids, n_train)):
            collect_ffn_inputs(
                loaded,
                ids,
                context=min(loaded.model.config.max_position_embeddings, COLLECT_CONTEXT),
                max_tokens=max_tokens,
                progress=report(offset),
                sink=spill.append,
            )
            spill.finish()
        collect_s = time.time() - t0
        layers, per_layer, act_thresholds = [], [], []
        for i in range(n_layers):
            t1 = time.time()
            if gated:
                gate, gate_bias = loaded.gate(i)
                cut = calibrate_threshold(
                    (
                        silu_magnitudes(x, gate, gate_bias)
                        for _, x in xs_train.chunks(i, chunk_rows)
                    ),
                    target_sparsity,
                )
                act_thresholds.append(cut)

                def label(x, gate=gate, gate_bias=gate_bias, cut=cut):
                    return silu_magnitudes(x, gate, gate_bias) > cut

            else:
                up, up_bias, _, _ = loaded.ffn(i)

                def label(x, up=up, up_bias=up_bias):
                    return activation_labels(x, up, up_bias)

            with torch.random.fork_rng():
                p = _train_spilled(
                    xs_train,
                    i,
                    label,
                    ffn,
                    ranks[i],
                    epochs,
                    seed + i,
                    threshold,
                    min_steps,
                    chunk_rows,
                    spill_dir,
                )
            m, (n_true, size) = _held_out_metrics(p, xs_held, i, label, chunk_rows)
            if m["recall"] < min_recall:
                trained = m
                p = keep_all(p)  # selects all: every true neuron, every neuron predicted
                m = counts_metrics(n_true, size, n_true, size)
                m.update(fallback="dense", trained_recall=trained["recall"])
                m["recall_at_precision_0.5"] = trained["recall_at_precision_0.5"]
            m.update(layer=i, rank=p.rank, train_seconds=round(time.time() - t1, 2))
            if gated:
                m["act_threshold"] = cut
            layers.append(p)
            per_layer.append(m)
            if progress:
                progress(m)
        metrics = {
            "train_tokens": int(xs_train.rows[0]),
            "held_out_tokens": int(xs_held.rows[0]),
            "collect_seconds": round(collect_s, 2),
            "min_recall": min_recall,
            "dense_fallback_layers": [m["layer"] for m in per_layer if m.get("fallback")],
            "layers": per_layer,
        }
    if gated:
        return Predictors(layers, metrics, "silu_threshold", act_thresholds, target_sparsity)
    return Predictors(layers, metrics)


def _train_spilled(
    xs, layer, label, ffn, rank, epochs, seed, threshold, min_steps, chunk_rows, spill_dir
):
    """fit_chunks over a layer's spilled inputs; its labels computed once, spilled as bits."""
    n_true = 0
    with RowSpill(1, -(-ffn // 8), np.uint8, directory=spill_dir) as bits:
        for _, x in xs.chunks(layer, chunk_rows):
            y = label(x)
            n_true += int(y.sum())
            bits.append(0, np.packbits(y, axis=1))
        bits.finish()
        sizes = [min(chunk_rows, xs.rows[layer] - s) for s in range(0, xs.rows[layer], chunk_rows)]

        def read_chunk(c):
            x = xs.read(layer, c * chunk_rows, chunk_rows)
            packed = bits.read(0, c * chunk_rows, chunk_rows)
            return x, np.unpackbits(packed, axis=1, count=ffn).astype(bool)

        density = n_true / max(1, xs.rows[layer] * ffn)
        return fit_chunks(
            sizes,
            read_chunk,
            density,
            rank,
            epochs,
            seed=seed,
            threshold=threshold,
            min_steps=min_steps,
        )


def _held_out_metrics(p, xs, layer, label, chunk_rows):
    """(counts_metrics of p over a layer's spilled held-out inputs, chunk by chunk, with
    recall_at_precision_0.5 over the first chunk; (true labels, all labels))."""
    tp = n_pred = n_true = size = 0
    rap = 1.0
    for start, x in xs.chunks(layer, chunk_rows):
        y, logits = label(x), p.logits(x)
        pred = logits > _logit(p.threshold)
        tp += int(np.logical_and(pred, y).sum())
        n_pred, n_true, size = n_pred + int(pred.sum()), n_true + int(y.sum()), size + y.size
        if start == 0:
            rap = recall_at_precision(logits, y)
    m = counts_metrics(tp, n_pred, n_true, max(size, 1))
    m["recall_at_precision_0.5"] = rap
    return m, (n_true, max(size, 1))
