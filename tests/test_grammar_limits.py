"""Grammars are checked before llama.cpp sees them (issue 16, item 1): what made llama.cpp's
parser segfault (30 000 nested groups), hang (`x{3,1}`) or abort a generation (a class that
matches nothing) is a one-line error from every front end, and the engine goes on working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeds.errors import UsageError
from edgeds.events import collect
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.grammar import GRAMMAR_LIMITS, check_grammar
from edgeds.runtime.scheduler import Scheduler
from tests.conftest import THINK_GRAMMAR

DEEP = "root ::= " + "(" * 30000 + '"a"' + ")" * 30000  # the reproduction: rc 139 in llama.cpp
HELLO = [{"role": "user", "content": "hi"}]

# grammar → words the one-line error must contain
REFUSED = [
    (DEEP, "nests groups deeper than 64"),
    ('root ::= "a"{3,1}', "maximum is below the minimum"),  # llama.cpp's parser never returns
    ('root ::= "a"{0,100000}', "the limit is 1000"),
    ("root ::= [b-a]", "matches no character"),  # these three abort llama.cpp mid-generation
    ("root ::= [^\\x01-\\U0010FFFF]", "matches no character"),
    ('root ::= "a\\x00"', "NUL"),
    ("root ::= " + '"x" ' * 20000, "bytes; the limit is 65536"),
    ("\n".join(f'r{i} ::= "a"' for i in range(1100)) + "\nroot ::= r0", "more than 1024 rules"),
    ('root ::= "' + "a" * 500 + '"{0,1000}', "more than 200000 elements"),
]


@pytest.mark.parametrize("grammar, words", REFUSED, ids=[w for _, w in REFUSED])
def test_grammars_that_break_llama_cpp_are_refused(grammar, words):
    with pytest.raises(UsageError) as exc:
        check_grammar(grammar)
    message = str(exc.value)
    assert words in message and "\n" not in message and message.startswith("the grammar")


@pytest.mark.parametrize("grammar", [
    THINK_GRAMMAR,
    'root ::= "{" ws "}"\nws ::= [ \\t\\n]*  # a comment with ((( and [\n',
    'root ::= [^"\\\\] ("a" | "b")* [\\x00-\\x1f] "\\xff"',
    'root ::= "a"{0,1000} "(" ")"',
    "root ::= " + "(" * 64 + '"a"' + ")" * 64,
])
def test_ordinary_grammars_pass(grammar):
    check_grammar(grammar)


def test_limits_are_one_table():
    assert (GRAMMAR_LIMITS.max_bytes, GRAMMAR_LIMITS.max_depth, GRAMMAR_LIMITS.max_rules) == (64 * 1024, 64, 1024)


@pytest.fixture(scope="module")
def smol_engine(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        yield engine


def test_engine_and_scheduler_refuse_before_llama_cpp(smol_engine):
    with Scheduler(smol_engine, parallel=1, seq_ctx=256) as scheduler:
        for grammar in (DEEP, "root ::= [b-a]", 'root ::= "a"{3,1}'):
            params = GenerationParams(max_tokens=4, grammar=grammar)
            with pytest.raises(UsageError, match="the grammar"):
                list(smol_engine.generate(HELLO, params))
            with pytest.raises(UsageError, match="the grammar"):
                scheduler.submit(HELLO, params)
        after = scheduler.submit(HELLO, GenerationParams(max_tokens=4, temperature=0)).result(timeout=120)
    assert after.stats.finish_reason in ("stop", "length") and after.answer
    assert collect(smol_engine.generate(HELLO, GenerationParams(max_tokens=4))).answer


@pytest.mark.parametrize("command", ["run", "batch"])
def test_run_and_batch_refuse_the_grammar_file_in_one_line(command, smollm2_path, tmp_path):
    grammar = tmp_path / "deep.gbnf"
    grammar.write_text(DEEP)
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "hi"}\n')
    args = (["run", str(smollm2_path), "hi"] if command == "run"
            else ["batch", str(rows), "-o", str(tmp_path / "out.jsonl"), "-m", str(smollm2_path)])
    result = subprocess.run([sys.executable, "-m", "edgeds", *args, "--grammar", str(grammar)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # a usage error, not 139 (SIGSEGV)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(grammar) in lines[0] and "nests groups deeper than 64" in lines[0]
    assert "Traceback" not in result.stderr
