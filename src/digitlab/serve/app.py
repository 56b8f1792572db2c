"""The HTTP API and the drawing page: `create_app(recognizer)` builds the FastAPI app.

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
import io
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from digitlab import __version__
from digitlab.api import Prepared, Recognizer
from digitlab.errors import DigitlabError, ImageError
from digitlab.serve.batcher import INTERNAL, DigitReader
from digitlab.serve.docs import render_docs
from digitlab.serve.logs import write_held_lines
from digitlab.serve.origin import check_origin
from digitlab.serve.upload import RequestProblem, image_bytes, read_body
from digitlab.vision import native
from digitlab.vision.decode import FORMATS, MAX_BYTES, MAX_PIXELS, plain_pixels
from digitlab.vision.png import write_grey

DEFAULT_MAX_BYTES = 5 * 2**20
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from anywhere else; the browser enforces it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

log = logging.getLogger("digitlab.serve")

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: a multipart upload in the field `file` (or `image`), or "
        "the raw bytes of a PNG, JPEG, BMP, GIF, TIFF or WebP file.",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "413": {"description": "The body is larger than the server's limit (--max-bytes), or "
                "the image has too many pixels."},
        "415": {"description": "Not an image, or not one of PNG, JPEG, BMP, GIF, TIFF, WebP."},
        "422": {"description": "No digit found; an image that is truncated, corrupt or too "
                "small; no `file` field; or bad parameters."},
    },
}


def create_app(
    recognizer: Recognizer | Callable[[], Recognizer],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cors_origin: str | None = None,
    concurrency: int | None = None,
) -> FastAPI:
    """The app. `recognizer` may be a loaded Recognizer or a function that loads one at
    start-up; `concurrency` is the number of reader threads (default: CPU count)."""
    if not 0 < max_bytes <= MAX_BYTES:
        raise DigitlabError(f"--max-bytes must be between 1 and the decoder's limit of "
                            f"{MAX_BYTES:,}, got {max_bytes:,}")
    threads = concurrency or os.cpu_count() or 1

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = DigitlabApp(
        title="digitlab", version=__version__, lifespan=lifespan,
        description="Handwritten digit recognition: POST an image to /api/predict.",
        # FastAPI's own /docs pulls Swagger UI from a CDN; digitlab serves its own page.
        docs_url=None, redoc_url=None, openapi_url="/openapi.json", **_without_telemetry(),
    )
    if cors_origin is not None:
        app.add_middleware(CORSMiddleware, allow_origins=[check_origin(cors_origin)],
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    _add_error_handlers(app)
    _add_api(app, max_bytes=max_bytes)
    _add_pages(app)
    return app


class DigitlabApp(FastAPI):
    """FastAPI, with its one hot path short-cut: POST /api/predict goes straight to the
    PredictEndpoint instead of through Starlette's middleware (ServerErrorMiddleware,
    FastAPI's telemetry and body-limit layers, ExceptionMiddleware) and router, which
    between them cost as much as the endpoint itself (in-process, best of 15: 38 -> 20 us a
    request). Its exceptions meet the same handlers the middleware would call, so errors
    answer alike; an app with middleware of its own (--cors) takes the full way round."""

    predict: PredictEndpoint | None = None  # set by _add_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.predict is None or self.user_middleware or scope["type"] != "http"
                or scope["path"] != "/api/predict" or scope["method"] != "POST"):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        sender = _Sender(send)
        try:
            await self.predict(scope, receive, sender)
        except Exception as exc:
            handler = self._handler_for(exc)
            if sender.started or handler is None:
                raise  # as through the middleware: nothing more can be sent
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            if handler is self.exception_handlers.get(Exception):
                raise  # a bug: ServerErrorMiddleware also re-raises it, for the server's log

    def _handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        """The exception handler Starlette would pick: by status code for an HTTPException,
        else the nearest class in the exception's MRO."""
        handlers = self.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        return next((handlers[k] for k in type(exc).__mro__ if k in handlers), None)


