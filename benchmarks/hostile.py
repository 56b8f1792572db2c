"""What hostile images cost `digitlab serve`: CPU, wall time and memory per input, and how
drawn digits fare meanwhile.

    .venv/bin/python benchmarks/hostile.py                      # starts digitlab serve
    .venv/bin/python benchmarks/hostile.py --json hostile.json  # figures + machine facts
    .venv/bin/python benchmarks/hostile.py --url http://127.0.0.1:8000 --pid 1234

Sends the costly images of benchmarks/hostile_inputs.py (tiny files that decode to huge
canvases) one at a time, then --together copies of one of them at once. Each is sent
alone, for its cost; then again and again while a client sends --drawings drawn digits one
after another, for their latency (the drawings' own CPU would otherwise count as the
input's).
Per input it prints the answer, the server's CPU time (user + system, from /proc: it hardly
moves when something else shares the machine, unlike wall time), the wall time, the
server's VmRSS before and after and its peak growth (sampled, and VmHWM where it rose), and
the p99 of the drawings. Bounded: --max-seconds in all, --timeout a request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_inputs as inputs  # noqa: E402
import record  # noqa: E402
from serve_load import cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START_S = 180  # how long digitlab serve may take to start (import and load, on a busy box)


# --- the server under test ----------------------------------------------------------------


class Server:
    """`digitlab serve` on a free port of 127.0.0.1, its output in a log file; or, with
    `url`, a server already running (its pid, when given, for the /proc figures)."""

    def __init__(self, *args: str, url: str | None = None, pid: int | None = None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = None
        if url is None:
            # Open for the server's whole life; close() closes it.
            self.log_file = tempfile.NamedTemporaryFile("w+b", suffix=".log")  # noqa: SIM115
            cmd = [sys.executable, "-m", "digitlab", "serve", "--port", "0",
                   "--no-access-log", *args]
            self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            url, pid = self._started(), self.proc.pid
        self.url = url.rstrip("/")
        self.pid = pid
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.mark = 0

    def _started(self) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + START_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            found = re.search(r"^digitlab serve: (http://127\.0\.0\.1:\d+)", self.log(), re.M)
            if found:
                return found.group(1)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("digitlab serve did not start:\n" + self.log()[-2000:])

    def log(self) -> str:
        if self.log_file is None:
            return ""
        self.log_file.seek(0)
        return self.log_file.read().decode("utf-8", "replace")

    def new_log(self) -> str:
        """What the server wrote since the last call."""
        text = self.log()
        new, self.mark = text[self.mark:], len(text)
        return new

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self, field: str = "VmRSS") -> float:
        """VmRSS (or VmHWM) of the server in MB; 0 when its pid is unknown."""
        if self.pid is None:
            return 0.0
        found = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text(),
                          re.M)
        return int(found.group(1)) / 1000 if found else 0.0

    def stop(self, sig: int = signal.SIGINT, wait_s: float = 60) -> int | None:
        """Stop a server this started (killed after `wait_s`); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        if self.log_file is not None:
            self.log_file.close()


class Cost:
    """The server's CPU, wall time and memory over a `with` block, memory sampled meanwhile."""

    def __init__(self, server: Server, every_s: float = 0.005) -> None:
        self.server, self.every_s = server, every_s
        self.peak = 0.0
        self._done = threading.Event()

    def __enter__(self) -> Cost:
        s = self.server
        self.rss_before, self.hwm_before = s.memory(), s.memory("VmHWM")
        self.peak = self.rss_before
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.cpu_before, self.t0 = s.cpu(), time.monotonic()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.server.memory())

    def __exit__(self, *exc: object) -> None:
        s = self.server
        self.wall_s = time.monotonic() - self.t0
        self.cpu_s = s.cpu() - self.cpu_before
        self._done.set()
        self._thread.join(5)
        self.rss_after = s.memory()
        hwm = s.memory("VmHWM")
        if hwm > self.hwm_before:  # the high-water mark rose, so within this block
            self.peak = max(self.peak, hwm)
        self.peak = max(self.peak, self.rss_after)

    @property
    def growth(self) -> float:
        """Peak RSS growth over the block, MB."""
        return self.peak - self.rss_before

    def figures(self) -> dict[str, float]:
        return {"cpu_s": round(self.cpu_s, 3), "wall_s": round(self.wall_s, 3),
                "rss_before_mb": round(self.rss_before, 1),
                "rss_after_mb": round(self.rss_after, 1),
                "rss_peak_growth_mb": round(self.growth, 1)}


