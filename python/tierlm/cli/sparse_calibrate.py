"""`tierlm sparse calibrate`: training-free input-channel sparsity for Llama-family models.
Calibrates per-layer, per-site magnitude thresholds for a target sparsity on text (the
shipped calibration text by default), measures the quality against dense on held-out text
and prints it, and only then writes channel_sparsity.json and the channel-bundled matrices:
into a tierlm package (--out PKG), listed in its manifest so that `tierlm.load(PKG,
sparse=True)` runs them, or beside a model directory for the torch tools."""

import json
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "calibration"
# The defaults, the best measured on SmolLM2-135M-Instruct (docs/sparse.md): at 40% of the
# weights skipped on held-out text, output axes x1.047 against x1.19 without a rotation.
ALLOCATION, CRITERION, ROTATION = "uniform", "magnitude", "output"


def add_parser(sub):
    cal = sub.add_parser(
        "calibrate",
        help="training-free input-channel sparsity (Llama family): calibrate thresholds",
        description="Calibrate, per layer and per linear input (q/k/v, o, gate/up, down), the "
        "magnitude below which input channels are skipped so that --target-sparsity of them "
        "are; report held-out perplexity and top-1 agreement against dense (LOSSY), then "
        "write channel_sparsity.json and the matrices stored by input channel "
        "(channel-*.bin) into --out: a tierlm package there gets them listed in its manifest, "
        "so `tierlm generate PKG --sparse` runs them; a plain directory gets channels.json.",
    )
    cal.add_argument("model", help="Hugging Face directory or .gguf file (Llama family)")
    cal.add_argument(
        "--target-sparsity", type=float, required=True, help="fraction of input channels to skip"
    )
    cal.add_argument(
        "--calibration",
        default=str(DATA / "calibration.txt"),
        help="text to calibrate on (default: the shipped Python reference text)",
    )
    cal.add_argument(
        "--held-out",
        default=str(DATA / "held_out.txt"),
        help="text to measure quality on (default: the shipped held-out text)",
    )
    cal.add_argument(
        "--allocation",
        default=ALLOCATION,
        choices=["uniform", "greedy", "energy", "walk"],
        help="how the target is spread over the layers' inputs: the same fraction everywhere "
        "(uniform), per layer the sites a greedy walk finds cheapest on the layer's output "
        "(greedy), by input energy (energy), or per input type the levels a greedy walk on "
        "the KL divergence from dense over the last 1024 calibration tokens finds (walk, one run "
        "of the model per step); default %(default)s (docs/sparse.md)",
    )
    cal.add_argument(
        "--criterion",
        default=CRITERION,
        choices=["magnitude", "weight_norm"],
        help="what the thresholds cut: |x| (magnitude) or |x| times the norm of the weight "
        "column it multiplies (weight_norm); default %(default)s",
    )
    cal.add_argument(
        "--rotation",
        default=ROTATION,
        choices=["none", "site", "output"],
        help="threshold the inputs of q/k/v and gate/up in the basis of their principal axes "
        "on the calibration text (site: one resident rotation per input; output: the same, "
        "in the basis of the principal axes of the site's outputs), folded into the "
        "channel files; the rotations are resident (f32, hidden size squared per input); "
        "none: no rotation, needed for --allocation greedy or --criterion weight_norm; "
        "default %(default)s (docs/sparse.md)",
    )
    cal.add_argument("--max-tokens", type=int, default=8192, help="calibration tokens used")
    cal.add_argument(
        "--held-out-tokens", type=int, default=4096, help="held-out tokens measured (0: skip)"
    )
    cal.add_argument(
        "--dtype",
        choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
        help="dtype of the channel files (default f16; in a package its matrices' own float "
        "dtype, exact, or q8_0 for block types, quantized along each column)",
    )
    cal.add_argument(
        "--out", help="output directory or tierlm package (default: the model directory)"
    )
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.set_defaults(run=run_calibrate)


