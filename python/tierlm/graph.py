"""The execution graph: a list of ops over named f32 activations, built by python/tierlm/archs.

An architecture module drives a GraphBuilder; `graph_check` validates a graph against the
package's tensors (used at export and at load). The format is in docs/package-format.md.
"""

from functools import partial

from tierlm.errors import CorruptError

GRAPH_VERSION = 1

# op -> (number of inputs, attributes it must carry besides in/out/layer)
OPS = {
    "embedding": (1, ("weight",)),
    "position_embedding": (2, ("weight", "offset")),
    "rmsnorm": (1, ("weight", "eps")),
    "layernorm": (1, ("weight", "bias", "eps")),
    "linear": (1, ("weight", "bias")),
    "rope": (1, ("heads", "head_dim")),
    "attention": (3, ("heads", "kv_heads", "head_dim", "scale")),
    "add": (2, ()),
    "silu_mul": (2, ()),
    "relu": (1, ()),
    "gelu": (1, ()),
    "lm_head": (1, ("weight",)),
    "moe": (1, ("weight", "experts", "top_k", "norm_topk", "expert_prefix")),
    "sigmoid_gate": (2, ("weight",)),
}
# The three matrices of expert e of a moe op, in file order (stored back to back: one read).
EXPERT_PARTS = ("gate", "up", "down")


def expert_names(op, e):
    """Expert e's tensor names of a moe op: gate and up [inner, width], down [width, inner]."""
    return [f"{op['expert_prefix']}.{e}.{part}.weight" for part in EXPERT_PARTS]


INPUTS = {"tokens": "int32[tokens]", "positions": "int32[tokens]"}


