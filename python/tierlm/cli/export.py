"""`tierlm export HF_DIR OUT_DIR`: a Hugging Face checkpoint to a tierlm package."""

import json

from tierlm.dtypes import DTYPES
from tierlm.export import export
from tierlm.package import Package
from tierlm.sizes import format_size


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export", help="convert a Hugging Face checkpoint (safetensors) to a tierlm package"
    )
    parser.add_argument("hf_dir", metavar="HF_DIR", help="checkpoint directory with config.json")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="package directory to create")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="dtype of the matrices (default: keep)"
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
    if args.sparse:
        print(f"sparse: {len(summary['bundles'])} bundled FFN files", end="")
        if summary["predictors"]:
            print(", predictors copied from the checkpoint")
        else:
            print(
                "; no predictors in the checkpoint: train them with "
                f"`tierlm sparse train {out} --calibration TEXTFILE` before `--sparse` runs"
            )
