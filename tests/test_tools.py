"""Tool calling without a model: the incremental parser of DeepSeek's call blocks, the tools'
system prompt and how it meets the request's own, the template probes, the call grammar."""

from __future__ import annotations

import json

import pytest

from edgeds.runtime import template
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.request import RequestError
from edgeds.runtime.tool_parser import CallArguments, CallStart, Text, ToolCallParser, parse_tool_calls
from edgeds.runtime.tools import check_tool_request, plan_tools, renders_tool_calls, renders_tool_definitions
from tests.conftest import R1_QWEN_TOKENIZER, V3_TOKENIZER

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
BLOCK = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
         '{"city": "Paris", "note": "a ``` fence"}\n```<｜tool▁call▁end｜>\n'
         "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
REPLY = "Let me check.\n\n" + BLOCK


def chat_template(folder) -> str:
    return json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]


def run(deltas: list[str]) -> tuple[list, ToolCallParser]:
    parser = ToolCallParser()
    pieces = [p for d in deltas for p in parser.feed(d)] + parser.finish()
    return pieces, parser


def summary(pieces: list) -> tuple[str, dict[int, str], dict[int, str]]:
    text = "".join(p.text for p in pieces if isinstance(p, Text))
    names = {p.index: p.name for p in pieces if isinstance(p, CallStart)}
    args: dict[int, str] = {}
    for p in pieces:
        if isinstance(p, CallArguments):
            args[p.index] = args.get(p.index, "") + p.text
    return text, names, args


def test_a_whole_reply_parses_into_content_and_calls():
    content, calls = parse_tool_calls(REPLY)
    assert content == "Let me check.\n\n"
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "note": "a ``` fence"}
    assert calls[1].arguments == "{}"
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_any_split_gives_the_same_pieces(size):
    pieces, parser = run([REPLY[i:i + size] for i in range(0, len(REPLY), size)])
    assert summary(pieces) == ("Let me check.\n\n", {0: "get_weather", 1: "get_time"},
                               {0: '{"city": "Paris", "note": "a ``` fence"}', 1: "{}"})
    # each call starts before its arguments, and no text is emitted inside the block
    kinds = [type(p).__name__ for p in pieces]
    assert kinds.index("CallStart") < kinds.index("CallArguments")
    assert [c.arguments for c in parser.calls] == [summary(pieces)[2][0], "{}"]


def test_markers_are_held_back_until_known():
    parser = ToolCallParser()
    assert parser.feed("Sure <｜tool") == [Text("Sure ")]
    assert parser.feed("▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```") == []
    [start] = parser.feed("json\n")
    assert isinstance(start, CallStart) and start.name == "get_weather"
    assert parser.feed('{"city": "Oslo"}\n`') == [CallArguments(0, '{"city": "Oslo"}')]
    assert parser.feed("``<｜tool▁call▁end｜><｜tool▁calls▁end｜> Done.") == [Text(" Done.")]
    assert parser.finish() == []


def test_text_that_only_looks_like_a_marker_is_content():
    assert parse_tool_calls("a <｜toolbox｜> and <｜tool") == ("a <｜toolbox｜> and <｜tool", [])
    broken = "x <｜tool▁call▁begin｜>no separator here<｜tool▁call▁end｜> y"
    assert parse_tool_calls(broken) == (broken, [])


def test_a_call_cut_off_keeps_what_was_written():
    content, calls = parse_tool_calls(BLOCK[:BLOCK.index("Paris") + 5])
    assert content == "" and calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Paris'
    header_only = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_wea"
    assert parse_tool_calls(header_only) == ("<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_wea", [])


def test_a_bare_call_marker_opens_a_call():
    content, calls = parse_tool_calls("<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜>")
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("f", "{}")]


def test_deepseek_templates_render_calls_but_not_definitions():
    for folder in (R1_QWEN_TOKENIZER, V3_TOKENIZER):
        assert renders_tool_calls(chat_template(folder))
        assert not renders_tool_definitions(chat_template(folder))
    assert not renders_tool_calls(None) and not renders_tool_calls(template.CHATML)