def settle(server: Server, quiet_s: float = 0.5, limit_s: float = 120) -> None:
    """Wait (at most `limit_s`) until the server has used no CPU for `quiet_s`: work left
    over from an earlier request must not be counted against the next one."""
    deadline = time.monotonic() + limit_s
    last = server.cpu()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = server.cpu()
        if now - last < 0.02:
            return
        last = now


# --- requests ------------------------------------------------------------------------------


def post(server: Server, body: bytes, content_type: str, path: str = "/api/predict",
         timeout: float = 120, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    """One POST on its own connection: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class Drawings:
    """Drawn digits sent one after another on one keep-alive connection, in a thread, until
    stopped or `count` were sent; each answer's latency in seconds."""

    def __init__(self, server: Server, count: int = 200, gap_s: float = 0.01,
                 timeout: float = 60) -> None:
        self.server, self.count, self.gap_s, self.timeout = server, count, gap_s, timeout
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = inputs.drawing()
        conn = http.client.HTTPConnection(self.server.host, self.server.port,
                                          timeout=self.timeout)
        try:
            for _ in range(self.count):
                if self._stop.is_set():
                    break
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/api/predict", body, {"Content-Type": "image/png"})
                    r = conn.getresponse()
                    r.read()
                    self.statuses.append(r.status)
                except (OSError, http.client.HTTPException):
                    self.statuses.append(0)
                    conn.close()
                self.latencies.append(time.perf_counter() - t0)
                self._stop.wait(self.gap_s)
        finally:
            conn.close()

    def __enter__(self) -> Drawings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def running(self) -> bool:
        return self._thread.is_alive()

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def concurrently(calls: list[Callable[[], object]], timeout: float) -> list[object]:
    """Run each call in its own thread; their results (or the exception each raised)."""
    results: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except Exception as err:  # noqa: BLE001 - reported as that call's result
            results[k] = err

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return results


# --- the benchmark ------------------------------------------------------------------------


def machine() -> dict[str, object]:
    """The facts a figure needs beside it: CPU, vector extensions, versions, commit, date."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    found = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(found.group(1).split()) if found else set()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpu": model.group(1).strip() if model else platform.processor(),
            "cores": os.cpu_count(), "avx512": "avx512f" in flags, "avx2": "avx2" in flags,
            "python": platform.python_version(), "torch": version("torch"),
            "pillow": version("pillow"), "onnxruntime": version("onnxruntime"),
            "commit": commit,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def one_input(server: Server, body: bytes, content_type: str, copies: int, timeout: float,
              drawings: int) -> dict[str, object]:
    """Two passes: the input alone, for its cost; then `drawings` drawn digits one after
    another while `copies` clients keep sending the input, for the drawings' latency (their
    own CPU would otherwise count as the input's)."""
    settle(server)
    with Cost(server) as cost:
        answers = concurrently([lambda: post(server, body, content_type, timeout=timeout)]
                               * copies, timeout + 5)
    statuses = [a[0] if isinstance(a, tuple) else type(a).__name__ for a in answers]
    p99, drawn = None, None
    if drawings:
        settle(server)
        deadline = time.monotonic() + timeout
        with Drawings(server, count=drawings) as drawn:
            def again() -> None:
                for _ in range(1000):  # each at least a round trip
                    if not drawn.running() or time.monotonic() > deadline:
                        return
                    post(server, body, content_type, timeout=timeout)

            concurrently([again] * copies, timeout + 5)
        p99 = drawn.p99()
    return {"bytes": len(body), "copies": copies, "statuses": statuses, **cost.figures(),
            "drawings": len(drawn.latencies) if drawn else 0,
            "drawing_p99_ms": None if p99 is None else round(p99 * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Server to target (default: start digitlab serve).")
    parser.add_argument("--pid", type=int, help="With --url: the server's pid, for /proc.")
    parser.add_argument("--inputs", default=",".join(inputs.COSTLY),
                        help="Comma-separated names of the costly inputs to send.")
    parser.add_argument("--together", default="gif_big_screen",
                        help="The input sent --copies at once afterwards ('' for none).")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--side", type=int, help="Canvas side of every costly image "
                        "(default: each input's own, near the 40-megapixel limit).")
    parser.add_argument("--drawings", type=int, default=100,
                        help="Drawings sent while each input is in flight (0: none).")
    parser.add_argument("--timeout", type=float, default=120, help="Seconds a request.")
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="Stop sending new inputs after this long.")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--result", type=Path, metavar="FILE", help="Also write the benchmark "
                        "result here (benchmarks/results/hostile.json for the docs).")
    args = parser.parse_args(argv)
    names = [n for n in args.inputs.split(",") if n]
    unknown = [n for n in [*names, args.together] if n and n not in inputs.COSTLY]
    if unknown:
        parser.error(f"unknown input {unknown[0]!r}; known: {', '.join(inputs.COSTLY)}")
    plan = [(n, 1) for n in names] + ([(args.together, args.copies)] if args.together else [])
    deadline = time.monotonic() + args.max_seconds
    server = Server(url=args.url, pid=args.pid)
    if args.url is None:
        print(f"digitlab serve (pid {server.pid}) at {server.url}", flush=True)
    results: dict[str, object] = {}
    try:
        for name, copies in plan:
            if time.monotonic() > deadline:
                print(f"--max-seconds reached; {name} x{copies} not sent")
                break
            build, content_type = inputs.COSTLY[name]
            body = build() if args.side is None else build(args.side)
            key = name if copies == 1 else f"{name} x{copies}"
            results[key] = one_input(server, body, content_type, copies,
                                     min(args.timeout, max(1.0, deadline - time.monotonic())),
                                     args.drawings)
            report(key, results[key])
    except KeyboardInterrupt:
        print("stopped")
        return 130
    finally:
        server.close()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "server": args.url or "started",
                                         "inputs": results}, indent=2) + "\n")
    record.write(args.result, benchmark="hostile", figures={"inputs": results},
                 tables=[result_table(results)])
    return 0


