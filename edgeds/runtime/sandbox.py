"""A Jinja sandbox with a budget, for chat templates: code that comes inside a model file.

Jinja's own sandbox stops a template from reaching Python's internals; it does not stop one from
running forever or filling the memory. This one adds, per render:

- a wall clock, checked on every line the template runs and every Python call it makes
  (`sys.settrace` while it renders), so nested loops that write nothing are stopped too;
- a size cap on every string or list it makes, checked *before* the work where an operation can
  multiply its input: `'x' * 10**9`, `~` joins, `'%999999999d' % 1`, `center(10**9)`,
  `replace('', …)`, `indent(10**9)`, and before a list is turned into text (a list of 1000
  references to one long string is small, its text is not); and on the output as it streams;
- caps on `range()` and on integers (`10**10**10` would hang in C, out of reach of the clock).

Whatever breaks the budget raises `OverBudget`; the caller turns it, like every other failure of
a template, into the request's error.
"""

from __future__ import annotations

import re
import string
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

from jinja2.runtime import Namespace, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILENAME = "<template>"  # what Jinja names the code of a template made from a string


@dataclass(frozen=True)
class RenderLimits:
    """What one render may use. A chat template renders in milliseconds; these are far above."""

    max_seconds: float = 5.0
    max_chars: int = 16 * 1024 * 1024  # the prompt, and every string or list made on the way
    max_range: int = 100_000  # items of one range()
    max_int_bits: int = 4096  # integers the template computes


RENDER_LIMITS = RenderLimits()


class OverBudget(Exception):
    """A template went over one of its RenderLimits."""


class Budget:
    """The wall clock of one render."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.perf_counter() + seconds

    def check(self) -> None:
        if time.perf_counter() > self.deadline:
            raise OverBudget(f"it ran for more than {self.seconds:g} s")

    def _on_call(self, frame, event, arg):
        self.check()
        return self._on_line if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    def _on_line(self, frame, event, arg):
        self.check()
        return self._on_line

    @contextmanager
    def running(self) -> Iterator[None]:
        """Check the clock on every call and template line run inside (this thread only)."""
        previous = sys.gettrace()
        sys.settrace(self._on_call)
        try:
            yield
        finally:
            sys.settrace(previous)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with sizes capped (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})  # also keeps them out of constant folding

    def __init__(self, limits: RenderLimits = RENDER_LIMITS, **options: Any):
        super().__init__(finalize=self._as_text, **options)
        self.limits = limits
        self.globals["range"] = self.bounded_range
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    # -- checks ----------------------------------------------------------------------------

    def sized(self, value: Any) -> Any:
        """`value`, or OverBudget if it is a string or container over the size cap."""
        if isinstance(value, (str, list, tuple, dict)) and len(value) > self.limits.max_chars:
            raise OverBudget(f"it made a value of {len(value)} characters or items; "
                             f"the limit is {self.limits.max_chars}")
        return value

    def _as_text(self, value: Any) -> Any:
        """Every `{{ value }}` passes here before it becomes text."""
        if not isinstance(value, str):
            self._expect(_weight(value, self.limits.max_chars), "writing a value")
        return value

    def _items(self, values: Iterable[Any]) -> list:
        """An iterable as a list, its text size counted as it is read."""
        items, size = [], 0
        for item in values:
            size += _weight(item, self.limits.max_chars)
            self._expect(size, "joining items")
            items.append(item)
        return items

    def _expect(self, size: int, what: str) -> None:
        if size > self.limits.max_chars:
            raise OverBudget(f"{what} would make {size} characters or items; the limit is {self.limits.max_chars}")

    def _expect_bits(self, bits: int) -> None:
        if bits > self.limits.max_int_bits:
            raise OverBudget(f"it computes a number of about {bits} bits; the limit is {self.limits.max_int_bits}")

    def bounded_range(self, *args: int) -> range:
        items = range(*args)
        if len(items) > self.limits.max_range:
            raise OverBudget(f"range() of {len(items)} items; the limit is {self.limits.max_range}")
        return items

    # -- what templates do -----------------------------------------------------------------

    def concat(self, parts: Iterable[Any]) -> str:  # type: ignore[override]
        """Joins every block, macro body and captured `{% set %}`."""
        return "".join(self._parts(parts))

    def _parts(self, parts: Iterable[Any]) -> list[str]:
        return [part if isinstance(part, str) else str(part) for part in self._items(parts)]

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, (str, list, tuple)):
                left, right = right, left
            if isinstance(left, (str, list, tuple)) and isinstance(right, int):
                self._expect(len(left) * right, "'*'")
            elif isinstance(left, int) and isinstance(right, int):
                self._expect_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            self._expect_bits(left.bit_length() * right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            self._expect(len(left) + len(right), "'+'")
        elif operator == "%" and isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            self._expect(len(left) + _format_growth(self.limits.max_chars, left, args, {}), "'%'")
        return self.sized(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):  # a str method: 'x'.center(10**9), s.replace('', …), sep.join(…)
            name = getattr(__obj, "__name__", "")
            if name == "join" and args:
                args = (__self._items(args[0]), *args[1:])
            __self._check_growth(name, owner, args, kwargs)
        return __self.sized(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any):
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            fmt = owner

            def bounded(*args: Any, **kwargs: Any) -> str:
                self._expect(len(fmt) + _format_growth(self.limits.max_chars, fmt, args, kwargs), "format()")
                return self.sized(wrapped(*args, **kwargs))

            wrapped = super().wrap_str_format(value)
            return bounded if wrapped is not None else None
        return super().wrap_str_format(value)

    def _check_growth(self, name: str, value: Any, args: tuple, kwargs: dict) -> None:
        estimate = _GROWTH.get(name)
        if estimate is None:
            return
        try:
            size = estimate(self.limits.max_chars, value if isinstance(value, (str, list, tuple)) else str(value),
                            *args, **kwargs)
        except (TypeError, ValueError):
            return  # bad arguments: the call itself says what is wrong
        self._expect(size, f"{name}()")

    def _bounded_filter(self, name: str, func: Callable) -> Callable:
        skip = 1 if getattr(func, "jinja_pass_arg", None) else 0  # the context Jinja passes first

        @wraps(func)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            if len(args) > skip:
                value = args[skip]
                if name in _READ_WHOLE:
                    value = self._items(value)
                    args = (*args[:skip], value, *args[skip + 1:])
                elif name not in _STRUCTURAL and not isinstance(value, (str, Iterator)):
                    self._expect(_weight(value, self.limits.max_chars), f"the filter {name}")
                self._check_growth(name, value, args[skip + 1:], kwargs)
            return self.sized(func(*args, **kwargs))

        return bounded

    def compile_bounded(self, source: str):
        """The template made from `source`, its `~` joins size-checked too."""
        template = self.from_string(source)
        names = template.root_render_func.__globals__  # the compiled module's namespace
        names["str_join"] = self.concat
        names["markup_join"] = lambda parts: markup_join(self._parts(parts))
        return template


def _weight(value: Any, limit: int) -> int:
    """About how many characters `str(value)` has, counted only up to just over `limit`."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Namespace):  # prints what it holds
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, Collection):  # lists, tuples, sets, dicts and their views
            total += 2 * len(item)
            if total <= limit:
                stack.extend(item.items() if isinstance(item, Mapping) else item)
        else:
            total += 8
    return total


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _padded(limit: int, value: str, width: Any = 0, *_: Any, **__: Any) -> int:
    return max(len(value), _count(width))


