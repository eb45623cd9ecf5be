"""GBNF grammars checked before llama.cpp sees them.

llama.cpp's grammar parser trusts its input: it recurses once per nested group (30 000 nested
parentheses overflow the stack and kill the process), hangs on a repetition `x{3,1}`, expands
`x{m,n}` into n copies of x, and a character class that matches no character (`[b-a]`, `[\\x00]`)
leaves the sampler with no token to draw, which aborts the process in the middle of a
generation. `check_grammar` refuses all of these with one line that names the limit, and
leaves every other syntax question to llama.cpp's own parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeds.errors import UsageError


@dataclass(frozen=True)
class GrammarLimits:
    """How big a grammar may be. The defaults fit grammars written by hand or converted from a
    JSON schema with plenty of room, and stay far from what breaks llama.cpp."""

    max_bytes: int = 64 * 1024  # the GBNF text, UTF-8
    max_depth: int = 64  # nested ( ) groups; llama.cpp's parser recurses once per level
    max_rules: int = 1024  # rule definitions `name ::= …`
    max_repeat: int = 1000  # the largest bound in x{m,n}
    max_elements: int = 200_000  # grammar elements once llama.cpp has expanded the repetitions


GRAMMAR_LIMITS = GrammarLimits()

MAX_CODEPOINT = 0x10FFFF
_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DEFINITION = re.compile(r"[ \t]*::=")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")


def check_grammar(text: str, limits: GrammarLimits = GRAMMAR_LIMITS) -> None:
    """Refuse a GBNF text that is too big, nests too deep or has a part that breaks llama.cpp.

    Raises:
        UsageError: one line naming the limit (and the grammar's line where there is one).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise UsageError(f"the grammar is {size} bytes; the limit is {limits.max_bytes}")
    _Scan(text, limits).run()


class _Scan:
    """One pass over the text: groups, rule definitions, repetitions, literals and classes."""

    def __init__(self, text: str, limits: GrammarLimits):
        self.text = text
        self.limits = limits
        self.pos = 0
        self.depth = 0
        self.rules = 0
        self.elements = 0
        self.last = 0  # elements of the item a following */+/?/{m,n} repeats

    def fail(self, message: str, at: int) -> None:
        line = self.text.count("\n", 0, at) + 1
        raise UsageError(f"the grammar {message} (line {line})")

    def run(self) -> None:
        text, limits = self.text, self.limits
        while self.pos < len(text):
            start, c = self.pos, text[self.pos]
            if c == "#":
                end = text.find("\n", start)
                self.pos = len(text) if end < 0 else end
            elif c == '"':
                self.item(self.literal(), start)
            elif c == "[":
                self.item(self.char_class(), start)
            elif c == "(":
                self.depth += 1
                if self.depth > limits.max_depth:
                    self.fail(f"nests groups deeper than {limits.max_depth}", start)
                self.pos += 1
            elif c == ")":
                self.depth = max(self.depth - 1, 0)
                self.pos += 1
                self.item(1, start)  # a group is one reference to its own rule
            elif c == "{":
                self.repeat(start)
            elif c in "*+?":
                self.pos += 1
                self.grow(self.last, start)  # one more copy, in a rule of its own
            elif match := _NAME.match(text, start):
                self.pos = match.end()
                if _DEFINITION.match(text, self.pos):
                    self.rules += 1
                    if self.rules > limits.max_rules:
                        self.fail(f"defines more than {limits.max_rules} rules", start)
                else:
                    self.item(1, start)
            else:
                self.pos += 1

    def item(self, elements: int, at: int) -> None:
        self.last = elements
        self.grow(elements, at)

    def grow(self, elements: int, at: int) -> None:
        self.elements += elements
        if self.elements > self.limits.max_elements:
            self.fail(f"expands to more than {self.limits.max_elements} elements", at)

    def repeat(self, start: int) -> None:
        match = _REPEAT.match(self.text, start)
        if not match:  # not a repetition llama.cpp reads either: its parser reports it
            self.pos += 1
            return
        self.pos = match.end()
        low = int(match[1])
        high = low if not match[2] else int(match[3]) if match[3] else None
        if high is not None and high < low:
            self.fail(f"repeats {{{low},{high}}}: the maximum is below the minimum", start)
        if max(low, high or 0) > self.limits.max_repeat:
            self.fail(f"repeats an item {match[0]} times; the limit is {self.limits.max_repeat}", start)
        self.grow(self.last * max(low, (high or low + 1)), start)

    def char(self) -> int | None:
        """The code point at `pos` (an escape decoded), or None where the text ends."""
        text = self.text
        if self.pos >= len(text):
            return None
        c = text[self.pos]
        if c != "\\" or self.pos + 1 >= len(text):
            self.pos += 1
            return ord(c)
        kind = text[self.pos + 1]
        if kind in _HEX_DIGITS:
            digits = re.match(r"[0-9A-Fa-f]*", text[self.pos + 2: self.pos + 2 + _HEX_DIGITS[kind]])[0]
            self.pos += 2 + len(digits)
            return int(digits, 16) if digits else ord(kind)
        self.pos += 2
        return ord(_ESCAPES.get(kind, kind))

    def literal(self) -> int:
        """A "…" string: its length in elements; a NUL in it can never be generated."""
        start = self.pos
        self.pos += 1
        length = 0
        while self.pos < len(self.text) and self.text[self.pos] != '"':
            if self.char() == 0:
                self.fail("has a NUL character in a string, which no token can produce", start)
            length += 1
        self.pos += 1
        return length

    def char_class(self) -> int:
        """A [...] class: its number of items; one that matches no character is refused."""
        start = self.pos
        self.pos += 1
        negated = self.text.startswith("^", self.pos)
        self.pos += negated
        ranges: list[tuple[int, int]] = []
        while self.pos < len(self.text) and self.text[self.pos] != "]":
            low = high = self.char()
            if self.text.startswith("-", self.pos) and self.pos + 1 < len(self.text) and self.text[self.pos + 1] != "]":
                self.pos += 1
                high = self.char()
            if low is not None and high is not None:
                ranges.append((low, high))
        self.pos += 1
        if not _matches_something(ranges, negated):
            self.fail(f"has a character class that matches no character: {self.text[start:self.pos][:40]}", start)
        return max(len(ranges), 1)


def _matches_something(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Whether a class can match a character a token can produce (NUL never can)."""
    usable = sorted((max(low, 1), min(high, MAX_CODEPOINT)) for low, high in ranges if low <= high and high >= 1)
    if not negated:
        return bool(usable)
    covered = 0  # highest code point covered so far, from 1 on
    for low, high in usable:
        if low > covered + 1:
            return True
        covered = max(covered, high)
    return covered < MAX_CODEPOINT