def result_table(results: dict[str, dict]) -> dict:
    """The benchmarks page's table: what each input cost the server, and the drawings' p99
    meanwhile."""
    rows = [[key, f"{r['bytes']:,}", ", ".join(map(str, sorted(set(r["statuses"])))),
             f"{r['cpu_s']:.2f} s", f"{r['wall_s']:.2f} s", f"+{r['rss_peak_growth_mb']:.0f} MB",
             f"{r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB",
             "-" if r["drawing_p99_ms"] is None else f"{r['drawing_p99_ms']:.1f} ms"]
            for key, r in results.items()]
    return record.table("Hostile uploads: what each costs the server (benchmarks/hostile.py)",
                        ["input", "bytes", "answer", "server CPU", "wall", "peak RSS growth",
                         "RSS before -> after", "drawings' p99 meanwhile"], rows)


def report(key: str, r: dict) -> None:
    p99 = "-" if r["drawing_p99_ms"] is None else f"{r['drawing_p99_ms']:.1f} ms"
    print(f"{key:22s} {r['bytes']:>9,} B  answers {r['statuses']}  CPU {r['cpu_s']:.2f} s  "
          f"wall {r['wall_s']:.2f} s  RSS {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB"
          f" (peak +{r['rss_peak_growth_mb']:.0f})  drawings p99 {p99} of {r['drawings']}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
