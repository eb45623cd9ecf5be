"""The request fields' checks and the per-sequence text rules, without a model."""

from __future__ import annotations

import pytest

from edgeds.runtime.request import RequestError, check_messages, sampling_params
from edgeds.runtime.sequence import StopMatcher
from edgeds.runtime.structured import SchemaError, response_format_grammar, schema_grammar
from edgeds.serving.chat_fields import OPENAI_FIELDS, check_fields


def test_fields_become_params():
    params = sampling_params({"stop": "END", "presence_penalty": 1.5, "frequency_penalty": -0.5,
                              "logit_bias": {"12": -100, "3": 4.5}, "logprobs": True, "top_logprobs": 5,
                              "reasoning_budget": 0})
    assert params.stop == ("END",) and params.presence_penalty == 1.5 and params.frequency_penalty == -0.5
    assert params.logit_bias == ((3, 4.5), (12, -100.0))
    assert params.logprobs is True and params.top_logprobs == 5 and params.reasoning_budget == 0
    assert sampling_params({"response_format": {"type": "text"}}).grammar is None
    assert "root" in sampling_params({"response_format": {"type": "json_object"}}).grammar


@pytest.mark.parametrize("data, key", [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": "x" * 300}, "stop"),
    ({"stop": 5}, "stop"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": "high"}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
    ({"logit_bias": []}, "logit_bias"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"reasoning_budget": -1}, "reasoning_budget"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""}, "response_format"),
    ({"grammar": 3}, "grammar"),
])
def test_bad_fields_are_named(data, key):
    with pytest.raises(RequestError) as exc:
        sampling_params(data)
    assert exc.value.key == key


def test_developer_is_system():
    assert check_messages([{"role": "developer", "content": "be brief"}])[0]["role"] == "system"


def test_field_table_refuses_what_it_cannot_do():
    check_fields({"messages": [], "user": "u", "store": True, "tools": [], "tool_choice": "none", "audio": None,
                  "modalities": ["text"], "grammar": "x", "reasoning_budget": 3})
    for key, value in [("functions", [{"name": "f"}]), ("audio", {}), ("reasoning_effort", "low"),
                       ("best_of", 2), ("stream_options", {"bogus": 1})]:
        with pytest.raises(RequestError) as exc:
            check_fields({key: value})
        assert exc.value.key == key
    assert all(f.note for f in OPENAI_FIELDS.values())


def test_stop_matcher_across_pieces():
    stops = StopMatcher(("lo w", "zz"))
    assert stops.feed("hex") == "hex"
    assert stops.feed("lo") == ""  # could be the start of "lo w"
    assert stops.feed(" wor") == "" and stops.stopped
    assert stops.feed("ld") == "" and stops.finish() == ""
    stops = StopMatcher(("abc",))
    assert stops.feed("xab") == "x" and stops.feed("d") == "abd" and stops.finish() == ""
    stops = StopMatcher(("abc",))
    assert stops.feed("ab") == "" and stops.finish() == "ab"  # held text that never became a stop comes out


def test_schemas_bounded_before_the_converter():
    assert "root" in schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    deep: dict = {}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    for schema in [{"type": "string", "minLength": 10 ** 8}, {"type": "string", "pattern": "^a{99999}$"},
                   {"$ref": "https://example.com/s.json"}, {"type": "nonsense"}, [], {"enum": []}, deep]:
        with pytest.raises(SchemaError):
            schema_grammar(schema)
    with pytest.raises(SchemaError):
        response_format_grammar({"type": "json_schema", "json_schema": {"schema": {}, "extra": 1}})


def test_mutated_requests_get_400_or_pass():
    """Random damage to a request that uses every field: parse_chat answers with params or an
    ApiError 400 naming a field, never anything else."""
    import json
    import random

    from edgeds.serving.server import ApiError, parse_chat
    from tests.test_fuzz import mutate_json

    base = {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "y"}]}],
            "stop": ["a", "b"], "logit_bias": {"5": 1}, "logprobs": True, "top_logprobs": 2, "n": 2,
            "presence_penalty": 0.5, "frequency_penalty": 0.5, "reasoning_budget": 3, "stream": True,
            "stream_options": {"include_usage": True}, "tools": [], "user": "u",
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
                "type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}}}}}
    rng = random.Random(12)
    for case in range(1500):
        body = base
        for _ in range(rng.randint(1, 3)):
            body = mutate_json(body, rng)
        try:
            parse_chat(json.dumps(body).encode(), max_n=4)
        except ApiError as err:
            assert err.status == 400 and "\n" not in err.body["error"]["message"], (case, body)


def test_token_logprob_is_torchs_log_softmax():
    """The logprob math against torch's log_softmax and topk (an independent implementation)."""
    import numpy as np
    import torch

    from edgeds.runtime.sequence import token_logprob

    class Pieces:  # what token_logprob asks of a model: each token's bytes
        def token_piece(self, token, special=False):
            return f"<{token}>".encode()

    logits = np.random.default_rng(3).normal(0, 4, 5000).astype(np.float32)
    entry = token_logprob(Pieces(), logits, 17, 5)
    want = torch.log_softmax(torch.from_numpy(logits).double(), dim=0)
    assert abs(entry.logprob - float(want[17])) < 1e-4
    values, ids = torch.topk(want, 5)
    assert [t.token for t in entry.top_logprobs] == [f"<{i}>" for i in ids.tolist()]
    assert np.allclose([t.logprob for t in entry.top_logprobs], values.numpy(), atol=1e-4)
    assert entry.token == "<17>" and bytes(entry.bytes) == b"<17>"
    assert token_logprob(Pieces(), logits, 17, 0).top_logprobs == ()
