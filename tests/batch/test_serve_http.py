"""`edgeds serve`'s HTTP features (issue 12, item 4): CORS, the legacy `/v1/completions`,
`/v1/models/{id}` and `--alias`, chunked request bodies. One SmolLM2 scheduler behind two
servers: a plain one, and one with an API key and CORS for one origin."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import openai
import pytest

from edgeds.cli import main
from edgeds.runtime import Engine
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.cors import CorsPolicy, check_origin
from edgeds.serving.server import Server, model_id_of
from tests.in_process_server import openai_client

KEY = "sk-http"
PAGE = "http://localhost:3000"
ALIAS = "smol-test"
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "extra_body": {"repeat_penalty": 1.0}}


@pytest.fixture(scope="module")
def scheduler(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        with Scheduler(engine, parallel=2, seq_ctx=512) as scheduler:
            yield scheduler


@pytest.fixture(scope="module")
def plain(scheduler):
    """No API key, no CORS, served as ALIAS."""
    with Server(scheduler, port=0, model_id=ALIAS) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(scheduler):
    """An API key, and CORS for PAGE only."""
    with Server(scheduler, port=0, api_key=KEY, cors=CorsPolicy((check_origin(PAGE),))) as server:
        yield server


@pytest.fixture(scope="module")
def client(plain):
    return openai_client(plain.url, timeout=60)


def call(url: str, method: str = "GET", body: dict | None = None, **headers: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- CORS ------------------------------------------------------------------------------------


def test_a_preflight_from_the_allowed_origin_needs_no_key(guarded):
    status, headers, body = call(guarded.url + "/v1/chat/completions", "OPTIONS", Origin=PAGE,
                                 Access_Control_Request_Method="POST",
                                 Access_Control_Request_Headers="authorization, content-type")
    assert status == 204 and body == b""
    assert headers["Access-Control-Allow-Origin"] == PAGE and headers["Vary"] == "Origin"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed and int(headers["Access-Control-Max-Age"]) > 0


def test_every_reply_to_the_allowed_origin_carries_cors_headers(guarded):
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    auth = {"Authorization": f"Bearer {KEY}", "Origin": PAGE}
    for path, body, headers, expected in [
        ("/v1/models", None, auth, 200),
        ("/v1/chat/completions", {**chat, "stream": True}, auth, 200),  # an event stream
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 2}, auth, 200),
        ("/v1/chat/completions", chat, {"Origin": PAGE}, 401),  # no key: refused, but readable by the page
        ("/v1/chat/completions", {"messages": []}, auth, 400),
    ]:
        status, reply_headers, _ = call(guarded.url + path, "POST" if body else "GET", body, **headers)
        assert status == expected, path
        assert reply_headers.get("Access-Control-Allow-Origin") == PAGE, (path, status)


def test_other_origins_get_no_cors_headers(guarded, plain):
    status, headers, body = call(guarded.url + "/v1/completions", "OPTIONS", Origin="http://evil.test",
                                 Access_Control_Request_Method="POST")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    assert json.loads(body)["error"]["code"] == "origin_not_allowed"
    status, headers, _ = call(guarded.url + "/v1/models", Authorization=f"Bearer {KEY}", Origin="http://evil.test")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"
    status, headers, body = call(plain.url + "/v1/chat/completions", "OPTIONS", Origin=PAGE,
                                 Access_Control_Request_Method="POST")  # CORS off
    assert status == 405 and not any(h.startswith("Access-Control") for h in headers)
    assert "Allow" in headers and json.loads(body)["error"]["message"]
    status, headers, _ = call(plain.url + "/v1/models", Origin=PAGE)
    assert status == 200 and not any(h.startswith("Access-Control") for h in headers)


def test_cors_keeps_bodies_json_only(guarded):
    """A web page's simple request (no preflight) is still refused: 415 before anything runs."""
    status, headers, _ = call(guarded.url + "/v1/chat/completions", "POST", None, Origin=PAGE,
                              Authorization=f"Bearer {KEY}", Content_Type="text/plain")
    assert status in (411, 415)
    request = urllib.request.Request(guarded.url + "/v1/chat/completions", data=b"{}", method="POST",
                                     headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}",
                                              "Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=30)
    assert exc.value.code == 415


@pytest.mark.parametrize("origin, expected", [
    ("http://localhost:3000/", "http://localhost:3000"), ("HTTPS://Example.COM", "https://example.com"),
    ("*", "*"), ("localhost:3000", None), ("http://x.test/app", None), ("ftp://x.test", None)])
def test_cors_origin_values(origin, expected):
    if expected is None:
        with pytest.raises(Exception, match="--cors-origin"):
            check_origin(origin)
    else:
        assert check_origin(origin) == expected
    assert CorsPolicy(("*",)).allowed("http://any.test") == "*"
    assert CorsPolicy(()).headers("http://any.test") == {}