def _without_telemetry() -> dict[str, Any]:
    """FastAPI 0.16x's built-in OpenTelemetry hooks, switched off: with no provider set up
    they record nothing, yet ask OpenTelemetry for its providers (an environment lookup)
    on every request, about 4% of the server's CPU under load (py-spy). Older FastAPI
    versions have no such hooks and no such argument."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _freeze_start_up_objects() -> None:
    """What start-up made (modules, the model and its session: ~80,000 objects) lives as long
    as the server, so after one collection it is kept out of the garbage collector's sight.
    Otherwise a full collection walks all of it every few thousand requests: 20-25 ms of CPU
    that held up every request of a worker, in both workers at once (serve_load --workers 2:
    one such pause per 2,000-4,000 requests per worker, none in 6,000 once frozen)."""
    gc.collect()
    gc.freeze()


def _warm_up(recognizer: Recognizer) -> None:
    """One throw-away reading of each kind of picture, the way requests are read, so that no
    early request pays for lazy set-up: a 28x28 MNIST-style digit, a drawing on flat paper
    as the page sends it (the compiled path), and a picture whose paper darkens across it
    (the photo path, whose first call took 12.7 ms against 5.6 ms for the next; in the
    load benchmark that first call fell among the measured requests)."""
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 13:15] = 255
    drawing = np.full((140, 140), 255, np.uint8)
    drawing[30:110, 66:74] = 17
    photo = np.tile(np.linspace(120, 230, 140), (140, 1)).astype(np.uint8)
    photo[30:110, 60:70] = 40
    for image in (stroke, drawing, photo):
        prepared = _prepare(write_grey(image), False)
        recognizer.finish([prepared], recognizer.classify_prepared([prepared]))


def _add_api(app: DigitlabApp, *, max_bytes: int) -> None:
    # /api/predict is answered by a plain ASGI endpoint: FastAPI's per-request machinery
    # (solving the signature's dependencies, pydantic validation, its Request and Response
    # wrapping) cost a quarter of the server's CPU per drawn digit (serve_load, measured).
    # It is a route like the others (the way round for apps with middleware: --cors) and
    # DigitlabApp's short-cut, with the same error handlers either way; the schema comes
    # from a signature that is only documentation (_predict_doc).
    predict = PredictEndpoint(max_bytes)
    app.router.routes.append(Route("/api/predict", predict, methods=["POST"]))
    app.predict = predict
    documented = APIRoute("/api/predict", _predict_doc, methods=["POST"],
                          summary="Read the digit (or number) in an image",
                          openapi_extra=PREDICT_BODY, response_class=JSONResponse)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=[*app.routes, documented])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/api/model", summary="The model: name, size, accuracy, how it was trained")
    async def model(request: Request) -> dict[str, Any]:
        return request.app.state.recognizer.info()

    @app.get("/healthz", summary="Liveness: 200 once the model is loaded")
    async def healthz(request: Request) -> dict[str, Any]:
        return {"status": "ok", "model": request.app.state.recognizer.info().get("model")}


async def _predict_doc(
    number: bool = Query(False, description="Read a whole number (several digits) instead "
                         "of one digit."),
    top_k: int = Query(3, ge=1, le=10, description="How many best guesses to list."),
    include_input: bool = Query(False, description="Add `input_png`: the 28x28 image the "
                                "model saw, as a base64 PNG."),
) -> None:
    """The answer `digitlab predict --json` prints for the image."""


class PredictEndpoint:
    """POST /api/predict: the image in the body (raw or multipart) -> the JSON answer."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Straight from the ASGI scope: Starlette's Request and Response objects are
        # convenience this one hot endpoint does without.
        number, top_k, include_input = _query(scope["query_string"])
        headers = Headers(scope=scope)
        body = await read_body(receive, headers.get("content-length"), max_bytes=self.max_bytes)
        data = image_bytes(body, headers.get("content-type"))
        reading = await scope["app"].state.reader(data, number=number, top_k=top_k,
                                                  include_input=include_input, receive=receive)
        if reading.blank:
            raise RequestProblem(422, "no digit found in the image", reading.answer)
        await send_whole(send, {"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", b"%d" % len(reading.body)),
            (b"content-type", b"application/json")]},
            {"type": "http.response.body", "body": reading.body})


class _Sender:
    """DigitlabApp's send for the short-cut: the server's own, noting when the answer has
    started (an error can then no longer be answered)."""

    def __init__(self, send: Send) -> None:
        self.server_send, self.started = send, False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.server_send(message)


