"""Chat templates are untrusted code (issue 16, item 6): every failure is the request's own
one-line error, rendering has a time and size budget, and an empty prompt never reaches
llama.cpp. The reproductions come from the issue; the GGUF ones run `edgeds run`, `batch` and
`serve` on SmolLM2 with a template that fails on some message contents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgeds.errors import EdgedsError
from edgeds.events import collect
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.sandbox import RenderLimits
from edgeds.runtime.template import CHATML, render
from tests.conftest import R1_QWEN_TOKENIZER, V3_TOKENIZER
from tests.serve_process import healthy, post, serving

HI = [{"role": "user", "content": "hi"}]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

# the reproductions: template → words of the one-line error
FAILING = [
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{{ '%d' % 'x' }}", "TypeError: %d format"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{{ 'x' * 10**11 }}", "'*' would make 100000000000 characters"),
    ("{{ 'x' * 10**9 }}", "'*' would make 1000000000 characters"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ("{% for %}", "Expected an expression"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
]

# ways to make a huge value out of small ones: each is refused before the work is done
AMPLIFIERS = [
    "{{ 'x'|center(10**9) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%999999999s'|format(1) }}",
    "{% set s = 'x' * 100000 %}{{ s.replace('', s) }}",
    "{% set s = '\n' * 100000 %}{{ s|indent(100000) }}",
    "{% set s = 'xxxxxxxxxxxxxxxx' %}" + "{% set s = s ~ s %}" * 40,
    "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set s = 'x' %}" + "{% set s %}{{ s }}{{ s }}{% endset %}" * 40,
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('x', 60) }}",
    "{% set s = 'x' * 10000000 %}{{ [s] * 100 }}",
    "{% set s = 'x' * 10000000 %}{{ ([s] * 100)|join }}",
    "{% set s = 'x' * 10000000 %}{{ ([s] * 100)|map('string')|join }}",
    "{% set a = ['x' * 1000000] %}" + "{% set a = [a, a] %}" * 40 + "{{ a|tojson }}",
    "{% set l = [0] * 10000000 %}{{ ([l] * 1000)|sum(start=[]) }}",
    "{% set ns = namespace(x=3) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ messages|tojson(indent=10**9) }}",
    "{{ range(10**9)|list }}",
]


def _render(template: str, limits: RenderLimits = RenderLimits()):
    return render(template, HI, bos_token="<s>", eos_token="</s>", source="the chat template of test.gguf",
                  limits=limits)


@pytest.mark.parametrize("template, words", FAILING, ids=[w for _, w in FAILING])
def test_every_failure_is_one_line_naming_the_template(template, words):
    with pytest.raises(EdgedsError) as exc:
        _render(template)
    message = str(exc.value)
    assert message.startswith("the chat template of test.gguf ") and words in message
    assert "\n" not in message


@pytest.mark.parametrize("template", AMPLIFIERS, ids=[f"amplifier{i}" for i in range(len(AMPLIFIERS))])
def test_huge_values_are_refused_before_they_are_made(template):
    t0 = time.perf_counter()
    with pytest.raises(EdgedsError, match="went over its limits: .*the limit is"):
        _render(template)
    assert time.perf_counter() - t0 < 5


def test_nested_loops_that_write_nothing_stop_at_the_time_budget():
    t0 = time.perf_counter()
    with pytest.raises(EdgedsError, match="ran for more than 0.5 s"):
        _render(NESTED_LOOPS, RenderLimits(max_seconds=0.5))
    assert time.perf_counter() - t0 < 3


def test_output_is_capped_as_it_streams():
    with pytest.raises(EdgedsError, match="output is over 1000 characters"):
        _render("{% for i in range(100000) %}x{% endfor %}", RenderLimits(max_chars=1000))


def _template_of(tokenizer_dir: Path) -> str:
    return json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("source", [None, R1_QWEN_TOKENIZER, V3_TOKENIZER], ids=["chatml", "r1", "v3"])
def test_real_templates_render_as_jinja_renders_them(source):
    template = CHATML if source is None else _template_of(source)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ~ {{ x }} %d"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again " * 500}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    want = env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="<s>",
                                            eos_token="</s>")
    got = render(template, messages, bos_token="<s>", eos_token="</s>").text
    assert got == want and len(got) > 3000


def test_engine_refuses_an_empty_prompt_instead_of_aborting(smollm2_path):
    """SmolLM2 adds no BOS, so an empty rendering is zero tokens: llama.cpp aborted on it
    (GGML_ASSERT(logits != nullptr), rc 134) in `run` and `chat`."""
    with Engine(smollm2_path, n_ctx=256, chat_template="{% if false %}{% endif %}") as engine:
        with pytest.raises(EdgedsError, match="renders an empty prompt"):
            list(engine.generate(HI, GenerationParams(max_tokens=4)))
        engine.chat_template = CHATML
        assert collect(engine.generate(HI, GenerationParams(max_tokens=4))).answer


def test_a_prompt_that_is_not_unicode_is_refused(smollm2_path):
    """A lone surrogate ("\\ud800" in a JSON request or batch row) has no UTF-8 form: an error
    for that request, not an exception out of the tokenizer (serve answered 500)."""
    with Engine(smollm2_path, n_ctx=256) as engine:
        with pytest.raises(EdgedsError, match="not valid Unicode: '\\\\ud800'"):
            list(engine.generate([{"role": "user", "content": "a\ud800b"}], GenerationParams(max_tokens=4)))


# ---------------------------------------------------------------------------------------------
# The front ends, on a GGUF whose template fails on some contents

HOSTILE_TEMPLATE = (
    "{%- set c = messages[-1].content -%}"
    "{%- if c == 'empty' -%}"
    "{%- elif c == 'divide' -%}{{ 1 // 0 }}"
    "{%- elif c == 'loop' -%}" + NESTED_LOOPS +
    "{%- else -%}<|im_start|>user\n{{ c }}<|im_end|>\n<|im_start|>assistant\n{%- endif -%}"
)
EXPECTED = {"empty": "renders an empty prompt", "divide": "ZeroDivisionError",
            "loop": "went over its limits: it ran for more than 5 s"}


@pytest.fixture(scope="module")
def hostile_gguf(smollm2_path, tmp_path_factory) -> Path:
    """SmolLM2 with HOSTILE_TEMPLATE as its chat template."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(smollm2_path)
    out = tmp_path_factory.mktemp("hostile") / "hostile-template.gguf"
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name in ("general.architecture", "tokenizer.chat_template") or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    writer.add_chat_template(HOSTILE_TEMPLATE)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    return out