# -- /v1/completions ---------------------------------------------------------------------------


def test_completions_continue_the_raw_prompt(client, smollm2_path):
    """No chat template: the prompt's tokens are the text's own (BOS as the model asks), and the
    greedy continuation is llama-cpp-python's own Llama.create_completion's."""
    from llama_cpp import Llama

    reply = client.completions.create(model="anything", prompt=PROMPT, max_tokens=8, **GREEDY)
    assert reply.object == "text_completion" and reply.model == ALIAS
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 8
    reference = Llama(str(smollm2_path), n_ctx=256, verbose=False)
    try:
        assert reply.usage.prompt_tokens == len(reference.tokenize(PROMPT.encode(), add_bos=True))
        expected = reference.create_completion(PROMPT, max_tokens=8, temperature=0, repeat_penalty=1.0)
    finally:
        reference.close()
    assert choice.text == expected["choices"][0]["text"] and choice.text.strip()


def test_completions_stream_the_same_text(client):
    whole = client.completions.create(model="x", prompt=[PROMPT], max_tokens=6, **GREEDY)
    chunks = list(client.completions.create(model="x", prompt=PROMPT, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert all(c.object == "text_completion" for c in chunks)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 2 and "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize("extra, param", [
    ({"echo": True}, "echo"), ({"suffix": "end"}, "suffix"), ({"best_of": 2}, "best_of"),
    ({"logprobs": 6}, "logprobs"), ({"logprobs": True}, "logprobs"), ({"n": 3}, "n"), ({"n": 0}, "n"),
    ({"extra_body": {"top_logprobs": 2}}, "top_logprobs"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"extra_body": {"promt": "typo"}}, "promt"),
    ({"extra_body": {"grammar": "root ::= nothing"}}, "grammar"), ({"temperature": 5}, "temperature"),
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2, 3]}, "prompt"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options"),
])
def test_completions_refuse_what_they_do_not_do(client, extra, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="x", **{"prompt": PROMPT, "max_tokens": 2, **extra})
    assert exc.value.body["param"] == param and exc.value.body["message"]


def test_off_values_of_unsupported_fields_are_fine(client):
    reply = client.completions.create(model="x", prompt=PROMPT, max_tokens=2, echo=False, best_of=1, n=1,
                                      presence_penalty=0.0, user="someone")
    assert reply.usage.completion_tokens == 2


def test_completions_stop_across_tokens(client):
    """A stop string that begins inside one token and ends in another ends the text before it."""
    whole = client.completions.create(model="x", prompt=PROMPT, max_tokens=8, logprobs=0, **GREEDY).choices[0]
    tokens = whole.logprobs.tokens
    assert "".join(tokens) == whole.text and len(tokens) >= 4
    start = len(tokens[0]) + len(tokens[1]) - 1  # the last character of token 2 and the first of token 3
    stop = whole.text[start:start + 2]
    assert len(stop) == 2 and whole.text.find(stop) == start
    for stream in (False, True):
        reply = client.completions.create(model="x", prompt=PROMPT, max_tokens=8, stop=[stop, "never@@"],
                                          stream=stream, **GREEDY)
        choices = [c.choices[0] for c in reply] if stream else reply.choices
        assert "".join(c.text for c in choices) == whole.text[:start]
        assert choices[-1].finish_reason == "stop"


def test_completions_n_choices_are_seeded_sequences(client):
    sampled = {"temperature": 1.0, "seed": 7, "max_tokens": 6}
    both = client.completions.create(model="x", prompt=PROMPT, n=2, **sampled)
    assert [c.index for c in both.choices] == [0, 1]
    for index, seed in enumerate((7, 8)):
        one = client.completions.create(model="x", prompt=PROMPT, **{**sampled, "seed": seed})
        assert both.choices[index].text == one.choices[0].text
    assert both.usage.completion_tokens == 12
    streamed = list(client.completions.create(model="x", prompt=PROMPT, n=2, stream=True, **sampled))
    for index in (0, 1):
        text = "".join(c.choices[0].text for c in streamed if c.choices and c.choices[0].index == index)
        assert text == both.choices[index].text


