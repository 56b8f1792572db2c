"""The HTTP API's contract: the answers of every endpoint as pydantic models, the request
body of /api/predict, and the limits it states.

These models write the OpenAPI schema (/openapi.json) and let tests check real answers
against it. The server itself answers with JSON it has already rendered (serve/batcher.py),
so no answer is validated again on its way out.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from digitlab.vision.decode import FORMATS, MAX_DECODE_BYTES, MIN_SIDE

# Preprocessing shrinks every picture to at most 1,600 px a side before it reads it, so
# pixels past a large phone photo's buy nothing but decoding time and memory: the limit
# keeps a 12-16 megapixel photo readable and refuses, from its header alone, the tiny
# files that claim a huge canvas.
MAX_PIXELS = 16_000_000
DEFAULT_MAX_BYTES = 5 * 2**20
TOP_K_MAX = 10


class PredictParams(BaseModel):
    """/api/predict's query parameters: validated from the query string by this model, and
    documented by it in the schema. Frozen: one parsed query string serves every request
    that sends it (serve/app.py)."""

    model_config = ConfigDict(frozen=True)

    number: bool = Field(False, description="Read a whole number (several digits) instead "
                         "of one digit.")
    top_k: int = Field(3, ge=1, le=TOP_K_MAX, description="How many best guesses to list.")
    include_input: bool = Field(False, description="Add `input_png`: the 28x28 image the "
                                "model saw, as a base64 PNG.")


class Error(BaseModel):
    """Every 4xx and 5xx answer: what went wrong, in words, and what it was about."""

    error: str = Field(description="What went wrong, in one sentence.")
    detail: Any = Field(description="Particulars, or null: the limit that was passed, the "
                        "formats accepted, each bad parameter, or (an image with no digit) "
                        "the reading itself.")


class DigitReading(BaseModel):
    """One digit of a number."""

    digit: int = Field(ge=0, le=9)
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(description="One probability per digit 0-9.")
    low_confidence: bool
    input_png: str | None = Field(None, description="With include_input=true: the 28x28 "
                                  "image the model saw, a base64 PNG.")


class DigitAnswer(BaseModel):
    """The answer for one digit (number=false)."""

    path: str | None = Field(None, description="Always null over HTTP.")
    digit: int = Field(ge=0, le=9, description="The digit read.")
    confidence: float = Field(ge=0, le=1, description="The model's probability for it.")
    probabilities: list[float] = Field(description="One probability per digit 0-9.")
    top_k: list[tuple[int, float]] = Field(description="The best guesses, best first: "
                                           "[digit, probability] pairs.")
    low_confidence: bool = Field(description="The reading is unsure: check it.")
    blank: bool = Field(description="Always false in a 200 answer.")
    input_png: str | None = Field(None, description="With include_input=true: the 28x28 "
                                  "image the model saw, a base64 PNG.")


class NumberAnswer(BaseModel):
    """The answer for a whole number (number=true): the digits left to right."""

    path: str | None = None
    number: str = Field(description="The digits read, left to right.")
    digits: list[DigitReading]
    digit: int | None = Field(None, description="Set only when the number has one digit.")
    confidence: float | None = Field(None, description="The chance the whole number is "
                                     "right: the product of its digits' confidences.")
    probabilities: list[float] | None = Field(None, description="Set only for a one-digit "
                                              "number.")
    top_k: list[tuple[int, float]]
    low_confidence: bool = Field(description="Any digit is unsure.")
    blank: bool
    input_png: str | None = None


class ModelCard(BaseModel):
    """What model answers, how it was trained and how well it did."""

    model_config = ConfigDict(extra="allow")

    source: str = Field(description="'package default' or the run's path.")
    model: str = Field(description="The model's name in digitlab's registry.")
    backend: str = Field(description="torch or onnxruntime.")
    classes: list[str]
    parameters: int | None = None
    dataset: str | None = None
    normalize: str | None = None
    test_accuracy: float | None = None
    epochs: int | None = None
    low_confidence_below: float | None = None
    model_args: dict[str, Any] | None = None


class Health(BaseModel):
    """The server is up and its model loaded."""

    status: str = Field(examples=["ok"])
    model: str | None = Field(description="The model's name.")


DIGIT_EXAMPLE = {
    "path": None, "digit": 7, "confidence": 0.998412,
    "probabilities": [1e-06, 2.1e-05, 0.000301, 2e-05, 3e-06, 1e-06, 0.0, 0.998412, 1e-05,
                      0.001231],
    "top_k": [[7, 0.998412], [9, 0.001231], [2, 0.000301]],
    "low_confidence": False, "blank": False,
}
NUMBER_EXAMPLE = {
    "path": None, "digit": None, "confidence": 0.981,
    "probabilities": None, "top_k": [], "low_confidence": False, "blank": False,
    "number": "42",
    "digits": [
        {"digit": 4, "confidence": 0.99, "low_confidence": False,
         "probabilities": [0.0, 0.0, 0.0, 0.0, 0.99, 0.0, 0.0, 0.01, 0.0, 0.0]},
        {"digit": 2, "confidence": 0.990909, "low_confidence": False,
         "probabilities": [0.0, 0.0, 0.990909, 0.009091, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]},
    ],
}
ACCEPTED = ["multipart/form-data (field 'file' or 'image')", "image/*",
            "application/octet-stream"]


def error_response(description: str, *examples: tuple[str, str, Any]) -> dict[str, Any]:
    """One status's entry in a route's `responses`: the Error model, with examples."""
    return {
        "model": Error, "description": description,
        "content": {"application/json": {"examples": {
            name: {"value": {"error": error, "detail": detail}}
            for name, error, detail in examples}}},
    }


# What any request can meet before it reaches an endpoint (serve/guard.py).
GUARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: error_response(
        "The request came from a page of another origin than the server's own, and --cors "
        "does not allow that origin.",
        ("origin", "requests from https://example.org are not allowed (see --cors)",
         {"origin": "https://example.org"})),
    421: error_response(
        "The Host header names neither the address the server listens on nor a name it was "
        "told to answer to (--allowed-host): a guard against DNS rebinding.",
        ("host", "this server does not answer to the host 'rebind.example'",
         {"host": "rebind.example"})),
}


def predict_responses(max_bytes: int) -> dict[int | str, dict[str, Any]]:
    """/api/predict's answers by status, with the server's limits in their words."""
    return {
        200: {"description": "The digit (number=false) or the number (number=true) read.",
              "content": {"application/json": {"examples": {
                  "digit": {"value": DIGIT_EXAMPLE}, "number": {"value": NUMBER_EXAMPLE}}}}},
        400: error_response(
            "A malformed multipart body, or one without a boundary; or the client left "
            "before sending the whole body.",
            ("multipart", "malformed multipart body: Expected boundary character 45, got 116 "
             "at index 2", None)),
        413: error_response(
            f"The body is larger than the server's limit ({max_bytes:,} bytes, --max-bytes), "
            f"or the image's header declares more than {MAX_PIXELS:,} pixels, or a picture "
            f"whose decoding would take more than {MAX_DECODE_BYTES // 2**20} MiB.",
            ("bytes", f"the request body is larger than the {max_bytes:,} bytes limit",
             {"limit_bytes": max_bytes}),
            ("pixels", f"the image data is 8000x6000 pixels, more than the {MAX_PIXELS:,} "
             "pixel limit", {"limit_pixels": MAX_PIXELS,
                             "limit_decode_bytes": MAX_DECODE_BYTES})),
        415: error_response(
            f"Not an image, or not one of {', '.join(FORMATS)}; or a Content-Type other than "
            "multipart/form-data, image/* or application/octet-stream.",
            ("format", f"not an image digitlab reads ({', '.join(FORMATS)})",
             {"accepted": list(FORMATS)}),
            ("content-type", "Content-Type text/plain is not an image", {"accepted": ACCEPTED})),
        422: error_response(
            f"No digit found (detail: the reading); an image smaller than {MIN_SIDE}x"
            f"{MIN_SIDE} pixels, truncated or corrupt; an empty body or file; no 'file' or "
            "'image' field; or bad query parameters (detail: one entry per parameter).",
            ("blank", "no digit found in the image",
             {**DIGIT_EXAMPLE, "digit": None, "confidence": None, "probabilities": None,
              "top_k": [], "blank": True}),
            ("small", f"the image data is only 2x2 pixels; need at least {MIN_SIDE}x{MIN_SIDE}",
             None),
            ("parameters", "bad parameters: query.top_k: Input should be less than or equal "
             "to 10", [{"where": "query.top_k", "message": "Input should be less than or "
                        "equal to 10", "got": "11"}])),
        503: {**error_response(
            "The server is too busy to take the image now, or is stopping: try again after "
            "Retry-After seconds.",
            ("busy", "the server is busy; try again shortly", None)),
            "headers": {"Retry-After": {"description": "Seconds to wait before trying again.",
                                        "schema": {"type": "integer"}}}},
        **GUARD_RESPONSES,
    }


def predict_body(max_bytes: int) -> dict[str, Any]:
    """/api/predict's request body, both ways of sending it, with the limits."""
    binary = {"type": "string", "format": "binary"}
    limits = (f"At most {max_bytes:,} bytes (413), at most {MAX_PIXELS:,} pixels (413), "
              f"at least {MIN_SIDE}x{MIN_SIDE} pixels (422); one of {', '.join(FORMATS)} "
              "(415); only the first frame of an animation is read.")
    return {"requestBody": {
        "required": True,
        "description": "The image: a multipart upload in the field `file` (or `image`), or "
                       f"the raw bytes of the file. {limits}",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "properties": {"file": binary, "image": binary},
                "anyOf": [{"required": ["file"]}, {"required": ["image"]}]}},
            "image/*": {"schema": {**binary, "maxLength": max_bytes}},
            "application/octet-stream": {"schema": {**binary, "maxLength": max_bytes}},
        },
    }}
