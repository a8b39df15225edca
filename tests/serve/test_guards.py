"""What the server refuses: bad bodies (one 4xx line each), a wrong or missing API key, foreign hosts and origins
on a keyless loopback server, and a body that never arrives.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from fintrl.scoring.targets import resolve_target
from fintrl.serve.app import create_app
from tests.helpers import LABELS
from tests.serve.helpers import TEXTS, classify, counters, running, wait_ready


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"text": ""}, 422, "text: empty text"),
        ({"text": "   "}, 422, "empty text"),
        ({"text": 5}, 422, "text: Input should be a valid string"),
        ({"texts": ["fine", 3]}, 422, "texts.1: Input should be a valid string"),
        ({"texts": ["fine", " "]}, 422, "empty text at position 1"),
        ({"texts": []}, 422, "texts: List should have at least 1 item"),
        ({"texts": "not a list"}, 422, "texts: Input should be a valid list"),
        ({}, 422, 'send either "text"'),
        ({"text": "a", "texts": ["b"]}, 422, 'send either "text"'),
        ({"txt": "a"}, 422, "txt: Extra inputs are not permitted"),
        (["a", "b"], 422, "Input should be a valid dictionary"),
        ({"texts": ["a"] * 257}, 422, "too many texts: 257 in one request, at most 256"),
        (b"{not json", 400, "the body is not JSON"),
        ({"texts": ["x" * 10_000] * 200}, 413, "request body too large: at most 1048576 bytes"),
        ({"text": "y" * 2_000_000}, 413, "request body too large"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_one_line_reason(served, body: object, status: int, says: str) -> None:
    url, _ = served
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(url + "/classify", content=content, headers={"content-type": "application/json"})
    detail = answer.json()["detail"]
    assert answer.status_code == status and isinstance(detail, str) and "\n" not in detail
    assert says in detail, detail
    assert httpx.get(url + "/health").status_code == 200  # and the server is still up


def test_a_text_that_is_not_unicode_is_refused_as_bad_input(served) -> None:
    url, _ = served
    for body in ('{"text": "\\ud800 x"}', '{"texts": ["fine", "\\udfff"]}'):  # valid JSON, lone surrogates
        answer = httpx.post(url + "/classify", content=body, timeout=30)
        assert answer.status_code == 422 and "not valid Unicode" in answer.json()["detail"], answer.text
    assert classify(url, {"text": TEXTS[0]}).status_code == 200


def test_api_key_guards_everything_but_health_page_and_docs(tiny_run: Path, served) -> None:
    _, service = served
    app = create_app(resolve_target(str(tiny_run)), api_key="s3cret", loader=lambda _t: (service.scorer, service.form))
    with running(app) as url:
        wait_ready(url)  # /health needs no key
        assert httpx.get(url + "/").status_code == 200 and httpx.get(url + "/openapi.json").status_code == 200
        for wrong in ({}, {"x-api-key": "nope"}, {"authorization": "Bearer nope"}, {"authorization": "s3cret"}):
            answer = classify(url, {"text": TEXTS[0]}, headers=wrong)
            assert answer.status_code == 401 and "API key" in answer.json()["detail"]
            assert httpx.get(url + "/info", headers=wrong).status_code == 401
            assert httpx.get(url + "/metrics", headers=wrong).status_code == 401
        for right in ({"x-api-key": "s3cret"}, {"authorization": "Bearer s3cret"}):
            assert classify(url, {"text": TEXTS[0]}, headers=right).status_code == 200
            assert counters(url, headers=right)["requests"] >= 1
        info = httpx.get(url + "/openapi.json").json()["info"]  # nothing of the model without the key
        shown = json.dumps(info) + httpx.get(url + "/").text + httpx.get(url + "/health").text
        assert not any(label in shown for label in LABELS) and info["version"] == "-"
        assert f"with {service.model_id}" not in info.get("summary", "")


def test_a_keyless_loopback_server_answers_only_its_own_host_and_origin(tiny_run: Path, served) -> None:
    """No DNS-rebinding page (another Host) and no other site's form POST (another Origin) reaches it."""
    _, service = served
    app = create_app(
        resolve_target(str(tiny_run)),
        loader=lambda _t: (service.scorer, service.form),
        allowed_hosts={"127.0.0.1", "localhost"},
    )
    with running(app) as url:
        wait_ready(url)
        assert httpx.get(url + "/info", headers={"host": "evil.example"}).status_code == 403
        assert classify(url, {"text": TEXTS[0]}, headers={"origin": "http://evil.example"}).status_code == 403
        assert classify(url, {"text": TEXTS[0]}, headers={"origin": url}).status_code == 200
        assert classify(url, {"text": TEXTS[0]}).status_code == 200  # no Origin: curl, scripts


def test_a_body_that_never_arrives_is_answered(served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that declares a large Content-Length and sends less gets a 408 within the server's timeout."""
    monkeypatch.setattr("fintrl.serve.app.BODY_TIMEOUT_S", 0.5)
    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        conn.sendall(b'Content-Length: 100000\r\n\r\n{"text": ')
        start = time.monotonic()
        answer = conn.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and time.monotonic() - start < 5, answer
