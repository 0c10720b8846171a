"""`tierlm export HF_DIR|MODEL.gguf OUT_DIR`: a Hugging Face checkpoint or a GGUF file to a
tierlm package."""

import json

from tierlm.dtypes import PACKAGE_DTYPES
from tierlm.export import export
from tierlm.package import Package
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="convert a Hugging Face checkpoint (safetensors) or a GGUF file to a tierlm package",
    )
    parser.add_argument(
        "hf_dir",
        metavar="HF_DIR|MODEL.gguf",
        help="checkpoint directory with config.json, or a llama.cpp GGUF file (its tensors are "
        "copied as stored)",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="package directory to create")
    parser.add_argument(
        "--dtype",
        choices=PACKAGE_DTYPES,
        default=None,
        help="dtype of the matrices (default: keep); the block types quantize at export",
    )
    parser.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="per-tensor dtypes: 'm' (embedding, lm_head, attention V, FFN down at q8_0) or a "
        "file of 'PATTERN DTYPE' lines (docs/package-format.md)",
    )
    parser.add_argument(
        "--max-positions",
        type=int,
        default=None,
        metavar="N",
        help="cap the context at N tokens (required for sliding-window models: N <= window)",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="also write row-column bundled FFN files and copy the checkpoint's activation "
        "predictors, for `tierlm generate --sparse`",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args):
    out = export(
        args.hf_dir,
        args.out_dir,
        dtype=args.dtype,
        progress=not (args.no_progress or args.json),
        overwrite=args.overwrite,
        max_positions=args.max_positions,
        sparse=args.sparse,
        recipe=args.recipe,
    )
    package = Package.open(out)
    manifest = package.manifest
    total = sum(t["nbytes"] for t in package.tensors.values())
    summary = {
        "package": out,
        "architecture": manifest["architecture"],
        "model_type": manifest["config"].get("model_type"),
        "dtype": manifest["dtype"],
        "tensors": len(package.tensors),
        "bytes": total,
        "files": [f["name"] for f in manifest["files"]],
        "tokenizer": (manifest["tokenizer"] or {}).get("files", []),
    }
    quantization = manifest.get("quantization")
    if quantization:
        summary["quantization"] = quantization
    if args.sparse:
        bundles = manifest.get("bundles") or {}
        summary["bundles"] = [lay["file"] for lay in bundles.get("layers", [])]
        summary["predictors"] = manifest.get("predictors")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"exported {summary['model_type']} ({summary['architecture']}, {summary['dtype']}): "
        f"{summary['tensors']} tensors, {format_size(total)} in {len(summary['files'])} file(s), "
        f"tokenizer: {', '.join(summary['tokenizer']) or 'none'} -> {out}"
    )
    if quantization:
        print_quantization(package, quantization)
    if args.sparse:
        print(f"sparse: {len(summary['bundles'])} bundled FFN files", end="")
        if summary["predictors"]:
            print(", predictors copied from the checkpoint")
        else:
            print(
                "; no predictors in the checkpoint: train them with "
                f"`tierlm sparse train {out} --calibration TEXTFILE` before `--sparse` runs"
            )


def print_quantization(package, quantization):
    counts = {}
    for t in package.tensors.values():
        if len(t["shape"]) > 1:
            counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    print("matrices: " + ", ".join(f"{n} {d}" for d, n in sorted(counts.items())))
    for f in quantization["fallbacks"]:
        print(f"  {f['tensor']}: {f['dtype']} instead of {f['wanted']} ({f['reason']})")
    for rule in quantization["unmatched_rules"]:
        print(f"  recipe rule {rule} matched no matrix")
