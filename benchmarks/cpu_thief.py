"""Run a command on an emulated slower machine: take a share of every core, in fine slices.

    python benchmarks/cpu_thief.py --share 0.45 -- python benchmarks/serve_load.py --workers 2

One thief per core, pinned to it, busy for `share` of every `--period-us` and asleep for
the rest, at a real-time priority (SCHED_FIFO), so that nothing else runs on that core
while it is busy: whatever the command does takes about 1 / (1 - share) as long, as on
a slower CPU or a virtual machine whose host takes its time (steal). Taking 45% of both
cores brings the serve benchmark (serve_load.py) to the requests/s of a machine about 1.8
times slower.

Real-time priority needs root or CAP_SYS_NICE; without it this says so and exits 2. The
kernel leaves real-time tasks at most 95% of a CPU (sched_rt_runtime_us), and every thief
ends with the command, when this process goes, or after --seconds at the latest.
Prints the share of the cores the thieves took to stderr; exits with the command's code
(128 + N for one ended by signal N, as a shell reports it). On Ctrl+C the command gets the
time to stop (a load test stops its server): from a terminal it had the SIGINT too; sent to
this process alone, it is passed on after a few seconds; exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

PRIORITY = 10  # SCHED_FIFO: above every normal task, below the kernel's own threads (50)
OWN_STOP_S = 5.0  # after Ctrl+C, how long the command has to end by itself
STOP_S = 60.0  # then, after a SIGINT of its own, before it is killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--share", type=float, default=0.45,
                        help="Share of every core to take, 0.05..0.9 (default 0.45).")
    parser.add_argument("--period-us", type=int, default=500,
                        help="Busy share * period, then asleep the rest (100..100000 us).")
    parser.add_argument("--seconds", type=float, default=900.0,
                        help="The thieves end after this long at the latest.")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="The command to run meanwhile, after `--` (none: just steal "
                        "for --seconds).")
    args = parser.parse_args()
    if not 0.05 <= args.share <= 0.9:
        parser.error(f"--share must be between 0.05 and 0.9, got {args.share:g}")
    if not 100 <= args.period_us <= 100_000:
        parser.error(f"--period-us must be between 100 and 100000, got {args.period_us}")
    if not 0 < args.seconds <= 86_400:
        parser.error(f"--seconds must be above 0 and at most 86400, got {args.seconds:g}")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if (refused := real_time_refused()) is not None:
        print(f"cpu_thief: cannot take a real-time priority here ({refused}); it needs Linux "
              "and root or CAP_SYS_NICE", file=sys.stderr)
        return 2

    cores = sorted(os.sched_getaffinity(0))
    started = time.monotonic()
    thieves = [start_thief(core, args.share, args.period_us / 1e6, args.seconds)
               for core in cores]
    code = 0
    child = None
    try:
        if command:
            try:
                child = subprocess.Popen(command)
            except OSError as exc:
                print(f"cpu_thief: cannot run {command[0]!r}: {exc}", file=sys.stderr)
                code = 127
            else:
                code = child.wait()
                code = 128 - code if code < 0 else code  # killed by a signal: as a shell says
        else:
            time.sleep(args.seconds)
    except KeyboardInterrupt:
        if child is not None:
            stop_command(child)
        code = 130
    finally:
        taken = stop_thieves(thieves)
    wall = time.monotonic() - started
    print(f"cpu_thief: took {taken / (wall * len(cores)):.0%} of {len(cores)} core(s) over "
          f"{wall:.1f} s (asked {args.share:.0%})", file=sys.stderr)
    return code


def real_time_refused() -> Exception | None:
    """Why this process may not take the thieves' real-time priority; None if it may (it
    tries, then goes back to the normal policy)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, AttributeError, OSError) as exc:
        return exc
    return None


def stop_command(child: subprocess.Popen[bytes]) -> None:
    """After Ctrl+C: a command started from the same terminal had it too, and gets OWN_STOP_S
    to end by itself; else (this process alone was interrupted) it gets a SIGINT of its own
    and STOP_S to end (a load test stops its server), then SIGKILL."""
    for send, wait in ((None, OWN_STOP_S), (signal.SIGINT, STOP_S), (signal.SIGKILL, None)):
        if send is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(send)
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # asked again: do not wait any longer
            continue


def start_thief(core: int, share: float, period: float, seconds: float) -> int:
    """A forked thief on `core`; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        steal(core, share, period, seconds)
    except BaseException:  # a thief never runs the parent's code after the fork
        code = 1
    os._exit(code)


def steal(core: int, share: float, period: float, seconds: float) -> None:
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    os.sched_setaffinity(0, {core})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
    busy, idle = share * period, (1.0 - share) * period
    clock, end = time.perf_counter, time.perf_counter() + seconds
    while (now := clock()) < end and os.getppid() == parent:
        stop = now + busy
        while clock() < stop:
            pass
        time.sleep(idle)


def stop_thieves(pids: list[int]) -> float:
    """End the thieves; the CPU seconds they took."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    taken = 0.0
    for pid in pids:
        _, _, usage = os.wait4(pid, 0)
        taken += usage.ru_utime + usage.ru_stime
    return taken


if __name__ == "__main__":
    sys.exit(main())
