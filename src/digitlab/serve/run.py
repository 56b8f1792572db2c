"""`digitlab serve`: check the settings, bind the socket, start uvicorn with one or more workers.

Everything a user can get wrong (the run, the port, the origin) is checked here, before
uvicorn starts, so it ends in one clear error line instead of a log of tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    from digitlab.api import Recognizer
    from digitlab.serve.app import DigitlabApp

SETTINGS_ENV = "DIGITLAB_SERVE_SETTINGS"  # how the parent hands its settings to each worker


@dataclass(frozen=True)
class Settings:
    run: str | None
    backend: str | None
    max_bytes: int
    cors_origin: str | None
    concurrency: int
    allowed_hosts: tuple[str, ...] = ()


def serve(
    *,
    run: Path | None,
    backend: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_bytes: int,
    cors_origin: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    access_log: bool = True,
    report: Callable[[str], None] = print,
) -> None:
    """Serve the drawing page and the API until Ctrl+C (or SIGTERM)."""
    import uvicorn

    from digitlab.serve.origin import check_origin
    from digitlab.vision.decode import MAX_BYTES

    if workers < 1:
        raise DigitlabError(f"--workers must be at least 1, got {workers}")
    if not 0 <= port <= 65535:
        raise DigitlabError(f"--port must be between 0 and 65535, got {port}")
    if not 1024 <= max_bytes <= MAX_BYTES:
        raise DigitlabError(f"--max-bytes must be between 1024 and {MAX_BYTES:,} (the image "
                            f"decoder's own limit), got {max_bytes:,}")
    if cors_origin is not None:
        check_origin(cors_origin)
    settings = Settings(run=None if run is None else str(run), backend=backend,
                        max_bytes=max_bytes,
                        cors_origin=cors_origin, concurrency=_concurrency(workers),
                        allowed_hosts=tuple(allowed_hosts))
    # A bad run fails here, before anything listens. With several workers the model is
    # tried in a throw-away process: the supervisor that stays would otherwise hold torch
    # and a model copy (~600 MB) it never uses.
    recognizer = _load(settings) if workers == 1 else None
    info = recognizer.info() if recognizer is not None else _model_info_elsewhere(settings)
    sock = _listen(host, port)
    report(f"digitlab serve: {_url(sock)}  (model {info['model']} from {info['source']}"
           f"{', onnxruntime' if info['backend'] == 'onnxruntime' else ''}"
           f"{' (exported in memory)' if info.get('exported') else ''}, "
           f"{workers} worker{'s' * (workers > 1)}, uploads up to {max_bytes:,} bytes; "
           "Ctrl+C stops it)")
    if recognizer is not None:
        from digitlab.serve.app import create_app
        from digitlab.serve.logs import lean_records
        from digitlab.serve.server import Server, server_settings

        app = create_app(recognizer, max_bytes=max_bytes, cors_origin=cors_origin,
                         concurrency=settings.concurrency,
                         allowed_hosts=settings.allowed_hosts)
        lean_records()
        server = Server(uvicorn.Config(app, **server_settings("info", access_log)))
        # uvicorn re-raises the Ctrl+C it has already handled; stopping is the normal end.
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        return
    from digitlab.serve.workers import run_workers

    run_workers(sock, workers, settings_env=(SETTINGS_ENV, json.dumps(asdict(settings))),
                access_log=access_log)


def app_from_env() -> DigitlabApp:
    """The app factory each worker process calls; settings come from the parent."""
    from digitlab.serve.app import create_app

    values = json.loads(os.environ[SETTINGS_ENV])
    settings = Settings(**{**values, "allowed_hosts": tuple(values.get("allowed_hosts", ()))})
    return create_app(partial(_load, settings),
                      max_bytes=settings.max_bytes,
                      cors_origin=settings.cors_origin, concurrency=settings.concurrency,
                      allowed_hosts=settings.allowed_hosts)


def _model_info_elsewhere(settings: Settings) -> dict[str, Any]:
    """Recognizer.info() of the settings' model, loaded in a spawned process (errors such
    as a bad run come back as raised there)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_model_info, (settings,))


def _model_info(settings: Settings) -> dict[str, Any]:
    return _load(settings).info()


def _load(settings: Settings) -> Recognizer:
    """The settings' model. torch is imported only where PyTorch runs or exports it: the
    shipped model comes with its ONNX file, which onnxruntime runs without torch.

    Without --backend a PyTorch model is served by onnxruntime where it is installed,
    exported in memory and checked against PyTorch first: the small batches a server
    makes cost far less there (benchmarks/inference.py). Where that cannot be done,
    PyTorch serves it, as --backend torch asks.
    """
    from digitlab.api import Recognizer

    # One thread per model call, as PyTorch gets in _tune_torch: concurrent requests keep
    # the cores busy, and onnxruntime's default pool spins its idle threads, which took
    # the CPU the other requests' preprocessing needed.
    recognizer = Recognizer.load(settings.run, backend=settings.backend, threads=1)
    if recognizer.info()["backend"] != "torch":
        return recognizer
    if settings.backend is None:
        try:
            return recognizer.on_onnxruntime(threads=1)
        except DigitlabError:
            pass
    _tune_torch()  # only where PyTorch runs the model: onnxruntime needs no torch at all
    return recognizer


def _tune_torch() -> None:
    import torch

    # Each request is one 28x28 image: splitting its few matrix products across threads
    # costs more than it saves, and the cores are better spent on concurrent requests.
    torch.set_num_threads(1)


def _concurrency(workers: int) -> int:
    """Images read at once per worker: enough to keep every core busy, no more."""
    return max(1, (os.cpu_count() or 1) // workers)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise DigitlabError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise DigitlabError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Listening now queues early connections until a worker has loaded its model.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
