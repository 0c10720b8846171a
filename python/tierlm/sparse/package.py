"""The optional sparse sections of a package (docs/package-format.md): row-column bundled FFN
files written at export (`tierlm export --sparse`) and activation predictors copied from the
checkpoint or written by `tierlm sparse train PKG`, each listed in manifest.json."""

import json
import os
import shutil
import zlib

import numpy as np

from tierlm.dtypes import NUMPY_DTYPES, stored_shape, to_f32
from tierlm.errors import CorruptError, UnsupportedError
from tierlm.quant import BLOCKS, quantize
from tierlm.sparse.bundle import ALIGNMENT, BUNDLES_JSON, write_bundle_stored, write_bundles_json
from tierlm.sparse.predictor import PREDICTORS_JSON

# A down matrix whose source is a block type (a GGUF file) was rounded once along the FFN axis;
# its bundle rounds it again along the hidden axis. At q8_0 that second rounding is small; at
# 4-6 bits it doubles the error (SmolLM2's Q4_1 file: logits 11-17 % of their range from dense
# with q4_1 bundles, 3-5 % with q8_0), so such bundles are q8_0, up and gate included. A float
# source's down is rounded once, straight into the bundle's type.
_REROUNDED_DOWN_DTYPE = "q8_0"
SPARSE_ACTIVATIONS = ("relu", "swiglu")  # gated SwiGLU bundles carry the gate row too
TRAIN_HINT = "tierlm sparse train {pkg} --calibration TEXTFILE"


def stored_tensor(directory, info, name):
    return np.memmap(
        os.path.join(directory, info[name]["file"]),
        NUMPY_DTYPES[info[name]["dtype"]],
        "r",
        info[name]["offset"],
        stored_shape(info[name]["dtype"], info[name]["shape"]),
    )


def check_sparse_config(config, where):
    ffn = config.get("ffn")
    if ffn not in SPARSE_ACTIVATIONS:
        raise UnsupportedError(
            f"{where}: the FFN activation is {ffn!r}; sparse-neuron loading needs a ReLU FFN "
            "(OPT) or a gated SiLU FFN (Llama family); export without --sparse"
        )


def tensor_values(directory, tensors, name):
    """A tensor's f32 values (bf16 words widened, a block type dequantized)."""
    info = tensors[name]
    raw = stored_tensor(directory, tensors, name)
    return to_f32(raw, info["dtype"], info["shape"]).reshape(info["shape"])


def write_package_bundles(directory, tensors, config, source_values=None):
    """Writes ffn-bundle-{i}.bin per layer and bundles.json into the package directory being
    built, from its own weight files (so the bundles hold the package dtype's exact bytes).
    When up (and gate) are of a block type the bundle takes it: their rows are copied and
    down's values quantized to it as rows of down^T (down's own blocks run along the FFN, so
    its columns cannot be copied), from its checkpoint values (source_values(name) -> (source
    dtype, f32 values); else the package's); when those are a block type the bundle is q8_0
    (see _REROUNDED_DOWN_DTYPE). Returns the manifest section."""
    layouts = []
    for i in range(config["num_layers"]):
        p = f"layers.{i}.ffn."
        names = [p + "up.weight", p + "down.weight"]
        gated = p + "gate.weight" in tensors
        if gated:
            names.append(p + "gate.weight")
        row_dtypes = {tensors[n]["dtype"] for n in names if n != p + "down.weight"}
        dtypes = row_dtypes | {tensors[p + "down.weight"]["dtype"]}
        up, down = (
            stored_tensor(directory, tensors, names[0]),
            stored_tensor(directory, tensors, names[1]),
        )
        gate = stored_tensor(directory, tensors, names[2]) if gated else None
        path = os.path.join(directory, f"ffn-bundle-{i}.bin")
        dtype = row_dtypes.pop() if len(row_dtypes) == 1 else "f32"
        if dtype in BLOCKS:
            if source_values is not None:
                down_dtype, down = source_values(names[1])
            else:
                down_dtype, down = (
                    tensors[names[1]]["dtype"],
                    tensor_values(directory, tensors, names[1]),
                )
            dim = tensors[names[0]]["shape"][1]
            if down_dtype in BLOCKS and dtype != _REROUNDED_DOWN_DTYPE:
                dtype = _REROUNDED_DOWN_DTYPE
                up = quantize(dtype, tensor_values(directory, tensors, names[0]))
                gate = (
                    quantize(dtype, tensor_values(directory, tensors, names[2])) if gated else None
                )
            layouts.append(write_bundle_stored(path, up, down, gate, dtype, dim=dim))
            continue
        dtype = dtype if len(dtypes) == 1 else "f32"
        if dtype == "f32":
            up, down = (tensor_values(directory, tensors, n) for n in names[:2])
            gate = tensor_values(directory, tensors, names[2]) if gated else None
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
    section = predictors_section(package_dir, read_manifest(package_dir)["config"], package_dir)
    set_manifest_section(package_dir, "predictors", section)
    return section


def read_manifest(package_dir):
    with open(os.path.join(package_dir, "manifest.json")) as f:
        return json.load(f)


def set_manifest_section(package_dir, key, section):
    """Sets manifest.json[key] = section, rewriting the file atomically."""
    manifest_path = os.path.join(package_dir, "manifest.json")
    manifest = read_manifest(package_dir)
    manifest[key] = section
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, manifest_path)
