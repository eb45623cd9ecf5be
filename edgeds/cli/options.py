"""Shared Typer option definitions for the commands that load a model (run, chat, batch, serve)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeds.errors import UsageError
from edgeds.runtime.grammar import check_grammar

MOE_OFFLOAD_HELP = (
    "Where the routed experts of a MoE model go: auto (fill the GPU, the rest of the experts in CPU RAM), "
    "all (every layer's experts in CPU RAM), none (plain layer offload), or N (experts of the first N layers "
    "in CPU RAM, like llama.cpp's --n-cpu-moe)."
)


# Options of every command that loads a model (run, chat, batch, serve); their values go to
# edgeds.loader (open_engine / open_scheduler) and edgeds.runtime.params.GenerationParams.
MoeOffload = typer.Option("auto", "--moe-offload", help=MOE_OFFLOAD_HELP, metavar="auto|all|none|N")
Threads = typer.Option(None, "--threads", "-t", min=1, help="CPU threads for decoding (default: physical cores).")
NoThinkPrefix = typer.Option(False, "--no-think-prefix", help="Do not start R1-family replies with <think> "
                             "(DeepSeek asks for it, so that the model does not skip thinking).")
TopK = typer.Option(None, "--top-k", min=0, help="Sample from the K likeliest tokens only (0: off, the model default).")
MinP = typer.Option(None, "--min-p", min=0.0, max=1.0, help="Drop tokens below this fraction of the likeliest "
                    "one's probability (model default: 0.05).")
Loras = typer.Option(None, "--lora", metavar="FILE[:SCALE]", help="A GGUF LoRA adapter (from `edgeds convert-lora`) "
                     "applied at run time, with its scale (default 1; 0 leaves it out). Repeatable.")
Draft = typer.Option(None, "--draft", metavar="MODEL|ngram|auto", help="Speculative decoding: a smaller model "
                     "with the same vocabulary (GGUF file or registry id) drafts tokens that the model checks in one "
                     "batch; ngram drafts from the prompt and output themselves (prompt lookup); auto uses the "
                     "registry's draft for the model when it is downloaded and fits. The output stays the same.")
DraftMax = typer.Option(None, "--draft-max", min=1, max=64, help="Tokens drafted on every step with --draft "
                        "(default: chosen each step, 0-16, from the measured cost of a decode, of a drafted token and "
                        "the acceptance rate: none where drafting does not pay).")
RepeatPenalty = typer.Option(None, "--repeat-penalty", min=1.0, max=2.0, help="Penalise tokens seen in the last "
                             "64 (1.0: off, the default of registry models; 1.1 for other GGUFs).")
ReasoningBudget = typer.Option(None, "--reasoning-budget", min=0, metavar="N", help="Most reasoning tokens; then "
                               "the think block is closed for the model and it answers (0: answer at once).")


def read_grammar(path: Path | None) -> str | None:
    """The text of a `--grammar FILE` (GBNF) within the grammar limits, or a usage error naming the file."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read the grammar ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: the grammar is not UTF-8 text (byte {err.start})") from None
    try:
        check_grammar(text)
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None
    return text


def parse_loras(values: list[str] | None):
    """`--lora FILE[:SCALE]` values → edgeds.runtime.lora.LoraSpec tuple (a usage error names a bad one)."""
    from edgeds.runtime.lora import LoraSpec

    return tuple(LoraSpec.parse(v) for v in values or ())


def read_json_schema(path: Path | None) -> str | None:
    """The grammar of a `--json-schema FILE` (a JSON schema), or a usage error naming the file."""
    if path is None:
        return None
    import json

    from edgeds.runtime.structured import schema_grammar

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{path}: cannot read the JSON schema ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: the JSON schema is not UTF-8 text (byte {err.start})") from None
    except ValueError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise UsageError(f"{path}: not valid JSON (nested too deeply)") from None
    try:
        return schema_grammar(schema)
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None
