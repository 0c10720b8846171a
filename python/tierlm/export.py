"""`tierlm.export`: a Hugging Face checkpoint directory (or a GGUF file, tierlm.gguf) to a
tierlm package.

Tensors are converted and written one at a time, in chunks, so memory stays near one chunk; the
package is assembled in a temporary sibling directory and renamed into place, so a failed export
leaves nothing behind.
"""

import json
import os
import zlib

import numpy as np

from tierlm import writer
from tierlm.archs import arch_lookup
from tierlm.checkpoint import Checkpoint, check_no_quantization
from tierlm.dtypes import (
    DTYPE_SIZES,
    PACKAGE_DTYPES,
    convert,
    dtype_check,
    dtype_is_quantized,
    dtype_nbytes,
    to_f32,
)
from tierlm.errors import CorruptError, NotFoundError, UnsupportedError
from tierlm.graph import graph_check
from tierlm.outdir import (
    check_out_dir,
    discard,
    install,
    make_staging,
)
from tierlm.package_format import (
    ALIGN,
    FORMAT,
    FORMAT_VERSION,
    GRAPH,
    MANIFEST,
    TOKENIZER_DIR,
    weight_file,
)
from tierlm.quant import quantize
from tierlm.quant.recipe import recipe_apply, recipe_load

FILE_LIMIT = 2 << 30  # weight files are split at 2 GiB
CHUNK = 16 << 20  # bytes of source data converted at a time
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def read_hf_config(hf_dir):
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise NotFoundError(f"{hf_dir}: checkpoint directory does not exist")
    if not os.path.exists(path):
        raise NotFoundError(f"{hf_dir}: no config.json (is this a Hugging Face checkpoint?)")
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as error:
            raise CorruptError(f"{path}: not valid JSON ({error})") from None


def plan_tensors(plan, checkpoint, dtype):
    """Pairs each tensor spec with its checkpoint entry and output dtype; checks shapes and
    that no checkpoint tensor is left unused (an unknown tensor means an unknown variant)."""
    used, rows = set(), []
    for spec in plan.tensors:
        source = next((s for s in spec.sources if s in checkpoint), None)
        if source is None:
            raise NotFoundError(
                f"{checkpoint.dir}: checkpoint has no tensor {spec.sources[0]} (needed for "
                f"{spec.name}); incomplete checkpoint or a variant tierlm does not know"
            )
        entry = checkpoint.entries[source]
        if entry.shape != tuple(spec.shape):
            raise CorruptError(
                f"{entry.file}: tensor {source} has shape {list(entry.shape)}, the model's "
                f"config implies {list(spec.shape)}"
            )
        # 1-D tensors (norms, biases) are always f32: tiny, and the executor reads them in f32
        out = "f32" if len(spec.shape) == 1 else (dtype or entry.dtype)
        used.add(source)
        rows.append((spec, source, entry, out))
    unused = sorted(n for n in checkpoint.entries if n not in used and not plan.ignore.match(n))
    if unused:
        raise UnsupportedError(
            f"{checkpoint.dir}: checkpoint tensors {', '.join(unused[:4])}"
            f"{' ...' if len(unused) > 4 else ''} are not used by the {plan.architecture} "
            "architecture; this variant is not supported"
        )
    return rows


def file_order(rows):
    """The plan's order, except that a layer's 1-D tensors (norms, biases) go before its
    matrices: a streamed layer's matrices then lie side by side in the file, and the ring
    reads a run of them with one request (docs/offload.md)."""
    first = {}
    for i, (spec, *_) in enumerate(rows):
        first.setdefault(spec.layer, i)

    def key(item):
        i, (spec, *_) = item
        if spec.layer < 0:
            return (i, 0, i)
        return (first[spec.layer], len(spec.shape) >= 2, i)

    return [row for _, row in sorted(enumerate(rows), key=key)]


def layout(rows, limit=FILE_LIMIT):
    """Assigns each tensor a weight file and a 4 KiB-aligned offset, in file_order; a file is
    closed when the next tensor would pass `limit` (a larger tensor gets a file of its own)."""
    files, placed, index, end = [], [], 0, 0
    for spec, source, entry, out in file_order(rows):
        nbytes = dtype_nbytes(out, spec.shape, spec.name)
        if end and _align(end) + nbytes > limit:
            files.append({"name": weight_file(index), "size": _align(end)})
            index, end = index + 1, 0
        offset = _align(end)
        placed.append((spec, source, entry, out, weight_file(index), offset, nbytes))
        end = offset + nbytes
    files.append({"name": weight_file(index), "size": _align(end)})
    return files, placed