def _check(args):
    if not 0.0 <= args.target_sparsity < 1.0:
        raise ValueError(f"--target-sparsity {args.target_sparsity} must lie in [0, 1)")
    if args.max_tokens < 16:
        raise ValueError(f"--max-tokens {args.max_tokens} must be at least 16")
    if args.held_out_tokens < 0:
        raise ValueError(f"--held-out-tokens {args.held_out_tokens} must be >= 0")
    if args.rotation != "none" and (args.allocation == "greedy" or args.criterion != "magnitude"):
        raise ValueError(
            f"--rotation {args.rotation} runs with --criterion magnitude and --allocation "
            f"uniform, energy or walk, not {args.criterion} / {args.allocation}: "
            "add --rotation none"
        )
    model = Path(args.model)
    if model.suffix == ".gguf" and not args.out:
        raise ValueError(f"{model} is a GGUF file: give --out DIR for the calibrated files")
    return Path(args.out) if args.out else model


def _progress(quiet):
    t0 = time.monotonic()

    def report(done, total):
        if quiet:
            return
        spent = time.monotonic() - t0
        left = spent / done * (total - done) if done else 0.0
        print(
            f"calibrate: collect {done}/{total} tokens, {spent:.0f} s, about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    return report


def run_calibrate(args):
    from tierlm.cli.sparse import _read_text
    from tierlm.sparse.channel import CHANNEL_JSON, calibrate, quality
    from tierlm.sparse.channel_bundle import write_channel_bundles
    from tierlm.sparse.channel_package import register_channels
    from tierlm.sparse.model import load_model

    out = _check(args)
    loaded = load_model(args.model)
    if not loaded.gated:
        raise ValueError(
            f"{args.model}: input-channel calibration is for gated (Llama-family) models; "
            "OPT's ReLU FFN is exactly sparse: use `tierlm sparse train`"
        )
    ids = loaded.encode(_read_text(args.calibration, "calibration"))[: args.max_tokens]
    thresholds = calibrate(
        loaded,
        ids,
        args.target_sparsity,
        progress=_progress(args.json),
        allocation=args.allocation,
        criterion=args.criterion,
        rotation=args.rotation,
        log=None if args.json else lambda line: print(line, file=sys.stderr, flush=True),
    )
    q = None
    if args.held_out_tokens:
        held = loaded.encode(_read_text(args.held_out, "held-out"))[: args.held_out_tokens]
        if not args.json:
            print(f"quality: {len(held)} held-out tokens, dense and sparse", file=sys.stderr)
        q = quality(loaded, thresholds, held, n_new=0)
        thresholds.metrics["quality"] = q
        if not args.json:
            print(
                f"LOSSY input-channel sparsity {args.target_sparsity}: held-out perplexity "
                f"{q['perplexity']:.3f} vs dense {q['dense_perplexity']:.3f} "
                f"(x{q['perplexity_ratio']:.4f}), top-1 agreement {q['teacher_forced_top1']:.3f}, "
                f"{q['held_out_sparsity']:.1%} of the weights skipped there",
                flush=True,
            )
    package = (out / "manifest.json").is_file()
    if package:
        sites = register_channels(out, thresholds, args.dtype)["sites"]
        dtypes = sorted({s["dtype"] for s in sites})
        nbytes = sum(s["nbytes"] for s in sites)
    else:
        out.mkdir(parents=True, exist_ok=True)
        dtypes = [args.dtype or "f16"]
        layouts = write_channel_bundles(loaded, out, dtypes[0], thresholds.rotation)
        nbytes = sum(lay.file_bytes for lay in layouts)
        thresholds.save(out)
    result = {
        "out": str(out),
        "package": package,
        "thresholds_file": str(out / CHANNEL_JSON),
        "target_sparsity": args.target_sparsity,
        "allocation": args.allocation,
        "criterion": args.criterion,
        "rotation": args.rotation,
        "site_sparsity": thresholds.metrics["site_sparsity"],
        "calibration_tokens": thresholds.calibration_tokens,
        "quality": q,
        "bundle_bytes": nbytes,
        "bundle_dtypes": dtypes,
        "thresholds": thresholds.layers,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"calibrated {len(thresholds.layers)} layers on {thresholds.calibration_tokens} tokens; "
        f"wrote {CHANNEL_JSON} and the channel bundles ({nbytes} bytes, {', '.join(dtypes)}) "
        f"to {'the package ' if package else ''}{out}"
    )
