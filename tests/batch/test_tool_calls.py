"""Tool calling through `edgeds serve` and the official openai client, on the tiny R1-tokenizer
model: tool_choice drives the random model into a valid call (a grammar over DeepSeek's call
block and the tool's JSON schema), the call comes back as OpenAI `tool_calls`, whole and
streamed, and the tool's result goes back to the model in DeepSeek's template."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from tests.conftest import R1_QWEN_TOKENIZER, V3_TOKENIZER
from tests.in_process_server import openai_client, served

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer"},
                "unit": {"type": "string", "maxLength": 8},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}}, "required": ["zone"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
DEEP: dict = {"type": "string"}
for _ in range(300):
    DEEP = {"type": "object", "properties": {"a": DEEP}}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def tool_server(tiny_r1_gguf):
    """The tiny R1 model without the think prefix: a grammar then applies from the first token."""
    with served(tiny_r1_gguf, parallel=2, seq_ctx=2048, think_prefix=False) as server:
        yield server


@pytest.fixture
def client(tool_server):
    return openai_client(tool_server.url)


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def check_call(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_forced_call_then_tool_result_then_answer(client, tool_server):
    reply = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER, CLOCK],
                                           tool_choice=named("get_weather"), parallel_tool_calls=False,
                                           max_tokens=200, seed=1)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = check_call("get_weather", call.function.arguments)

    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": f"Sunny in {args['city']}, 21 C"}]
    answer = client.chat.completions.create(model="any", messages=history, tools=[WEATHER, CLOCK],
                                            tool_choice="none", max_tokens=12, seed=2)
    final = answer.choices[0]
    assert final.finish_reason in ("stop", "length")
    assert final.message.tool_calls is None
    assert final.message.content
    model = tool_server.scheduler.engine.model
    tokens, _ = tool_server.scheduler.engine.prompt_tokens(history)
    assert answer.usage.prompt_tokens == len(tokens)  # the call and its result were rendered as below
    rendered = b"".join(model.token_piece(t, special=True) for t in tokens).decode()
    assert f"get_weather\n```json\n{call.function.arguments}\n```" in rendered
    assert rendered.endswith(f"Sunny in {args['city']}, 21 C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")


def test_streamed_call_matches_the_whole_reply(client):
    request = dict(model="any", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required",
                   parallel_tool_calls=False, max_tokens=200, seed=5)
    whole = client.chat.completions.create(**request).choices[0]
    [expected] = whole.message.tool_calls

    starts, fragments, finish = [], [], None
    for chunk in client.chat.completions.create(stream=True, **request):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or ():
            assert delta.index == 0
            if delta.id is not None:
                starts.append(delta)
            else:
                assert delta.type is None and delta.function.name is None
                fragments.append(delta.function.arguments)
        assert not choice.delta.content
    [start] = starts
    assert start.type == "function" and start.id.startswith("call_") and start.function.arguments == ""
    assert start.function.name == expected.function.name
    assert "".join(fragments) == expected.function.arguments
    check_call(expected.function.name, expected.function.arguments)
    assert finish == "tool_calls"


@pytest.fixture(scope="module")
def v3_template_server(tiny_r1_gguf):
    """The tiny model under DeepSeek-V3's template: no reasoning template, so the answer streams
    token by token (under the R1 template without the think prefix it is held back to the end,
    in case a bare </think> shows it was reasoning)."""
    v3 = json.loads((V3_TOKENIZER / "tokenizer_config.json").read_text())["chat_template"]
    with served(tiny_r1_gguf, parallel=1, seq_ctx=2048, chat_template=v3) as server:
        yield server


def test_call_arguments_stream_in_fragments(v3_template_server):
    client = openai_client(v3_template_server.url)
    deltas = []
    for chunk in client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER], tool_choice="required",
                                                parallel_tool_calls=False, max_tokens=200, seed=7, stream=True):
        deltas += chunk.choices[0].delta.tool_calls or []
        assert not chunk.choices[0].delta.content
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_")
    fragments = [d.function.arguments for d in deltas[1:]]
    assert len(fragments) > 3  # as the tokens come, with the end marker's beginnings held back
    assert not any("`" in f or "<｜" in f for f in fragments)
    check_call("get_weather", "".join(fragments))


def test_tool_choice_none_is_plain_text(client):
    reply = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=8, seed=3)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[1].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": {"get_weather": WEATHER}}, "tools"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "deep", "parameters": DEEP}}]}, "tools[1]"),
    ({"tools": [WEATHER], "tool_choice": named("get_time")}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"tools": [WEATHER], "tool_choice": "required", "grammar": 'root ::= "x"'}, "tool_choice"),
    ({"messages": ASK + [{"role": "tool", "content": "21 C"}]}, "messages[1].tool_call_id"),
    ({"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}]},
     "messages[1].tool_calls[0]"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": 3}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
])
def test_bad_tool_fields_are_refused_naming_the_field(tool_server, body, param):
    status, reply = post(tool_server, {"messages": ASK, "max_tokens": 4, **body})
    assert status == 400
    assert reply["error"]["param"] == param, reply


def post(server, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture(scope="module")
def smol_server(smollm2_path):
    with served(smollm2_path, parallel=1, seq_ctx=512, server_options={"model_id": "smollm2"}) as server:
        yield server


def test_a_model_without_tool_calling_refuses_tools(smol_server):
    client = openai_client(smol_server.url, timeout=60)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], max_tokens=4)
    assert caught.value.body["param"] == "tools"
    assert "smollm2" in caught.value.body["message"] and "tool" in caught.value.body["message"]
    tool_turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=tool_turn, max_tokens=4)
    assert caught.value.body["param"] == "messages"
    reply = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="none",
                                           max_tokens=4)
    assert reply.choices[0].message.tool_calls is None


def test_tool_history_renders_like_transformers(tool_server):
    """The engine's prompt for a history with calls and outputs is the token sequence
    transformers makes from the same tokenizer's own chat template. (Its renderer, not
    apply_chat_template: that one drops `content: None`, which DeepSeek's template needs to
    render a call, and fails.)"""
    from transformers import AutoTokenizer
    from transformers.utils.chat_template_utils import render_jinja_template

    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": calls},
                     {"role": "tool", "tool_call_id": "call_a", "content": "Rain, 9 C"},
                     {"role": "tool", "tool_call_id": "call_b", "content": "14:05"}]
    then = history + [{"role": "assistant", "content": "Rain in Oslo."}, {"role": "user", "content": "Thanks!"}]
    tokenizer = AutoTokenizer.from_pretrained(R1_QWEN_TOKENIZER)
    engine = tool_server.scheduler.engine
    for messages in (history, then):
        [text], _ = render_jinja_template([messages], chat_template=tokenizer.chat_template, add_generation_prompt=True,
                                          bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
        assert "<｜tool▁outputs▁begin｜>" in text
        tokens, _ = engine.prompt_tokens(messages)
        assert tokens == tokenizer.encode(text, add_special_tokens=False)
