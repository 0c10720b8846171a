"""GraphBuilder and graph_check: malformed graphs are refused with the op and tensor named."""

import copy

import pytest
from tierlm.errors import CorruptError
from tierlm.graph import GraphBuilder, graph_check, graph_weights

TENSORS = {
    "embed.weight": {"shape": [11, 6]},
    "norm.weight": {"shape": [6]},
    "up.weight": {"shape": [13, 6]},
    "up.bias": {"shape": [13]},
    "down.weight": {"shape": [6, 13]},
}


def small_graph():
    g = GraphBuilder()
    g.embedding("h", "embed.weight", 6)
    g.layer = 0
    g.rmsnorm("h", "x", "norm.weight", 1e-5)
    g.linear("x", "u", "up.weight", 13, "up.bias")
    g.relu("u")
    g.linear("u", "d", "down.weight", 6)
    g.add("h", "d", "h")
    g.layer = -1
    g.lm_head("h", "logits", "embed.weight", 11)
    return g.build()


def test_builder_output_passes_check():
    graph = small_graph()
    graph_check(graph, TENSORS)
    assert graph["values"] == {"h": 6, "x": 6, "u": 13, "d": 6, "logits": 11}
    assert [op["layer"] for op in graph["ops"]] == [-1, 0, 0, 0, 0, 0, -1]
    assert graph_weights(graph) == [
        "embed.weight",
        "norm.weight",
        "up.weight",
        "up.bias",
        "down.weight",
    ]


def test_builder_refuses_undefined_input_and_width_change():
    g = GraphBuilder()
    with pytest.raises(ValueError, match="'x' is not defined"):
        g.relu("x")
    g.embedding("h", "embed.weight", 6)
    with pytest.raises(ValueError, match="widths 6 and 7"):
        g.linear("h", "h", "up.weight", 7)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda g: g["ops"][2].update(weight="missing.weight"), "'missing.weight' is not in"),
        (lambda g: g["ops"][2].update(bias="norm.weight"), r"bias norm.weight has shape \[6\]"),
        (
            lambda g: g["ops"][4].update(weight="up.weight"),
            r"shape \[13, 6\], values need \[6, 13\]",
        ),
        (lambda g: g["ops"][1].pop("eps"), "needs 1 inputs and keys"),
        (lambda g: g["ops"][5].update({"in": ["h", "zz"]}), "'zz' is used before"),
        (lambda g: g.update(output="nothing"), "never written"),
        (lambda g: g.pop("values"), "missing key 'values'"),
    ],
)
def test_check_refuses_malformed_graphs(edit, message):
    graph = copy.deepcopy(small_graph())
    edit(graph)
    with pytest.raises(CorruptError, match=message):
        graph_check(graph, TENSORS)