# Functions (str methods and Jinja filters of the same name) whose result can be far larger
# than their arguments: name → the size of the result, estimated from (limit, value, *args,
# **kwargs); `limit` bounds the counting (anything above it is refused anyway).
_GROWTH: dict[str, Callable[..., int]] = {
    "center": _padded,
    "ljust": _padded,
    "rjust": _padded,
    "zfill": _padded,
    "expandtabs": lambda limit, s, tabsize=8, *_, **__: len(s) + s.count("\t") * _count(tabsize),
    "indent": lambda limit, s, width=4, *_, **__: len(s) + (s.count("\n") + 1) * (
        len(width) if isinstance(width, str) else _count(width)),
    "replace": lambda limit, s, old, new, *_, **__: len(s) + (s.count(old) if old else len(s) + 1) * len(str(new)),
    "format": lambda limit, s, *args, **kwargs: len(s) + _format_growth(limit, s, args, kwargs),
    "slice": lambda limit, value, slices, *_, **__: _count(slices),
    "tojson": lambda limit, value, indent=None, *_, **__: _weight(value, limit) * (1 + _count(indent)),
    "join": lambda limit, first, second="", *_, **__: _joined(limit, first, second),
    "sum": lambda limit, items, attribute=None, start=0, *_, **__: (
        _weight(items, limit) if isinstance(start, (str, list, tuple)) else 0),
}

# Filters that only pick from, reorder or count a list (never turn it into text)
_STRUCTURAL = frozenset({"attr", "batch", "count", "d", "default", "dictsort", "first", "groupby", "items", "last",
                         "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "select",
                         "selectattr", "slice", "sort", "unique"})
# Filters that read all of an iterable at once: it is read into a list first, its size counted
_READ_WHOLE = frozenset({"join", "sum"})


def _joined(limit: int, first: Any, second: Any) -> int:
    """The size of a join: `sep.join(items)` (first is the separator) or `items|join(sep)`."""
    sep, items = (first, second) if isinstance(first, str) else (second, first)
    items = items if isinstance(items, (list, tuple)) else []
    return len(str(sep)) * len(items) + _weight(items, limit)

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\d+|\*)?(?:\.(\d+|\*))?")
_NUMBER = re.compile(r"\d+")


def _format_growth(limit: int, fmt: str, args: tuple, kwargs: dict) -> int:
    """How many characters formatting `fmt` can add: its arguments, the widths and precisions
    its fields ask for, and any width taken from an argument (`%*d`, `{:{}}`)."""
    widths = 0
    from_args = False
    for width, precision in _PERCENT_SPEC.findall(fmt):
        from_args |= "*" in (width, precision)
        widths += sum(int(n) for n in (width, precision) if n.isdigit())
    try:
        for _, _, spec, _ in string.Formatter().parse(fmt):
            if spec:
                from_args |= "{" in spec
                widths += sum(int(n) for n in _NUMBER.findall(spec))
    except ValueError:
        pass  # not a valid str.format string: formatting it fails on its own
    values = [*args, *kwargs.values()]
    arg_text = _weight(values, limit)
    return widths + arg_text + (sum(_count(v) for v in values) if from_args else 0)