def test_tools_prompt_joins_the_system_prompt_and_folds_into_the_first_user_turn():
    request = check_tool_request({"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                      "function": {"name": "get_weather"}}})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
    plan = plan_tools(request, messages, chat_template(R1_QWEN_TOKENIZER), "tiny")
    assert plan.parse and plan.template_tools is None and plan.grammar
    [system, user] = plan.messages
    assert system["content"].startswith("Be brief.\n\n## Tools")
    described = system["content"].split("JSON schema):\n\n", 1)[1].split("\n\nTo call tools", 1)[0]
    assert json.loads(described) == [WEATHER["function"]]
    assert "You must call the tool get_weather now." in system["content"]
    [folded] = template.answer_only(plan.messages, allow_system=False)
    assert folded["role"] == "user" and folded["content"].endswith("\n\nWeather in Oslo?")
    assert messages[0]["content"] == "Be brief."  # the request's own list is left alone


def test_a_template_that_renders_tools_gets_them():
    own = ("{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:"
           "{{ m.content }}{% for c in m.tool_calls or [] %}<call {{ c.function.name }}>{% endfor %}{% endfor %}")
    request = check_tool_request({"tools": [WEATHER]})
    plan = plan_tools(request, [{"role": "user", "content": "hi"}], own, "m")
    assert plan.template_tools == [WEATHER] and plan.messages == [{"role": "user", "content": "hi"}]
    assert plan.grammar is None and plan.parse
    assert "[get_weather]" in template.render(own, plan.messages, bos_token="", eos_token="",
                                              tools=plan.template_tools).text


def test_tool_choice_none_leaves_the_request_as_it_was():
    request = check_tool_request({"tools": [WEATHER], "tool_choice": "none"})
    messages = [{"role": "user", "content": "hi"}]
    plan = plan_tools(request, messages, template.CHATML, "smol")  # no tool calling, and none asked for
    assert plan.messages == messages and not plan.parse and plan.grammar is None


def test_the_call_grammar_passes_the_checks():
    request = check_tool_request({"tools": [WEATHER, {"type": "function", "function": {"name": "noop"}}],
                                  "tool_choice": "required"})
    grammar = request.grammar()
    check_grammar(grammar)
    assert grammar.startswith('root ::= "<｜tool▁calls▁begin｜>" tool-call ("\\n" tool-call){0,7}')
    single = check_tool_request({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False})
    assert "{0," not in single.grammar().splitlines()[0]


def test_parameters_the_converter_cannot_take_name_the_tool():
    remote = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/schema.json"}}}}}
    request = check_tool_request({"tools": [WEATHER, remote], "tool_choice": "required"})
    with pytest.raises(RequestError) as caught:
        request.grammar()
    assert caught.value.key == "tools[1].function.parameters"


def test_too_many_or_too_big_tools_are_refused():
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    with pytest.raises(RequestError, match="at most 128"):
        check_tool_request({"tools": many})
    huge = [{"type": "function", "function": {"name": "f", "description": "x" * 70_000}}]
    with pytest.raises(RequestError, match="characters as JSON"):
        check_tool_request({"tools": huge})


def test_deep_or_huge_schemas_are_refused_before_conversion():
    deep: dict = {"type": "string"}
    for _ in range(2000):  # deeper than Python's recursion limit
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(RequestError, match=r"tools\[0\] nests deeper than 32 levels"):
        check_tool_request({"tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}]})
    long = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 10**9}}}
    with pytest.raises(RequestError, match="maxLength 1000000000; the limit is 1000"):
        check_tool_request({"tools": [{"type": "function", "function": {"name": "f", "parameters": long}}]})
    nested = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 500}}}
    request = check_tool_request({"tools": [{"type": "function", "function": {"name": "f", "parameters": nested}}],
                                  "tool_choice": "required"})
    with pytest.raises(RequestError, match="too big a grammar"):  # within the count, still too deep for llama.cpp
        request.grammar()


def test_calls_echoed_back_with_their_text_still_render():
    """A reply with text before its calls comes back from clients with both; DeepSeek's template
    would render the text and drop the calls, so the calls win."""
    r1 = chat_template(R1_QWEN_TOKENIZER)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Rain"}]
    plan = plan_tools(check_tool_request({}), history, r1, "tiny")
    text = template.render(r1, template.answer_only(plan.messages), bos_token="", eos_token="").text
    assert "<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Oslo\"}\n```" in text and "Let me check." not in text
    assert renders_tool_calls(r1, "text") is False and history[1]["content"] == "Let me check."
    own = "{% for m in messages %}{{ m.content }}{% for c in m.tool_calls or [] %}{{ c.function.name }}{% endfor %}{% endfor %}"
    assert plan_tools(check_tool_request({}), history, own, "m").messages == history  # renders both: left alone
