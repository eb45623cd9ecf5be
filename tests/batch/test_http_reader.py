"""The pieces `edgeds serve` reads requests with (edgeds.serving.http), on socket pairs: the
deadline covers a whole request head however slowly it drips, the headers decide a body's fate
before it is read, and a client that closes its socket is noticed while its request runs."""

from __future__ import annotations

import socket
import threading
import time
from email.message import Message

import pytest

from edgeds.serving.http import HangupWatch, HttpError, HttpLimits, TimedReader, body_length, check_json_type, read_body

LIMITS = HttpLimits(max_body_bytes=1000, read_timeout_s=0.5)


def headers(**fields: str) -> Message:
    message = Message()
    for name, value in fields.items():
        message[name.replace("_", "-")] = value
    return message


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_a_slow_drip_does_not_reset_the_deadline(pair):
    server, client = pair
    reader = TimedReader(server, idle_timeout=5)
    reader.arm(0.5)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.1):
            client.sendall(b"x")

    dripping = threading.Thread(target=drip)
    dripping.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            reader.readline(65537)
        assert time.monotonic() - t0 < 1.0  # 0.5 s in all, though a byte came every 0.1 s
    finally:
        stop.set()
        dripping.join()


def test_lines_and_exact_reads(pair):
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody!")
    reader = TimedReader(server, idle_timeout=5)
    assert reader.readline(65537) == b"GET / HTTP/1.1\r\n"
    assert reader.readline(4) == b"Host"
    assert reader.readline() == b": x\r\n" and reader.readline() == b"\r\n"
    assert reader.read(5) == b"body!"
    client.close()
    assert reader.read(10) == b""


@pytest.mark.parametrize("fields, status", [
    ({"Content_Length": "-1"}, 400),
    ({"Content_Length": "abc"}, 400),
    ({"Content_Length": "1e12"}, 400),
    ({"Content_Length": "1001"}, 413),
    ({}, 411),
    ({"Content_Length": "5", "Transfer_Encoding": "chunked"}, 400),
    ({"Transfer_Encoding": "gzip"}, 501),
])
def test_the_headers_decide_before_the_body_is_read(fields, status):
    with pytest.raises(HttpError) as exc:
        body_length(headers(**fields), LIMITS)
    assert exc.value.status == status and str(exc.value)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_only_json_is_accepted(content_type):
    with pytest.raises(HttpError) as exc:
        check_json_type(headers(Content_Type=content_type) if content_type else headers())
    assert exc.value.status == 415
    check_json_type(headers(Content_Type="application/json; charset=utf-8"))


def test_chunked_bodies_within_the_limit(pair):
    server, client = pair
    client.sendall(b"4;ext=1\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nTrailer: x\r\n\r\n")
    assert read_body(headers(Transfer_Encoding="chunked"), TimedReader(server, idle_timeout=5), LIMITS) == b'{"a": 1}'
    client.sendall(b"3e8\r\n" + b"x" * 1000 + b"\r\n1\r\nx\r\n0\r\n\r\n")
    with pytest.raises(HttpError) as exc:
        read_body(headers(Transfer_Encoding="chunked"), TimedReader(server, idle_timeout=5), LIMITS)
    assert exc.value.status == 413


def test_a_body_shorter_than_its_length_times_out(pair):
    server, client = pair
    client.sendall(b"{}")
    t0 = time.monotonic()
    with pytest.raises(HttpError) as exc:
        read_body(headers(Content_Length="100"), TimedReader(server, idle_timeout=5), LIMITS)
    assert exc.value.status == 408 and time.monotonic() - t0 < 1.5


def test_a_client_that_hangs_up_is_noticed():
    watch = HangupWatch(interval=0.05)
    gone, stays = socket.socketpair(), socket.socketpair()
    hung_up = threading.Event()
    try:
        watch.watch(gone[0], hung_up.set)
        kept = watch.watch(stays[0], lambda: pytest.fail("a client that is still there was taken for gone"))
        time.sleep(0.2)
        assert not hung_up.is_set()
        gone[1].close()
        assert hung_up.wait(2)
        watch.unwatch(kept)
    finally:
        watch.close()
        for sock in (*gone, *stays):
            sock.close()


def test_a_readable_client_whose_bytes_were_taken_is_not_waited_on():
    """Found as: a kept-alive client's next request made its socket readable, the handler read it
    first, and the watcher's peek waited out the handler's read timeout (then took the client
    for gone): meanwhile no other hang-up was noticed, and closing the watch waited too."""
    from edgeds.serving.http import _hung_up

    server, client = socket.socketpair()
    try:
        server.settimeout(5)  # the handler's read timeout is on the socket
        started = time.monotonic()
        assert not _hung_up(server)  # live, nothing to read: no wait, no hang-up
        client.sendall(b"GET")
        assert not _hung_up(server) and server.recv(3) == b"GET"  # the peek left the bytes for the handler
        assert time.monotonic() - started < 1
        assert server.gettimeout() == 5
        client.close()
        assert _hung_up(server)
    finally:
        server.close()
