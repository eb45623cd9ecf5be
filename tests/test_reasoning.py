"""ReasoningSplitter: every way a think block can arrive in a token stream."""

from __future__ import annotations

import itertools

import pytest

from edgeds.events import Answer, Reasoning
from edgeds.runtime.reasoning import ReasoningSplitter


def split(pieces, *, in_reasoning=False):
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    events = []
    for piece in pieces:
        events += splitter.feed(piece)
    events += splitter.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    return reasoning, answer, events


def cuts(text, n_cuts):
    """Every way of cutting `text` into n_cuts+1 pieces."""
    for points in itertools.combinations(range(1, len(text)), n_cuts):
        bounds = (0, *points, len(text))
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


STREAM = "<think>\nI add 2 and 2.\n</think>\n\nThe answer is 4."


@pytest.mark.parametrize("n_cuts", [0, 1, 2])
def test_explicit_think_cut_anywhere(n_cuts):
    for pieces in cuts(STREAM, n_cuts):
        reasoning, answer, _ = split(pieces)
        assert (reasoning, answer) == ("I add 2 and 2.", "The answer is 4."), pieces


def test_every_single_character_cut():
    reasoning, answer, _ = split(list(STREAM))
    assert (reasoning, answer) == ("I add 2 and 2.", "The answer is 4.")


@pytest.mark.parametrize("n_cuts", [0, 1, 2])
def test_template_preopened_think_only_close_tag_arrives(n_cuts):
    text = "Let me think.\nStill thinking.\n</think>\n\nDone."
    for pieces in cuts(text, n_cuts):
        reasoning, answer, _ = split(pieces, in_reasoning=True)
        assert (reasoning, answer) == ("Let me think.\nStill thinking.", "Done."), pieces


def test_tags_as_whole_special_tokens():
    reasoning, answer, _ = split(["<think>", "\n", "hmm", "</think>", "\n\n", "ok"])
    assert (reasoning, answer) == ("hmm", "ok")


def test_empty_think_block_yields_no_reasoning_event():
    reasoning, answer, events = split(["<think>", "\n\n", "</think>", "\n\n", "Hi there"])
    assert reasoning == "" and answer == "Hi there"
    assert not any(isinstance(e, Reasoning) for e in events)


def test_output_ends_before_close_tag_is_all_reasoning():
    reasoning, answer, _ = split(["<think>\n", "step one, ", "step two </th"])
    assert reasoning == "step one, step two </th"
    assert answer == ""


def test_preopened_and_truncated():
    reasoning, answer, _ = split(["partial thought", " </"], in_reasoning=True)
    assert (reasoning, answer) == ("partial thought </", "")


def test_model_that_never_thinks():
    reasoning, answer, events = split(["Hello", "!", " How", " can I help?"])
    assert reasoning == "" and answer == "Hello! How can I help?"
    assert all(isinstance(e, Answer) for e in events)


def test_answer_that_starts_like_a_tag_but_is_not():
    reasoning, answer, _ = split(["<th", "ree> is not a tag"])
    assert (reasoning, answer) == ("", "<three> is not a tag")


def test_leading_whitespace_then_think():
    reasoning, answer, _ = split(["\n", "  ", "<thi", "nk>x</think>y"])
    assert (reasoning, answer) == ("x", "y")


def test_internal_whitespace_is_kept_and_streamed_in_order():
    reasoning, answer, events = split(["<think>a", " ", "b", "\n\n", "c</think>", "d", " ", "e", "\n"])
    assert reasoning == "a b\n\nc"
    assert answer == "d e"
    kinds = [type(e) for e in events]
    assert kinds.index(Answer) > max(i for i, k in enumerate(kinds) if k is Reasoning)


def test_phase_tracks_the_stream():
    splitter = ReasoningSplitter()
    assert splitter.phase == "start"
    splitter.feed("<think>")
    assert splitter.phase == "reasoning"
    splitter.feed("x</think>")
    assert splitter.phase == "answer"
