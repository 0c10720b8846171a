"""The optional sparse sections of a package (docs/package-format.md): row-column bundled FFN
files written at export (`tierlm export --sparse`) and activation predictors copied from the
checkpoint or written by `tierlm sparse train PKG`, each listed in manifest.json."""

import json
import os
import shutil
import zlib

import numpy as np

from tierlm.dtypes import NUMPY_DTYPES
from tierlm.errors import CorruptError, UnsupportedError
from tierlm.sparse.bundle import ALIGNMENT, BUNDLES_JSON, write_bundle_stored, write_bundles_json
from tierlm.sparse.predictor import PREDICTORS_JSON

SPARSE_ACTIVATIONS = ("relu", "swiglu")  # gated SwiGLU bundles carry the gate row too
TRAIN_HINT = "tierlm sparse train {pkg} --calibration TEXTFILE"


def _tensor(directory, info, name):
    return np.memmap(
        os.path.join(directory, info[name]["file"]),
        NUMPY_DTYPES[info[name]["dtype"]],
        "r",
        info[name]["offset"],
        tuple(info[name]["shape"]),
    )


def check_sparse_config(config, where):
    ffn = config.get("ffn")
    if ffn not in SPARSE_ACTIVATIONS:
        raise UnsupportedError(
            f"{where}: the FFN activation is {ffn!r}; sparse-neuron loading needs a ReLU FFN "
            "(OPT) or a gated SiLU FFN (Llama family); export without --sparse"
        )


def write_package_bundles(directory, tensors, config):
    """Writes ffn-bundle-{i}.bin per layer and bundles.json into the package directory being
    built, from its own weight files (so the bundles hold the package dtype's exact bytes).
    Returns the manifest section."""
    layouts = []
    for i in range(config["num_layers"]):
        p = f"layers.{i}.ffn."
        names = [p + "up.weight", p + "down.weight"]
        gated = p + "gate.weight" in tensors
        if gated:
            names.append(p + "gate.weight")
        dtypes = {tensors[n]["dtype"] for n in names}
        up, down = _tensor(directory, tensors, names[0]), _tensor(directory, tensors, names[1])
        gate = _tensor(directory, tensors, names[2]) if gated else None
        dtype = dtypes.pop() if len(dtypes) == 1 else "f32"
        if dtype == "f32":
            up, down = (np.asarray(a, np.float32) for a in (up, down))
            gate = None if gate is None else np.asarray(gate, np.float32)
        path = os.path.join(directory, f"ffn-bundle-{i}.bin")
        layouts.append(write_bundle_stored(path, up, down, gate, dtype))
    write_bundles_json(directory, layouts)
    return {
        "json": BUNDLES_JSON,
        "alignment": ALIGNMENT,
        "layers": [{"layer": i, **lay.to_json()} for i, lay in enumerate(layouts)],
    }


def predictors_section(directory, config, where):
    """The manifest section of predictors.json (+ its safetensors file) in directory, after
    checking that they belong to this model; None when there are none."""
    meta_path = os.path.join(directory, PREDICTORS_JSON)
    if not os.path.exists(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as error:
        raise CorruptError(f"{meta_path}: not valid JSON ({error})") from None
    if meta.get("num_layers") != config["num_layers"]:
        raise CorruptError(
            f"{meta_path}: predictors for {meta.get('num_layers')} layers, the model has "
            f"{config['num_layers']}; train them again with `tierlm sparse train`"
        )
    file = meta.get("file", "predictors.safetensors")
    if not os.path.exists(os.path.join(directory, file)):
        raise CorruptError(f"{meta_path}: names {file}, which is missing from {directory}")
    return {
        "json": PREDICTORS_JSON,
        "file": file,
        "activation": meta.get("activation", "relu"),
        "num_layers": meta["num_layers"],
        # tierlm.load(..., sparse=True, verify=True) checks the predictor tensors against it.
        "crc32": _file_crc32(os.path.join(directory, file)),
    }


def _file_crc32(path):
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def copy_predictors(hf_dir, out_dir, config):
    """Copies predictors.json and its tensors from a checkpoint directory into the package
    being built; returns the manifest section or None when the checkpoint has none."""
    section = predictors_section(hf_dir, config, hf_dir)
    if section is not None:
        for name in (section["json"], section["file"]):
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, name))
    return section


def register_predictors(package_dir):
    """Lists the predictors found in a package directory in its manifest.json (rewritten
    atomically). Returns the section."""
    manifest_path = os.path.join(package_dir, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    section = predictors_section(package_dir, manifest["config"], package_dir)
    manifest["predictors"] = section
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, manifest_path)
    return section
