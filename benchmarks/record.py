"""What every benchmark result records, written one way by every script.

A result is one JSON file: the benchmark's name, the command that made it, its figures,
the tables the benchmarks page shows, and the conditions they were measured in (machine,
CPU model and vector extensions, torch version, git commit, date, load average).
`scripts/gen_docs.py` turns the files in benchmarks/results/ into docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_extensions() -> str:
    """The widest x86 vector extension the CPU has: it decides most of these figures."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def conditions(**extra: Any) -> dict[str, Any]:
    """The machine and software a result was measured on."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "vector": vector_extensions(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "python": platform.python_version(),
        "commit": git_commit(),
        "load_average": round(os.getloadavg()[0], 1),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        # What else the machine was doing, in the words of whoever ran it.
        "note": os.environ.get("BENCH_NOTE"),
        **extra,
    }


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """One table of the benchmarks page, cells already formatted as text."""
    return {"title": title, "columns": columns, "rows": [[str(c) for c in r] for r in rows]}


def write(path: Path | None, *, benchmark: str, figures: dict[str, Any],
          tables: list[dict[str, Any]], **extra: Any) -> None:
    """Write a result to `path` (nothing when None), atomically."""
    if path is None:
        return
    command = "python benchmarks/" + " ".join(
        [Path(sys.argv[0]).name, *map(shlex.quote, _without_json(sys.argv[1:]))])
    result = {"benchmark": benchmark, "command": command, "figures": figures,
              "tables": tables, "conditions": conditions(**extra)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"result written to {path}")


def _without_json(args: list[str]) -> list[str]:
    """The command as it decides the figures: where the result goes is left out."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--json", "--result"):
            skip = True
        elif not arg.startswith(("--json=", "--result=")):
            out.append(arg)
    return out
