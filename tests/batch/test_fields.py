"""The request fields through `edgeds serve` with the official openai client: structured
output, stop strings, logprobs, penalties and logit bias, n, and every field of OpenAI's
chat-completions request either honoured or refused by name."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from edgeds.serving.chat_fields import EXTENSIONS, OPENAI_FIELDS
from tests.in_process_server import openai_client, served
from tests.serve_process import post

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
HI = [{"role": "user", "content": "Write a short sentence about cats."}]
GREEDY = {"temperature": 0, "extra_body": {"repeat_penalty": 1.0}}  # raw argmax: no penalty in the way


@pytest.fixture(scope="module")
def smol(smollm2_path):
    """SmolLM2 behind the server, 3 slots."""
    with served(smollm2_path, parallel=3, seq_ctx=512) as server:
        yield server


@pytest.fixture(scope="module")
def r1(tiny_r1_gguf):
    """The tiny R1-tokenizer model (its replies open a think block it never closes by itself)."""
    with served(tiny_r1_gguf, parallel=2, seq_ctx=512) as server:
        yield server


def client_of(server) -> openai.OpenAI:
    return openai_client(server.url)


@pytest.fixture(scope="module")
def greedy(smol):
    """SmolLM2's greedy reply to HI with its tokens (logprobs on)."""
    reply = client_of(smol).chat.completions.create(model="m", messages=HI, max_tokens=24, logprobs=True,
                                                    top_logprobs=2, **GREEDY)
    return reply.choices[0]


# -- structured output -------------------------------------------------------------------------


def _valid_json(text: str) -> dict:
    data = json.loads(text)
    jsonschema.validate(data, SCHEMA)
    return data


@pytest.mark.slow
def test_json_schema_smollm2_20_of_20(smol):
    client = client_of(smol)

    def one(seed):
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                               max_tokens=40, seed=seed, temperature=1.0, response_format=FORMAT)
        return reply.choices[0]

    with ThreadPoolExecutor(3) as pool:
        choices = list(pool.map(one, range(20)))
    assert all(c.finish_reason == "stop" for c in choices)
    answers = [_valid_json(c.message.content) for c in choices]
    assert len({json.dumps(a) for a in answers}) > 1  # seeds differ, the schema holds for each


@pytest.mark.slow
def test_json_schema_after_reasoning_r1_20_of_20(r1):
    """R1 thinks first (the grammar waits for </think>, which the reasoning budget writes)."""
    client = client_of(r1)

    def one(seed):
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=80,
                                              seed=seed, response_format=FORMAT,
                                              extra_body={"reasoning_budget": 6}).choices[0]

    with ThreadPoolExecutor(2) as pool:
        choices = list(pool.map(one, range(20)))
    for choice in choices:
        assert choice.message.model_extra["reasoning_content"], "the model thinks before the grammar joins"
        assert choice.finish_reason == "stop"
        _valid_json(choice.message.content)


def test_reasoning_budget_closes_the_think_block(r1):
    client = client_of(r1)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=20,
                                           seed=1, extra_body={"reasoning_budget": 5})
    usage = reply.usage
    assert reply.choices[0].message.model_extra["reasoning_content"]
    assert reply.choices[0].message.content  # it answered: the block was closed for it
    assert usage.completion_tokens_details.reasoning_tokens <= 5 + 4  # the budget plus the closing tokens
    zero = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                          seed=1, extra_body={"reasoning_budget": 0})
    assert not zero.choices[0].message.model_extra.get("reasoning_content")
    assert zero.choices[0].message.content
    unbounded = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=20,
                                               seed=1)
    assert unbounded.choices[0].message.content == ""  # without a budget the tiny model only thinks