class GraphBuilder:
    """Collects ops and value widths; `layer` tags every op added while it is set."""

    def __init__(self):
        self.ops = []
        self.values = {}
        self.layer = -1

    def _value(self, name, width):
        if self.values.setdefault(name, width) != width:
            raise ValueError(
                f"graph value {name!r} used with widths {self.values[name]} and {width}"
            )
        return name

    def _width(self, name):
        if name not in self.values:
            raise ValueError(f"graph value {name!r} is not defined yet")
        return self.values[name]

    def _op(self, op, ins, out, width, **attrs):
        for name in ins:
            if name not in self.values and name not in INPUTS:
                raise ValueError(f"graph op {op}: input {name!r} is not defined yet")
        self._value(out, width)
        self.ops.append({"op": op, "in": list(ins), "out": out, **attrs, "layer": self.layer})
        return out

    def embedding(self, out, weight, width):
        return self._op("embedding", ["tokens"], out, width, weight=weight)

    def position_embedding(self, x, weight, offset):
        """x += weight[positions + offset]."""
        return self._op(
            "position_embedding", [x, "positions"], x, self._width(x), weight=weight, offset=offset
        )

    def rmsnorm(self, x, out, weight, eps, head_dim=None):
        """Normalises each row of x, or each head_dim slice of it when head_dim is given."""
        extra = {"head_dim": head_dim} if head_dim else {}
        return self._op("rmsnorm", [x], out, self._width(x), weight=weight, eps=float(eps), **extra)

    def layernorm(self, x, out, weight, bias, eps):
        return self._op(
            "layernorm", [x], out, self._width(x), weight=weight, bias=bias, eps=float(eps)
        )

    def linear(self, x, out, weight, width, bias=None):
        return self._op("linear", [x], out, width, weight=weight, bias=bias)

    def rope(self, x, heads, head_dim):
        return self._op("rope", [x], x, self._width(x), heads=heads, head_dim=head_dim)

    def attention(self, q, k, v, out, heads, kv_heads, head_dim, scale):
        return self._op(
            "attention",
            [q, k, v],
            out,
            heads * head_dim,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            scale=float(scale),
        )

    def attention_block(self, h, prefix, names, heads, kv_heads, head_dim, eps, qk_norm=0):
        """A pre-norm grouped-query self-attention block with RoPE added to the residual h:
        h += o(attention(rope(q), rope(k), v)), q/k/v projections of rmsnorm(h). The layer's
        tensors are prefix + "attn_norm.weight", "attn.q.weight", ...; a projection has a bias
        where its name is in `names`. qk_norm: 0 none, None an RMSNorm over the whole q and k
        projections, n one per head of n (head_dim)."""

        def bias(name):
            return prefix + name if prefix + name in names else None

        q_width, kv_width = heads * head_dim, kv_heads * head_dim
        self.rmsnorm(h, "x", prefix + "attn_norm.weight", eps)
        for proj, width in (("q", q_width), ("k", kv_width), ("v", kv_width)):
            self.linear("x", proj, f"{prefix}attn.{proj}.weight", width, bias(f"attn.{proj}.bias"))
        for proj, n in (("q", heads), ("k", kv_heads)):
            if qk_norm != 0:
                self.rmsnorm(proj, proj, f"{prefix}attn.{proj}_norm.weight", eps, qk_norm)
            self.rope(proj, n, head_dim)
        self.attention("q", "k", "v", "a", heads, kv_heads, head_dim, head_dim**-0.5)
        self.linear("a", "o", prefix + "attn.o.weight", self._width(h), bias("attn.o.bias"))
        return self.add(h, "o", h)

    def add(self, a, b, out):
        return self._op("add", [a, b], out, self._width(a))

    def silu_mul(self, gate, up, out):
        return self._op("silu_mul", [gate, up], out, self._width(gate))

    def relu(self, x):
        return self._op("relu", [x], x, self._width(x))

    def gelu(self, x):
        return self._op("gelu", [x], x, self._width(x))

    def moe(self, x, out, router, experts, top_k, norm_topk, expert_prefix):
        """Routed experts: softmax over router(x), the top_k experts' SwiGLU outputs summed with
        their probabilities (renormalised to sum 1 when norm_topk); see expert_names."""
        return self._op(
            "moe",
            [x],
            out,
            self._width(x),
            weight=router,
            experts=int(experts),
            top_k=int(top_k),
            norm_topk=bool(norm_topk),
            expert_prefix=expert_prefix,
        )

    def sigmoid_gate(self, x, y, out, weight):
        """out = sigmoid(x . weight[0]) * y, row by row (Qwen2-MoE's shared expert gate)."""
        return self._op("sigmoid_gate", [x, y], out, self._width(y), weight=weight)

    def lm_head(self, x, out, weight, vocab):
        return self._op("lm_head", [x], out, vocab, weight=weight)

    def build(self, output="logits"):
        return {
            "graph_version": GRAPH_VERSION,
            "inputs": dict(INPUTS),
            "output": output,
            "values": dict(self.values),
            "ops": list(self.ops),
        }


def graph_weights(graph):
    """Returns the tensor names the graph reads, in op order, without repeats."""
    names = []
    for op in graph["ops"]:
        experts = range(op["experts"]) if op["op"] == "moe" else ()
        own = [op.get("weight"), op.get("bias")] + [n for e in experts for n in expert_names(op, e)]
        names += [name for name in own if name and name not in names]
    return names


