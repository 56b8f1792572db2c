"""The HTTP API and the drawing page: `create_app(recognizer)` builds the app.

The recognizer is loaded once, before the first request. Its work (decoding, preprocessing,
the model) runs in reader threads (serve/batcher.py), so the event loop keeps accepting and
answering requests while digits are being read. A request a client got wrong is a 4xx with
a JSON body {"error": ..., "detail": ...}; only a bug in digitlab is a 500, and even then
the answer is JSON and the next request is served normally.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from digitlab import __version__
from digitlab.api import Recognizer
from digitlab.errors import DigitlabError, ImageError
from digitlab.inputs import Prepared
from digitlab.serve.batcher import INTERNAL, DigitReader
from digitlab.serve.docs import render_docs
from digitlab.serve.guard import RequestGuard, first_values
from digitlab.serve.logs import write_held_lines
from digitlab.serve.models import (
    DEFAULT_MAX_BYTES,
    GUARD_RESPONSES,
    MAX_PIXELS,
    DigitAnswer,
    Health,
    ModelCard,
    NumberAnswer,
    PredictParams,
    predict_body,
    predict_responses,
)
from digitlab.serve.origin import check_origin
from digitlab.serve.upload import RequestProblem, image_bytes, read_body
from digitlab.vision import native
from digitlab.vision.decode import (
    FORMATS,
    MAX_BYTES,
    MAX_DECODE_BYTES,
    TooLarge,
    UnknownFormat,
    decode_image,
    plain_pixels,
)
from digitlab.vision.png import write_grey

__all__ = ["DEFAULT_MAX_BYTES", "MAX_PIXELS", "DigitlabApp", "create_app"]

STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from anywhere else; the browser enforces it. (nosniff: every
# answer gets it, from RequestGuard.)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}

log = logging.getLogger("digitlab.serve")


def create_app(
    recognizer: Recognizer | Callable[[], Recognizer],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cors_origin: str | None = None,
    concurrency: int | None = None,
    allowed_hosts: Iterable[str] = (),
) -> DigitlabApp:
    """The app. `recognizer` may be a loaded Recognizer or a function that loads one at
    start-up; `concurrency` is the number of reader threads (default: CPU count);
    `allowed_hosts`: host names the server answers to besides the address it was reached
    at (and localhost on loopback), '*' for any (serve/guard.py)."""
    if not 0 < max_bytes <= MAX_BYTES:
        raise DigitlabError(f"--max-bytes must be between 1 and the decoder's limit of "
                            f"{MAX_BYTES:,}, got {max_bytes:,}")
    threads = concurrency or os.cpu_count() or 1

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = recognizer if isinstance(recognizer, Recognizer) else recognizer()
        # Throw-away readings, so that the first visitors do not pay for lazy set-up.
        await anyio.to_thread.run_sync(_warm_up, loaded)
        app.state.recognizer = loaded
        app.state.reader = DigitReader(loaded, _prepare, threads=threads,
                                       quick=_prepare_quickly if native.flat else None)
        app.state.reader.start()
        _freeze_start_up_objects()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(app.state.reader.stop)
            gc.unfreeze()
            write_held_lines()

    api = FastAPI(
        title="digitlab", version=__version__,
        description="Handwritten digit recognition: POST an image to /api/predict. Every "
        "error is JSON: {\"error\": ..., \"detail\": ...}.",
        # FastAPI's own /docs pulls Swagger UI from a CDN; digitlab serves its own page.
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        exception_handlers=_error_handlers(outermost=False), **_without_telemetry(),
    )
    _add_api(api, max_bytes=max_bytes)
    _add_pages(api)
    # The guard first: a request it refuses reaches no other middleware and no endpoint.
    middleware = [Middleware(RequestGuard, allowed_hosts=list(allowed_hosts),
                             cors_origin=cors_origin)]
    if cors_origin is not None:
        middleware.append(Middleware(CORSMiddleware, allow_origins=[check_origin(cors_origin)],
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type"]))
    return DigitlabApp(api, PredictEndpoint(max_bytes), middleware=middleware,
                       lifespan=lifespan)


class DigitlabApp(Starlette):
    """The served app: a Starlette app that answers POST /api/predict itself and hands
    every other request to the FastAPI app mounted behind it (`api`: the pages, the model
    card, the schema). The one endpoint that carries the load so passes through
    Starlette's layers only, not FastAPI's as well
    (docs/decisions/0002-predict-as-a-starlette-route.md). Both share one state (the
    recognizer and its reader) and one set of error handlers."""

    def __init__(self, api: FastAPI, predict: PredictEndpoint, *,
                 middleware: list[Middleware], lifespan: Any) -> None:
        super().__init__(routes=[Route("/api/predict", predict, methods=["POST"]),
                                 Mount("", app=api)],
                         middleware=middleware, lifespan=lifespan,
                         exception_handlers=_error_handlers(outermost=True))
        self.api = api
        api.state = self.state

    def openapi(self) -> dict[str, Any]:
        """The HTTP API's OpenAPI schema, as /openapi.json serves it."""
        return self.api.openapi()


