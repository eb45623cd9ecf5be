"""Tool calling on the R1 path with the think prefix ON: the model reasons first, the reasoning
budget closes the think block, and only then does the call grammar of tool_choice join (the
grammar constrains the answer, not the reasoning). Also `n` > 1 with tools: each choice parses
its own call block."""

from __future__ import annotations

import pytest

from edgeds.runtime import Engine
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.server import Server
from tests.in_process_server import openai_client, served
from tests.batch.test_tool_calls import ASK, CLOCK, WEATHER, check_call, named


@pytest.fixture(scope="module")
def thinking_server(tiny_r1_gguf):
    """The tiny R1 model as shipped: its generation prompt opens a think block."""
    with served(tiny_r1_gguf, parallel=3, seq_ctx=2048) as server:
        yield server


@pytest.fixture
def client(thinking_server):
    return openai_client(thinking_server.url)


REQUEST = dict(model="any", messages=ASK, tools=[WEATHER, CLOCK], parallel_tool_calls=False,
               max_tokens=200, extra_body={"reasoning_budget": 4})


@pytest.mark.parametrize("choice", ["required", named("get_time")])
def test_a_forced_call_after_a_spent_reasoning_budget(client, choice):
    reply = client.chat.completions.create(tool_choice=choice, seed=11, **REQUEST)
    first = reply.choices[0]
    assert first.finish_reason == "tool_calls", first
    assert first.message.content is None
    [call] = first.message.tool_calls
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    check_call(call.function.name, call.function.arguments)
    assert reply.usage.completion_tokens > 4  # the reasoning came first: it is no bare call block
    reasoning = first.message.model_extra.get("reasoning_content")
    assert reasoning and "<｜tool" not in reasoning


def test_the_streamed_call_after_reasoning_matches_the_whole_reply(client):
    whole = client.chat.completions.create(tool_choice="required", seed=12, **REQUEST).choices[0]
    [expected] = whole.message.tool_calls
    name, fragments, finish, content = None, [], None, ""
    for chunk in client.chat.completions.create(tool_choice="required", seed=12, stream=True, **REQUEST):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or ():
            name = delta.function.name or name
            fragments.append(delta.function.arguments or "")
    assert not content
    assert finish == "tool_calls"
    assert name == expected.function.name
    assert "".join(fragments) == expected.function.arguments


@pytest.mark.slow
def test_each_of_n_choices_parses_its_own_call(client):
    reply = client.chat.completions.create(tool_choice="required", n=3, seed=13, temperature=1.0, **REQUEST)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    ids = set()
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls
        check_call(call.function.name, call.function.arguments)
        ids.add(call.id)
    assert len(ids) == 3  # every call has its own id

    streamed: dict[int, dict] = {}
    finishes: dict[int, str] = {}
    for chunk in client.chat.completions.create(tool_choice="required", n=2, seed=14, temperature=1.0,
                                                stream=True, **REQUEST):
        for choice in chunk.choices:
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
            for delta in choice.delta.tool_calls or ():
                call = streamed.setdefault(choice.index, {"name": None, "arguments": ""})
                call["name"] = delta.function.name or call["name"]
                call["arguments"] += delta.function.arguments or ""
    assert finishes == {0: "tool_calls", 1: "tool_calls"}
    for call in streamed.values():
        check_call(call["name"], call["arguments"])


@pytest.mark.slow
def test_a_draft_gives_the_same_calls(tiny_r1_gguf, client):
    """Speculative decoding on the same path: drafting waits for the call grammar to take hold
    after the think block, and the calls are the same as without a draft (streaming is the same
    code with or without drafts: test_the_streamed_call_after_reasoning_matches_the_whole_reply)."""
    from edgeds.loader import open_scheduler

    asks = [dict(tool_choice="required", seed=21, **REQUEST),
            dict(tool_choice=named("get_weather"), seed=22, temperature=0, **REQUEST)]
    want = [client.chat.completions.create(**ask).choices[0] for ask in asks]
    scheduler = open_scheduler(tiny_r1_gguf, parallel=2, seq_ctx=2048, draft=str(tiny_r1_gguf), draft_max=2)
    try:
        with Server(scheduler, port=0) as server:
            fast = openai_client(server.url)
            for ask, expected in zip(asks, want):
                got = fast.chat.completions.create(**ask).choices[0]
                assert got.finish_reason == expected.finish_reason == "tool_calls"
                assert [(c.function.name, c.function.arguments) for c in got.message.tool_calls] == \
                    [(c.function.name, c.function.arguments) for c in expected.message.tool_calls]
                assert got.message.model_extra["reasoning_content"] == expected.message.model_extra["reasoning_content"]
        assert scheduler.speculation.drafted > 0
    finally:
        scheduler.close()
        scheduler.engine.close()


