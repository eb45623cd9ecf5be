"""Reading HTTP requests from untrusted clients, for `edgeds serve`: bounded and timed.

- `TimedReader` replaces a handler's `rfile`: every read has a deadline for the whole request
  head (request line and headers) and another for the body, so a client that sends part of its
  headers, or less body than its Content-Length, is dropped when its time is up; a slow drip of
  bytes does not reset the clock.
- `read_body` decides from the headers alone whether a body will be accepted (JSON only, a
  length within the limit, `Content-Length` or `Transfer-Encoding: chunked`), and only then
  reads it. The caller checks the API key before, so nothing is read for a request without it.
- `HangupWatch` notices clients that close their connection while their request runs.

The standard library's http.server parses the request line and headers; this module bounds
what it reads.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Callable

JSON_TYPES = ("application/json",)  # no text/plain or form types: those skip a browser's CORS preflight
LINGER_S = 2.0  # after an early error reply, how long the rest of an unread body is drained
_CHUNK = 64 * 1024
CHUNK_LINE_BYTES = 1024  # a chunked body's size line (with its extensions), and each trailer line
TRAILER_BYTES = 8192  # all trailer lines of a chunked body
_HEX_DIGITS = b"0123456789abcdefABCDEF"


@dataclass(frozen=True)
class HttpLimits:
    """What one request may send."""

    max_body_bytes: int = 4 * 1024 * 1024
    read_timeout_s: float = 30.0  # for the request line and headers, and again for the body


class HttpError(Exception):
    """A request refused before or while its body is read: an HTTP status and one line."""

    def __init__(self, status: int, message: str, *, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class TimedReader:
    """A socket's incoming bytes with a deadline: `arm(seconds)` starts the clock for the
    next part of a request; a read past it raises TimeoutError."""

    def __init__(self, sock: socket.socket, *, idle_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout  # the socket's timeout between reads (writes use it too)
        self.deadline = time.monotonic() + idle_timeout
        self._buffer = bytearray()
        self._eof = False
        self.sock.settimeout(idle_timeout)

    def arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def _fill(self) -> bool:
        """Read more from the socket; False at end of stream."""
        if self._eof:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client was too slow to send its request")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(_CHUNK)
        finally:
            self.sock.settimeout(self.idle_timeout)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def readline(self, limit: int = -1) -> bytes:
        """Up to and including the next b"\\n" (at most `limit` bytes; less at end of stream)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self._buffer) or not self._fill():
                return self._take(len(self._buffer) if limit < 0 else min(limit, len(self._buffer)))

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer at end of stream."""
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(min(size, len(self._buffer)))

    def discard(self, size: int) -> int:
        """Read and drop up to `size` bytes without keeping them; the number dropped."""
        dropped = 0
        while dropped < size:
            if not self._buffer and not self._fill():
                break
            n = min(size - dropped, len(self._buffer))
            del self._buffer[:n]
            dropped += n
        return dropped

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def close(self) -> None:
        self._buffer.clear()


def check_json_type(headers: Message) -> None:
    """HttpError 415 unless the body is declared JSON."""
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type not in JSON_TYPES:
        shown = content_type or "none"
        raise HttpError(415, f"the request body must be JSON (Content-Type: application/json), not {shown}",
                        code="unsupported_media_type")


def body_length(headers: Message, limits: HttpLimits) -> int | None:
    """The declared body length, None for a chunked body; HttpError for anything else."""
    lengths = headers.get_all("Content-Length") or []
    encoding = (headers.get("Transfer-Encoding") or "").strip().lower()
    if encoding:
        if lengths:
            raise HttpError(400, "a request may not carry both Content-Length and Transfer-Encoding")
        if encoding != "chunked":
            raise HttpError(501, f"Transfer-Encoding {encoding!r} is not supported (only chunked)")
        return None
    if not lengths:
        raise HttpError(411, "the request needs a Content-Length (or Transfer-Encoding: chunked)")
    if len(set(lengths)) > 1 or not lengths[0].strip().isdigit():
        raise HttpError(400, f"Content-Length must be one non-negative integer, not {', '.join(lengths)[:40]!r}")
    length = int(lengths[0])
    if length > limits.max_body_bytes:
        raise _too_large(limits)
    return length


def read_body(headers: Message, reader: TimedReader, limits: HttpLimits) -> bytes:
    """The body of a request whose headers have been checked (`check_json_type`, `body_length`),
    read within `limits.read_timeout_s`.

    Raises:
        HttpError: 400 for a short or malformed body, 408 when time is up, 413 when too large.
    """
    length = body_length(headers, limits)
    reader.arm(limits.read_timeout_s)
    try:
        if length is not None:
            body = reader.read(length)
            if len(body) < length:
                raise HttpError(400, f"the body ended after {len(body)} of its {length} bytes")
            return body
        return _read_chunked(reader, limits)
    except TimeoutError:
        raise HttpError(408, f"the request body did not arrive within {limits.read_timeout_s:g} s",
                        code="request_timeout") from None


def _read_chunked(reader: TimedReader, limits: HttpLimits) -> bytes:
    body = bytearray()
    while True:
        line = reader.readline(CHUNK_LINE_BYTES)
        if not line.endswith(b"\n"):
            raise HttpError(400, "the chunked body ended early, or a chunk-size line is over "
                            f"{CHUNK_LINE_BYTES} bytes")
        size_field = line.split(b";", 1)[0].strip()
        if not size_field or size_field.strip(_HEX_DIGITS):  # int() would also take "0x1f", "+5", "1_0"
            raise HttpError(400, f"a malformed chunk size {size_field[:20]!r}")
        size = int(size_field, 16)
        if len(body) + size > limits.max_body_bytes:
            raise _too_large(limits)
        if size == 0:
            break
        chunk = reader.read(size)
        if len(chunk) < size or reader.readline(2) not in (b"\r\n", b"\n"):
            raise HttpError(400, "the chunked body ended early or is malformed")
        body += chunk
    trailer = 0
    while (line := reader.readline(CHUNK_LINE_BYTES)) not in (b"\r\n", b"\n"):  # trailer fields, ignored
        trailer += len(line)
        if not line.endswith(b"\n") or trailer > TRAILER_BYTES:
            raise HttpError(400, f"the chunked body's trailer is malformed or over {TRAILER_BYTES} bytes")
    return bytes(body)


def _too_large(limits: HttpLimits) -> HttpError:
    return HttpError(413, f"the request body is over {limits.max_body_bytes} bytes (the server's --max-body-bytes)",
                     code="request_too_large")


def linger(sock: socket.socket, reader: TimedReader) -> None:
    """Before closing on a body left unread: stop sending and drop what still arrives for a
    moment, so the client reads the error reply instead of a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        reader.arm(LINGER_S)
        while reader.discard(_CHUNK):
            pass
    except OSError:  # TimeoutError included: the client kept sending
        pass


