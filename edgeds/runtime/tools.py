"""Tool calling for chat requests: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`,
checked, and turned into what the model sees.

- A chat template that renders tool definitions itself gets them (`tools` in the template).
  DeepSeek's templates render tool calls and tool outputs in the history but not the
  definitions: for those the tools (their JSON schemas) and the exact call syntax go into a
  system prompt (TOOLS_PROMPT, as llama.cpp's template polyfill does), which R1-family models
  get folded into the first user turn like any system prompt.
- `tool_choice` "required" or a named function constrains the reply with a grammar that only
  lets the model write a valid call block (edgeds.runtime.tool_grammar); "none" leaves the
  tools out and the reply unparsed.
- A template that renders no tool calls at all (SmolLM2's) cannot hold a tool conversation: a
  request with tools or tool turns is refused, naming the model. One that renders an assistant
  turn's calls only when its content is null (DeepSeek's) gets them that way: the text the model
  wrote before its calls is left out of later prompts, as its reasoning is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from edgeds.errors import EdgedsError
from edgeds.runtime import template
from edgeds.runtime.request import RequestError, with_system
from edgeds.runtime.tool_grammar import call_grammar
from edgeds.runtime.tool_parser import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP


@dataclass(frozen=True)
class ToolLimits:
    """What a request's tools may be. The JSON-schema converter writes a rule as long as each
    length or count a schema asks for (and llama.cpp expands it again): bound them first."""

    max_tools: int = 128
    max_chars: int = 64 * 1024  # all tool definitions, as compact JSON
    max_depth: int = 32  # nested objects and lists in one tool definition
    max_count: int = 1000  # the largest maxLength, minItems, … a schema may ask for


TOOL_LIMITS = ToolLimits()
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHOICES = ("none", "auto", "required")
REFUSED_FIELDS = {"functions": "tools", "function_call": "tool_choice"}  # OpenAI's old names
COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")

# The system prompt that describes the tools to a template that does not render them.
TOOLS_PROMPT = """## Tools

You can call these tools (each one's parameters are a JSON schema):

{tools}

To call tools, reply with this block, one <｜tool▁call▁begin｜>…<｜tool▁call▁end｜> per call, where NAME is the \
tool's name and ARGUMENTS a JSON object that matches its parameters:

{example}

{parallel} {choice} The results come back as tool outputs; then answer the user."""
CALL_EXAMPLE = f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}NAME\n```json\nARGUMENTS\n```{CALL_END}{CALLS_END}"
PARALLEL_RULES = {True: "You may call several tools in one block.", False: "Call at most one tool at a time."}
CHOICE_RULES = {
    "auto": "Call a tool only when it helps; otherwise answer directly.",
    "required": "You must call at least one tool now.",
    "named": "You must call the tool {name} now.",
}


@dataclass(frozen=True)
class ToolRequest:
    """The tool fields of one request. `choice`: none, auto or required; `name`: the function
    tool_choice names (choice is then required)."""

    tools: tuple[dict, ...] = ()
    choice: str = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def active(self) -> bool:
        """The model is told about the tools and its reply parsed for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.active and self.choice == "required"

    def grammar(self) -> str | None:
        """The grammar that makes the reply a call block, when tool_choice demands a call."""
        if not self.forced:
            return None
        callable_tools = [(i, t) for i, t in enumerate(self.tools) if self.name in (None, t["function"]["name"])]
        return call_grammar(callable_tools, parallel=self.parallel)


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools turn into: the messages (with the tools' system prompt where the
    template does not render them), tools for the template, whether to parse the reply for
    calls, and the grammar that forces a call (tool_choice required or named)."""

    messages: list[dict]
    template_tools: list[dict] | None = None
    parse: bool = False
    grammar: str | None = None


def check_tool_request(data: Mapping[str, Any], limits: ToolLimits = TOOL_LIMITS) -> ToolRequest:
    """The tool fields of a request; RequestError naming the field (`tools[2].function.name`)."""
    for old, new in REFUSED_FIELDS.items():
        if data.get(old) is not None:
            raise RequestError(old, f"'{old}' is OpenAI's deprecated form; send '{new}' instead")
    tools = _check_tools(data.get("tools"), limits)
    names = [t["function"]["name"] for t in tools]
    parallel = data.get("parallel_tool_calls")
    parallel = True if parallel is None else parallel
    if not isinstance(parallel, bool):
        raise RequestError("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
    choice, name = _check_choice(data.get("tool_choice"), names)
    return ToolRequest(tuple(tools), choice, name, parallel)


def _check_tools(tools: Any, limits: ToolLimits) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > limits.max_tools:
        raise RequestError("tools", f"'tools' must be a list of at most {limits.max_tools} tools")
    for i, tool in enumerate(tools):
        _check_shape(tool, f"tools[{i}]", limits)
    size = len(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    if size > limits.max_chars:
        raise RequestError("tools", f"'tools' is {size} characters as JSON; the limit is {limits.max_chars}")
    clean, seen = [], set()
    for i, tool in enumerate(tools):
        key = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise RequestError(key, f'{key} must be {{"type": "function", "function": {{...}}}}')
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise RequestError(f"{key}.function.name",
                               f"{key}.function.name must be 1 to 64 of the characters a-z, A-Z, 0-9, _ and -")
        if name in seen:
            raise RequestError(f"{key}.function.name", f"{key}.function.name: a second tool named {name!r}")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise RequestError(f"{key}.function.description", f"{key}.function.description must be a string")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise RequestError(f"{key}.function.parameters",
                               f'{key}.function.parameters must be a JSON schema of type "object"')
        entry = {"name": name, **({"description": description} if description else {}),
                 "parameters": {"type": "object", **parameters}}
        clean.append({"type": "function", "function": entry})
    return clean


def _check_shape(tool: Any, key: str, limits: ToolLimits) -> None:
    """Depth and counts, walked without recursion (a deep tool must not overflow the stack)."""
    stack = [(tool, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            raise RequestError(key, f"{key} nests deeper than {limits.max_depth} levels")
        if isinstance(value, dict):
            for name, item in value.items():
                big = isinstance(item, (int, float)) and not isinstance(item, bool) and item > limits.max_count
                if name in COUNT_KEYWORDS and big:
                    raise RequestError(key, f"{key} asks for {name} {item}; the limit is {limits.max_count}")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _check_choice(choice: Any, names: list[str]) -> tuple[str, str | None]:
    if choice is None:
        return ("auto" if names else "none"), None
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise RequestError("tool_choice", f"'tool_choice' must be one of {', '.join(CHOICES)} or a function")
        if choice == "required" and not names:
            raise RequestError("tool_choice", "'tool_choice' is \"required\" but the request has no tools")
        return choice, None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(choice.get("function"), dict):
        raise RequestError("tool_choice", "'tool_choice' must be none, auto, required or "
                           '{"type": "function", "function": {"name": ...}}')
    name = choice["function"].get("name")
    if not isinstance(name, str):
        raise RequestError("tool_choice.function.name", "tool_choice.function.name must be a string")
    if name not in names:
        raise RequestError("tool_choice.function.name", f"tool_choice names {name!r}, which is not among 'tools'")
    return "required", name


# -- what the model sees ----------------------------------------------------------------------

_PROBE_TOOL = "edgeds_probe_function"
_PROBE_OUTPUT = "edgeds-probe-output"


@lru_cache(maxsize=16)
def renders_tool_calls(chat_template: str | None, content: str | None = None) -> bool:
    """The template renders an assistant's tool calls (made with `content`) and the tools' outputs."""
    call = {"id": "call_0", "type": "function", "function": {"name": _PROBE_TOOL, "arguments": "{}"}}
    history = [{"role": "user", "content": "?"}, {"role": "assistant", "content": content, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_0", "content": _PROBE_OUTPUT}]
    text = _probe(chat_template, history, None)
    return _PROBE_TOOL in text and _PROBE_OUTPUT in text


@lru_cache(maxsize=16)
def renders_tool_definitions(chat_template: str | None) -> bool:
    """The template writes the request's `tools` into the prompt itself."""
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {"type": "object", "properties": {}}}}
    return _PROBE_TOOL in _probe(chat_template, [{"role": "user", "content": "?"}], [tool])


