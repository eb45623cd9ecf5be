"""Structured output: OpenAI's `response_format` (and `edgeds run --json-schema`) → a GBNF grammar.

- `{"type": "text"}`: no grammar.
- `{"type": "json_object"}`: any JSON object (llama-cpp-python's JSON_GBNF, whose root is an object).
- `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`: the
  schema through llama-cpp-python's JSON-schema → GBNF converter (llama.cpp's own
  json_schema_to_grammar.py, ported), with remote `$ref`s refused.

The converter trusts its input: it writes `minLength: N` out as N copies of a rule and
recurses once per nesting level, so the schema is bounded before it runs (size, depth, the
counts it would spell out), and the grammar it makes goes through `check_grammar` like any
other. Like every grammar, this one constrains the answer: a reasoning model thinks first.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from edgeds.errors import UsageError
from edgeds.runtime.grammar import GRAMMAR_LIMITS, check_grammar

MAX_SCHEMA_BYTES = 32 * 1024  # the schema as compact JSON
MAX_SCHEMA_DEPTH = 32  # nested objects/lists in the schema
COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
FORMATS = ("text", "json_object", "json_schema")
_PATTERN_REPEAT = re.compile(r"\{\s*(\d+)")


class SchemaError(UsageError):
    """A JSON schema edgeds cannot turn into a grammar; the message says what and where."""


def schema_grammar(schema: Any) -> str:
    """The GBNF grammar of a JSON schema (a parsed JSON value).

    Raises:
        SchemaError: not an object, too big or deep, or a part the converter cannot handle.
    """
    if not isinstance(schema, dict):
        raise SchemaError("the JSON schema must be an object")
    text = json.dumps(schema, separators=(",", ":"))
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"the JSON schema is {len(text.encode())} bytes; the limit is {MAX_SCHEMA_BYTES}")
    _check_bounds(schema)
    try:
        grammar = json_schema_to_gbnf(text)
    except RecursionError:
        raise SchemaError("the JSON schema refers to itself too deeply") from None
    except Exception as err:  # noqa: BLE001 - the converter asserts and raises freely on what it cannot do
        raise SchemaError(f"the JSON schema cannot be turned into a grammar: {err}") from None
    if not grammar.strip() or re.search(r"^root ::=\s*$", grammar, re.M):
        raise SchemaError("the JSON schema matches no value")
    try:
        check_grammar(grammar)
    except UsageError as err:
        raise SchemaError(f"the JSON schema makes a grammar that is too big ({err})") from None
    return grammar


def _check_bounds(schema: Any) -> None:
    """Refuse what would make the converter spell out huge rules or recurse too deep."""
    limit = GRAMMAR_LIMITS.max_repeat
    stack = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"the JSON schema nests deeper than {MAX_SCHEMA_DEPTH}")
        if isinstance(value, dict):
            for key, item in value.items():
                if key in COUNT_KEYS and isinstance(item, (int, float)) and not isinstance(item, bool) and item > limit:
                    raise SchemaError(f"the JSON schema's {key} is {item}; the limit is {limit}")
                if key == "pattern" and isinstance(item, str):
                    if any(int(n) > limit for n in _PATTERN_REPEAT.findall(item)):
                        raise SchemaError(f"the JSON schema's pattern repeats more than {limit} times")
                if key == "$ref" and isinstance(item, str) and not item.startswith("#"):
                    raise SchemaError(f"the JSON schema refers outside itself ($ref {item[:80]}); only local refs work")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def response_format_grammar(value: Any) -> str | None:
    """The grammar of an OpenAI `response_format` value (None for plain text).

    Raises:
        SchemaError: a malformed value or schema; the message names the part.
    """
    if not isinstance(value, dict):
        raise SchemaError("'response_format' must be an object like {\"type\": \"json_object\"}")
    kind = value.get("type")
    if kind not in FORMATS:
        raise SchemaError(f"response_format.type must be one of {', '.join(FORMATS)}")
    extra = set(value) - {"type", "json_schema"}
    if extra or (kind != "json_schema" and "json_schema" in value):
        raise SchemaError(f"response_format has an unknown key {sorted(extra or {'json_schema'})[0]!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_GBNF
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise SchemaError("response_format.json_schema must be an object with a 'schema'")
    unknown = set(spec) - {"name", "schema", "strict", "description"}
    if unknown:
        raise SchemaError(f"response_format.json_schema has an unknown key {sorted(unknown)[0]!r}")
    if not isinstance(spec.get("name", ""), str) or not isinstance(spec.get("description", ""), str):
        raise SchemaError("response_format.json_schema.name and .description must be strings")
    if spec.get("strict") not in (None, True, False):
        raise SchemaError("response_format.json_schema.strict must be true or false")
    try:
        return schema_grammar(spec.get("schema", {}))
    except SchemaError as err:
        raise SchemaError(f"response_format.json_schema.schema: {err}") from None
