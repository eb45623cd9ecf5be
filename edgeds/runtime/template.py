"""Chat prompts: the GGUF's own Jinja template, rendered in a sandbox, and DeepSeek's rules.

- Reasoning never goes back to the model: assistant turns carry their answer only
  (DeepSeek's template and API require it).
- R1-family models take no system prompt; one given is folded into the first user turn.
- A template whose generation prompt ends in `<think>\\n` has opened the think block itself;
  for R1-family models whose template does not, the Engine opens it (`open_think`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError

from edgeds.errors import EdgedsError
from edgeds.runtime.request import check_messages
from edgeds.runtime.sandbox import RENDER_LIMITS, BoundedSandbox, Budget, OverBudget, RenderLimits

THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
DEEPSEEK_ASSISTANT = "<｜Assistant｜>"  # the assistant turn marker of DeepSeek's chat templates
R1_NAME = re.compile(r"(?<![a-z0-9])r1(?![a-z0-9])", re.IGNORECASE)  # "DeepSeek R1 Distill Qwen 7B", "deepseek-r1"

# Used when a GGUF has no template at all.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Prompt:
    text: str
    opens_think: bool  # the prompt ends inside an opened <think> block


def is_reasoning_template(template: str | None) -> bool:
    """R1-family templates know about </think> (they strip it from history)."""
    return bool(template) and "</think>" in template


def is_r1_family(template: str | None, name: str) -> bool:
    """A GGUF the registry does not know is R1-family when its template is DeepSeek's
    reasoning template and its name says R1."""
    return is_reasoning_template(template) and DEEPSEEK_ASSISTANT in template and bool(R1_NAME.search(name))


def open_think(prompt: Prompt) -> Prompt:
    """The prompt with `<think>\\n` appended, unless its template opened the block already."""
    return prompt if prompt.opens_think else Prompt(prompt.text + "<think>\n", opens_think=True)


def answer_only(messages: list[dict], *, allow_system: bool = True) -> list[dict]:
    """The history as the model must see it: roles and answer text, nothing else."""
    out: list[dict] = []
    for message in check_messages(messages):
        role, content = message["role"], message["content"]
        if role == "assistant" and content:
            content = THINK_BLOCK.sub("", content)
            if "</think>" in content:
                content = content.split("</think>", 1)[1].lstrip()
        out.append({**message, "content": content})  # tool calling turns keep their tool_calls / tool_call_id
    if not allow_system:
        out = _fold_system(out)
    return out


def _fold_system(messages: list[dict]) -> list[dict]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    rest = [m for m in messages if m["role"] != "system"]
    if system:
        for i, m in enumerate(rest):
            if m["role"] == "user":
                rest[i] = {"role": "user", "content": f"{system}\n\n{m['content']}"}
                break
        else:
            rest.insert(0, {"role": "user", "content": system})
    return rest


def _raise(message: str):
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str, limits: RenderLimits):
    env = BoundedSandbox(limits, trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.compile_bounded(template)


def render(template: str | None, messages: list[dict], *, bos_token: str, eos_token: str,
           source: str = "the chat template", limits: RenderLimits = RENDER_LIMITS,
           tools: list[dict] | None = None) -> Prompt:
    """Render the conversation with the generation prompt appended (and `tools`, OpenAI's tool
    definitions, for templates that render them; none given leaves `tools` undefined).

    The template is untrusted code (it comes with the model file): it runs in a sandbox with
    `limits` on time and size, and any failure (a syntax error, `raise_exception`, a division
    by zero, a recursive macro, a limit) is one EdgedsError naming `source`.

    Raises:
        EdgedsError: the template failed or went over its limits.
    """
    size = 0
    pieces: list[str] = []
    budget = Budget(limits.max_seconds)
    try:
        with budget.running():
            compiled = _compile(template or CHATML, limits)
            extra = {"tools": tools} if tools else {}
            for piece in compiled.generate(messages=messages, add_generation_prompt=True,
                                           bos_token=bos_token, eos_token=eos_token, **extra):
                size += len(piece)
                if size > limits.max_chars:
                    raise OverBudget(f"its output is over {limits.max_chars} characters")
                pieces.append(piece)
    except TemplateError as err:  # the template's own raise_exception, or a syntax error
        raise EdgedsError(f"{source} failed: {_one_line(str(err))}") from None
    except OverBudget as err:
        raise EdgedsError(f"{source} went over its limits: {err}") from None
    except Exception as err:  # noqa: BLE001 - untrusted code: ZeroDivisionError, RecursionError, MemoryError, …
        raise EdgedsError(f"{source} failed: {type(err).__name__}: {_one_line(str(err))}") from None
    text = "".join(pieces)
    return Prompt(text=text, opens_think=text.rstrip().endswith("<think>"))


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
