"""The load benchmark itself, small: `benchmarks/serve_load.py` starts `digitlab serve`, sends
a bounded number of real drawn digits from 32 clients (as the drawing page sends them, asking for
the model's input back), stops by itself and reports figures.
Only what must hold on any machine is asserted (no errors, right answers, bounded memory);
speed is the benchmark's to print, never a test's to time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import processes, script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_bounded_load_has_no_errors_and_no_memory_growth(mnist_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "400", "--concurrency", "32",
         "--warmup", "50", "--max-seconds", "120", "--style", "page", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text, figures = done.stdout.rsplit("\n", 2)[0], json.loads(done.stdout.splitlines()[-1])
    assert figures["requests"] == 400 and not figures["timed_out"]
    assert figures["errors"] == 0, figures["error_kinds"]
    assert figures["right"] >= 390  # the shipped model on real MNIST test digits
    assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    # Every process of the server is counted: CPU spent and memory held.
    assert figures["server_cpu_ms_per_request"] > 0
    before, after = figures["rss_before_mib"]["rss"], figures["rss_after_mib"]["rss"]
    assert before > 100 and after - before < 50
    for line in ("throughput", "latency", "errors", "answers", "server CPU", "client CPU",
                 "memory"):
        assert f"\n{line}" in "\n" + text


@pytest.mark.slow
def test_slow_requests_alongside_are_answered_and_reported(mnist_root: Path) -> None:
    """--slow number: one more client reads whole numbers all the while; the digits are
    measured as ever, and the numbers answered meanwhile are counted. (An open loop, so
    that the digits take a second however fast the server is: a number takes tens of ms.)"""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "200", "--rate", "200", "--warmup", "20",
         "--workers", "2", "--max-seconds", "120", "--slow", "number", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["requests"] == 200 and figures["errors"] == 0
    assert figures["slow"] == "number" and figures["slow_clients"] == 1
    assert figures["slow_answered"] >= 1 and figures["slow_errors"] == 0
    assert figures["slow_p50_ms"] > 0
    assert "number requests answered meanwhile from 1 more client" in done.stdout


@pytest.mark.slow
def test_a_bad_count_of_slow_clients_is_one_clear_error() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--slow", "number", "--slow-clients",
                           "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--slow-clients must be 1..512" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_load_generators_connection_reads_answers_and_survives_closes() -> None:
    """serve_load's bare HTTP client: answers split over many packets, `Connection: close`
    (it reconnects), and a server that hangs up mid-answer (an error, not a crash)."""
    import asyncio
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    accepted = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if body == b"hang up":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"digit\"")
                writer.close()
                return
            answer = b'{"path":null,"digit":%d}' % len(body)
            close = b"Connection: close\r\n" if body == b"close" else b""
            message = (b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: %d\r\n\r\n"
                       % len(answer) + answer)
            for k in range(0, len(message), 7):  # the head and body in small pieces
                writer.write(message[k:k + 7])
                await writer.drain()
                await asyncio.sleep(0)
            if close:
                writer.close()
                return

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = serve_load.Connection("127.0.0.1", port)
        status, payload = await conn.post("/api/predict", b"12345")
        assert status == 200 and serve_load.DIGIT.search(payload).group(1) == b"5"
        assert (await conn.post("/api/predict", b"close"))[0] == 200
        assert (await conn.post("/api/predict", b"abc"))[1].endswith(b'"digit":3}')
        assert len(accepted) == 2  # reconnected after the close
        with pytest.raises(OSError):
            await conn.post("/api/predict", b"hang up")
        assert (await conn.post("/api/predict", b"ab"))[0] == 200
        await conn.close()
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 30))


def _children(pid: int) -> list[tuple[int, str]]:
    return [(p, args) for p, parent, args in processes() if parent == pid]


@pytest.mark.slow
def test_sigterm_stops_the_run_and_the_server_it_started(mnist_root: Path) -> None:
    """A supervisor's SIGTERM (or Ctrl+C) mid-run: one line, exit 128 + N, and the server
    with its workers stopped too (SIGTERM used to end serve_load alone, leaving them)."""
    import signal
    import time

    with script(str(SCRIPT), "--workers", "2", "--requests", "100000",
                "--max-seconds", "120") as proc:
        deadline = time.monotonic() + 90
        server = []
        while not server:  # the server, and then its two workers, under way
            assert time.monotonic() < deadline and proc.poll() is None
            server = [pid for pid, args in _children(proc.pid) if "digitlab serve" in args]
            time.sleep(0.1)
        while len([a for _, a in _children(server[0]) if "spawn_main" in a]) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(2)  # serving, or about to
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "serve_load: stopped (SIGTERM)" in err and "Traceback" not in err
    assert not [p for p, parent, _ in processes() if server[0] in (p, parent)]