def _float_chunks(raw, entry, out, name):
    step = CHUNK - CHUNK % DTYPE_SIZES[entry.dtype]
    for start in range(0, entry.nbytes, step):
        yield convert(raw[start : start + step], entry.dtype, out, name)


def _block_chunks(raw, entry, out, name):
    """Stored block-type bytes as they are (a GGUF tensor is never re-quantized), or float
    rows quantized to out a whole number of rows at a time."""
    if entry.dtype == out:
        for start in range(0, entry.nbytes, CHUNK):
            yield np.asarray(raw[start : start + CHUNK])
        return
    cols = entry.shape[-1]
    row = cols * DTYPE_SIZES[entry.dtype]
    rows = max(1, CHUNK // row)
    for start in range(0, entry.nbytes, rows * row):
        values = to_f32(raw[start : start + rows * row], entry.dtype).reshape(-1, cols)
        yield quantize(out, values, name)


def _write_tensor(f, checkpoint, source, entry, out, name, bar):
    raw = checkpoint.raw(source)
    quantized = dtype_is_quantized(entry.dtype) or dtype_is_quantized(out)
    chunks = (_block_chunks if quantized else _float_chunks)(raw, entry, out, name)
    crc = 0
    for data in chunks:
        crc = zlib.crc32(data, crc)
        writer.write(f, data)
        bar.update(data.nbytes)
    del raw
    return crc


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="export",
        disable=not enabled,
    )


