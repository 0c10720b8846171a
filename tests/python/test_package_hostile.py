"""Manifests written to mislead: fields that point outside the package or overflow as they are
narrowed get an error naming the manifest and field, from the Python reader and the runtime."""

import json
import os
import shutil

import pytest
import tierlm
from models import package
from tierlm.package import Package


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return package("llama", str(tmp_path_factory.mktemp("hostile")))[1]


def edited_copy(pristine, tmp_path, name, edit):
    """A copy of the package whose JSON file `name` is changed by edit(parsed)."""
    target = str(tmp_path / "pkg")
    shutil.copytree(pristine, target)
    path = os.path.join(target, name)
    with open(path) as f:
        parsed = json.load(f)
    edit(parsed)
    with open(path, "w") as f:
        json.dump(parsed, f)
    return target


@pytest.fixture
def edited(pristine, tmp_path):
    """A copy of the package with its manifest changed by edit(manifest)."""
    return lambda edit: edited_copy(pristine, tmp_path, "manifest.json", edit)


@pytest.mark.parametrize("where", ["../outside", "/etc", "tokenizer/../../x"])
def test_tokenizer_dir_outside_the_package(edited, where):
    def edit(manifest):
        manifest["tokenizer"] = {"dir": where, "files": ["tokenizer.json"]}

    pkg = edited(edit)
    with pytest.raises(tierlm.CorruptError, match="tokenizer.dir.*outside the package"):
        Package.open(pkg).tokenizer_dir()
    with pytest.raises(tierlm.CorruptError, match="tokenizer.dir.*outside the package"):
        tierlm.load(pkg)


def test_format_version_beyond_32_bits(edited):
    pkg = edited(lambda m: m.update(format_version=2**40))
    with pytest.raises(tierlm.UnsupportedError, match=f"format_version {2**40} is newer"):
        tierlm.load(pkg)


@pytest.mark.parametrize("offset", [-4096, -(2**40), 2**64 - 4096])
def test_tensor_offset_that_wraps(edited, offset):
    def edit(manifest):
        manifest["tensors"]["layers.0.attn.q.weight"]["offset"] = offset

    pkg = edited(edit)
    with pytest.raises(tierlm.CorruptError, match=r"layers\.0\.attn\.q\.weight"):
        Package.open(pkg)
    with pytest.raises(tierlm.CorruptError, match=r"layers\.0\.attn\.q\.weight.*offset"):
        tierlm.load(pkg)


@pytest.fixture(scope="module")
def opt_pristine(tmp_path_factory):
    return package("opt", str(tmp_path_factory.mktemp("hostile-opt")))[1]


def edited_graph(pristine, tmp_path, edit):
    return edited_copy(pristine, tmp_path, "graph.json", edit)


@pytest.mark.parametrize("offset", [-(2**32) + 2, -1, 2**31, 2**40])
def test_position_offset_that_a_32_bit_position_cannot_hold(opt_pristine, tmp_path, offset):
    """An offset near -2^32 passed the table check and, cut to 32 bits in the kernel, read
    outside the table (SIGSEGV): it is refused at load, naming the op."""

    def edit(graph):
        for op in graph["ops"]:
            if op["op"] == "position_embedding":
                op["offset"] = offset

    pkg = edited_graph(opt_pristine, tmp_path, edit)
    with pytest.raises(tierlm.CorruptError, match="position"):
        tierlm.load(pkg).generate([1, 2, 3], max_new_tokens=2)


@pytest.mark.parametrize(
    "field,value", [("heads", 2**40), ("kv_heads", 2**62), ("head_dim", 2**61)]
)
def test_attention_counts_that_would_overflow(pristine, tmp_path, field, value):
    def edit(graph):
        for op in graph["ops"]:
            if op["op"] == "attention":
                op[field] = value

    pkg = edited_graph(pristine, tmp_path, edit)
    with pytest.raises(tierlm.CorruptError, match="attention|heads|head_dim"):
        tierlm.load(pkg)


def test_graph_width_beyond_the_limit(pristine, tmp_path):
    pkg = edited_graph(pristine, tmp_path, lambda g: g["values"].update(h=2**40))
    with pytest.raises(tierlm.CorruptError, match="width"):
        tierlm.load(pkg)
