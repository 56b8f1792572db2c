"""The HTTP API keeps the contract its OpenAPI schema states: the committed snapshot, real
answers against the response models, Schemathesis against a real `digitlab serve`, and the
typed client of docs/guides/typed-client.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

from digitlab import __version__
from digitlab.api import Recognizer
from digitlab.serve.app import create_app
from digitlab.serve.models import (
    DigitAnswer,
    Error,
    Health,
    ModelCard,
    NumberAnswer,
)
from serving import digitlab_serve
from test_serve_api import drawn, fake_png, png, running

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "docs" / "reference" / "openapi.json"
GUIDE = ROOT / "docs" / "guides" / "typed-client.md"
REGENERATE = "python -m digitlab.serve.schema > docs/reference/openapi.json"


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()


@pytest.fixture(scope="module")
def client(recognizer) -> Iterator[httpx.Client]:
    with running(create_app(recognizer)) as base, httpx.Client(base_url=base, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def schema(client) -> dict:
    return client.get("/openapi.json").json()


def test_the_published_schema_is_the_committed_snapshot(schema):
    """A change to the contract is a deliberate one: it comes with a new snapshot."""
    assert schema == json.loads(SNAPSHOT.read_text()), f"regenerate it: {REGENERATE}"
    assert schema["info"]["version"] == __version__


def test_every_error_status_is_declared_with_the_error_model(schema):
    error = "#/components/schemas/Error"
    for path, item in schema["paths"].items():
        for method, op in item.items():
            statuses = {int(s) for s in op["responses"]}
            assert {403, 421} <= statuses, (path, method)  # RequestGuard's, on every path
            for status, answer in op["responses"].items():
                content = answer["content"]["application/json"]
                if int(status) >= 400:
                    assert content["schema"] == {"$ref": error}, (path, status)
                    assert content["examples"], (path, status)
    predict = schema["paths"]["/api/predict"]["post"]["responses"]
    assert set(predict) == {"200", "400", "403", "413", "415", "421", "422", "503"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_the_request_body_states_both_forms_and_the_limits(schema):
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "image/*",
                                    "application/octet-stream"}
    form = body["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"file", "image"}
    assert "16,000,000 pixels" in body["description"] and "4x4" in body["description"]
    assert "5,242,880 bytes" in body["description"]


def answer_of(model: type[BaseModel], r: httpx.Response, status: int) -> BaseModel:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    return model.model_validate_json(r.content, strict=True)


@pytest.mark.slow
def test_real_answers_fit_the_models(client, mnist_test_split):
    digit = drawn(mnist_test_split.images[0])
    got = answer_of(DigitAnswer, client.post("/api/predict?include_input=true",
                                             content=digit), 200)
    assert got.digit == int(mnist_test_split.labels[0]) and got.input_png
    row = np.hstack([255 - mnist_test_split.images[i] for i in (1, 2)])
    number = answer_of(NumberAnswer, client.post("/api/predict?number=true",
                                                 files={"file": ("n.png", png(row))}), 200)
    assert len(number.number) == 2 and len(number.digits) == 2
    answer_of(ModelCard, client.get("/api/model"), 200)
    answer_of(Health, client.get("/healthz"), 200)


def test_every_error_fits_the_error_model(client):
    errors = [
        (client.post("/api/predict", content=b"x", headers={
            "Content-Type": "multipart/form-data; boundary=a"}), 400),
        (client.post("/api/predict", content=fake_png(8000, 6000)), 413),
        (client.post("/api/predict", content=b"words", headers={"Content-Type": "text/plain"}),
         415),
        (client.post("/api/predict", content=png(np.zeros((1, 1), np.uint8))), 422),
        (client.post("/api/predict?top_k=11", content=b"x"), 422),
        (client.post("/api/predict", content=png(np.full((40, 40), 255, np.uint8))), 422),
        (client.get("/healthz", headers={"Host": "rebind.example"}), 421),
        (client.get("/api/model", headers={"Origin": "https://evil.example"}), 403),
        (client.get("/nothing"), 404),
    ]
    for r, status in errors:
        answer_of(Error, r, status)


@pytest.mark.slow
def test_schemathesis_finds_no_break_of_the_contract(tmp_path):
    """Schemathesis reads /openapi.json of a real `digitlab serve` and sends what it
    generates from it, every check on (tests/schemathesis.toml: seed, example budget, and
    the one check setting the schema cannot express)."""
    pytest.importorskip("schemathesis")
    with digitlab_serve("--no-access-log") as served:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file",
             str(ROOT / "tests" / "schemathesis.toml"), "--no-color", "run",
             f"{served.url}/openapi.json", "--checks", "all", "--wait-for-schema", "60"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache goes there
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary
    assert re.search(r"\d+ generated, (\d+) passed", summary), summary
    assert "Traceback" not in "".join(served.output)


@pytest.mark.slow
def test_the_typed_client_guide_reads_a_digit(mnist_test_split, tmp_path):
    """The guide's generated models and its example, run as written against a real server."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 2
    image = tmp_path / "digit.png"
    image.write_bytes(drawn(mnist_test_split.images[0]))
    with digitlab_serve("--no-access-log") as served:
        script = "\n".join(blocks).replace("http://127.0.0.1:8000", served.url) \
            .replace("digit.png", str(image))
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith(
        f"{int(mnist_test_split.labels[0])} ")