class HangupWatch:
    """One thread that watches the sockets of running requests and calls `on_hangup` for a
    client that closed its connection (its socket reads as end of stream).

    A client that sends more bytes while it waits (a pipelined request) is no longer watched:
    its hang-up shows only when the reply is written.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._watched: dict[int, tuple[socket.socket, Callable[[], None]]] = {}
        self._next_key = 0
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edgeds-hangups", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, on_hangup: Callable[[], None]) -> int:
        with self._lock:
            self._next_key += 1
            self._watched[self._next_key] = (sock, on_hangup)
            self._lock.notify()
            return self._next_key

    def unwatch(self, key: int) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._watched:
                    self._lock.wait()
                if self._closed:
                    return
                watched = dict(self._watched)
            for key in self._readable(watched):
                with self._lock:  # a request that ended meanwhile is no longer watched
                    entry = self._watched.pop(key, None)
                if entry is not None and _hung_up(entry[0]):
                    entry[1]()

    def _readable(self, watched: dict[int, tuple[socket.socket, Callable[[], None]]]) -> list[int]:
        with selectors.DefaultSelector() as selector:
            for key, (sock, _) in watched.items():
                try:
                    selector.register(sock, selectors.EVENT_READ, key)
                except (ValueError, OSError):  # closed meanwhile
                    continue
            ready = selector.select(self.interval)
        return [selector_key.data for selector_key, _ in ready]


def _hung_up(sock: socket.socket) -> bool:
    """A readable socket: end of stream (or reset) means the client is gone.

    The peek must not wait. What made the socket readable may have been read meanwhile by the
    request's handler (its client's next request on a kept-alive connection), and a peek
    through the socket, which has the handler's read timeout, would wait that long for more,
    with every other request's hang-up unwatched. So it peeks through a duplicate of the socket
    without a timeout, with MSG_DONTWAIT where the platform has it."""
    try:
        probe = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:  # closed meanwhile
        return True
    try:
        return probe.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()
