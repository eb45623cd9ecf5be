"""Generation parameters and per-model defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class GenerationParams:
    """What one call asks for; None takes the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    grammar: str | None = None  # GBNF text, passed to llama.cpp's grammar sampler


@dataclass(frozen=True)
class ModelDefaults:
    """A model's generation defaults (DeepSeek's recommendations for R1: 0.6 / 0.95).

    allow_system None means: decide from the chat template (R1-family templates get the
    system prompt folded into the first user turn).
    """

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    allow_system: bool | None = None

    def apply(self, params: GenerationParams | None) -> GenerationParams:
        """`params` with every None filled from these defaults."""
        params = params or GenerationParams()
        filled = {
            f.name: getattr(self, f.name)
            for f in fields(params)
            if getattr(params, f.name) is None and hasattr(self, f.name)
        }
        return replace(params, **filled)
