"""examples/cpp builds against the installed tierlm CMake package and generates the same
token ids as model.generate, through the C++ API and the C API."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tierlm
from models import package, prompt
from tierlm.package import Package

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is not installed")
    if not os.path.exists(os.path.join(tierlm.cmake_dir(), "tierlmConfig.cmake")):
        pytest.skip("this tierlm install has no CMake package")
    build = tmp_path_factory.mktemp("example-build")
    subprocess.run(
        ["cmake", "-S", str(EXAMPLE), "-B", str(build), f"-Dtierlm_DIR={tierlm.cmake_dir()}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, text=True
    )
    return build


def run(binary, *args):
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [int(t) for t in out.stdout.strip().split(",") if t]


def test_example_ids_equal_python(built, tmp_path):
    _, pkg = package("llama", str(tmp_path), seed=4)
    ids = prompt(9, seed=2)
    expected = tierlm.load(pkg).generate(ids, max_new_tokens=16).output_ids
    assert len(expected) >= 1
    text_ids = ",".join(map(str, ids))
    assert run(built / "generate", pkg, text_ids, "--max-new-tokens", 16) == expected
    assert run(built / "generate_c", pkg, text_ids, 16) == expected
    sampled = tierlm.load(pkg).generate(ids, max_new_tokens=8, temperature=0.9, top_k=20, seed=5)
    cpp = run(
        built / "generate",
        pkg,
        text_ids,
        "--max-new-tokens",
        8,
        "--temperature",
        0.9,
        "--top-k",
        20,
        "--seed",
        5,
    )
    assert cpp == sampled.output_ids


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k"])
def test_c_api_runs_quantized_packages_resident_and_streamed(built, tmp_path, dtype):
    """A package of GGUF block types (q8_0; q4_k with the m recipe, which mixes q4_k and
    q8_0) through the C API: the same greedy ids as the Python path, with every weight
    resident and under a host budget that streams part of them."""
    shape = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4)
    _, pkg = package("llama", str(tmp_path), seed=4, **shape)
    quantized = str(tmp_path / dtype)
    recipe = "m" if dtype == "q4_k" else None
    tierlm.export(pkg.replace("-pkg", "-hf"), quantized, dtype=dtype, recipe=recipe, progress=False)
    dtypes = {t["dtype"] for t in Package.open(quantized).tensors.values()}
    assert dtype in dtypes and "q8_0" in dtypes
    ids = prompt(9, seed=2)
    text_ids = ",".join(map(str, ids))
    resident = tierlm.load(quantized)
    expected = resident.generate(ids, max_new_tokens=12).output_ids
    s = resident.stats()
    budget = s["kv_bytes"] + s["arena_bytes"] + s["weight_bytes"] // 2
    streamed = tierlm.load(quantized, budget={"host": budget})
    assert streamed.placement()["streaming"] and streamed.placement()["streamed_bytes"] > 0
    assert streamed.generate(ids, max_new_tokens=12).output_ids == expected
    assert run(built / "generate_c", quantized, text_ids, 12) == expected
    assert run(built / "generate_c", quantized, text_ids, 12, budget) == expected


def test_example_reports_errors(built, tmp_path):
    out = subprocess.run(
        [str(built / "generate"), str(tmp_path / "missing"), "1,2"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "manifest.json" in out.stderr
    out = subprocess.run(
        [str(built / "generate_c"), str(tmp_path / "missing"), "1,2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "manifest.json" in out.stderr


def test_cmake_dir_cli():
    from tierlm.cli import main

    assert os.path.isfile(os.path.join(tierlm.cmake_dir(), "tierlmConfig.cmake"))
    assert os.path.isfile(os.path.join(tierlm.include_dir(), "tierlm", "tierlm.h"))
    assert os.path.isfile(tierlm.library_path())
    assert main(["info", "--cmake-dir"]) == 0
