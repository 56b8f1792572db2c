"""`digitlab serve`: the drawing page and the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digitlab.cli.options import Backend


def serve(
    run: Annotated[Path | None, typer.Option(
        "--run", envvar="DIGITLAB_SERVE_RUN", help="Run directory, weights file or exported "
        ".onnx (default: the model shipped with digitlab).")] = None,
    backend: Annotated[Backend | None, typer.Option(
        help="torch, or onnxruntime (default: onnxruntime where installed: the shipped "
        "model's ONNX file, or a run's model exported to it in memory at start-up; else "
        "torch).")] = None,
    host: Annotated[str, typer.Option(
        envvar="DIGITLAB_SERVE_HOST", help="Address to listen on (0.0.0.0: every interface; "
        "put a reverse proxy in front for anything beyond this machine).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        envvar="DIGITLAB_SERVE_PORT", help="Port to listen on (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option(
        help="Server processes, each with its own model copy.")] = 1,
    max_bytes: Annotated[int, typer.Option(
        "--max-bytes", help="Largest upload accepted, in bytes (bigger ones get 413).")
    ] = 5 * 2**20,
    cors: Annotated[str | None, typer.Option(
        "--cors", help="Allow this origin (or '*') to call the API from its pages; off by "
        "default.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="A host name the server answers to besides the address it "
        "listens on and loopback names (repeatable; '*': any). Other Host headers get 421.")
    ] = None,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="Log one line per request.")] = True,
) -> None:
    """Serve the drawing page at / and the HTTP API at /api (docs at /docs)."""
    from digitlab.serve.run import serve

    serve(run=run, backend=backend, host=host, port=port, workers=workers,
          max_bytes=max_bytes, cors_origin=cors, allowed_hosts=tuple(allowed_host or ()),
          access_log=access_log, report=typer.echo)