def graph_check(graph, tensors, where="graph.json"):
    """Raises CorruptError unless every op is known, complete and its weights fit its values.

    `tensors` maps tensor names to objects or dicts with a `shape`.
    """

    def fail(index, message):
        raise CorruptError(f"{where}: op {index} ({graph['ops'][index].get('op')}): {message}")

    def shape(index, name):
        if name not in tensors:
            fail(index, f"tensor {name!r} is not in the manifest")
        info = tensors[name]
        return list(info["shape"] if isinstance(info, dict) else info.shape)

    def matrix(index, name):
        dims = shape(index, name)
        if len(dims) != 2:
            fail(index, f"weight {name!r} has shape {dims}; the op needs a matrix")
        return dims

    for key in ("inputs", "output", "values", "ops"):
        if key not in graph:
            raise CorruptError(f"{where}: missing key {key!r}")
    values = graph["values"]
    defined = set(graph["inputs"])
    for index, op in enumerate(graph["ops"]):
        kind = op.get("op")
        if kind not in OPS:
            fail(index, f"unknown op {kind!r}; known: {', '.join(OPS)}")
        count, attrs = OPS[kind]
        missing = [a for a in ("in", "out", "layer", *attrs) if a not in op]
        if missing or len(op["in"]) != count:
            fail(index, f"needs {count} inputs and keys {missing or attrs}")
        for name in op["in"]:
            if name not in defined:
                fail(index, f"input {name!r} is used before it is written")
        if op["out"] not in values:
            fail(index, f"output {op['out']!r} has no width in values")
        width = values[op["out"]]
        if kind in ("linear", "lm_head", "embedding"):
            rows, cols = matrix(index, op["weight"])
            source = values.get(op["in"][0]) if kind != "embedding" else None
            expect = [width, source] if kind != "embedding" else [rows, width]
            if [rows, cols] != expect:
                fail(index, f"weight {op['weight']} has shape {[rows, cols]}, values need {expect}")
        if op.get("bias") and shape(index, op["bias"]) != [width]:
            fail(index, f"bias {op['bias']} has shape {shape(index, op['bias'])}, needs [{width}]")
        norm_width = (op.get("head_dim") or width) if kind == "rmsnorm" else width
        if kind in ("rmsnorm", "layernorm") and shape(index, op["weight"]) != [norm_width]:
            fail(index, f"weight {op['weight']} does not have shape [{norm_width}]")
        if kind == "rmsnorm" and not (isinstance(norm_width, int) and 0 < norm_width <= width):
            fail(index, f"head_dim {norm_width} is not between 1 and the width {width}")
        if kind == "rmsnorm" and width % norm_width:
            fail(index, f"head_dim {norm_width} does not divide width {width}")
        if kind == "moe":
            _moe_check(op, width, values[op["in"][0]], partial(shape, index), partial(fail, index))
        if kind == "sigmoid_gate":
            if shape(index, op["weight"]) != [1, values[op["in"][0]]]:
                fail(index, f"weight {op['weight']} is not one row as wide as its first input")
            if values[op["in"][1]] != width:
                fail(index, "the gated input and the output differ in width")
        if kind == "position_embedding" and matrix(index, op["weight"])[1] != width:
            fail(index, f"weight {op['weight']} rows are not {width} wide")
        if kind == "rope" and op["heads"] * op["head_dim"] != width:
            fail(index, f"heads x head_dim != width {width}")
        if kind == "attention":
            q, k, v = (values.get(name) for name in op["in"])
            if q != op["heads"] * op["head_dim"] or k != v or k != op["kv_heads"] * op["head_dim"]:
                fail(index, f"q/k/v widths {q}/{k}/{v} do not match heads and head_dim")
            if op["heads"] % op["kv_heads"]:
                fail(index, "heads is not a multiple of kv_heads")
        defined.add(op["out"])
    if graph["output"] not in defined:
        raise CorruptError(f"{where}: output {graph['output']!r} is never written")


def _moe_check(op, width, source, shape, fail):
    experts, top_k = op["experts"], op["top_k"]
    if not (isinstance(experts, int) and isinstance(top_k, int) and 1 <= top_k <= experts):
        fail(f"needs 1 <= top_k ({top_k}) <= experts ({experts})")
    if source != width:
        fail(f"input width {source} != output width {width}")
    if shape(op["weight"]) != [experts, width]:
        fail(f"router {op['weight']} has shape {shape(op['weight'])}, needs [{experts}, {width}]")
    for e in range(experts):
        gate, up, down = (shape(name) for name in expert_names(op, e))
        inner = gate[0]
        if gate != [inner, width] or up != gate or down != [width, inner]:
            fail(f"expert {e} has shapes {gate}, {up}, {down}; needs [n, {width}] x2, [{width}, n]")
