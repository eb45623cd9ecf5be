"""Generation parameters and per-model defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class GenerationParams:
    """What one call asks for; None takes the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None            # 0: off
    min_p: float | None = None          # 0: off
    repeat_penalty: float | None = None  # 1: off; over the last REPEAT_LAST_N tokens
    seed: int | None = None
    grammar: str | None = None  # GBNF text; constrains the answer (after the think block; see runtime.sequence)
    stop: tuple[str, ...] | None = None  # answer text that ends the generation, never shown
    presence_penalty: float | None = None  # 0: off
    frequency_penalty: float | None = None  # 0: off
    logit_bias: tuple[tuple[int, float], ...] | None = None  # (token id, bias) pairs
    logprobs: bool | None = None  # attach each token's logprob to the text events
    top_logprobs: int | None = None  # and that many likeliest alternatives
    reasoning_budget: int | None = None  # most reasoning tokens; then the engine closes the think block
    # the request's response_format (JSON text) behind `grammar`: what a remote server is sent
    response_format: str | None = None


@dataclass(frozen=True)
class ModelDefaults:
    """A model's generation defaults; these are the ones for a GGUF the registry does not know
    (registry models carry their own, `catalog.registry.Generation`).

    temperature 0.6 and top-p 0.95 are DeepSeek's recommendations for R1. min-p 0.05 is
    llama-server's default: it drops tokens under 5% of the best one's probability, the tail a
    low-bit quant samples junk from. repeat_penalty 1.1 over the last 64 tokens is LM Studio's
    default and llama.cpp's old one: on SmolLM2-135M, "Say hello" ran on to the token limit for
    4 of 30 seeds without it and for none with it (registry models, R1 among them, keep it off:
    reasoning repeats numbers and names on purpose). max_tokens 4096 holds a typical reasoning
    trace but stops a runaway after minutes, not hours (registry R1 models: 32768, as DeepSeek
    evaluates them).

    allow_system None means: decide from the chat template (R1-family templates get the
    system prompt folded into the first user turn). forces_think None means: decide from the
    GGUF (DeepSeek's template and a name that says R1).
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 4096
    allow_system: bool | None = None
    forces_think: bool | None = None

    def apply(self, params: GenerationParams | None) -> GenerationParams:
        """`params` with every None filled from these defaults."""
        params = params or GenerationParams()
        filled = {
            f.name: getattr(self, f.name)
            for f in fields(params)
            if getattr(params, f.name) is None and hasattr(self, f.name)
        }
        return replace(params, **filled)
