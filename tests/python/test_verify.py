"""verify=True checks every byte a run uses, at load: resident tensors, streamed matrices,
embedding rows read on demand, sparse bundles and predictors. A flipped byte in any of them
fails the load naming the file and the tensor; an intact package gives the tokens of an
unverified load, and stats()["verify"] says what was checked."""

import json
import os
import shutil

import pytest
import tierlm
from models import package, prompt
from test_model_sparse import all_neuron_predictors
from tierlm.errors import CorruptError

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("verify"))
    _, pkg = package("llama", root, dtype="bf16", num_hidden_layers=5)
    # A short context and chunk: 4 row buffers are smaller than the embedding table, so the
    # streaming load reads it by rows.
    small = dict(max_context=24, prefill_chunk=4)
    minimum = tierlm.load(pkg, **small).placement()["minimum_budget"]
    return {"pkg": pkg, "opts": dict(small, budget={"host": minimum})}


def manifest(pkg):
    with open(os.path.join(pkg, "manifest.json")) as f:
        return json.load(f)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def flipped_tensor(pkg, dest, name):
    """A copy of pkg with one bit flipped in the middle of tensor `name`; returns its file."""
    shutil.copytree(pkg, dest)
    t = manifest(dest)["tensors"][name]
    flip(os.path.join(dest, t["file"]), t["offset"] + t["nbytes"] // 2 + 1)
    return t["file"]


def generate(model, ids):
    return model.generate(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids


def test_intact_streamed_package_gives_the_same_tokens_and_counts_every_tensor(streamed):
    ids = prompt(9)
    plain = tierlm.load(streamed["pkg"], **streamed["opts"])
    checked = tierlm.load(streamed["pkg"], **streamed["opts"], verify=True)
    placement = checked.placement()
    assert placement["streaming"] and placement["streamed_tensors"] and placement["row_tensors"]
    assert generate(checked, ids) == generate(plain, ids)
    v = checked.stats()["verify"]
    off = plain.stats()["verify"]
    assert not off["enabled"] and off["when"] == "" and off["tensors"] == off["bytes"] == 0
    tensors = manifest(streamed["pkg"])["tensors"]
    # Every tensor the graph reads (a tied lm_head counts once): all of them in this package.
    assert v["enabled"] and v["when"] == "load"
    assert v["tensors"] == len(tensors)
    assert v["bytes"] == sum(t["nbytes"] for t in tensors.values())
    assert v["bundles"] == 0 and v["predictors"] == 0 and v["seconds"] > 0


@pytest.mark.parametrize("kind", ["streamed", "rows", "resident", "norm"])
def test_flipped_byte_in_each_kind_of_tensor_fails_the_load(streamed, tmp_path, kind):
    placement = tierlm.load(streamed["pkg"], **streamed["opts"]).placement()
    names = {
        "streamed": placement["streamed_tensors"][len(placement["streamed_tensors"]) // 2],
        "rows": placement["row_tensors"][0],
        "resident": "lm_head.weight",
        "norm": "final_norm.weight",
    }
    name = names[kind]
    bad = str(tmp_path / "bad")
    file = flipped_tensor(streamed["pkg"], bad, name)
    model = tierlm.load(bad, **streamed["opts"])  # unchecked: loads (wrong weights)
    assert model.placement() == placement
    with pytest.raises(CorruptError, match=rf"tensor `{name}`.*{file}: checksum mismatch"):
        tierlm.load(bad, **streamed["opts"], verify=True)
    # Resident loads (no budget) check the same bytes.
    with pytest.raises(CorruptError, match=rf"tensor `{name}`.*{file}: checksum mismatch"):
        tierlm.load(bad, verify=True)


def test_tensor_without_checksum_is_refused_under_verify(streamed, tmp_path):
    bad = str(tmp_path / "nocrc")
    shutil.copytree(streamed["pkg"], bad)
    m = manifest(bad)
    del m["tensors"]["final_norm.weight"]["crc32"]
    with open(os.path.join(bad, "manifest.json"), "w") as f:
        json.dump(m, f)
    tierlm.load(bad)
    with pytest.raises(CorruptError, match="`final_norm.weight`.*no checksum.*load without verify"):
        tierlm.load(bad, verify=True)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("verify_sparse"))
    _, pkg = package("opt", root)
    out = pkg + "-sparse"
    tierlm.export(pkg.replace("-pkg", "-hf"), out, progress=False, sparse=True)
    all_neuron_predictors(out)
    return out


def test_sparse_verify_covers_bundles_and_predictors(sparse, tmp_path):
    ids = prompt(7)
    plain = tierlm.load(sparse, sparse=True)
    checked = tierlm.load(sparse, sparse=True, verify=True)
    assert generate(checked, ids) == generate(plain, ids)
    m = manifest(sparse)
    v = checked.stats()["verify"]
    assert v["bundles"] == len(m["bundles"]["layers"]) == m["config"]["num_layers"]
    assert v["predictors"] == 1
    # The sparse FFN matrices are never read: the tensors checked are the others.
    loaded = [n for n in m["tensors"] if not n.endswith((".ffn.up.weight", ".ffn.down.weight"))]
    assert v["tensors"] == len(loaded)
    predictors = os.path.join(sparse, m["predictors"]["file"])
    bundle = os.path.join(sparse, m["bundles"]["layers"][1]["file"])
    rows = m["bundles"]["layers"][1]["n_neurons"]
    for path, offset, what in [
        (predictors, os.path.getsize(predictors) - 5, "predictor file"),
        (bundle, rows * 7, "bundle file"),
    ]:
        bad = str(tmp_path / os.path.basename(path))
        shutil.copytree(sparse, bad)
        flip(os.path.join(bad, os.path.basename(path)), offset)
        generate(tierlm.load(bad, sparse=True), ids)  # unchecked: runs
        pattern = rf"{os.path.basename(path)}: checksum mismatch.*{what} is damaged"
        with pytest.raises(CorruptError, match=pattern):
            tierlm.load(bad, sparse=True, verify=True)
