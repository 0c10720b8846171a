"""Usage profiles of mixture-of-experts packages: the tokens of a calibration text routed to
each expert of each moe layer, counted by running the model, stored as expert_usage.json in the
package. At load the expert store homes the most used experts on the host tier by it (without
one: outer layers first), so that a skewed router's favourites are read once, not per token.
"""

import json
import os
from pathlib import Path

from tierlm.errors import InvalidArgumentError, UnsupportedError
from tierlm.package_format import EXPERT_USAGE

CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration" / "calibration.txt"


def profile_experts(package, text=None, ids=None, max_tokens=512, budget=None):
    """Runs `ids` (or the tokens of `text`; default: the calibration text tierlm ships) through
    the package's model, at most max_tokens of them (and the model's context), and writes the
    tokens routed to each expert to PACKAGE/expert_usage.json (replacing an earlier profile).
    budget: as tierlm.load's, for a model larger than memory. Returns the profile."""
    from tierlm.model import load
    from tierlm.package import Package

    if text is not None and ids is not None:
        raise InvalidArgumentError("profile_experts: give text or ids, not both")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidArgumentError(f"profile_experts: max_tokens must be >= 1, not {max_tokens}")
    pkg = Package.open(package)
    if pkg.config.get("ffn") != "moe":
        raise UnsupportedError(f"{package}: the model has no mixture-of-experts layers")
    source = "ids" if ids is not None else "text" if text is not None else CALIBRATION.name
    if ids is None:
        ids = _encode(pkg, CALIBRATION.read_text() if text is None else text)
    ids = [int(i) for i in ids][: min(max_tokens, pkg.config["max_positions"])]
    if not ids:
        raise InvalidArgumentError("profile_experts: no tokens to run")
    model = load(package, budget=budget, max_context=len(ids))
    model.logits(ids)
    layers = model.placement()["experts"]["layers"]
    profile = {
        "source": source,
        "tokens": len(ids),
        "layers": [
            {"layer": layer, "tokens_per_expert": list(counts)}
            for layer, counts in zip(layers, model.expert_usage(), strict=True)
        ],
    }
    path = os.path.join(os.fspath(package), EXPERT_USAGE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(profile, f, indent=1)
    os.replace(tmp, path)
    return profile


def _encode(pkg, text):
    """Token ids of text by the package's tokenizer, as Model.encode makes them."""
    tokenizer_dir = pkg.tokenizer_dir()
    path = os.path.join(tokenizer_dir, "tokenizer.json") if tokenizer_dir else None
    if path is None or not os.path.exists(path):
        raise InvalidArgumentError(
            f"{pkg.path}: the package has no tokenizer; give profile_experts token ids"
        )
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path).encode(text, add_special_tokens=True).ids
