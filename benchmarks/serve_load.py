"""Load test for `digitlab serve`: a bounded number of single-digit requests, then figures.

    .venv/bin/python benchmarks/serve_load.py                       # 2,000 requests, 32 clients
    .venv/bin/python benchmarks/serve_load.py --workers 2
    .venv/bin/python benchmarks/serve_load.py --workers 2 --access-log  # serve's default log
    .venv/bin/python benchmarks/serve_load.py --backend torch      # PyTorch, not onnxruntime
    .venv/bin/python benchmarks/serve_load.py --rate 200            # open loop: 200 requests/s
    .venv/bin/python benchmarks/serve_load.py --workers 2 --slow number   # and numbers meanwhile
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 1234

Starts `digitlab serve` on a free port of 127.0.0.1 (or targets --url, which must be on
this machine); --concurrency clients, each on one keep-alive connection, send --warmup
unmeasured requests and then --requests measured POSTs of real MNIST test digits drawn the
way the page sends them (dark ink on white, a 140x140 PNG), the measured ones in the
server's steady state (not the burst of every client connecting at once). It stops by
itself after the last request or --max-seconds.

With --slow, --slow-clients more clients (unmeasured) send slow requests all the while:
photo-like JPEG digits (`photo`: the lighting analysis, a few ms each) or photo-like
strips of four digits read as whole numbers (`number`: tens of ms each); the figures are
still the digits', and how many slow requests were answered meanwhile is printed too.

Closed loop (default): each client sends its next request as soon as the answer arrives, so
latency includes the queue that 32 eager clients build. Open loop (--rate): requests are
due at fixed times whatever the server does, and latency counts from when each was due.

Prints requests/s, p50/p95/p99/max latency, errors, how many answers were right, the CPU
time the server and its workers spent per request (user + system, from /proc: unlike
requests/s it hardly moves when something else shares the machine), and their memory
(VmRSS and Pss from /proc) before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from digitlab.data.loader import load_split
from digitlab.data.sources import default_root, fetch
from digitlab.vision.png import write_grey

LOCAL = ("127.0.0.1", "localhost", "::1")
STYLES = ("drawn", "page", "mnist")
PATHS = {"page": "/api/predict?top_k=3&include_input=true"}  # what static/app.js asks
PAGE_INK = 0x11  # static/app.js draws with #111 on #fff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Server to target (default: start digitlab serve).")
    parser.add_argument("--pid", type=int, help="With --url: the server's pid, for its memory.")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, help="Open loop: requests per second in all.")
    parser.add_argument("--workers", type=int, default=1, help="digitlab serve --workers.")
    parser.add_argument("--run", help="digitlab serve --run (default: the shipped model).")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"),
                        help="digitlab serve --backend (default: the server's choice).")
    parser.add_argument("--size", type=int, default=140,
                        help="Side of each PNG, in pixels (the page sends 140x140).")
    parser.add_argument("--style", choices=STYLES, default="drawn",
                        help="drawn: dark on white, --size pixels, grey PNG, fully "
                        "preprocessed (PNGs as Pillow writes them); page: as the drawing page "
                        "sends it (a grey PNG encoded as static/app.js does, ink #111, asking "
                        "for the model's input back: "
                        "top_k=3&include_input=true); mnist: the raw 28x28 white-on-black "
                        "digit, which skips preprocessing (to see what HTTP and the model "
                        "cost alone).")
    parser.add_argument("--warmup", type=int, default=200,
                        help="Unmeasured requests first, from the same clients on the same "
                        "connections.")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="Hard time cap.")
    parser.add_argument("--access-log", action="store_true",
                        help="Start the server with its access log on (digitlab serve's "
                        "default; written to a file), not --no-access-log.")
    parser.add_argument("--slow", choices=("photo", "number"),
                        help="Meanwhile, --slow-clients more clients send slow requests: "
                        "photo-like JPEG digits, or photo-like 4-digit numbers (?number=true).")
    parser.add_argument("--slow-clients", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="Also print the figures as JSON.")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 512:
        parser.error("--requests must be 1..100000 and --concurrency 1..512")
    if not 1 <= args.slow_clients <= 512:
        parser.error("--slow-clients must be 1..512")

    bodies, labels = digit_pngs(args.size, style=args.style)
    args.slow_bodies = slow_requests(args.slow) if args.slow else []
    server, banner = None, None
    if args.url:
        host = urlsplit(args.url).hostname
        if host not in LOCAL:
            parser.error("--url must point at this machine (127.0.0.1, localhost or ::1)")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        server, url, banner = start_server(args.workers, args.run, args.backend,
                                           access_log=args.access_log)
        pid = server.pid
    try:
        figures = asyncio.run(measure(url, pid, bodies, labels, args))
        figures["server"] = banner
    finally:
        if server is not None:
            stop_server(server)
    print(report(figures, args, url))
    if args.json:
        print(json.dumps(figures))


def digit_pngs(size: int, *, style: str = "drawn",
               count: int = 500) -> tuple[list[bytes], list[int]]:
    """The first `count` MNIST test digits as grey PNGs: dark on white at size x size pixels
    (black ink, or the page's), or exactly as stored (28x28, white on black)."""
    root = default_root()
    fetch("mnist", root=root)
    split = load_split("mnist", root, "test")
    bodies = []
    for image in split.images[:count]:
        if style == "mnist":
            picture = Image.fromarray(image)
        else:
            picture = Image.fromarray(255 - image).resize((size, size), Image.BILINEAR)
        if style == "page":  # the page's ink, and its encoder: filter 0 rows, zlib
            paper = np.asarray(picture, np.float32) / 255.0
            bodies.append(write_grey(np.round(PAGE_INK + paper * (255 - PAGE_INK))))
            continue
        buf = io.BytesIO()
        picture.save(buf, "PNG")
        bodies.append(buf.getvalue())
    return bodies, [int(v) for v in split.labels[:count]]


def slow_requests(kind: str, count: int = 20) -> list[bytes]:
    """Photo-like JPEGs of MNIST test digits (photolike.py, seed 0): single digits, or
    strips of four for whole-number requests."""
    import photolike  # benchmarks/, beside this file

    split = load_split("mnist", default_root(), "test")
    rng = np.random.default_rng(0)
    if kind == "number":
        return [photolike.strip_jpeg(list(split.images[4 * k : 4 * k + 4]), rng)
                for k in range(count)]
    return [photolike.photo_jpeg(split.images[k], rng) for k in range(count)]


def start_server(workers: int, run: str | None, backend: str | None = None, *,
                 access_log: bool = False) -> tuple[subprocess.Popen[str], str, str]:
    """The server, its URL and the line it printed on start (model, backend, workers). Its
    output goes to a file, as a deployed server's log would: with access_log, a line per
    request (digitlab serve's default)."""
    cmd = [sys.executable, "-m", "digitlab", "serve", "--port", "0",
           "--workers", str(workers)] + (["--run", run] if run else []) + (
           ["--backend", backend] if backend else []) + ([] if access_log else
                                                          ["--no-access-log"])
    with tempfile.TemporaryFile("w+") as log:  # the server keeps writing to its own copy
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            found, deadline = None, time.monotonic() + 120
            while found is None and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
                log.seek(0)
                output = log.read()
                found = re.search(r"^digitlab serve: (http://127\.0\.0\.1:\d+).*$", output,
                                  re.M)
        except BaseException:  # stopped while it starts: stop it (and its workers) too
            stop_server(proc)
            raise
        if found is None:
            stop_server(proc)
            log.seek(0)
            sys.exit("digitlab serve did not start:\n" + "".join(log.readlines()[-5:]).rstrip())
    return proc, found.group(1), found.group(0).strip()


def stop_server(proc: subprocess.Popen[str]) -> None:
    """As Ctrl+C stops `digitlab serve` (its workers with it); killed after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- a minimal HTTP/1.1 client: the load generator shares the two cores with the server,
# so it must cost as little CPU per request as possible -----------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: `await post(path, body)` -> (status, body).

    A bare asyncio protocol that finds the head's end and the body's length with bytes
    searches, and the answer's digit with a regular expression: the load generator shares
    the server's cores, and this costs a fifth less CPU per request than asyncio's streams
    and json.loads did (0.066-0.079 ms against 0.086-0.104, alternated runs)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if self.transport is None or self.transport.is_closing():
            self.buffer.clear()
            await loop.create_connection(lambda: self, self.host, self.port)
        assert self.transport is not None
        self.waiter = loop.create_future()
        self.transport.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: image/png\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (path.encode(),
                                                                   self.host.encode(),
                                                                   len(body), body))
        return await self.waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        found = CONTENT_LENGTH.search(head)
        length = int(found.group(1)) if found else 0
        if len(self.buffer) < end + 4 + length:
            return
        payload = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if b"\r\nconnection: close" in head and self.transport is not None:
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("the server closed the "
                                                                  "connection"))

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
DIGIT = re.compile(rb'"digit":(\d+)')  # the answer's first field of that name


async def measure(url: str, pid: int | None, bodies: list[bytes], labels: list[int],
                  args: argparse.Namespace) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    await wait_ready(host, port, args.max_seconds)
    before: dict = {}

    def start_measuring() -> None:  # when the first measured request is sent
        before.update(rss=rss_mib(pid), load=os.getloadavg(), cpu=cpu_seconds(pid),
                      own=time.process_time(), started=time.perf_counter())

    slow: dict[str, Any] = {"answered": 0, "errors": 0, "latencies": []}
    side = [asyncio.create_task(slow_client(host, port, args.slow, args.slow_bodies, slow))
            for _ in range(args.slow_clients if args.slow else 0)]
    try:
        result = await run_load(host, port, bodies, labels, args.requests, args.concurrency,
                                args.rate, args.max_seconds, args.style, warmup=args.warmup,
                                on_start=start_measuring)
    finally:
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
    if not before:  # stopped at --max-seconds during the warm-up
        start_measuring()
    wall = time.perf_counter() - before["started"]
    own_used = time.process_time() - before["own"]
    cpu_used = None if pid is None else cpu_seconds(pid) - before["cpu"]
    rss_before, load_before = before["rss"], before["load"]
    lat = np.array(result["latencies"]) * 1000
    done = len(lat)
    return {
        "requests": done, "wanted": args.requests, "concurrency": args.concurrency,
        "rate": args.rate, "workers": None if args.url else args.workers,
        "seconds": round(wall, 3), "requests_per_s": round(done / wall, 1),
        "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
        "max_ms": round(float(lat.max()), 2) if done else None,
        "errors": result["errors"], "error_kinds": result["kinds"],
        "warmup_errors": result["warmup_errors"],
        "right": result["right"], "timed_out": result["timed_out"],
        "server_cpu_ms_per_request": (round(cpu_used / done * 1000, 3)
                                      if cpu_used is not None and done else None),
        "client_cpu_ms_per_request": round(own_used / done * 1000, 3) if done else None,
        "rss_before_mib": rss_before, "rss_after_mib": rss_mib(pid),
        "load_before": [round(v, 2) for v in load_before], "cpus": os.cpu_count(),
        "slow": args.slow, "slow_clients": args.slow_clients if args.slow else 0,
        "slow_answered": slow["answered"], "slow_errors": slow["errors"],
        "slow_p50_ms": pct(np.array(slow["latencies"]) * 1000, 50),
    }


def pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


async def wait_ready(host: str, port: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            if (await reader.read(12)).endswith(b"200"):
                writer.close()
                return
            writer.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("the server did not become ready")
        await asyncio.sleep(0.2)


async def run_load(host: str, port: int, bodies: list[bytes], labels: list[int], total: int,
                   clients: int, rate: float | None, limit: float, style: str, *,
                   warmup: int = 0, on_start: Callable[[], None] | None = None) -> dict:
    """`warmup` unmeasured requests, then `total` measured ones, from the same `clients`
    on the same connections: the measured ones see the server in its steady state, not
    the burst of 32 clients connecting at once (whose first answers, queued behind each
    other, would otherwise be 1.6% of 2,000 requests: the p99). on_start() runs when the
    first measured request is sent."""
    state: dict[str, Any] = {"next": 0, "latencies": [], "errors": 0, "kinds": {},
                             "right": 0, "timed_out": False, "warmup_errors": 0,
                             "start": time.perf_counter()}
    path = PATHS.get(style, "/api/predict?top_k=1")

    async def client(k: int) -> None:
        conn = Connection(host, port)
        try:
            while state["next"] < warmup + total:
                i = state["next"]
                state["next"] += 1
                measured = i >= warmup
                if i == warmup:
                    state["start"] = time.perf_counter()
                    if on_start is not None:
                        on_start()
                due = time.perf_counter()
                if rate and measured:
                    due = state["start"] + (i - warmup) / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                at = (i - warmup if measured else i) % len(bodies)  # measured: from the first
                try:
                    status, payload = await conn.post(path, bodies[at])
                except (OSError, asyncio.IncompleteReadError) as exc:
                    await conn.close()
                    if measured:
                        count_error(state, type(exc).__name__)
                    else:
                        state["warmup_errors"] += 1
                    continue
                if not measured:
                    state["warmup_errors"] += status != 200
                    continue
                state["latencies"].append(time.perf_counter() - due)
                if status != 200:
                    count_error(state, str(status))
                elif (found := DIGIT.search(payload)) and int(found.group(1)) == labels[at]:
                    state["right"] += 1
        finally:
            await conn.close()

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    state["timed_out"] = bool(pending)
    for task in done:
        task.result()
    return state


async def slow_client(host: str, port: int, kind: str, bodies: list[bytes],
                      tally: dict[str, Any]) -> None:
    """Sends slow requests one after another until cancelled (unmeasured: the figures are
    the digits')."""
    path = "/api/predict?number=true" if kind == "number" else "/api/predict"
    conn = Connection(host, port)
    try:
        for k in itertools.count():
            started = time.perf_counter()
            try:
                status, _ = await conn.post(path, bodies[k % len(bodies)])
            except OSError:
                await conn.close()
                tally["errors"] += 1
                continue
            if status == 200:
                tally["answered"] += 1
                tally["latencies"].append(time.perf_counter() - started)
            else:
                tally["errors"] += 1
    finally:
        await conn.close()


def count_error(state: dict, kind: str) -> None:
    state["errors"] += 1
    state["kinds"][kind] = state["kinds"].get(kind, 0) + 1


def rss_mib(pid: int | None) -> dict[str, float] | None:
    """Memory of the server and every process below it (uvicorn's workers), in MiB: VmRSS
    summed, which counts the shared libraries (libtorch) once per process, and Pss, which
    splits shared pages between the processes that map them."""
    if pid is None:
        return None
    rss = pss = 0
    for p in [pid, *descendants(pid)]:
        rss += _kib(f"/proc/{p}/status", "VmRSS")
        pss += _kib(f"/proc/{p}/smaps_rollup", "Pss")
    return {"rss": round(rss / 1024, 1), "pss": round(pss / 1024, 1)}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of the server and every process below it, in seconds."""
    if pid is None:
        return 0.0
    ticks = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _kib(path: str, field: str) -> int:
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def report(f: dict, args: argparse.Namespace, url: str) -> str:
    shape = {"mnist": "28x28 MNIST-style", "drawn": f"{args.size}x{args.size} dark-on-white",
             "page": f"{args.size}x{args.size} page-style (include_input)"}[args.style]
    mode = f"open loop at {f['rate']:g} requests/s" if f["rate"] else "closed loop"
    lines = [
        *([f"server     {f['server']}"] if f.get("server") else []),
        f"target     {url}  ({'--workers ' + str(f['workers']) if f['workers'] else 'external'}"
        f"{', access log on' if args.access_log and not args.url else ''},"
        f" {f['cpus']} CPUs, load average before {f['load_before'][0]:.2f})",
        f"load       {f['requests']}/{f['wanted']} requests of {shape} PNG digits, "
        f"{f['concurrency']} clients, {mode}"
        + ("  [STOPPED AT --max-seconds]" if f["timed_out"] else ""),
        f"throughput {f['requests_per_s']:.1f} requests/s over {f['seconds']:.2f} s",
        f"latency    p50 {f['p50_ms']} ms  p95 {f['p95_ms']} ms  p99 {f['p99_ms']} ms  "
        f"max {f['max_ms']} ms",
        f"errors     {f['errors']} {f['error_kinds'] or ''}".rstrip()
        + (f" (and {f['warmup_errors']} in the warm-up)" if f["warmup_errors"] else ""),
        f"answers    {f['right']}/{f['requests'] - f['errors']} right (MNIST labels)",
        *([f"slow       {f['slow_answered']} {f['slow']} requests answered meanwhile from "
           f"{f['slow_clients']} more client(s) (p50 {f['slow_p50_ms']} ms, "
           f"{f['slow_errors']} errors)"] if f["slow"] else []),
        f"server CPU {cpu(f['server_cpu_ms_per_request'])}",
        f"client CPU {f['client_cpu_ms_per_request']} ms per request (this load generator, "
        "on the same cores)",
        f"memory     server {memory(f['rss_before_mib'])} before, "
        f"{memory(f['rss_after_mib'])} after",
    ]
    return "\n".join(lines)


def cpu(ms: float | None) -> str:
    return "unknown (pass --pid)" if ms is None else f"{ms:.2f} ms per request (all its processes)"


def memory(m: dict[str, float] | None) -> str:
    return "unknown (pass --pid)" if m is None else f"RSS {m['rss']} MiB (PSS {m['pss']} MiB)"


def _stop_on(signum: int, _frame: Any) -> None:
    """SIGTERM stops the run as Ctrl+C does: main() then stops the server it started."""
    raise Stopped(signum)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on)
    try:
        main()
    except KeyboardInterrupt as stop:  # Ctrl+C, or SIGTERM (Stopped)
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"serve_load: stopped ({signal.Signals(signum).name}) before the figures; "
              "any server it started is stopped too", file=sys.stderr)
        sys.exit(128 + signum)
