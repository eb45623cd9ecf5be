"""ReasoningSplitter: every way a think block can arrive in a token stream."""

from __future__ import annotations

import itertools

import pytest

from edgeds.events import Answer, Reasoning
from edgeds.runtime.reasoning import ReasoningSplitter


def split(pieces, *, in_reasoning=False, bare_close=False):
    splitter = ReasoningSplitter(in_reasoning=in_reasoning, bare_close=bare_close)
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


BARE = "Let me add them.</think>\n\nThe answer is 4."


@pytest.mark.parametrize("n_cuts", [0, 1, 2])
def test_bare_close_cut_anywhere_never_shows_reasoning_as_answer(n_cuts):
    """The issue's output on the published R1 template (no <think> in the prompt, --no-think-prefix):
    the text before a bare </think> is reasoning, the tag is never answer text, and no answer
    event comes before the reasoning is known to be reasoning."""
    for pieces in cuts(BARE, n_cuts):
        reasoning, answer, events = split(pieces, bare_close=True)
        assert (reasoning, answer) == ("Let me add them.", "The answer is 4."), pieces
        kinds = [type(e) for e in events]
        assert kinds.index(Answer) > kinds.index(Reasoning), pieces


def test_bare_close_with_the_think_prefix_streams_reasoning_at_once():
    splitter = ReasoningSplitter(in_reasoning=True)
    assert splitter.feed("Let me add") == [Reasoning("Let me add")]
    assert splitter.feed(" them.</think>\n\nThe answer is 4.") == [Reasoning(" them."), Answer("The answer is 4.")]


def test_bare_close_model_that_answers_without_thinking():
    """A reasoning model that skips the think block: held back, then all of it is the answer."""
    reasoning, answer, events = split(["Hello", "!", " How can", " I help?"], bare_close=True)
    assert (reasoning, answer) == ("", "Hello! How can I help?")
    assert all(isinstance(e, Answer) for e in events)


def test_bare_close_still_takes_an_explicit_think_block():
    for pieces in cuts(STREAM, 2):
        assert split(pieces, bare_close=True)[:2] == ("I add 2 and 2.", "The answer is 4."), pieces


def test_bare_close_empty_block():
    reasoning, answer, events = split(["</think>", "\n\n", "Hi"], bare_close=True)
    assert (reasoning, answer) == ("", "Hi")
    assert not any(isinstance(e, Reasoning) for e in events)


def test_without_bare_close_a_model_that_never_thinks_streams_at_once():
    splitter = ReasoningSplitter()
    assert splitter.feed("Hello there") == [Answer("Hello there")]


@pytest.mark.parametrize("n_cuts", [0, 1, 2])
def test_prefix_then_model_reopens_think(n_cuts):
    """The prompt opened <think> (the think prefix) and the model writes <think> again: the
    second tag is not reasoning text."""
    for pieces in cuts("<think>\nI add.\n</think>\n\nFour.", n_cuts):
        assert split(pieces, in_reasoning=True)[:2] == ("I add.", "Four."), pieces


def test_stopped_in_the_think_block_is_known():
    splitter = ReasoningSplitter(in_reasoning=True)
    splitter.feed("still thinking")
    splitter.finish()
    assert splitter.in_think_block
    done = ReasoningSplitter(in_reasoning=True)
    done.feed("x</think>y")
    done.finish()
    assert not done.in_think_block
