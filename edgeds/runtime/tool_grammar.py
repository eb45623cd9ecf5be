"""The GBNF grammar that makes a model call a tool: DeepSeek's call block, with arguments that
match the tool's JSON-schema parameters (llama-cpp-python's JSON-schema converter).

Used for tool_choice "required" (any of the tools) and a named function (that one). With
parallel calls the block may hold up to MAX_PARALLEL calls.
"""

from __future__ import annotations

import json
import re

from llama_cpp.llama_grammar import SchemaConverter

from edgeds.errors import UsageError
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.request import RequestError
from edgeds.runtime.tool_parser import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP

MAX_PARALLEL = 8
# The converter's string character lets raw control characters through, which JSON forbids.
_CHAR_RULE = re.compile(r"^char ::= .*$", re.MULTILINE)
STRICT_CHAR = r'''char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'''


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def call_grammar(tools: list[tuple[int, dict]], *, parallel: bool) -> str:
    """A grammar for one call block over `tools`, (index in the request's `tools`, tool) pairs;
    RequestError naming the tool whose parameters cannot become a grammar."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alternatives = []
    for n, (i, tool) in enumerate(tools):
        function = tool["function"]
        try:
            schema = converter.resolve_refs(json.loads(json.dumps(function["parameters"])), f"tools[{i}]")
            args_rule = converter.visit(schema, f"tool-{n}-args")
        except Exception as err:  # noqa: BLE001 - the converter asserts and raises on what it cannot convert
            raise RequestError(f"tools[{i}].function.parameters",
                               f"tools[{i}].function.parameters cannot be turned into a grammar "
                               f"({type(err).__name__}: {err})") from None
        alternatives.append(f"{_literal(function['name'] + chr(10) + '```json' + chr(10))} {args_rule}")
    more = f' ("\\n" tool-call){{0,{MAX_PARALLEL - 1}}}' if parallel else ""
    head = [
        f"root ::= {_literal(CALLS_BEGIN)} tool-call{more} {_literal(CALLS_END)}",
        f"tool-call ::= {_literal(CALL_BEGIN + 'function' + SEP)} ({' | '.join(alternatives)}) "
        f"{_literal(chr(10) + '```' + CALL_END)}",
    ]
    grammar = "\n".join(head) + "\n" + _CHAR_RULE.sub(lambda _: STRICT_CHAR, converter.format_grammar())
    try:
        check_grammar(grammar)
    except UsageError as err:
        raise RequestError("tools", f"the tools' parameters make too big a grammar: {err}") from None
    return grammar