def _probe(chat_template: str | None, messages: list[dict], tools: list[dict] | None) -> str:
    if not chat_template:
        return ""
    try:
        return template.render(chat_template, messages, bos_token="", eos_token="", tools=tools).text
    except EdgedsError:
        return ""


def tools_prompt(request: ToolRequest) -> str:
    """The system prompt that describes `request`'s tools and how to call them."""
    tools = json.dumps([t["function"] for t in request.tools], ensure_ascii=False, indent=2)
    choice = CHOICE_RULES["named" if request.name else request.choice].format(name=request.name)
    return TOOLS_PROMPT.format(tools=tools, example=CALL_EXAMPLE, parallel=PARALLEL_RULES[request.parallel],
                               choice=choice)


def plan_tools(request: ToolRequest, messages: list[dict], chat_template: str | None, model: str) -> ToolPlan:
    """How `request`'s tools reach the model behind `chat_template`; RequestError when that
    template cannot hold a tool conversation."""
    tool_turns = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if (request.active or tool_turns) and not renders_tool_calls(chat_template):
        key = "tools" if request.active else "messages"
        raise RequestError(key, f"{model} cannot call tools: its chat template renders no tool calls "
                           "(send tools to a model whose template does, such as DeepSeek's, or tool_choice \"none\")")
    if tool_turns and not renders_tool_calls(chat_template, "text"):
        messages = _calls_without_text(messages)
    if not request.active:
        return ToolPlan(messages)
    if renders_tool_definitions(chat_template):
        return ToolPlan(messages, list(request.tools), parse=True, grammar=request.grammar())
    return ToolPlan(_with_tools_prompt(messages, tools_prompt(request)), parse=True, grammar=request.grammar())


def _calls_without_text(messages: list[dict]) -> list[dict]:
    """DeepSeek's templates render an assistant turn's calls only when it has no content (and
    drop the calls otherwise): the calls matter to what follows, the text before them less."""
    return [{**m, "content": None} if m.get("tool_calls") else m for m in messages]


def _with_tools_prompt(messages: list[dict], prompt: str) -> list[dict]:
    """The tools' prompt after the request's own system prompt, in the same system turn."""
    if messages and messages[0]["role"] == "system" and messages[0]["content"]:
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
    return with_system(messages, prompt)