def edgeds(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeds", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("content", list(EXPECTED))
def test_run_reports_the_template_in_one_line(hostile_gguf, content):
    result = edgeds("run", hostile_gguf, content, "--max-tokens", 4)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hostile-template.gguf" in lines[0] and EXPECTED[content] in lines[0]


@pytest.mark.slow
def test_batch_gives_the_tripping_rows_their_own_error_and_goes_on(hostile_gguf, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": c, "prompt": c, "max_tokens": 4}) + "\n"
                           for c in ["hello", "divide", "there", "empty"]))
    out = tmp_path / "out.jsonl"
    result = edgeds("batch", src, "-o", out, "-m", hostile_gguf, "--parallel", 2, "--json-summary")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completed"] == 2 and json.loads(result.stdout)["errors"] == 2
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert list(rows) == ["hello", "divide", "there", "empty"]
    assert rows["hello"]["answer"] and rows["there"]["answer"]
    assert EXPECTED["divide"] in rows["divide"]["error"] and EXPECTED["empty"] in rows["empty"]["error"]


@pytest.mark.slow
def test_serve_answers_400_and_stays_up(hostile_gguf, tmp_path):
    with serving(hostile_gguf, tmp_path / "serve.log", "--parallel", "1", "--n-ctx", "512") as (_, url):
        for content in ("divide", "empty"):
            status, body, _ = post(url, {"messages": [{"role": "user", "content": content}], "max_tokens": 4})
            assert status == 400 and "hostile-template.gguf" in body["error"]["message"]
            assert EXPECTED[content] in body["error"]["message"]
            assert healthy(url)