def test_json_object(smol):
    reply = client_of(smol).chat.completions.create(model="m", messages=HI, max_tokens=80, seed=2,
                                                    response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # an object may run past max_tokens; what came is still the start of one
        assert reply.choices[0].message.content.lstrip().startswith("{")


@pytest.mark.parametrize("field, value", [
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "http://x/s"}}}),
    ("response_format", {"type": "json_schema", "json_schema": {"schema": {"type": "string", "maxLength": 10 ** 9}}}),
    ("response_format", {"type": "xml"}),
    ("grammar", "root ::= ( "),
    ("grammar", 'root ::= "a" bogus'),
])
def test_bad_grammar_or_schema_is_400(smol, field, value):
    status, body, _ = post(smol.url, {"messages": HI, "max_tokens": 2, field: value})
    assert status == 400, body
    assert body["error"]["param"] == field


# -- stop, logprobs, penalties, bias -------------------------------------------------------------


def _split_stop(tokens: list[str]) -> tuple[str, str]:
    """A stop string made of the end of one token and the start of the next, and the text before it."""
    for i in range(2, len(tokens) - 1):
        left, right = tokens[i].rstrip(), tokens[i + 1]
        if len(left) >= 2 and len(right.strip()) >= 2 and left.strip():
            stop = left[-2:] + right[:2]
            before = "".join(tokens[:i]) + left[:-2]
            if before.find(stop) < 0:
                return stop, before
    raise AssertionError(f"no token pair to split a stop string across: {tokens}")


def test_stop_across_tokens(smol, greedy):
    tokens = [entry.token for entry in greedy.logprobs.content]
    stop, before = _split_stop(tokens)
    client = client_of(smol)
    reply = client.chat.completions.create(model="m", messages=HI, max_tokens=24, stop=[stop, "zzzq"], **GREEDY)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == before.strip()
    assert stop not in reply.choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=HI, max_tokens=24, stop=stop, stream=True, **GREEDY) if c.choices]
    assert "".join(pieces) == before.strip()
    assert not any(stop[:3] in p for p in pieces)  # the held-back start of the stop string never went out


def test_logprobs_top1_is_the_greedy_token(smol, greedy):
    entries = greedy.logprobs.content
    assert entries and all(e.top_logprobs[0].token == e.token for e in entries)
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 and bytes(e.bytes).decode() == e.token for e in entries)
    assert "".join(e.token for e in entries).strip() == greedy.message.content
    streamed = []
    for chunk in client_of(smol).chat.completions.create(model="m", messages=HI, max_tokens=24, logprobs=True,
                                                         top_logprobs=1, stream=True, **GREEDY):
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert all(e.top_logprobs[0].token == e.token for e in streamed)
    assert [round(e.logprob, 4) for e in streamed] == [round(e.logprob, 4) for e in entries]


def test_logit_bias_and_penalties_change_the_output(smol, greedy):
    client = client_of(smol)
    first = greedy.logprobs.content[0].token
    token_id = smol.scheduler.model.tokenize(first, add_special=False)[0]

    def answer(max_tokens=24, **kwargs):
        return client.chat.completions.create(model="m", messages=HI, max_tokens=max_tokens, **GREEDY,
                                              **kwargs).choices[0].message.content

    banned = answer(logit_bias={str(token_id): -100})
    assert banned and not banned.startswith(first)
    forced = answer(logit_bias={str(token_id): 100}, max_tokens=4)
    assert forced == first * 4
    assert answer(frequency_penalty=2.0) != greedy.message.content
    assert answer(presence_penalty=2.0) != greedy.message.content
    status, body, _ = post(smol.url, {"messages": HI, "logit_bias": {"99999999": 5}})
    assert status == 400 and body["error"]["param"] == "logit_bias"


# -- n, roles, the field table ---------------------------------------------------------------------


def test_n_choices(smol):
    client = client_of(smol)
    reply = client.chat.completions.create(model="m", messages=HI, max_tokens=6, n=3, seed=5)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    single = client.chat.completions.create(model="m", messages=HI, max_tokens=6, seed=6)
    assert 3 <= reply.usage.completion_tokens <= 18 and reply.usage.prompt_tokens == single.usage.prompt_tokens
    assert reply.choices[1].message.content == single.choices[0].message.content  # choice i: seed + i
    seen: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="m", messages=HI, max_tokens=6, n=2, seed=5, stream=True):
        for choice in chunk.choices:
            seen[choice.index] = seen.get(choice.index, "") + (choice.delta.content or "")
    assert seen == {0: reply.choices[0].message.content, 1: reply.choices[1].message.content}
    status, body, _ = post(smol.url, {"messages": HI, "n": 4})
    assert status == 400 and body["error"]["param"] == "n"


