"""Which requests the server answers: Host and Origin checks, nosniff, quiet logs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from digitlab.api import Recognizer
from digitlab.serve.app import create_app
from serving import digitlab_serve
from test_serve_api import drawn, problem, running


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()


@pytest.fixture(scope="module")
def digit(mnist_test_split) -> bytes:
    return drawn(mnist_test_split.images[0])


@pytest.fixture(scope="module")
def url(recognizer) -> Iterator[str]:
    with running(create_app(recognizer)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:8000", "127.0.0.1.evil",
                                  "localhost.evil:80", "10.0.0.1"])
def test_a_host_the_server_does_not_answer_to_is_421(client, digit, host):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 gets nothing back, and the
    server does no work for it."""
    body = problem(client.post("/api/predict", content=digit, headers={"Host": host}), 421,
                   "does not answer to the host")
    assert body["detail"] == {"host": host.rsplit(":", 1)[0] if host.count(":") == 1
                              else host}
    problem(client.get("/api/model", headers={"Host": host}), 421)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}",
                                  "LOCALHOST.", "[::1]:{port}", "127.0.0.2"])
def test_the_listen_address_and_loopback_names_are_answered(client, url, digit, host):
    port = url.rsplit(":", 1)[1]
    r = client.post("/api/predict", content=digit, headers={"Host": host.format(port=port)})
    assert r.status_code == 200, r.text


def test_allowed_hosts_add_names(recognizer, digit):
    app = create_app(recognizer, allowed_hosts=["digits.example", "Other.Example"])
    with running(app) as base, httpx.Client(base_url=base) as c:
        for host in ("digits.example", "digits.example:443", "other.example"):
            assert c.post("/api/predict", content=digit,
                          headers={"Host": host}).status_code == 200, host
        problem(c.get("/healthz", headers={"Host": "third.example"}), 421)
    with running(create_app(recognizer, allowed_hosts=["*"])) as base, \
            httpx.Client(base_url=base) as c:
        assert c.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1",
                                    "http://localhost"])
def test_a_request_from_another_origins_page_is_403(client, origin):
    """A no-cors POST from any web page needs no preflight: it is refused before its body is
    read (a reached endpoint would have answered 415 for these bytes)."""
    body = problem(client.post("/api/predict", content=b"not an image",
                               headers={"Origin": origin}), 403, "not allowed")
    assert body["detail"] == {"origin": origin}
    problem(client.get("/api/model", headers={"Origin": origin}), 403)


def test_the_servers_own_page_may_post(client, url, digit):
    assert client.post("/api/predict", content=digit,
                       headers={"Origin": url}).status_code == 200
    port = url.rsplit(":", 1)[1]
    assert client.post("/api/predict", content=digit, headers={
        "Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}).status_code == 200


def test_cors_allows_its_origin_only(recognizer, digit):
    app = create_app(recognizer, cors_origin="https://example.org")
    with running(app) as base, httpx.Client(base_url=base) as c:
        ok = c.post("/api/predict", content=digit, headers={"Origin": "https://example.org"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://example.org"
        problem(c.post("/api/predict", content=digit,
                       headers={"Origin": "https://evil.example"}), 403)
    with running(create_app(recognizer, cors_origin="*")) as base, \
            httpx.Client(base_url=base) as c:
        r = c.post("/api/predict", content=digit, headers={"Origin": "https://any.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_every_answer_says_nosniff(client, digit):
    answers = [
        client.post("/api/predict", content=digit),
        client.post("/api/predict", content=b"words", headers={"Content-Type": "text/plain"}),
        client.post("/api/predict?top_k=0", content=digit),
        client.get("/api/model"), client.get("/healthz"), client.get("/openapi.json"),
        client.get("/nothing"), client.get("/api/predict"), client.get("/"),
        client.get("/healthz", headers={"Host": "rebind.example"}),
        client.get("/healthz", headers={"Origin": "https://evil.example"}),
    ]
    for answer in answers:
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"], answer.url


@pytest.mark.slow
def test_digitlab_serve_prints_no_stray_lines_for_hostile_requests(mnist_test_split):
    """A malformed multipart body and a 5,000-digit top_k each get their JSON 4xx; the
    server's output holds its start line and nothing else (no bare parser lines, no
    traceback)."""
    digit = drawn(mnist_test_split.images[0])
    with digitlab_serve("--no-access-log") as served, \
            httpx.Client(base_url=served.url, timeout=60) as c:
        assert c.post("/api/predict", content=digit).status_code == 200
        problem(c.post("/api/predict", content=b"--x\r\nnonsense",
                       headers={"Content-Type": "multipart/form-data; boundary=ab"}), 400)
        problem(c.post("/api/predict", params={"top_k": "9" * 5000}, content=digit), 422)
        problem(c.post("/api/predict", content=digit, headers={"Host": "evil.example"}), 421)
        blank = np.zeros((28, 28), np.uint8)  # drawn() inverts: white paper
        problem(c.post("/api/predict", content=drawn(blank)), 422, "no digit")
    lines = [line for line in "".join(served.output).splitlines() if line.strip()]
    assert served.proc.returncode == 0
    assert lines[0].startswith("digitlab serve: http://127.0.0.1:")
    assert [line for line in lines[1:] if "uvicorn" not in line.lower()
            and not line.startswith("INFO:")] == [], lines


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_digitlab_serve_answers_its_allowed_host_names(mnist_test_split, workers):
    """`--allowed-host` reaches the app in every worker: that name is answered, another is
    421."""
    digit = drawn(mnist_test_split.images[0])
    with digitlab_serve("--no-access-log", "--workers", workers,
                        "--allowed-host", "digits.example") as served, \
            httpx.Client(base_url=served.url, timeout=60) as c:
        for _ in range(4):  # each worker in turn, with fresh connections
            assert c.post("/api/predict", content=digit,
                          headers={"Host": "digits.example", "Connection": "close"}
                          ).status_code == 200
        problem(c.post("/api/predict", content=digit, headers={"Host": "other.example"}), 421)


@pytest.mark.parametrize("origin", ["https://a.example\n", "https://a.example:99999",
                                    "https://a.example/path", "ftp://a.example"])
def test_a_cors_origin_is_a_whole_origin(origin):
    from digitlab.errors import DigitlabError
    from digitlab.serve.origin import check_origin

    with pytest.raises(DigitlabError, match="--cors takes"):
        check_origin(origin)
    assert check_origin("http://[::1]:8000") == "http://[::1]:8000"


def test_the_guard_remembers_a_bounded_number_of_host_names():
    """Host names let through are remembered so as not to be worked out again, but a
    client sending a new name with each request cannot grow that memory."""
    import asyncio

    from digitlab.serve.guard import ANSWERED_MAX, RequestGuard

    answered = []

    async def endpoint(scope, receive, send):
        answered.append(scope["headers"][0][1])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(endpoint, allowed_hosts=["*"])

    async def request(host: bytes) -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": [(b"host", host)], "server": ("127.0.0.1", 80)}
        await guard(scope, None, send)
        return sent

    async def many() -> None:
        for i in range(4 * ANSWERED_MAX):
            sent = await request(b"name%d.example" % i)
            assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]

    asyncio.run(many())
    assert len(answered) == 4 * ANSWERED_MAX
    assert len(guard._answered) <= ANSWERED_MAX
