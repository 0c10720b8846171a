"""A plain numpy executor of graph.json: the readable definition of every op's meaning, used by
tests to check exported packages against transformers and the native executor against it.

Slow by design (no fusion, weights converted to the compute dtype on first use).
"""

import math

import numpy as np

from tierlm import quant
from tierlm.dtypes import bf16_to_f32, f32_to_bf16
from tierlm.errors import InvalidArgumentError
from tierlm.graph import expert_names
from tierlm.package import Package


class Reference:
    """Runs a package's graph with a KV cache; `forward` appends tokens and returns their logits.

    kv_dtype rounds each key and value row to the native cache's element type as it enters the
    cache ("f32" keeps them), so a compact cache is checked against attention over exactly the
    values it holds."""

    def __init__(self, package, dtype=np.float32, kv_dtype="f32"):
        self.package = package if isinstance(package, Package) else Package.open(package)
        self.graph = self.package.graph
        self.config = self.package.config
        self.dtype = np.dtype(dtype)
        if kv_dtype not in KV_ROUNDING:
            raise InvalidArgumentError(
                f"kv_dtype {kv_dtype!r} is not a KV cache type (one of {', '.join(KV_ROUNDING)})"
            )
        self.kv_dtype = kv_dtype
        self.weights = {}
        self.reset()

    def reset(self):
        """Empties the KV cache."""
        self.cache = {}  # layer -> (keys [n, kv_width], values [n, kv_width])

    @property
    def length(self):
        """Number of tokens in the KV cache."""
        return next(iter(self.cache.values()))[0].shape[0] if self.cache else 0

    def weight(self, name):
        if name not in self.weights:
            self.weights[name] = self.package.array(name).astype(self.dtype)
        return self.weights[name]

    def forward(self, tokens, positions=None):
        """Appends tokens to the cache and returns logits [len(tokens), vocab] for all of them.

        positions default to the cache slots the tokens take (0, 1, ... for a fresh cache).
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if positions is None:
            positions = np.arange(self.length, self.length + len(tokens))
        if tokens.size == 0:
            raise ValueError("forward needs at least one token")
        limit = self.config["max_positions"]
        if self.length + len(tokens) > limit:
            raise ValueError(f"{self.length + len(tokens)} tokens exceed the context of {limit}")
        env = {"tokens": tokens, "positions": np.asarray(positions, dtype=np.int64)}
        self._positions = env["positions"]  # read by rope
        for op in self.graph["ops"]:
            args = [env[name] for name in op["in"]]
            env[op["out"]] = getattr(self, "_" + op["op"])(op, *args)
        return env[self.graph["output"]]

    def _embedding(self, op, tokens):
        return self.weight(op["weight"])[tokens]

    def _position_embedding(self, op, x, positions):
        return x + self.weight(op["weight"])[positions + op["offset"]]

    def _rmsnorm(self, op, x):
        parts = x.reshape(len(x), -1, op.get("head_dim") or x.shape[-1])  # per head if given
        eps = self.dtype.type(op["eps"])
        scale = 1 / np.sqrt(np.mean(parts * parts, axis=-1, keepdims=True) + eps)
        return (parts * scale * self.weight(op["weight"])).reshape(x.shape)

    def _layernorm(self, op, x):
        centred = x - x.mean(axis=-1, keepdims=True)
        var = np.mean(centred * centred, axis=-1, keepdims=True)
        y = centred / np.sqrt(var + self.dtype.type(op["eps"])) * self.weight(op["weight"])
        return y + self.weight(op["bias"])

    def _linear(self, op, x):
        y = x @ self.weight(op["weight"]).T
        return y + self.weight(op["bias"]) if op.get("bias") else y

    _lm_head = _linear  # all positions: the reference returns every token's logits

    def _rope(self, op, x):
        """Rotate-half RoPE (GPT-NeoX / transformers Llama): pairs (j, j + head_dim/2)."""
        positions = self._positions
        inv_freq = np.asarray(self.config["rope_inv_freq"], dtype=np.float32)
        angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]
        cos = np.cos(np.concatenate([angles, angles], -1)).astype(self.dtype)[:, None, :]
        sin = np.sin(np.concatenate([angles, angles], -1)).astype(self.dtype)[:, None, :]
        h = x.reshape(len(x), op["heads"], op["head_dim"])
        half = op["head_dim"] // 2
        rotated = np.concatenate([-h[..., half:], h[..., :half]], -1)
        return (h * cos + rotated * sin).reshape(x.shape)

    def _attention(self, op, q, k, v):
        """Causal over cache order: the token in slot s sees slots 0..s. GQA: query head h
        reads kv head h // (heads / kv_heads)."""
        heads, kv_heads, dim = op["heads"], op["kv_heads"], op["head_dim"]
        keys, values = self.cache.get(op["layer"], (k[:0], v[:0]))
        past = keys.shape[0]
        rounded = KV_ROUNDING[self.kv_dtype]
        k, v = (rounded(x.reshape(-1, kv_heads, dim)).reshape(x.shape) for x in (k, v))
        k, v = k.astype(self.dtype), v.astype(self.dtype)
        keys, values = np.concatenate([keys, k]), np.concatenate([values, v])
        self.cache[op["layer"]] = (keys, values)
        n, total = q.shape[0], keys.shape[0]
        qh = q.reshape(n, heads, dim).transpose(1, 0, 2)
        group = heads // kv_heads
        kh = np.repeat(keys.reshape(total, kv_heads, dim).transpose(1, 0, 2), group, axis=0)
        vh = np.repeat(values.reshape(total, kv_heads, dim).transpose(1, 0, 2), group, axis=0)
        scores = (qh @ kh.transpose(0, 2, 1)) * self.dtype.type(op["scale"])
        mask = np.arange(total)[None, :] > (past + np.arange(n))[:, None]
        scores = np.where(mask[None], -np.inf, scores)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        return (probs @ vh).transpose(1, 0, 2).reshape(n, heads * dim)

    def _moe(self, op, x):
        """Softmax over the router's logits, the top_k experts per token (renormalised when
        norm_topk), each a SwiGLU FFN, summed with those weights."""
        logits = x @ self.weight(op["weight"]).T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, : op["top_k"]]
        weights = np.take_along_axis(probs, top, -1)
        if op["norm_topk"]:
            weights /= weights.sum(-1, keepdims=True)
        out = np.zeros_like(x)
        for row, experts in enumerate(top):
            for weight, e in zip(weights[row], experts, strict=True):
                gate, up, down = (self.weight(name) for name in expert_names(op, e))
                out[row] += weight * (self._silu_mul(op, gate @ x[row], up @ x[row]) @ down.T)
        return out

    def _sigmoid_gate(self, op, x, y):
        return y / (1 + np.exp(-(x @ self.weight(op["weight"]).T)))

    def _add(self, op, a, b):
        return a + b

    def _silu_mul(self, op, gate, up):
        return gate / (1 + np.exp(-gate)) * up

    def _relu(self, op, x):
        return np.maximum(x, 0)

    def _gelu(self, op, x):
        """Exact (erf) GELU, as torch.nn.functional.gelu and transformers' "gelu"."""
        erf = np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2))
        return (0.5 * x * (1 + erf)).astype(x.dtype)


def _q8_0_rows(rows):
    """Rows [..., head_dim] as a q8_0 cache holds them: whole 32-element blocks along the row,
    the last zero-padded (as the native store pads it)."""
    dim = rows.shape[-1]
    padded = np.zeros((*rows.shape[:-1], -(-dim // 32) * 32), np.float32)
    padded[..., :dim] = rows
    return quant.dequantize("q8_0", quant.quantize("q8_0", padded), padded.shape)[..., :dim]


# The f32 values a cache of each element type holds for f32 rows [..., head_dim]: f16 and bf16
# rounded to nearest even, q8_0 as ggml's reference quantizer.
KV_ROUNDING = {
    "f32": lambda rows: rows,
    "f16": lambda rows: rows.astype(np.float32).astype(np.float16).astype(np.float32),
    "bf16": lambda rows: bf16_to_f32(f32_to_bf16(rows.astype(np.float32))),
    "q8_0": _q8_0_rows,
}


def reference_logits(package, tokens, dtype=np.float32):
    """Logits [len(tokens), vocab] of one prompt run from an empty cache."""
    return Reference(package, dtype).forward(tokens)
