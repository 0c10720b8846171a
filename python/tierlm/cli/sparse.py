"""`tierlm sparse ...`: sparse-neuron flash loading tools. `train` fits the per-layer
activation predictors on calibration text and stores them beside the model; `bundle`
writes the row-column bundled FFN files; `calibrate` sets the thresholds of training-free
input-channel sparsity (Llama family, cli/sparse_calibrate.py)."""

import json
import sys
import time
from pathlib import Path

from tierlm.cli import sparse_calibrate


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "sparse", help="sparse-neuron loading: train predictors, bundle FFNs"
    )
    sub = parser.add_subparsers(dest="sparse_command", required=True, metavar="SUBCOMMAND")
    train = sub.add_parser(
        "train",
        help="train activation predictors on calibration text",
        description="Train one low-rank predictor per FFN layer (balanced loss) and report "
        "recall and precision per layer on held-out text. Writes predictors.safetensors and "
        "predictors.json into the model directory (or --out); in a package, they are also "
        "listed in manifest.json for `tierlm generate --sparse`.",
    )
    train.add_argument(
        "model",
        help="tierlm package or Hugging Face directory (OPT); Llama-family (gated SiLU): a "
        "Hugging Face directory",
    )
    train.add_argument("--calibration", required=True, help="text file to train on")
    train.add_argument(
        "--held-out", help="text file to measure on (default: the last 10%% of --calibration)"
    )
    train.add_argument("--rank", type=int, help="rank of most layers (default hidden/8)")
    train.add_argument("--last-rank", type=int, help="rank of the last layers (default 2*rank)")
    train.add_argument("--last-layers", type=int, help="how many layers get --last-rank")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument(
        "--min-steps", type=int, default=400, help="optimizer steps per layer at least"
    )
    train.add_argument("--max-tokens", type=int, default=32768, help="calibration tokens used")
    train.add_argument("--threshold", type=float, default=0.5, help="sigmoid cut-off")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--target-sparsity",
        type=float,
        help="gated SiLU FFNs (Llama family) only, LOSSY: drop the neurons whose |silu(gate)| "
        "is below a per-layer threshold calibrated so that this fraction (e.g. 0.5) of the "
        "activations are dropped; the quality cost is measured and printed",
    )
    train.add_argument(
        "--min-recall",
        type=float,
        help="layers whose held-out recall is below this run dense (their predictor selects "
        "every neuron); default 0.9 with --target-sparsity (gated, where weak predictors cost "
        "quality), else 0 (off)",
    )
    train.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    train.add_argument("--out", help="where to write the predictors (default: the model dir)")
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(run=run_train)

    bundle = sub.add_parser(
        "bundle",
        help="write row-column bundled FFN files",
        description="Write per FFN layer ffn-bundle-{i}.bin (neuron i's up row and down "
        "column contiguous, 4 KiB-aligned file) and bundles.json into OUT_DIR.",
    )
    bundle.add_argument("model", help="tierlm package or Hugging Face directory (OPT)")
    bundle.add_argument("out", help="output directory")
    bundle.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16"])
    bundle.add_argument("--json", action="store_true", help="print one JSON object")
    bundle.set_defaults(run=run_bundle)

    sparse_calibrate.add_parser(sub)


