"""`edgeds run`'s printer: JSON lines put together without dataclass conversion are the events'
own JSON form, and text printed with throttled flushes arrives whole and in order."""

from __future__ import annotations

import io
import json

from edgeds.events import Answer, Done, Reasoning, Stats, to_dict
from edgeds.serving.terminal import Output, show

EVENTS = [Reasoning("think \"quoted\"\n"), Reasoning("é 🌸\u2028"), Answer("4"), Answer(" and </think> \\ \t"),
          Done(Stats(prompt_tokens=9, reasoning_tokens=2, answer_tokens=2, cached_tokens=3))]


def test_json_lines_are_the_events_json():
    out, err = io.StringIO(), io.StringIO()
    stats = show(iter(EVENTS), Output(json_lines=True), stdout=out, stderr=err)
    lines = out.getvalue().split("\n")  # not splitlines(): U+2028 inside a JSON string is no line end
    assert lines == [json.dumps(to_dict(e), ensure_ascii=False) for e in EVENTS] + [""]
    assert [json.loads(line)["type"] for line in lines[:-1]] == [e.type for e in EVENTS]
    assert stats.cached_tokens == 3 and json.loads(lines[-2])["stats"]["cached_tokens"] == 3


def test_plain_text_arrives_whole():
    out, err = io.StringIO(), io.StringIO()
    show(iter(EVENTS), Output(), stdout=out, stderr=err)
    assert out.getvalue() == "4 and </think> \\ \t\n"
    assert err.getvalue() == "think \"quoted\"\né 🌸\u2028\n\n"
