"""`edgeds batch`: a JSONL file of prompts → a JSONL file of reasoning + answer rows.

- Input rows: `{"id": …, "prompt": "…"}` or `{"id": …, "messages": [...]}` with optional
  `system` and the request fields of edgeds.runtime.request (`max_tokens`, `temperature`,
  `top_p`, `seed`, `stop`, `response_format`, `grammar`, `reasoning_budget`, the penalties,
  `logit_bias`, …; not `logprobs`, which an output row has no place for); a missing id becomes the line number,
  and an id that repeats an earlier row's (a line number included) makes the later row an error.
- A bad row (not JSON, unknown key, wrong type, prompt too long) gets an output row with
  `error` set, naming the line and key; the run goes on. A row's own fields go under
  `metadata` (a JSON object), which is copied to its output row; any other unknown key is an
  error, so that a typo ("promt") or a setting edgeds does not know is never dropped silently.
- Output rows come in input order. Rows finish out of order when several run in parallel: the
  next row in order goes straight to the output, a row that finished early goes to a side
  journal (`OUT.pending`) until its turn. Every write is flushed and fsynced, so a killed run
  (SIGKILL included) loses no finished row; on resume a torn last line is dropped, ids already
  in the output are skipped and rows from the journal are written in their turn.
- A rerun retries the rows whose output is an error row (`retry_errors`): the output is first
  rewritten without them, and once every row is written it is put back in input order. Both
  rewrites go to a new file that replaces the output by a rename, so a kill leaves the old
  file or the new one, never a mix.
"""

from __future__ import annotations

import codecs
import json
import os
import queue
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol

from edgeds.errors import EdgedsError, UsageError
from edgeds.events import Completion
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import REQUEST_FIELDS, RequestError, check_messages, sampling_params, type_name, with_system

# the keys of a row besides the sampling fields: key → (accepted JSON types, what errors call them)
ROW_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str, int), "a string or an integer"),
    "prompt": ((str,), "a string"),
    "messages": ((list,), "a list of messages"),
    "system": ((str,), "a string"),
    "metadata": ((dict,), "a JSON object"),  # copied as it is to the output row
}
# request fields a row cannot carry: its output row has no place for what they ask
ROW_REFUSED = {"logprobs": "output rows carry no logprobs; use edgeds serve",
               "top_logprobs": "output rows carry no logprobs; use edgeds serve"}
PENDING_SUFFIX = ".pending"
REWRITE_SUFFIX = ".rewrite"


@dataclass(frozen=True)
class Row:
    """One input row: a conversation to run, or the error that stops it from running."""

    index: int  # position among the input's rows
    line: int  # 1-based line number in the input file
    id: str | int
    messages: list[dict] | None = None
    params: GenerationParams | None = None
    error: str | None = None
    key: str = "prompt"  # the key the conversation came from, for error messages
    metadata: dict | None = None  # the row's own fields, for its output row


class Backend(Protocol):
    """What runs rows: the embedded scheduler or a remote OpenAI-compatible server."""

    def submit(self, messages: list[dict], params: GenerationParams,
               on_done: Callable[[Completion], None]) -> object: ...

    def close(self) -> None: ...

    # optional: `server_counts() -> list[dict]`, per server of a fleet (rows, tokens, …) for the summary


# ---------------------------------------------------------------------------------------------
# Reading and validating input