def test_developer_role_is_the_system_prompt(smol):
    client = client_of(smol)
    as_developer = client.chat.completions.create(
        model="m", messages=[{"role": "developer", "content": "Answer in French."}, *HI], max_tokens=8, **GREEDY)
    as_system = client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": "Answer in French."}, *HI], max_tokens=8, **GREEDY)
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content


# Each field of the table with a value that asks for something; honoured ones get a check of
# their effect on the reply, the others must be refused by name. SmolLM2's template cannot call
# tools, so there the tool fields are refused by name too, naming the model (their round trips
# run on the R1 model in test_tool_calls.py).
REFUSED_BY_THIS_MODEL = {"tools", "tool_choice"}
FIELD_PROBES = {
    "messages": (HI, lambda r: r["choices"][0]["message"]["content"]),
    "model": ("anything", lambda r: r["model"]),
    "audio": ({"voice": "alloy", "format": "wav"}, None),
    "frequency_penalty": (2.0, lambda r: r["choices"][0]["message"]["content"]),
    "function_call": ({"name": "f"}, None),
    "functions": ([{"name": "f", "parameters": {}}], None),
    "logit_bias": ({"0": -1}, lambda r: r["choices"][0]["message"]["content"]),
    "logprobs": (True, lambda r: r["choices"][0]["logprobs"]["content"]),
    "max_completion_tokens": (2, lambda r: r["usage"]["completion_tokens"] == 2),
    "max_tokens": (2, lambda r: r["usage"]["completion_tokens"] == 2),
    "metadata": ({"k": "v"}, lambda r: r["choices"]),
    "modalities": (["text", "audio"], None),
    "moderation": ({"model": "omni-moderation-latest"}, None),
    "n": (2, lambda r: len(r["choices"]) == 2),
    "parallel_tool_calls": (False, lambda r: r["choices"]),
    "prediction": ({"type": "content", "content": "x"}, None),
    "presence_penalty": (2.0, lambda r: r["choices"][0]["message"]["content"]),
    "prompt_cache_key": ("k", lambda r: r["choices"]),
    "prompt_cache_options": ({}, lambda r: r["choices"]),
    "prompt_cache_retention": ("24h", lambda r: r["choices"]),
    "reasoning_effort": ("low", None),
    "response_format": ({"type": "json_object"}, lambda r: r["choices"][0]["message"]["content"].lstrip()[:1] == "{"),
    "safety_identifier": ("u1", lambda r: r["choices"]),
    "seed": (7, lambda r: r["choices"][0]["message"]["content"]),
    "service_tier": ("flex", lambda r: r["choices"]),
    "stop": (["."], lambda r: "." not in r["choices"][0]["message"]["content"]),
    "store": (True, lambda r: r["choices"]),
    "stream": (False, lambda r: r["object"] == "chat.completion"),
    "stream_options": ({"include_usage": True}, lambda r: r["usage"]),
    "temperature": (0.0, lambda r: r["choices"][0]["message"]["content"]),
    "tool_choice": ("required", None),
    "tools": ([{"type": "function", "function": {"name": "f", "parameters": {}}}], None),
    "top_logprobs": (3, lambda r: len(r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3),
    "top_p": (0.5, lambda r: r["choices"][0]["message"]["content"]),
    "user": ("u1", lambda r: r["choices"]),
    "verbosity": ("high", None),
    "web_search_options": ({}, None),
}


def test_the_table_has_every_field_of_the_openai_client():
    import typing

    from openai.types.chat import completion_create_params

    fields = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase)) | {"stream"}
    assert fields <= set(OPENAI_FIELDS), fields - set(OPENAI_FIELDS)