def test_completions_logprobs_legacy_shape(client):
    """logprobs=1 at temperature 0: each token's one alternative is the token itself, with its
    logprob; the offsets count from the prompt's start; streamed chunks carry the same."""
    reply = client.completions.create(model="x", prompt=PROMPT, max_tokens=6, logprobs=1, **GREEDY)
    choice = reply.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 6
    assert all(value < 0 for value in lp.token_logprobs)
    assert lp.top_logprobs == [{token: value} for token, value in zip(lp.tokens, lp.token_logprobs)]
    offsets = [len(PROMPT) + len("".join(lp.tokens[:i])) for i in range(6)]
    assert lp.text_offset == offsets
    chunks = [c.choices[0] for c in client.completions.create(model="x", prompt=PROMPT, max_tokens=6, logprobs=1,
                                                              stream=True, **GREEDY)]
    assert [t for c in chunks if c.logprobs for t in c.logprobs.tokens] == lp.tokens
    assert [o for c in chunks if c.logprobs for o in c.logprobs.text_offset] == offsets
    assert client.completions.create(model="x", prompt=PROMPT, max_tokens=2, **GREEDY).choices[0].logprobs is None


def test_completions_logit_bias_and_penalties_change_the_text(client, scheduler):
    plain = client.completions.create(model="x", prompt=PROMPT, max_tokens=6, logprobs=0, **GREEDY).choices[0]
    first = scheduler.engine.model.tokenize(plain.logprobs.tokens[0], add_special=False, parse_special=False)
    assert len(first) == 1
    banned = client.completions.create(model="x", prompt=PROMPT, max_tokens=6, logit_bias={str(first[0]): -100},
                                       **GREEDY).choices[0]
    assert banned.text and not banned.text.startswith(plain.logprobs.tokens[0])
    penalised = client.completions.create(model="x", prompt=PROMPT, max_tokens=16, frequency_penalty=2.0,
                                          presence_penalty=2.0, **GREEDY).choices[0]
    assert penalised.text.startswith(plain.logprobs.tokens[0])  # nothing to penalise before the first token
    longer = client.completions.create(model="x", prompt=PROMPT, max_tokens=16, **GREEDY).choices[0]
    assert penalised.text != longer.text


def test_a_prompt_over_the_context_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="x", prompt="word " * 700, max_tokens=2)
    assert exc.value.body["param"] == "prompt" and exc.value.body["code"] == "context_length_exceeded"


# -- models and --alias ------------------------------------------------------------------------


def test_the_model_is_served_under_its_alias(client, plain):
    assert [m.id for m in client.models.list().data] == [ALIAS]
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("gpt-4o")
    assert exc.value.body["code"] == "model_not_found" and exc.value.body["param"] == "model"
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert reply.model == ALIAS  # another model name is served all the same, as llama-server does
    status, _, _ = call(plain.url + "/v1/models/" + ALIAS + "/")
    assert status == 200


def test_default_model_ids(tmp_path, guarded, smollm2_path):
    assert guarded.model_id == smollm2_path.stem and " " not in guarded.model_id
    assert model_id_of("deepseek-r1-qwen-1.5b:q4_k_m") == "deepseek-r1-qwen-1.5b:q4_k_m"
    assert model_id_of(tmp_path / "My Model Q4.gguf") == "My-Model-Q4"


# -- chunked request bodies ----------------------------------------------------------------------


def raw_post(url: str, path: str, body: bytes, chunks: list[bytes] | None = None) -> tuple[int, dict]:
    """POST `body` with Transfer-Encoding: chunked, split as `chunks` say (raw chunk bytes
    when given, else two well-formed chunks); (status, JSON reply)."""
    host, port = url.removeprefix("http://").split(":")
    if chunks is None:
        chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:])] + [b"0\r\n\r\n"]
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + b"".join(chunks))
        reply = b""
        while data := sock.recv(65536):
            reply += data
    head_bytes, _, payload = reply.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(payload)


def test_a_chunked_completion_request(plain):
    body = json.dumps({"prompt": PROMPT, "max_tokens": 2}).encode()
    status, reply = raw_post(plain.url, "/v1/completions", body)
    assert status == 200 and reply["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("chunks", [
    [b"0x5\r\n{}   \r\n0\r\n\r\n"], [b"+2\r\n{}\r\n0\r\n\r\n"], [b"1_0\r\n" + b" " * 16 + b"\r\n0\r\n\r\n"],
    [b"2\r\n{}xx0\r\n\r\n"], [b"2;" + b"e" * 2000 + b"\r\n{}\r\n0\r\n\r\n"],
    [b"2\r\n{}\r\n0\r\n" + b"X-Trailer: " + b"t" * 9000 + b"\r\n\r\n"],
], ids=["hex-prefix", "plus-sign", "underscore", "no-crlf-after-data", "long-size-line", "huge-trailer"])
def test_malformed_chunking_is_a_400(plain, chunks):
    status, reply = raw_post(plain.url, "/v1/completions", b"", chunks)
    assert status == 400 and reply["error"]["message"]


@pytest.mark.parametrize("option", [["--cors-origin", "localhost:3000"], ["--alias", "my model"]])
def test_bad_serve_options_fail_before_loading(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path / "absent.gguf"), *option])
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and option[0] in err and "absent.gguf" not in err