def parse_row(text: str, *, index: int, line: int, defaults: GenerationParams) -> Row:
    """Validate one input line; a bad row comes back with `error` set (never raises). A
    `metadata` object comes along, on an error row too."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return Row(index, line, line, error=f"line {line}: not valid JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return Row(index, line, line, error=f"line {line}: not valid JSON (nested too deeply)")
    if not isinstance(data, dict):
        return Row(index, line, line, error=f"line {line}: a row must be a JSON object, not {type_name(data)}")
    row = _row_of(data, index=index, line=line, defaults=defaults)
    metadata = data.get("metadata")
    return replace(row, metadata=metadata) if isinstance(metadata, dict) else row


def _row_of(data: dict, *, index: int, line: int, defaults: GenerationParams) -> Row:
    """The conversation and parameters of one input object, or the first thing wrong with it."""
    row_id = data.get("id", line)
    safe_id = row_id if isinstance(row_id, (str, int)) and not isinstance(row_id, bool) else line
    for key, value in data.items():
        if key in ROW_REFUSED:
            return Row(index, line, safe_id, error=f"line {line}: key {key!r} is not supported ({ROW_REFUSED[key]})")
        if key in REQUEST_FIELDS:
            continue
        if key not in ROW_KEYS:
            known = ", ".join([*ROW_KEYS, *(k for k in REQUEST_FIELDS if k not in ROW_REFUSED)])
            return Row(index, line, safe_id, error=f"line {line}: unknown key {key!r} (expected one of: {known}; "
                                                   "a row's own fields go under 'metadata')")
        types, what = ROW_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return Row(index, line, safe_id, error=f"line {line}: key {key!r} must be {what}, not {type_name(value)}")
    if ("prompt" in data) == ("messages" in data):
        return Row(index, line, row_id, error=f"line {line}: give exactly one of 'prompt' or 'messages'")
    if "prompt" in data and not data["prompt"].strip():
        return Row(index, line, row_id, error=f"line {line}: key 'prompt' is empty")
    try:
        params = sampling_params(data, defaults)
        if "messages" in data:
            messages = check_messages(data["messages"])
            if messages[-1]["role"] != "user":
                raise RequestError("messages", "the last message must be from the user")
        else:
            messages = [{"role": "user", "content": data["prompt"]}]
    except RequestError as err:
        return Row(index, line, row_id, error=f"line {line}: {err}")
    return Row(index, line, row_id, messages=with_system(messages, data.get("system")), params=params,
               key="messages" if "messages" in data else "prompt")


def read_rows(path: Path, defaults: GenerationParams) -> list[Row]:
    """Every non-blank line of `path` as a Row (a UTF-8 byte order mark at the start is skipped);
    a repeated id makes the later row an error, also when one of the two is a line number that
    stands in for a missing id."""
    try:
        raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as err:
        raise EdgedsError(f"{path}: cannot read the input ({err.strerror})") from None
    rows: list[Row] = []
    first_line: dict[str, int] = {}
    for number, data in enumerate(raw.split(b"\n"), start=1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            rows.append(Row(len(rows), number, number, error=f"line {number}: not UTF-8 text"))
            continue
        if not text.strip():
            continue
        row = parse_row(text, index=len(rows), line=number, defaults=defaults)
        key = id_key(row.id)
        if key in first_line:
            first = first_line[key]
            why = " (a row without an 'id' gets its line number as its id)" if row.id in (first, number) else ""
            row = Row(row.index, number, row.id,
                      error=f"line {number}: key 'id': {row.id!r} repeats the id of line {first}{why}")
        else:
            first_line[key] = number
        rows.append(row)
    return rows


def id_key(row_id) -> str:
    """Ids compare as JSON (1 and "1" are different ids)."""
    return json.dumps(row_id)


# ---------------------------------------------------------------------------------------------
# Output rows


def result_row(row: Row, completion: Completion) -> dict:
    stats = completion.stats
    if stats.finish_reason == "error":
        return error_row(row.id, f"line {row.line}: generation failed: {stats.error}")
    return {
        "id": row.id,
        "reasoning": completion.reasoning,
        "answer": completion.answer,
        "finish_reason": stats.finish_reason,
        "stopped_thinking": stats.stopped_thinking,
        "usage": {
            "prompt_tokens": stats.prompt_tokens,
            "reasoning_tokens": stats.reasoning_tokens,
            "answer_tokens": stats.answer_tokens,
            "draft_tokens": stats.draft_tokens,
            "accepted_tokens": stats.accepted_tokens,
        },
        "timing": {"ttft_s": stats.ttft_s, "decode_tok_s": stats.decode_tok_s},
        "error": None,
    }


def error_row(row_id, message: str) -> dict:
    return {"id": row_id, "reasoning": None, "answer": None, "finish_reason": "error", "stopped_thinking": None,
            "usage": None, "timing": None, "error": message}


# ---------------------------------------------------------------------------------------------
# Durable, ordered output


def _read_complete_lines(path: Path, *, truncate: bool, key: str = "id") -> list[dict]:
    """The JSON rows of a JSONL file we wrote; a torn last line (a killed write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a torn write
    rows: list[dict] = []
    good_end = 0
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or key not in row:
                raise ValueError
        except ValueError:
            if number == len(lines) and not tail:
                break  # a garbled last line: also torn
            raise EdgedsError(
                f"{path}: line {number} is not an edgeds batch row; use --overwrite to start over "
                "or choose another output file"
            ) from None
        rows.append(row)
        good_end += len(line) + 1
    if truncate and good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return rows


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"


def _rewrite(path: Path, rows: list[dict]) -> None:
    """Replace `path` by a file of `rows`, atomically: written and fsynced beside it, then renamed
    over it, so that a kill leaves either the old file or the new one."""
    tmp = path.with_name(path.name + REWRITE_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(b"".join(_line(row) for row in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if os.name != "nt":  # make the rename durable (Windows has no directory handle to sync)
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise EdgedsError(f"{path}: cannot write the output ({err.strerror})") from None


def put_in_input_order(path: Path, rows: list[Row]) -> None:
    """Rewrite the output in input order where it is not (rows retried, or added to the input
    after a run, went to its end); rows whose id left the input keep their order, at the end.
    A repeated id (its later rows are error rows) matches its input rows in turn."""
    positions: dict[str, list[int]] = {}
    for row in rows:
        positions.setdefault(id_key(row.id), []).append(row.index)
    written = _read_complete_lines(path, truncate=False)
    keys = []
    for row in written:
        free = positions.get(id_key(row["id"]))
        keys.append(free.pop(0) if free else len(rows))
    if keys != sorted(keys):
        _rewrite(path, [row for _, row in sorted(zip(keys, written), key=lambda pair: pair[0])])


class OrderedWriter:
    """Writes rows in input order, durably; rows that finish early wait in a side journal.

    With `retry_errors`, error rows already in the output (and the journal) are dropped first,
    so that their ids run again; `retried_ids` are their ids.
    """

    def __init__(self, path: Path, *, overwrite: bool, retry_errors: bool = False):
        self.path = path
        self.pending_path = path.with_name(path.name + PENDING_SUFFIX)
        if path.parent and not path.parent.exists():
            raise EdgedsError(f"{path.parent}: no such directory for the output")
        if overwrite:
            for p in (path, self.pending_path):
                p.unlink(missing_ok=True)
        written = _read_complete_lines(path, truncate=True)
        ok = {id_key(row["id"]) for row in written if not row.get("error")}
        # an error row whose id also has a good row is a repeated id's: rerunning it could not help
        failed = [row for row in written if row.get("error") and id_key(row["id"]) not in ok] if retry_errors else []
        if failed:
            written = [row for row in written if not any(row is f for f in failed)]
            _rewrite(path, written)
        self.retried_ids = {id_key(row["id"]) for row in failed}
        self.done_ids = {id_key(row["id"]) for row in written}
        self.journal: dict[int, dict] = {}  # input index → row finished before a kill
        for entry in _read_complete_lines(self.pending_path, truncate=True, key="index"):
            row, index = entry.get("row"), entry.get("index")
            if isinstance(row, dict) and isinstance(index, int) and id_key(row.get("id")) not in self.done_ids \
                    and not (retry_errors and row.get("error")):
                self.journal[index] = row
        try:
            self._out = open(path, "ab")
            self._pending = open(self.pending_path, "ab")
        except OSError as err:
            raise EdgedsError(f"{path}: cannot write the output ({err.strerror})") from None
        self._order: list[int] = []
        self._next = 0
        self._held: dict[int, dict] = {}

    def expect(self, indexes: list[int]) -> None:
        """The input indexes still to write, in input order."""
        self._order = indexes

    def put(self, index: int, row: dict) -> None:
        """A finished row: written now if it is next in order, else journaled until its turn;
        durable (fsynced) when this returns. The rows it lets out of the journal go in one write."""
        if self._next < len(self._order) and self._order[self._next] == index:
            lines = [row]
            self._next += 1
            while self._next < len(self._order) and self._order[self._next] in self._held:
                lines.append(self._held.pop(self._order[self._next]))
                self._next += 1
            self._write(self._out, *lines)
        else:
            if self.journal.get(index) is not row:  # rows recovered from the journal are there already
                self._write(self._pending, {"index": index, "row": row})
            self._held[index] = row

    @property
    def complete(self) -> bool:
        return self._next == len(self._order)

    def _write(self, f, *rows: dict) -> None:
        try:
            f.write(b"".join(_line(row) for row in rows))
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            raise EdgedsError(f"{self.path}: cannot write the output ({err.strerror})") from None

    def close(self) -> None:
        """Close both files. Raises nothing, also when called again or after a failed write (a
        full disk): that write already raised the error, and closing would only flush its
        leftover bytes and fail again."""
        for f in (self._out, self._pending):
            try:
                f.close()
            except OSError:
                pass
        if self.complete:
            self.pending_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class Summary:
    """What one `edgeds batch` run did."""

    output: str
    rows: int  # rows in the input
    skipped: int  # already in the output from an earlier run
    completed: int  # rows written by this run without error
    errors: int  # rows written by this run with an error
    generated_tokens: int
    elapsed_s: float
    rows_per_s: float
    tok_per_s: float
    interrupted: bool = False
    unfinished: int = 0  # rows not written: the backend gave up on them (a server that stayed unreachable)
    unfinished_reason: str | None = None  # why the first of them was given up
    retried: int = 0  # rows run again because their output was an error row (counted in completed or errors)
    servers: tuple[dict, ...] = ()  # a fleet's: per server, its url, rows, failed_tries, tokens, tok_per_s

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        state = "interrupted (rerun the same command to resume)" if self.interrupted else "done"
        left = (f", {self.unfinished} unfinished (rerun the same command to retry them; {self.unfinished_reason})"
                if self.unfinished else "")
        retried = f" ({self.retried} error rows of an earlier run retried)" if self.retried else ""
        return (f"edgeds batch: {state}: {self.completed} ok, {self.errors} errors{left}, {self.skipped} already done "
                f"of {self.rows} rows{retried} in {self.elapsed_s:.1f} s · {self.rows_per_s:.2f} rows/s · "
                f"{self.tok_per_s:.1f} tok/s → {self.output}"
                + "".join(f"\n  {s['url']}: {s['rows']} rows · {s['tok_per_s']:.1f} tok/s"
                          + (f" · {s['failed_tries']} failed tries" if s["failed_tries"] else "")
                          + ("" if s.get("up", True) else " · down") for s in self.servers))


def run_batch(
    input_path: Path,
    output_path: Path,
    backend: Backend,
    *,
    defaults: GenerationParams = GenerationParams(),
    parallel: int = 1,
    overwrite: bool = False,
    retry_errors: bool = True,
    progress: bool | None = None,
) -> Summary:
    """Run every row of `input_path` not yet in `output_path` on `backend`; with `retry_errors`,
    also the rows whose output is an error row.

    Raises:
        EdgedsError: the input cannot be read, or the output is not an edgeds batch file.
    """
    rows = read_rows(input_path, defaults)
    writer = OrderedWriter(output_path, overwrite=overwrite, retry_errors=retry_errors)
    todo = [row for row in rows if id_key(row.id) not in writer.done_ids]
    writer.expect([row.index for row in todo])
    results: queue.Queue[tuple[Row, dict | None, str | None]] = queue.Queue()  # row, output row or None, why not
    handles: dict[int, object] = {}
    bar = _progress_bar(len(todo), progress)
    t0 = time.perf_counter()
    completed = errors = tokens = unfinished = 0
    unfinished_reason: str | None = None
    interrupted = False
    waiting = iter(todo)
    in_flight = 0
    limit = max(2 * parallel, 2)

    def finished(row: Row, completion: Completion) -> None:
        if completion.stats.finish_reason == "cancelled":  # never written: the next run does it again
            results.put((row, None, completion.stats.error or "cancelled"))
        else:
            results.put((row, result_row(row, completion), None))

    def start(row: Row) -> bool:
        """Submit a row, or finish it at once; True if it now runs."""
        if id_key(writer.journal.get(row.index, {}).get("id")) == id_key(row.id):
            results.put((row, writer.journal[row.index], None))
            return False
        if row.error:
            results.put((row, error_row(row.id, row.error), None))
            return False
        try:
            handles[row.index] = backend.submit(row.messages, row.params, lambda c, row=row: finished(row, c))
        except EdgedsError as err:
            results.put((row, error_row(row.id, f"line {row.line}: key {row.key!r}: {err}"), None))
            return False
        return True

    try:
        remaining = len(todo)
        while remaining:
            for row in waiting:
                in_flight += start(row)
                if in_flight >= limit:
                    break
            row, out, why = results.get()
            if row.index in handles:
                handles.pop(row.index)
                in_flight -= 1
            remaining -= 1
            if out is None:
                unfinished += 1
                unfinished_reason = unfinished_reason or f"line {row.line}: {why}"
                continue
            writer.put(row.index, out if row.metadata is None else {**out, "metadata": row.metadata})
            if out["error"]:
                errors += 1
            else:
                completed += 1
                tokens += out["usage"]["reasoning_tokens"] + out["usage"]["answer_tokens"]
            if bar is not None:
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{tokens / elapsed:.1f} tok/s" if elapsed > 0 else "", refresh=False)
    except KeyboardInterrupt:
        interrupted = True
        for handle in handles.values():
            getattr(handle, "cancel", lambda: None)()
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    if not interrupted:
        put_in_input_order(output_path, rows)
    elapsed = time.perf_counter() - t0
    done = completed + errors
    servers = tuple({**counts, "tok_per_s": round(counts["tokens"] / elapsed, 2) if elapsed > 0 else 0.0}
                    for counts in getattr(backend, "server_counts", list)())
    return Summary(
        output=str(output_path), rows=len(rows), skipped=len(rows) - len(todo), completed=completed,
        errors=errors, generated_tokens=tokens, elapsed_s=round(elapsed, 3),
        rows_per_s=round(done / elapsed, 3) if elapsed > 0 else 0.0,
        tok_per_s=round(tokens / elapsed, 2) if elapsed > 0 else 0.0, interrupted=interrupted,
        unfinished=unfinished, unfinished_reason=unfinished_reason,
        retried=sum(id_key(row.id) in writer.retried_ids for row in todo), servers=servers,
    )


def _progress_bar(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True, desc="batch")


def check_paths(input_path: Path, output_path: Path) -> None:
    if input_path.resolve() == output_path.resolve():
        raise UsageError("the output file must not be the input file")
    if not input_path.is_file():
        raise EdgedsError(f"{input_path}: no such input file")


def iter_jsonl(path: Path) -> Iterator[dict]:
    """The rows of an output file (for tests and scripts)."""
    yield from _read_complete_lines(path, truncate=False)
