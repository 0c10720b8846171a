"""The layering of docs/architecture.md, checked against the #include lines of cpp/: each folder
of libtierlm includes only the folders below it (weights/ and sparse/ may read the package
reader, nothing else of model/)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "memory": {"core", "io"},
    "kernels": {"core", "memory"},
    "planner": {"core"},
    "train": {"core", "kernels"},
    "weights": {"core", "io", "memory", "kernels", "sparse"},
    "sparse": {"core", "io", "memory", "kernels"},
    "moe": {"core", "io", "memory", "kernels", "weights"},  # weights/: read lengths
    "model": {"core", "io", "memory", "kernels", "planner", "weights", "sparse", "moe"},
}
# The package reader is the format layer: below weights/ and sparse/ although it sits in model/.
PACKAGE_READER = {"tierlm/model/package.hpp"}
INCLUDE = re.compile(r'#include "((?:tierlm/)?([a-z_]+)/[^"]+)"')


def sources(layer):
    for base in (ROOT / "cpp" / "src" / layer, ROOT / "cpp" / "include" / "tierlm" / layer):
        if base.is_dir():
            yield from (p for p in base.rglob("*") if p.suffix in (".cpp", ".hpp"))


@pytest.mark.skipif(not (ROOT / "cpp" / "src").is_dir(), reason="needs the source tree")
@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_includes_only_layers_below(layer):
    wrong = []
    for path in sources(layer):
        for line in path.read_text().splitlines():
            m = INCLUDE.match(line.strip())
            if not m or m.group(1) == "tierlm/tierlm.h" or m.group(2) in ALLOWED[layer] | {layer}:
                continue
            if m.group(1) in PACKAGE_READER and layer in ("weights", "sparse", "moe"):
                continue
            wrong.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not wrong, "\n".join(wrong)