def _without_telemetry() -> dict[str, Any]:
    """FastAPI 0.16x's built-in OpenTelemetry hooks, switched off with its documented
    `telemetry` argument: with no provider set up they record nothing, yet ask
    OpenTelemetry for its providers (an environment lookup) on every request. Older
    FastAPI versions have no such hooks and no such argument."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _freeze_start_up_objects() -> None:
    """What start-up made (modules, the model and its session) lives as long as the server,
    so after one collection it is kept out of the garbage collector's sight. Otherwise a
    full collection walks all of it every few thousand requests, and every request of that
    worker waits for it."""
    gc.collect()
    gc.freeze()


def _warm_up(recognizer: Recognizer) -> None:
    """One throw-away reading of each kind of picture, the way requests are read, so that no
    early request pays for lazy set-up: a 28x28 MNIST-style digit, a drawing on flat paper
    as the page sends it (the compiled path), and a picture whose paper darkens across it
    (the photo path, whose first call costs about twice the next)."""
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 13:15] = 255
    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    photo = np.tile(np.linspace(120, 230, 140), (140, 1)).astype(np.uint8)
    photo[30:110, 60:70] = 40
    for image in (stroke, drawing, photo):
        prepared = _prepare(write_grey(image), False)
        recognizer.finish([prepared], recognizer.classify_prepared([prepared]))


def _add_api(app: FastAPI, *, max_bytes: int) -> None:
    # /api/predict is served by DigitlabApp in front of this app, not by a FastAPI route:
    # FastAPI's per-request machinery (its middleware, solving the signature's
    # dependencies, its Request wrapping) costs a sizeable share of the server's CPU per
    # drawn digit (docs/decisions/0002-predict-as-a-starlette-route.md). Its schema comes
    # from a FastAPI route that only documents it, with the same PredictParams model as its
    # parameters. Here the path answers other methods with a 405.
    app.router.routes.append(Route("/api/predict", PredictEndpoint(max_bytes),
                                   methods=["POST"], include_in_schema=False))
    documented = APIRoute("/api/predict", _predict_doc, methods=["POST"],
                          summary="Read the digit (or number) in an image",
                          response_model=DigitAnswer | NumberAnswer,
                          responses=predict_responses(max_bytes),
                          openapi_extra=predict_body(max_bytes))

    def openapi() -> dict[str, Any]:  # FastAPI's documented way to extend the schema
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=[*app.routes, documented])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/api/model", summary="The model: name, size, accuracy, how it was trained",
             response_model=ModelCard, responses=GUARD_RESPONSES)
    async def model(request: Request) -> Response:
        return JSONResponse(request.app.state.recognizer.info())

    @app.get("/healthz", summary="Liveness: 200 once the model is loaded",
             response_model=Health, responses=GUARD_RESPONSES)
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok",
                             "model": request.app.state.recognizer.info().get("model")})


async def _predict_doc(params: Annotated[PredictParams, Query()]) -> None:
    """The answer `digitlab predict --json` prints for the image."""


class PredictEndpoint:
    """POST /api/predict: the image in the body (raw or multipart) -> the JSON answer."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = predict_params(scope["query_string"])
        length, kind = first_values(scope["headers"], b"content-length", b"content-type")
        # The body is counted against the limit while it streams in (serve/upload.py).
        body = await read_body(receive, length, max_bytes=self.max_bytes)
        data = image_bytes(body, kind)
        reading = await scope["app"].state.reader(data, number=params.number,
                                                  top_k=params.top_k,
                                                  include_input=params.include_input,
                                                  receive=receive)
        if reading.blank:
            raise RequestProblem(422, "no digit found in the image", reading.answer)
        # Rendered by the reader already: sent as it is, not validated again.
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(reading.body))]})
        await send({"type": "http.response.body", "body": reading.body})


