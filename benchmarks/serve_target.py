"""Check the serving target again and again: three serve_load.py commands, round after
round, on this machine and on emulated slower ones, and how many runs met the target.

    python benchmarks/serve_target.py                       # 5 rounds, this machine only
    python benchmarks/serve_target.py --shares 0 0.2 0.3 0.45   # and 1.25-1.8x slower ones
    python benchmarks/serve_target.py --result benchmarks/results/serve_target.json

Each round runs, for each share in turn, `serve_load.py --workers 2` with drawn digits,
with the page's requests (`--style page`) and with those and the access log on
(`--access-log`): a fresh server each time, 2,000 measured requests from 32 clients. A
share above 0 runs the command under `cpu_thief.py --share S` (which needs root or
CAP_SYS_NICE). The target: p99 <= 20 ms at 32 concurrent clients, zero errors,
no memory growth. Prints a line per run as it ends, then a table per share; exits 1 if a
run could not be measured at all (the figures of the others are still printed), and on
Ctrl+C tables the runs done so far and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/, beside this file; STOP_S: after Ctrl+C, how long a run has to stop its server
import record
from cpu_thief import STOP_S, real_time_refused

HERE = Path(__file__).resolve().parent
COMMANDS = {  # name -> serve_load.py arguments
    "drawn": ["--workers", "2"],
    "page": ["--workers", "2", "--style", "page"],
    "page+log": ["--workers", "2", "--style", "page", "--access-log"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0],
                        help="Shares of every core to take (0: none), e.g. 0 0.2 0.3 0.45.")
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--target-ms", type=float, default=20.0, help="The p99 target.")
    parser.add_argument("--json", metavar="FILE", help="Also write every run's figures here.")
    parser.add_argument("--result", metavar="FILE", type=Path, default=None,
                        help="Also write the benchmark result (the table per share, with the "
                        "machine) here (benchmarks/results/...).")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100:
        parser.error(f"--rounds must be 1..100, got {args.rounds}")
    bad = [s for s in args.shares if s != 0 and not 0.05 <= s <= 0.9]
    if bad:
        parser.error(f"each share must be 0 or between 0.05 and 0.9, got {bad[0]:g}")
    if args.requests < 100 or args.warmup < 0:
        parser.error("--requests must be at least 100 and --warmup at least 0")
    if any(args.shares) and real_time_refused() is not None:
        print("serve_target: shares above 0 need cpu_thief.py's real-time priority (root or "
              "CAP_SYS_NICE on Linux); run with --shares 0 here", file=sys.stderr)
        return 2

    runs: list[dict] = []
    failed = 0
    stopped = False
    try:
        for round_ in range(1, args.rounds + 1):
            for share in args.shares:
                for name in args.commands:
                    figures = run_once(name, share, args)
                    if figures is None:
                        failed += 1
                        continue
                    figures.update(command=name, share=share, round=round_)
                    runs.append(figures)
                    print(run_line(figures, args.target_ms), flush=True)
    except KeyboardInterrupt:  # Ctrl+C: the run under way stops its server; table the rest
        stopped = True
        print(f"\nserve_target: stopped after {len(runs)} run(s)", file=sys.stderr)
    print()
    print(table(runs, args.shares, args.target_ms))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    if runs:
        lines = table(runs, args.shares, args.target_ms).splitlines()[1:]
        record.write(args.result, benchmark="serve_target", figures={"runs": runs},
                     tables=[record.table(
                         f"`digitlab serve` under load: {args.requests:,} requests from 32 "
                         f"clients, two workers; target p99 <= {args.target_ms:g} ms, no "
                         f"errors ({', '.join(args.commands)}; {args.rounds} round(s))",
                         [c.strip() for c in lines[0].strip("|").split("|")],
                         [[c.strip() for c in row.strip("|").split("|")] for row in lines[2:]])])
    if failed:
        print(f"serve_target: {failed} run(s) gave no figures (see above)", file=sys.stderr)
    return 130 if stopped else 1 if failed else 0


def run_once(name: str, share: float, args: argparse.Namespace) -> dict | None:
    """One serve_load.py run (under the thief for a share above 0): its figures, or None
    after saying why there are none."""
    load = [sys.executable, str(HERE / "serve_load.py"), *COMMANDS[name],
            "--requests", str(args.requests), "--warmup", str(args.warmup), "--json"]
    thief = [sys.executable, str(HERE / "cpu_thief.py"), "--share", str(share), "--"]
    # In a process group of its own (the thieves, serve_load, the server and its workers),
    # so that Ctrl+C reaches all of it from here, however it reached this script.
    child = subprocess.Popen([*thief, *load] if share else load, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate()
    except KeyboardInterrupt:
        stop_group(child)
        raise
    lines = out.strip().splitlines()
    if child.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = (err.strip() or out.strip()).splitlines()[-3:]
        print(f"{time.strftime('%H:%M:%S')} {name} share {share:g}: no figures (exit "
              f"{child.returncode}): {' / '.join(tail)}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1])


def stop_group(child: subprocess.Popen[str]) -> None:
    """Ctrl+C for the run under way: serve_load stops its server, the thieves end; killed
    if that takes over STOP_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    try:
        child.communicate(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()


def met(f: dict, target_ms: float) -> bool:
    return (f["p99_ms"] is not None and f["p99_ms"] <= target_ms and f["errors"] == 0
            and not f["timed_out"] and f["requests"] == f["wanted"])


def run_line(f: dict, target_ms: float) -> str:
    rss = (f["rss_after_mib"] or {}).get("rss")
    return (f"{time.strftime('%H:%M:%S')} round {f['round']} share {f['share']:g} "
            f"{f['command']:8s} {f['requests_per_s']:8.1f} requests/s  p99 {f['p99_ms']:6.2f} ms"
            f"  CPU {f['server_cpu_ms_per_request']} ms  errors {f['errors']}  right "
            f"{f['right']}/{f['requests']}  RSS after {rss} MiB  "
            f"{'met' if met(f, target_ms) else 'MISSED'}")


def span(values: list[float], digits: int = 1) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}" if values else "-"


def table(runs: list[dict], shares: list[float], target_ms: float) -> str:
    rows = ["| share taken from each core | like a machine | runs within target | "
            "p99 (median) | requests/s | server CPU a request | errors | right | "
            "RSS after |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for share in dict.fromkeys(shares):
        these = [f for f in runs if f["share"] == share]
        if not these:
            continue
        p99 = [f["p99_ms"] for f in these]
        cpu = [f["server_cpu_ms_per_request"] for f in these if f["server_cpu_ms_per_request"]]
        rss = [f["rss_after_mib"]["rss"] for f in these if f["rss_after_mib"]]
        like = "this one" if not share else f"{1 / (1 - share):.2f} times slower"
        rows.append(
            f"| {share:g} | {like} | {sum(met(f, target_ms) for f in these)} of {len(these)} | "
            f"{span(p99)} ms ({statistics.median(p99):.1f}) | "
            f"{span([f['requests_per_s'] for f in these], 0)} | {span(cpu, 2)} ms | "
            f"{sum(f['errors'] for f in these)} | "
            f"{sum(f['right'] for f in these)}/{sum(f['requests'] for f in these)} | "
            f"{span(rss)} MiB |")
    return (f"Target: p99 <= {target_ms:g} ms, no errors (32 clients).\n" + "\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