async def send_whole(send: Send, start: Message, body: Message) -> None:
    """Send an answer's start and its whole body. uvicorn writes each message to the socket
    as it comes, so an answer is two writes (and two segments the client wakes up for);
    where the server is uvicorn (its send is a RequestResponseCycle's method, which writes
    through the cycle's `transport`), both go out in one write."""
    server_send = send.server_send if isinstance(send, _Sender) else send
    cycle = getattr(server_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if not callable(getattr(transport, "write", None)):
        await send(start)
        await send(body)
        return
    gathered = _Gathered(transport)
    cycle.transport = gathered  # type: ignore[union-attr]
    try:
        await send(start)
        await send(body)
    finally:
        cycle.transport = transport  # type: ignore[union-attr]
        gathered.flush()


class _Gathered:
    """A transport's stand-in that keeps what is written until flush() (or close())."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def flush(self) -> None:
        """Write what was kept, in one write; nothing where the connection is closing (the
        client left: uvicorn too writes nothing then)."""
        if self.parts and not self.transport.is_closing():
            self.transport.write(b"".join(self.parts))
        self.parts = []

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


# What pydantic accepts for a bool in a query string (FastAPI's rules, which _predict_doc
# documents), lower-cased.
TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
# ... and for an int: ASCII digits, underscores between them, a fraction of zeros.
INTEGER = re.compile(r"\s*([+-]?[0-9](?:_?[0-9])*)(?:\.0+)?\s*", re.ASCII)


@functools.lru_cache(maxsize=128)
def _parsed(query_string: bytes) -> tuple[tuple[bool, int, bool] | None,
                                          tuple[dict[str, Any], ...]]:
    """predict_params of a raw query string, or None and its errors: a page asks the same
    few every time, and parsing one cost 8 us a request."""
    try:
        return predict_params(QueryParams(query_string)), ()
    except RequestValidationError as exc:
        return None, tuple(exc.errors())


def _query(query_string: bytes) -> tuple[bool, int, bool]:
    params, errors = _parsed(query_string)
    if params is None:
        raise RequestValidationError([dict(e) for e in errors])  # fresh: handlers may keep them
    return params


def predict_params(query: QueryParams) -> tuple[bool, int, bool]:
    """number, top_k, include_input from the query string, or RequestValidationError with
    FastAPI's wording (bad_parameters turns it into the 422 answer)."""
    errors: list[dict[str, Any]] = []

    def flag(name: str) -> bool:
        text = query.get(name)
        if text is None:
            return False
        if text.lower() in TRUE or text.lower() in FALSE:
            return text.lower() in TRUE
        errors.append({"loc": ("query", name), "input": text,
                       "msg": "Input should be a valid boolean, unable to interpret input"})
        return False

    number, include_input = flag("number"), flag("include_input")
    text, top_k = query.get("top_k"), 3
    if text is not None:
        whole = INTEGER.fullmatch(text)
        if whole is None:
            errors.append({"loc": ("query", "top_k"), "input": text, "msg": "Input should be "
                           "a valid integer, unable to parse string as an integer"})
        else:
            top_k = int(whole.group(1))
            if not 1 <= top_k <= 10:
                bound = "greater than or equal to 1" if top_k < 1 else "less than or equal to 10"
                errors.append({"loc": ("query", "top_k"), "input": text,
                               "msg": f"Input should be {bound}"})
    if errors:
        raise RequestValidationError(errors)
    return number, top_k, include_input


def _prepare(data: bytes, number: bool) -> Prepared:
    pixels = plain_pixels(data)  # the page's PNG: read once, header and all
    if pixels is not None:
        return Recognizer.prepare_decoded(pixels, number=number)
    check_header(data)
    try:
        return Recognizer.prepare(data, number=number)
    except ImageError as exc:
        # The header was fine, so it is an image, but one that cannot be used (truncated,
        # corrupt, a few pixels wide): the decoder's message says which.
        raise RequestProblem(422, str(exc)) from None


def _prepare_quickly(data: bytes) -> Prepared | None:
    """A single digit's Prepared where the quick way reads it (the page's plain PNG of a
    drawing on flat paper, the compiled preprocessing: ~0.2 ms), else None (_prepare then
    reads it after the quick ones: a photo's lighting analysis or a JPEG's decoding takes
    a few to tens of ms, which the others in its batch should not wait for)."""
    pixels = plain_pixels(data)
    return None if pixels is None else Recognizer.prepare_quickly(pixels)


def check_header(data: bytes) -> None:
    """415 for what is not an image digitlab reads, 413 for too many pixels.

    Only the header is parsed (microseconds), so the status a client gets depends on what
    the file is, never on the wording of the decoder's messages.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
        except Image.UnidentifiedImageError:
            raise RequestProblem(415, f"not an image digitlab reads ({', '.join(FORMATS)})",
                                 {"accepted": list(FORMATS)}) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestProblem(413, "the image has too many pixels",
                                 {"limit_pixels": MAX_PIXELS}) from None
        except Exception:  # a damaged header: the decoder will explain it (422)
            return
    if width * height > MAX_PIXELS:
        raise RequestProblem(413, f"the image is {width}x{height} pixels, more than the "
                             f"{MAX_PIXELS:,} pixel limit", {"limit_pixels": MAX_PIXELS})


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


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestProblem)
    async def problem(request: Request, exc: RequestProblem) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail,
                      {"Connection": "close"} if exc.close else None)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"where": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg"),
                   "got": e.get("input")} for e in exc.errors()]
        summary = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
        return _error(422, f"bad parameters: {summary}", errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, INTERNAL, type(exc).__name__)