@functools.lru_cache(maxsize=256)
def predict_params(query_string: bytes) -> PredictParams:
    """The query string's parameters, validated by pydantic as FastAPI would validate them,
    or RequestValidationError (answered as a 422 by bad_parameters).

    Clients send the same few query strings again and again (the page one or two), and
    parsing one is a sizeable part of what the event loop does for a request; a bounded
    cache keeps each parsed once. Refusals are raised, so never cached."""
    try:
        return PredictParams.model_validate(dict(QueryParams(query_string)))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None


def _prepare(data: bytes, number: bool) -> Prepared:
    """The image read and preprocessed, or the client's problem: 415 for what is not an
    image digitlab reads, 413 for a picture too large to decode here (refused from its
    header, before any decoding), 422 for one that cannot be used (truncated, corrupt, a
    few pixels wide: the decoder's message says which)."""
    # The page's PNG is read at once, header and all; anything else by Pillow.
    pixels = plain_pixels(data, max_pixels=MAX_PIXELS)
    if pixels is not None:
        return Recognizer.prepare_decoded(pixels, number=number)
    try:
        grey = decode_image(data, max_pixels=MAX_PIXELS)
    except UnknownFormat:
        raise RequestProblem(415, f"not an image digitlab reads ({', '.join(FORMATS)})",
                             {"accepted": list(FORMATS)}) from None
    except TooLarge as exc:
        raise RequestProblem(413, str(exc), {"limit_pixels": MAX_PIXELS,
                                             "limit_decode_bytes": MAX_DECODE_BYTES}) from None
    except ImageError as exc:
        raise RequestProblem(422, str(exc)) from None
    return Recognizer.prepare_decoded(grey, number=number)


def _prepare_quickly(data: bytes) -> Prepared | None:
    """A single digit's Prepared where the quick way reads it (the page's plain PNG of a
    drawing on flat paper, the compiled preprocessing), else None (the slow lane then reads
    it with _prepare: a photo's lighting analysis or a JPEG's decoding takes tens of times
    longer, which the others in its batch should not wait for)."""
    pixels = plain_pixels(data, max_pixels=MAX_PIXELS)
    return None if pixels is None else Recognizer.prepare_quickly(pixels)


def _add_pages(app: FastAPI) -> None:
    # Read once at start-up: requests name one of these three files, never a path.
    folder = resources.files("digitlab.serve") / "static"
    static = {name: (folder / name).read_bytes() for name in STATIC_TYPES}
    docs: list[str] = []

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(static["index.html"], media_type=STATIC_TYPES["index.html"],
                        headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        if not docs:
            docs.append(render_docs(app.openapi()))
        return HTMLResponse(docs[0], headers=PAGE_HEADERS)


def _error(status: int, error: str, detail: Any = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": jsonable_encoder(detail)}, status_code=status,
                        headers=headers)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestProblem)
    return _error(exc.status, exc.error, exc.detail,
                  {"Connection": "close"} if exc.close else None)


async def _bad_parameters(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"where": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg"),
               "got": e.get("input")} for e in exc.errors()]
    summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
    return _error(422, f"bad parameters: {summary}", errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))


async def _bug(request: Request, exc: Exception) -> Response:
    """A bug in the mounted app: answered there, inside RequestGuard (which adds nosniff)."""
    return _error(500, INTERNAL, type(exc).__name__)


async def _logged_bug(request: Request, exc: Exception) -> Response:
    """A bug anywhere, met by the app in front: logged, and answered where nothing has been
    yet. This handler runs outside every middleware (Starlette's ServerErrorMiddleware),
    RequestGuard's nosniff included."""
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _error(500, INTERNAL, type(exc).__name__, {"X-Content-Type-Options": "nosniff"})


def _error_handlers(*, outermost: bool) -> dict[Any, Callable[..., Any]]:
    """The handlers that turn every error into a JSON answer. An unexpected error in the
    mounted app is answered there and raised on to the app in front, whose handler then
    logs it: so only that one logs."""
    return {RequestProblem: _problem, RequestValidationError: _bad_parameters,
            HTTPException: _http_error, Exception: _logged_bug if outermost else _bug}
