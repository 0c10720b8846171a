"""Quantization recipes: which dtype each matrix gets at export (docs/package-format.md).

A recipe is a list of rules `PATTERN DTYPE`, matched against tierlm tensor names with shell
globs; the first match wins and unmatched matrices get the export dtype. A matrix whose rows are
not whole blocks of its dtype falls back to a 16-bit dtype, and the export report says so.
"""

import fnmatch
import os
from dataclasses import dataclass

from tierlm.errors import InvalidArgumentError, NotFoundError
from tierlm.quant import BLOCKS, blocks_fit

KEEP = "keep"  # a rule's dtype meaning "the checkpoint's own"

# llama.cpp's _M recipes keep these at more bits than the rest (its Q4_K_M: output, attn_v and
# ffn_down at q6_k); q8_0 stands in for "more bits" here because its 32-element blocks fit any
# width a 4-bit type fits.
BUILTIN = {
    "m": (
        ("embed.weight", "q8_0"),
        ("lm_head.weight", "q8_0"),
        ("layers.*.attn.v.weight", "q8_0"),
        ("layers.*.ffn.down.weight", "q8_0"),
    ),
}


@dataclass(frozen=True)
class Rule:
    pattern: str
    dtype: str
    where: str  # "FILE:LINE" or "recipe m", for messages


@dataclass(frozen=True)
class Recipe:
    name: str  # the built-in name or the file's path
    rules: tuple

    def to_json(self):
        return {"name": self.name, "rules": [[r.pattern, r.dtype] for r in self.rules]}


def recipe_load(recipe, allowed):
    """Returns the Recipe a name or path gives (None -> None). allowed: the dtypes a rule may
    name (besides `keep`)."""
    if recipe is None:
        return None
    recipe = os.fspath(recipe)
    if recipe in BUILTIN:
        rules = tuple(Rule(p, d, f"recipe {recipe}") for p, d in BUILTIN[recipe])
        return Recipe(recipe, rules)
    if not os.path.isfile(recipe):
        raise NotFoundError(
            f"--recipe {recipe}: no such file and not a built-in recipe "
            f"({', '.join(sorted(BUILTIN))})"
        )
    rules = []
    with open(recipe) as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].split()
            if not text:
                continue
            where = f"{recipe}:{number}"
            if len(text) != 2:
                raise InvalidArgumentError(
                    f"{where}: write one rule per line as PATTERN DTYPE, e.g. "
                    "'layers.*.ffn.down.weight q8_0'"
                )
            pattern, dtype = text
            if dtype != KEEP and dtype not in allowed:
                raise InvalidArgumentError(
                    f"{where}: dtype {dtype!r} is not one of {', '.join(allowed)} or {KEEP}"
                )
            rules.append(Rule(pattern, dtype, where))
    if not rules:
        raise InvalidArgumentError(f"--recipe {recipe}: the file has no rules")
    return Recipe(recipe, tuple(rules))


def fallback_dtype(source_dtype):
    """The 16-bit dtype a matrix gets when its rows are not whole blocks: the checkpoint's own
    when it is 16-bit, else bf16 (f32's range, so no overflow)."""
    return source_dtype if source_dtype in ("f16", "bf16") else "bf16"


def recipe_apply(rows, recipe):
    """rows: (spec, source, entry, out) with out the export dtype; applies the recipe's rules to
    the matrices and the block-size fallback to every quantized one. Returns (rows, report)
    where report lists the fallbacks and the rules that matched nothing."""
    rules = recipe.rules if recipe else ()
    matched, out_rows, fallbacks = set(), [], []
    for spec, source, entry, out in rows:
        if len(spec.shape) > 1:
            for rule in rules:
                if fnmatch.fnmatchcase(spec.name, rule.pattern):
                    matched.add(rule)
                    out = entry.dtype if rule.dtype == KEEP else rule.dtype
                    break
            if out in BLOCKS and not blocks_fit(out, spec.shape[-1]):
                fallback = fallback_dtype(entry.dtype)
                fallbacks.append(
                    {
                        "tensor": spec.name,
                        "wanted": out,
                        "dtype": fallback,
                        "reason": f"rows of {spec.shape[-1]} elements are not whole {out} "
                        f"blocks of {BLOCKS[out][0]}",
                    }
                )
                out = fallback
        out_rows.append((spec, source, entry, out))
    unmatched = [f"{r.pattern} {r.dtype} ({r.where})" for r in rules if r not in matched]
    return out_rows, {"fallbacks": fallbacks, "unmatched_rules": unmatched}