def _streamed(client, **request) -> tuple[str | None, str, list[tuple]]:
    """(finish_reason, content, [(name, arguments)]) put together from a stream."""
    finish, content, calls = None, "", {}
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                name, arguments = calls.get(delta.index, (None, ""))
                calls[delta.index] = (delta.function.name or name, arguments + (delta.function.arguments or ""))
    return finish, content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("max_tokens", [6, 9, 14, 24])
def test_a_call_cut_off_by_max_tokens_streams_like_the_whole_reply(client, max_tokens):
    """The budget 0 closes the think block at once; max_tokens then cuts the call block in one of
    its parts. The stream ends cleanly with what the whole reply has."""
    request = dict(REQUEST, max_tokens=max_tokens, extra_body={"reasoning_budget": 0})
    whole = client.chat.completions.create(tool_choice="required", seed=31, **request).choices[0]
    assert whole.finish_reason == "length"
    calls = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or ()]
    assert _streamed(client, tool_choice="required", seed=31, **request) == \
        (whole.finish_reason, whole.message.content or "", calls)


def test_a_stop_string_ends_a_reply_held_back_by_the_phase_split(tiny_r1_gguf):
    """Under R1's template without the think prefix the text is held back until `</think>` or
    the end shows what it is; a stop string in it still ends the generation there, with
    finish_reason stop and the tokens up to it (not on to max_tokens)."""
    from edgeds.events import collect
    from edgeds.runtime import GenerationParams
    from edgeds.runtime.tool_grammar import call_grammar

    grammar = call_grammar([(0, WEATHER)], parallel=False)
    with Engine(tiny_r1_gguf, n_ctx=512, think_prefix=False) as engine:
        whole = collect(engine.generate(ASK, GenerationParams(max_tokens=200, seed=3, grammar=grammar)))
        cut = collect(engine.generate(ASK, GenerationParams(max_tokens=200, seed=3, grammar=grammar, stop=("```",))))
        with Scheduler(engine, parallel=1, seq_ctx=512) as scheduler:
            scheduled = scheduler.submit(ASK, GenerationParams(max_tokens=200, seed=3, grammar=grammar,
                                                               stop=("```",))).result(120)
    assert whole.stats.finish_reason == "stop" and "```" in whole.answer
    for reply in (cut, scheduled):
        assert reply.answer.strip() == whole.answer[:whole.answer.index("```")].strip()
        assert reply.stats.finish_reason == "stop"
        assert reply.stats.answer_tokens < whole.stats.answer_tokens


def test_a_call_cut_by_a_stop_string_does_not_finish_as_a_call(client):
    """A stop string inside the forced call block cuts the call: it is kept as written, but the
    finish_reason is `stop`, not `tool_calls` (its arguments are not a whole call), whole and streamed."""
    request = dict(tool_choice=named("get_weather"), seed=41, stop=['"city"'], **REQUEST)
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "stop"
    [call] = whole.message.tool_calls
    assert call.function.name == "get_weather" and '"city"' not in call.function.arguments
    assert _streamed(client, **request) == ("stop", "", [(call.function.name, call.function.arguments)])


def test_only_calls_whose_arguments_ended_are_complete():
    from edgeds.runtime.tool_parser import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP, finished_calls, \
        parse_tool_calls

    call = f'{CALL_BEGIN}function{SEP}get_time\n```json\n{{"zone": "CET"}}\n```{CALL_END}'
    whole = f"{CALLS_BEGIN}{call}\n{call}{CALLS_END}"
    _, calls = parse_tool_calls(whole)
    assert [c.complete for c in calls] == [True, True] and finished_calls(calls)
    for cut in (whole[:whole.rindex('"CET"')], whole[:whole.index('"zone"')]):
        _, calls = parse_tool_calls(cut)
        assert calls and not calls[-1].complete and not finished_calls(calls)
    assert not finished_calls([])
