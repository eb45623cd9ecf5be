"""Quantization recipes: the llama.cpp type tables and the named recipes of recipes.toml.

A recipe is a llama.cpp file type (`base`) plus ordered per-tensor type rules (regex → ggml type),
which llama.cpp's quantizer applies through `tt_overrides` (first match wins). Every llama.cpp file
type name is a recipe of its own (its stock mixture).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from edgeds.errors import EdgedsError

# llama.cpp file types (enum llama_ftype) by the names llama-quantize accepts.
FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "BF16": 32,
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q2_K": 10, "Q2_K_S": 21, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
    "IQ1_S": 24, "IQ1_M": 31, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29,
    "IQ3_XXS": 23, "IQ3_XS": 22, "IQ3_S": 26, "IQ3_M": 27, "IQ4_NL": 25, "IQ4_XS": 30,
    "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38,
}

# ggml tensor types (enum ggml_type) usable in per-tensor rules.
GGML_TYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14,
    "iq2_xxs": 16, "iq2_xs": 17, "iq3_xxs": 18, "iq1_s": 19, "iq4_nl": 20, "iq3_s": 21,
    "iq2_s": 22, "iq4_xs": 23, "iq1_m": 29, "bf16": 30, "tq1_0": 34, "tq2_0": 35, "mxfp4": 39,
}

# Tensor types llama.cpp refuses to produce without an importance matrix (llama-quant.cpp,
# tensor_requires_imatrix), and the file types whose mixtures use them (q2_k counts only in Q2_K_S).
IMATRIX_TYPES = frozenset({"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"})
IMATRIX_FTYPES = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"})


@dataclass(frozen=True)
class Recipe:
    """A named quantization: llama.cpp file type `base` plus ordered (pattern, ggml type) rules."""

    name: str
    base: str
    rules: tuple[tuple[str, str], ...] = ()
    pure: bool = False
    description: str = ""

    @property
    def needs_imatrix(self) -> bool:
        return self.base in IMATRIX_FTYPES or any(t in IMATRIX_TYPES for _, t in self.rules)

    def type_for(self, tensor_name: str) -> str | None:
        """The rule type for a tensor, or None when llama.cpp's mixture decides."""
        for pattern, ttype in self.rules:
            if re.search(pattern, tensor_name):
                return ttype
        return None

    def main_type(self, tensor_name: str) -> str:
        """The rule type for a tensor, else the main tensor type of the base file type: an
        estimate of llama.cpp's mixture for sizing before a file exists (`edgeds fit --recipe`)."""
        return self.type_for(tensor_name) or base_tensor_type(self.base)


# llama.cpp file types whose main tensor type is not their own name less its size suffix
_FTYPE_MAIN = {"IQ2_M": "iq2_s", "IQ3_XS": "iq3_s", "IQ3_M": "iq3_s", "MXFP4_MOE": "mxfp4"}


def base_tensor_type(ftype: str) -> str:
    """The ggml type most tensors of a llama.cpp file type get (Q4_K_M → q4_k, IQ2_XXS → iq2_xxs)."""
    name = ftype.upper()
    if name in _FTYPE_MAIN:
        return _FTYPE_MAIN[name]
    lower = name.lower()
    return lower if lower in GGML_TYPES else lower.rsplit("_", 1)[0]


def _load_table() -> dict[str, Recipe]:
    source = "edgeds.convert/recipes.toml"
    text = resources.files("edgeds.convert").joinpath("recipes.toml").read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise EdgedsError(f"{source}: {err}") from None
    recipes: dict[str, Recipe] = {}
    for name, entry in data.get("recipes", {}).items():
        where = f"{source}: recipe {name!r}"
        unknown = set(entry) - {"description", "base", "pure", "rules"}
        if unknown:
            raise EdgedsError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        base = str(entry.get("base", ""))
        if base not in FTYPES:
            raise EdgedsError(f"{where}: base {base!r} is not a llama.cpp file type")
        rules = []
        for rule in entry.get("rules", []):
            if not (isinstance(rule, list) and len(rule) == 2):
                raise EdgedsError(f"{where}: rules entries are [pattern, type] pairs, got {rule!r}")
            pattern, ttype = str(rule[0]), str(rule[1]).lower()
            if ttype not in GGML_TYPES:
                raise EdgedsError(f"{where}: type {ttype!r} is not a ggml tensor type")
            try:
                re.compile(pattern)
            except re.error as err:
                raise EdgedsError(f"{where}: pattern {pattern!r}: {err}") from None
            rules.append((pattern, ttype))
        recipes[name] = Recipe(name, base, tuple(rules), bool(entry.get("pure", False)), str(entry.get("description", "")))
    return recipes


RECIPES: dict[str, Recipe] = _load_table()


def get_recipe(name: str) -> Recipe:
    """A named recipe, or a llama.cpp file type name (any case) as a uniform recipe."""
    if name in RECIPES:
        return RECIPES[name]
    upper = name.upper()
    if upper in FTYPES:
        return Recipe(upper, upper, description=f"llama.cpp {upper}")
    raise EdgedsError(
        f"unknown quantization {name!r}: choose a recipe ({', '.join(RECIPES)}) "
        f"or a llama.cpp type ({', '.join(FTYPES)})"
    )