def test_every_openai_field_is_honoured_or_refused_by_name(smol):
    assert set(FIELD_PROBES) == set(OPENAI_FIELDS)

    def probe(field):
        value, _ = FIELD_PROBES[field]
        body = {"messages": HI, "max_tokens": 2, field: value}
        if field == "top_logprobs":
            body["logprobs"] = True
        return post(smol.url, body)

    with ThreadPoolExecutor(3) as pool:  # the server's slots
        replies = dict(zip(FIELD_PROBES, pool.map(probe, FIELD_PROBES)))
    for field, (status, reply, _) in replies.items():
        if field in REFUSED_BY_THIS_MODEL:
            assert status == 400 and reply["error"]["param"] == field, (field, reply)
            assert "tool" in reply["error"]["message"], (field, reply)
        elif OPENAI_FIELDS[field].handling == "rejected":
            assert status == 400 and reply["error"]["param"] == field, (field, reply)
            assert field in reply["error"]["message"]
        else:
            assert status == 200, (field, reply)
            assert FIELD_PROBES[field][1](reply), (field, reply)
    for field in ("promt", "best_of"):
        status, reply, _ = post(smol.url, {"messages": HI, field: 1})
        assert status == 400 and reply["error"]["param"] == field
    for field in EXTENSIONS:
        assert field not in OPENAI_FIELDS


# -- batch rows and `edgeds run --json-schema` ---------------------------------------------------


def test_batch_rows_with_response_format_and_stop(smol, greedy, tmp_path):
    from edgeds.runtime import GenerationParams
    from edgeds.serving.batch import run_batch

    stop, before = _split_stop([entry.token for entry in greedy.logprobs.content])
    rows = [
        {"id": "json", "prompt": "Weather in Paris?", "max_tokens": 40, "seed": 1, "response_format": FORMAT},
        {"id": "stop", "messages": HI, "max_tokens": 24, "temperature": 0, "repeat_penalty": 1.0, "stop": stop},
        {"id": "bad", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": []}}},
        {"id": "lp", "prompt": "x", "logprobs": True},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = run_batch(src, tmp_path / "out.jsonl", smol.scheduler, defaults=GenerationParams(), parallel=2)
    out = {row["id"]: row for row in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert (summary.completed, summary.errors) == (2, 2)
    _valid_json(out["json"]["answer"])
    assert out["stop"]["answer"] == before.strip() and out["stop"]["finish_reason"] == "stop"
    assert "line 3" in out["bad"]["error"] and "response_format" in out["bad"]["error"]
    assert "line 4" in out["lp"]["error"] and "'logprobs'" in out["lp"]["error"]


def test_run_json_schema(smollm2_path, tmp_path, capsys):
    from tests.cli_helpers import cli

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = cli(["run", smollm2_path, "Weather in Paris?", "--json-schema", schema, "--max-tokens", 40,
                          "--seed", 3], capsys)
    assert code == 0, err
    _valid_json(out)
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"a": {"type": "nonsense"}}}')
    code, out, err = cli(["run", smollm2_path, "x", "--json-schema", bad], capsys)
    assert code != 0 and str(bad) in err and "Traceback" not in err
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    code, out, err = cli(["run", smollm2_path, "x", "--json-schema", broken], capsys)
    assert code != 0 and str(broken) in err and "not valid JSON" in err
    code, out, err = cli(["run", smollm2_path, "x", "--json-schema", schema, "--grammar", schema], capsys)
    assert code != 0 and "--json-schema" in err


def test_run_reasoning_budget_then_json_schema_on_r1(tiny_r1_gguf, tmp_path, capsys):
    """The Engine's path: reasoning first, closed by the budget, then the schema's JSON."""
    from tests.cli_helpers import cli

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = cli(["run", tiny_r1_gguf, "Hi", "--json", "--json-schema", schema, "--reasoning-budget", 4,
                          "--max-tokens", 80, "--seed", 2], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "reasoning" and kinds[-1] == "done" and "reasoning" not in kinds[kinds.index("answer"):]
    _valid_json("".join(e["text"] for e in events if e["type"] == "answer"))
    stats = events[-1]["stats"]
    assert stats["finish_reason"] == "stop" and stats["reasoning_tokens"] <= 4 + 3
