"""serve/server.py: a real digitlab app on uvicorn with digitlab's connection limits. A bounded
slowloris (a few sockets, a few seconds), a huge head, too many connections."""

from __future__ import annotations

import json
import socket
import time

import pytest

from digitlab.api import Recognizer
from digitlab.serve import app as app_module
from digitlab.serve import server as limits
from digitlab.serve.app import create_app
from serving import drawing, in_thread


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()



def request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + body


def post(address, body: bytes) -> tuple[int, dict]:
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(request(f"POST /api/predict HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/png\n"
                          f"Content-Length: {len(body)}\nConnection: close\n\n", body))
        return answer(s)


def answer(s: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the answer on `s`, read until the server closes it."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing `s`, or None if it is still open after `seconds`."""
    s.settimeout(seconds)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


@pytest.mark.slow
def test_a_bounded_slowloris_is_cut_off_and_others_are_served(recognizer, monkeypatch):
    """Sockets dripping a header line at a time, stalled mid-body, or silent are answered
    408 (JSON) or closed once the head or body is late; a normal request meanwhile is
    answered at once."""
    monkeypatch.setattr(limits, "HEAD_S", 1.5)
    monkeypatch.setattr(limits, "BODY_S", 1.5)
    with in_thread(create_app(recognizer)) as address:
        dripping = [socket.create_connection(address) for _ in range(3)]
        stalled = [socket.create_connection(address) for _ in range(3)]
        silent = socket.create_connection(address)
        for s in stalled:
            s.sendall(request("POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n"
                              "Content-Length: 100000\n\n", b"x" * 100))
        began = time.monotonic()
        for s in dripping:
            s.sendall(b"POST /api/predict HTTP/1.1\r\n")
        status, reading = post(address, drawing())
        assert status == 200 and reading["digit"] == 1
        for k in range(5):  # a header line every 0.25 s, up to just before the limit
            time.sleep(0.25)
            for s in dripping:
                s.sendall(b"X-Drip-%d: %s\r\n" % (k, b"y" * 10))
        for s in [*dripping, *stalled]:
            sent = closed_within(s, 5)
            assert sent is not None, "a slow connection is still open"
            assert sent.startswith(b"HTTP/1.1 408 "), sent[:80]
            assert json.loads(sent.partition(b"\r\n\r\n")[2])["error"].startswith("the request")
        assert closed_within(silent, 5) is not None
        assert time.monotonic() - began < 8
        for s in [*dripping, *stalled, silent]:
            s.close()


def test_a_head_larger_than_the_limit_is_431(recognizer):
    with in_thread(create_app(recognizer)) as address:
        with socket.create_connection(address, timeout=10) as s:
            # Just past the limit and no more: a server closing with data unread resets
            # the connection, which would drop its answer on our side.
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
                      + b"y" * (limits.MAX_HEAD_BYTES + 1024))
            status, body = answer(s)
        assert status == 431 and "head" in body["error"]
        assert post(address, drawing())[0] == 200  # the server goes on


def test_a_head_within_the_limit_is_served(recognizer):
    with in_thread(create_app(recognizer)) as address, \
            socket.create_connection(address, timeout=10) as s:
        big = "y" * (limits.MAX_HEAD_BYTES // 2)
        s.sendall(request(f"GET /healthz HTTP/1.1\nHost: 127.0.0.1\nX-Big: {big}\n"
                          "Connection: close\n\n"))
        assert answer(s)[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("lines", [limits.MAX_HEADERS - 1, limits.MAX_HEADERS + 1])
def test_header_lines_past_the_limit_are_431(recognizer, lines):
    """A head within the size limit but with too many header lines is refused with its
    JSON 431 (the drawing it carried is not answered); one line fewer is served."""
    body = drawing()
    with in_thread(create_app(recognizer)) as address, \
            socket.create_connection(address, timeout=10) as s:
        extra = "".join(f"X-{i}: 1\n" for i in range(lines - 3))
        s.sendall(request(f"POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n{extra}"
                          f"Content-Type: image/png\nContent-Length: {len(body)}\n\n")
                  + body)
        status, answered = answer(s)
    if lines > limits.MAX_HEADERS:
        assert status == 431 and "header lines" in answered["error"]
    else:
        assert status == 200 and answered["digit"] in range(10)


@pytest.mark.slow
def test_keep_alive_requests_each_get_their_own_time(recognizer, monkeypatch):
    """The head and body timers restart with each request on a connection."""
    monkeypatch.setattr(limits, "HEAD_S", 1.0)
    monkeypatch.setattr(limits, "BODY_S", 1.0)
    body = drawing()
    with in_thread(create_app(recognizer)) as address, \
            socket.create_connection(address, timeout=10) as s:
        for _ in range(3):
            s.sendall(request(f"POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n"
                              f"Content-Length: {len(body)}\n\n", body))
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ")
            time.sleep(0.7)  # under each limit, over both together


@pytest.mark.slow
def test_connections_past_the_cap_are_503(recognizer, monkeypatch):
    monkeypatch.setattr(limits, "MAX_CONNECTIONS", 4)
    with in_thread(create_app(recognizer)) as address:
        held = [socket.create_connection(address) for _ in range(4)]
        try:
            time.sleep(0.2)
            with socket.create_connection(address, timeout=10) as s:
                s.sendall(request("GET /healthz HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"))
                data = closed_within(s, 10)
            assert data is not None and data.startswith(b"HTTP/1.1 503 ")
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        assert post(address, drawing())[0] == 200


@pytest.mark.slow
def test_a_pipelined_request_is_not_cut_off_as_a_late_head(recognizer, monkeypatch):
    """Two requests sent in one go: the second's head came with the first, so the time
    it takes to answer is not counted as waiting for a head."""
    monkeypatch.setattr(limits, "HEAD_S", 0.5)
    monkeypatch.setattr(limits, "BODY_S", 0.5)
    real = app_module._prepare

    def slow(data: bytes, number: bool):
        time.sleep(0.8)  # longer than HEAD_S
        return real(data, number)

    monkeypatch.setattr(app_module, "_prepare", slow)
    monkeypatch.setattr(app_module, "_prepare_quickly", lambda data: None)
    body = drawing()
    one = request(f"POST /api/predict HTTP/1.1\nHost: 127.0.0.1\n"
                  f"Content-Length: {len(body)}\n\n", body)
    last = request(f"POST /api/predict HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {len(body)}\n"
                   "Connection: close\n\n", body)
    with in_thread(app_module.create_app(recognizer)) as address, \
            socket.create_connection(address, timeout=30) as s:
        s.sendall(one + one + last)
        data = closed_within(s, 30)
    assert data is not None and data.count(b"HTTP/1.1 200 ") == 3, data[:300]