def export(
    hf_dir,
    out_dir,
    dtype=None,
    progress=True,
    overwrite=False,
    max_positions=None,
    file_limit=None,
    sparse=False,
    recipe=None,
):
    """Exports the checkpoint in hf_dir (or a .gguf file) to a package in out_dir and returns
    out_dir.

    dtype: "f32", "f16", "bf16" or a block type of tierlm.quant (q8_0, q4_0, q4_1, ...,
    quantized at export) for the matrices, or None to keep the checkpoint's; 1-D tensors are
    always f32. recipe: a built-in recipe name ("m") or a recipe file giving some matrices
    other dtypes (tierlm.quant.recipe); matrices whose rows are not whole blocks fall back to
    16 bits (listed in the manifest's "quantization"). A GGUF file's tensors are copied as
    they are stored (dtype and recipe are refused). max_positions caps the context (needed for
    sliding-window models).
    overwrite replaces an existing package. file_limit overrides the 2 GiB weight-file split.
    sparse: also write the row-column bundled FFN files (ffn-bundle-{i}.bin, in the package
    dtype) and copy the checkpoint's activation predictors (predictors.json + .safetensors)
    when it has them; both are listed in the manifest ("bundles", "predictors"); a directory
    carrying channel_sparsity.json (`tierlm sparse calibrate`) also gets its input-channel
    files ("channels", tierlm.sparse.channel_package). The dense matrices stay, so the package
    also runs dense.
    """
    hf_dir, out_dir = os.fspath(hf_dir), os.path.abspath(os.fspath(out_dir))
    dtype_check(dtype, allowed=PACKAGE_DTYPES)
    gguf = None
    if os.path.isfile(hf_dir):
        from tierlm.gguf.source import GGUFSource

        gguf = GGUFSource.open(hf_dir, dtype=dtype, recipe=recipe)
    hf = gguf.hf_config if gguf else read_hf_config(hf_dir)
    where = gguf.path if gguf else os.path.join(hf_dir, "config.json")
    if not gguf:
        check_no_quantization(hf, where)
    module = arch_lookup(hf, where)
    recipe = recipe_load(recipe, PACKAGE_DTYPES)
    check_out_dir(out_dir, [hf_dir], overwrite)
    plan = module.plan(hf, max_positions=max_positions)
    _generation_ids(hf_dir, plan.config)
    if sparse:
        from tierlm.sparse.package import check_sparse_config

        check_sparse_config(plan.config, where)
    checkpoint = gguf.checkpoint if gguf else Checkpoint(hf_dir)
    rows, quantization = recipe_apply(plan_tensors(plan, checkpoint, dtype), recipe)
    files, placed = layout(rows, file_limit or FILE_LIMIT)
    tensors = {}
    for spec, _, _, out, file, offset, nbytes in placed:
        tensors[spec.name] = {
            "dtype": out,
            "shape": list(spec.shape),
            "file": file,
            "offset": offset,
            "nbytes": nbytes,
            "crc32": 0,
            "layer": spec.layer,
        }
    graph_check(plan.graph, tensors)

    tmp = make_staging(out_dir)
    try:
        with _progress(sum(t["nbytes"] for t in tensors.values()), progress) as bar:
            by_file = {}
            for row in placed:
                by_file.setdefault(row[4], []).append(row)
            for spec in files:
                path = os.path.join(tmp, spec["name"])
                with writer.writing(path), open(path, "wb") as f:
                    for tensor, source, entry, out, _, offset, _ in by_file[spec["name"]]:
                        writer.write(f, bytes(offset - f.tell()))
                        info = tensors[tensor.name]
                        info["crc32"] = _write_tensor(
                            f, checkpoint, source, entry, out, tensor.name, bar
                        )
                    writer.write(f, bytes(spec["size"] - f.tell()))
                    writer.fsync(f)
        token_files = gguf.write_tokenizer(tmp) if gguf else _copy_tokenizer(hf_dir, tmp)
        sections = {}
        if sparse:
            from tierlm.sparse.package import copy_predictors, write_package_bundles

            by_name = {spec.name: (source, entry) for spec, source, entry, _ in rows}

            def source_values(name):
                source, entry = by_name[name]
                values = to_f32(checkpoint.raw(source), entry.dtype, entry.shape)
                return entry.dtype, values.reshape(entry.shape)

            sections["bundles"] = write_package_bundles(tmp, tensors, plan.config, source_values)
            sections["predictors"] = copy_predictors(hf_dir, tmp, plan.config)
            if not gguf:
                from tierlm.sparse.channel_package import copy_channels

                sections["channels"] = copy_channels(hf_dir, tmp, tensors, plan.config)
        source_dtypes = sorted({entry.dtype for _, _, entry, _ in rows})
        matrix_dtypes = sorted({out for spec, _, _, out in rows if len(spec.shape) > 1})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": plan.architecture,
            "dtype": matrix_dtypes[0] if len(matrix_dtypes) == 1 else "mixed",
            "config": plan.config,
            "files": files,
            "tensors": tensors,
            "tokenizer": {"dir": TOKENIZER_DIR, "files": token_files} if token_files else None,
            "source": {
                "model_type": hf.get("model_type"),
                "architectures": hf.get("architectures"),
                "dtypes": source_dtypes,
                "transformers_version": hf.get("transformers_version"),
                **(gguf.source_info() if gguf else {}),
            },
            **sections,
        }
        if recipe or any(dtype_is_quantized(d) for d in matrix_dtypes + [dtype or ""]):
            manifest["quantization"] = {
                "dtype": dtype,
                "recipe": recipe.to_json() if recipe else None,
                **quantization,
            }
        _write_json(os.path.join(tmp, MANIFEST), manifest)
        _write_json(os.path.join(tmp, GRAPH), plan.graph)
        install(tmp, out_dir)
    except OSError as error:
        discard(tmp)
        kept = f"{out_dir} was left as it was"
        raise writer.write_error(error, f"export to {out_dir}", kept) from error
    except BaseException:
        discard(tmp)
        raise
    return out_dir


def _generation_ids(hf_dir, config):
    """End-of-sequence ids as transformers' generate uses them: generation_config.json when the
    checkpoint has one (it may list more ids than config.json), else config.json's."""
    path = os.path.join(hf_dir, "generation_config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        try:
            generation = json.load(f)
        except ValueError as error:
            raise CorruptError(f"{path}: not valid JSON ({error})") from None
    eos = generation.get("eos_token_id")
    if eos is not None:
        ids = eos if isinstance(eos, list) else [eos]
        config["eos_token_ids"], config["eos_token_id"] = ids, ids[0] if ids else None
    if generation.get("bos_token_id") is not None:
        config["bos_token_id"] = generation["bos_token_id"]


def _copy_tokenizer(hf_dir, tmp):
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    if names:
        os.mkdir(os.path.join(tmp, TOKENIZER_DIR))
        for name in names:
            writer.copy(os.path.join(hf_dir, name), os.path.join(tmp, TOKENIZER_DIR, name))
    return names


def _write_json(path, value):
    with writer.writing(path), open(path, "w") as f:
        writer.write(f, json.dumps(value, indent=1) + "\n")
        writer.fsync(f)