def run_bundle(args):
    from tierlm.sparse.bundle import write_model_bundles
    from tierlm.sparse.model import load_model

    layouts = write_model_bundles(load_model(args.model), Path(args.out), args.dtype)
    result = {"out": args.out, "layers": [lay.to_json() for lay in layouts]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    total = sum(lay.file_bytes for lay in layouts)
    print(
        f"wrote {len(layouts)} bundled FFN files ({layouts[0].n_neurons} neurons of "
        f"{layouts[0].row_bytes} bytes per layer, {total} bytes) to {args.out}"
    )


def _read_text(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{what} file {path} is empty")
    return text


def run_train(args):
    from tierlm.sparse.model import load_model
    from tierlm.sparse.predictor import default_ranks, split_ids, train_predictors

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold {args.threshold} must lie in (0, 1)")
    loaded = load_model(args.model)
    if args.target_sparsity is not None and not loaded.gated:
        raise ValueError(
            f"--target-sparsity is for gated SiLU FFNs (Llama family); {args.model} has a ReLU "
            "FFN whose zeros are exact: run without --target-sparsity"
        )
    ids = loaded.encode(_read_text(args.calibration, "calibration"))
    if args.held_out:
        train_ids, held_ids = ids, loaded.encode(_read_text(args.held_out, "held-out"))
    else:
        train_ids, held_ids = split_ids(ids)
    if len(train_ids) < 16 or len(held_ids) < 4:
        raise ValueError(
            f"calibration text gives only {len(ids)} tokens; give a few thousand tokens at least"
        )
    ranks = default_ranks(
        loaded.num_layers, loaded.hidden_size, args.rank, args.last_rank, args.last_layers
    )
    min_recall = args.min_recall
    if min_recall is None:
        min_recall = 0.9 if args.target_sparsity is not None else 0.0
    if not 0.0 <= min_recall <= 1.0:
        raise ValueError(f"--min-recall {min_recall} must lie in [0, 1]")
    t0 = time.monotonic()

    def collect_progress(done, total):
        if not args.json:
            spent = time.monotonic() - t0
            print(
                f"collect: {done}/{total} tokens, {spent:.0f} s, about "
                f"{spent / max(done, 1) * (total - done):.0f} s left",
                file=sys.stderr,
                flush=True,
            )

    def progress(m):
        if not args.json:
            n, done = loaded.num_layers, m["layer"] + 1
            spent = time.monotonic() - t0
            left = m["train_seconds"] * (n - done)
            fallback = f"  -> dense (recall < {min_recall})" if m.get("fallback") else ""
            recall = m.get("trained_recall", m["recall"])
            print(
                f"layer {m['layer']:>3}/{n}  rank {m['rank']:>4}  recall {recall:.3f}  "
                f"precision {m['precision']:.3f}  recall@precision0.5 "
                f"{m['recall_at_precision_0.5']:.3f}  active {m['true_density']:.3f}  "
                f"predicted {m['predicted_density']:.3f}{fallback}  ({spent:.0f} s, about "
                f"{left:.0f} s left)",
                file=sys.stderr,
                flush=True,
            )

    predictors = train_predictors(
        loaded,
        train_ids,
        held_ids,
        ranks,
        epochs=args.epochs,
        min_steps=args.min_steps,
        max_tokens=args.max_tokens,
        seed=args.seed,
        threshold=args.threshold,
        progress=progress,
        target_sparsity=args.target_sparsity,
        min_recall=min_recall,
        collect_progress=collect_progress,
    )
    out = Path(args.out) if args.out else Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    predictors.save(out)
    registered = False
    if (out / "manifest.json").exists():  # a package: list them in its manifest
        from tierlm.sparse.package import register_predictors

        register_predictors(out)
        registered = True
    quality = None
    if loaded.gated:
        from tierlm.sparse.quality import gated_quality

        quality = gated_quality(loaded, predictors, held_ids)
    result = {
        "out": str(out),
        "lossy": loaded.gated,
        "quality": quality,
        "manifest_updated": registered,
        "ranks": predictors.ranks,
        **predictors.metrics,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    layers = predictors.metrics["layers"]
    mean_recall = sum(m["recall"] for m in layers) / len(layers)
    mean_precision = sum(m["precision"] for m in layers) / len(layers)
    print(
        f"trained {len(layers)} predictors on {predictors.metrics['train_tokens']} tokens, "
        f"measured on {predictors.metrics['held_out_tokens']} held-out tokens: "
        f"mean recall {mean_recall:.3f}, mean precision {mean_precision:.3f}; wrote {out}"
    )
    dense = predictors.metrics["dense_fallback_layers"]
    if dense:
        print(f"layers run dense (held-out recall below {min_recall}): {dense}")
    if quality:
        p, t = quality["predicted"], quality["threshold_only"]
        print(
            f"LOSSY thresholded SiLU (target sparsity {args.target_sparsity}): vs dense on "
            f"{quality['tokens']} held-out tokens, logit error {p['logit_error']:.4f} "
            f"(threshold alone {t['logit_error']:.4f}), top-1 agreement "
            f"{p['top1_agreement']:.3f} (threshold alone {t['top1_agreement']:.3f})"
        )
