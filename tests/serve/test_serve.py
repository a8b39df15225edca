"""`fintrl serve`: the real server (uvicorn on a free loopback port, in a thread or a process) with the tiny trained
run, spoken to over HTTP; the micro-batcher on its own; and the try-it page in a real headless browser."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from fintrl.cli.main import main
from fintrl.errors import ModelError
from fintrl.scoring.targets import resolve_target
from fintrl.serve.app import bind, create_app
from fintrl.serve.batcher import MicroBatcher
from tests.helpers import LABELS, ROOT

TEXTS = ["Profit doubled.", "Plant closes.", "Sales fell 10 %.", "The AGM is in May.", "Dividend raised by 5 %."]
LONG = "Revenue " + "grew again and " * 400  # well past the recipe's max_length (512 tokens): truncated


@contextmanager
def running(app) -> Iterator[str]:
    """uvicorn serving `app` on a free loopback port in a thread; on exit the thread ends and the port is closed."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server thread did not end"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.ConnectError):
            if httpx.get(url + "/health").status_code == 200:
                return
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tiny_run: Path) -> Iterator[tuple[str, object]]:
    """The run served as `fintrl serve` serves it (the model loads in the app's startup task)."""
    app = create_app(resolve_target(str(tiny_run)), max_batch_size=32, max_wait_ms=50)
    with running(app) as url:
        wait_ready(url)
        yield url, app.state.service


def classify(url: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(url + "/classify", json=body, timeout=60, **kwargs)


def counters(url: str, **kwargs) -> dict:
    return httpx.get(url + "/info", **kwargs).json()["counters"]


def test_answers_equal_fintrl_predict(served, tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, service = served
    assert main(["predict", str(tiny_run), *[arg for t in [*TEXTS, LONG] for arg in ("--text", t)]]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]
    answer = classify(url, {"texts": [*TEXTS, LONG]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "run" and body["version"].startswith("sha256:")
    assert body["calibrated"] is (getattr(service.target, "calibration", None) is not None)  # as predict does
    for want, got in zip(expected, body["results"], strict=True):
        assert got["label"] == want["label"] and list(got["probabilities"]) == LABELS
        assert all(abs(got["probabilities"][n] - want["probabilities"][n]) < 1e-5 for n in LABELS)
    assert [r["truncated"] for r in body["results"]] == [False] * len(TEXTS) + [True]
    assert service.scorer.encode_each([*TEXTS, LONG])[1] == [False] * len(TEXTS) + [True]

    single = classify(url, {"text": TEXTS[0]}).json()  # one text: the answer at the top level
    assert single["label"] == expected[0]["label"] and single["truncated"] is False and "results" not in single
    assert all(abs(single["probabilities"][n] - expected[0]["probabilities"][n]) < 1e-5 for n in LABELS)

    info = httpx.get(url + "/info").json()
    assert info["labels"] == LABELS and info["loaded"] and info["base_model"] == "tiny-mistral"
    assert info["scoring_mode"] in ("first_token", "trie") and info["max_length"] == 512
    assert info["inference"]["form"] == "dense-merged" and info["inference"]["check"]["agreement"] >= 0.995


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served) -> None:
    url, _ = served
    texts = [f"{TEXTS[i % len(TEXTS)]} (item {i})" for i in range(16)]
    alone = {t: classify(url, {"text": t}).json() for t in texts[:4]}  # scored one by one, for comparison
    before = counters(url)

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(url + "/classify", json={"text": t}) for t in texts))

    answers = asyncio.run(all_at_once())
    after = counters(url)
    assert [a.status_code for a in answers] == [200] * 16
    assert after["requests"] - before["requests"] == 16 and after["texts_scored"] - before["texts_scored"] == 16
    assert after["batches"] - before["batches"] < 16 and after["largest_batch"] > 1  # scored together
    for text, answer in zip(texts, answers):  # each request got the answer for its own text
        if text in alone:
            got, want = answer.json(), alone[text]
            assert got["label"] == want["label"]
            assert all(abs(got["probabilities"][n] - want["probabilities"][n]) < 1e-5 for n in LABELS)
    metrics = httpx.get(url + "/metrics").text
    assert f"fintrl_batches_total {after['batches']}" in metrics and "fintrl_model_loaded 1" in metrics


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


def test_a_scoring_failure_fails_that_batch_only(served, monkeypatch: pytest.MonkeyPatch) -> None:
    url, service = served
    failed_before = counters(url)["failed_batches"]

    def boom(texts: list[str], progress: bool = True) -> None:
        raise RuntimeError("out of memory, say\nsecond line")

    monkeypatch.setattr(service.scorer, "score", boom)
    answer = classify(url, {"text": TEXTS[0]})
    assert answer.status_code == 500
    assert answer.json()["detail"] == "scoring failed for this batch: RuntimeError: out of memory, say"
    monkeypatch.undo()
    again = classify(url, {"text": TEXTS[0]})
    assert again.status_code == 200 and again.json()["label"] in LABELS
    assert counters(url)["failed_batches"] == failed_before + 1


def test_health_is_503_until_the_model_is_loaded(tiny_run: Path, served) -> None:
    _, service = served
    target, gate = resolve_target(str(tiny_run)), threading.Event()

    def slow_loader(_target):
        assert gate.wait(60)
        return service.scorer, service.form  # the one already loaded

    with running(create_app(target, loader=slow_loader)) as url:
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        assert classify(url, {"text": TEXTS[0]}).status_code == 503
        assert classify(url, {"text": ""}).status_code == 422  # bad input is still bad input
        info = httpx.get(url + "/info").json()
        assert info["loaded"] is False and info["labels"] == LABELS
        gate.set()
        wait_ready(url, timeout=30)
        assert classify(url, {"text": TEXTS[0]}).json()["label"] in LABELS

    failures: list[BaseException] = []

    def broken_loader(_target):
        raise ModelError("adapter does not fit the base")

    with running(create_app(target, loader=broken_loader, on_load_error=failures.append)) as url:
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = httpx.get(url + "/health")
        assert health.status_code == 503
        assert health.json() == {"status": "failed", "detail": "ModelError: adapter does not fit the base"}
        assert "failed to load" in classify(url, {"text": TEXTS[0]}).json()["detail"]
    assert [str(e) for e in failures] == ["adapter does not fit the base"]


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


def test_one_bad_text_fails_only_its_own_request(served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A text the scorer cannot take is batched with innocent ones: the batch is scored again one text at a time, so
    only its own request fails."""
    url, service = served
    real = service.scorer.score

    def fussy(texts: list[str], progress: bool = True):
        if any("POISON" in t for t in texts):
            raise ValueError("cannot tokenize this")
        return real(texts, progress=progress)

    monkeypatch.setattr(service.scorer, "score", fussy)

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            bodies = [{"text": t} for t in (TEXTS[0], "POISON pill", TEXTS[1], TEXTS[2])]
            return await asyncio.gather(*(client.post(url + "/classify", json=b) for b in bodies))

    answers = asyncio.run(together())
    assert [a.status_code for a in answers] == [200, 500, 200, 200]
    assert "cannot tokenize this" in answers[1].json()["detail"]


def test_a_text_that_is_not_unicode_is_refused_as_bad_input(served) -> None:
    url, _ = served
    for body in ('{"text": "\\ud800 x"}', '{"texts": ["fine", "\\udfff"]}'):  # valid JSON, lone surrogates
        answer = httpx.post(url + "/classify", content=body, timeout=30)
        assert answer.status_code == 422 and "not valid Unicode" in answer.json()["detail"], answer.text
    assert classify(url, {"text": TEXTS[0]}).status_code == 200


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


def test_a_calibration_maps_every_answer(tiny_run: Path, served) -> None:
    _, service = served
    modes: list[str] = []

    def flatten(result):  # a map that also moves every label, as vector scaling may
        modes.append(result.mode)
        n = len(result.predictions)
        return dataclasses.replace(result, probabilities=np.full((n, 3), 1 / 3), predictions=[1] * n)

    app = create_app(resolve_target(str(tiny_run)), calibrate=flatten, loader=lambda _t: (service.scorer, service.form))
    with running(app) as url:
        wait_ready(url)
        answer = classify(url, {"texts": TEXTS[:2]}).json()
        assert answer["calibrated"] is True and httpx.get(url + "/info").json()["calibrated"] is True
        assert all(p == pytest.approx(1 / 3) for r in answer["results"] for p in r["probabilities"].values())
        assert [r["label"] for r in answer["results"]] == [LABELS[1]] * 2
    assert modes == [service.scorer.mode]


def test_page_and_openapi_docs(served) -> None:
    url, _ = served
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="text"' in page.text and "fetch(" in page.text and "<script src" not in page.text  # no CDN
    assert httpx.get(url + "/docs").status_code == 200
    spec = httpx.get(url + "/openapi.json").json()
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"text", "texts"}


def test_cli_serve_takes_the_key_from_the_environment_and_stops_cleanly_on_ctrl_c(tiny_run: Path) -> None:
    env = {**os.environ, "FINTRL_API_KEY": "from-env", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fintrl.cli.main", "serve", str(tiny_run), "--port", "0", "--max-wait-ms", "5"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &` without job control) hands its
        # children SIGINT ignored, and a process that starts so never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stderr.readline()
        assert first.startswith(f"fintrl: serving {tiny_run} on http://127.0.0.1:") and "API key required" in first
        url = first.split(" on ")[1].split(" ")[0]
        wait_ready(url)
        assert classify(url, {"text": TEXTS[0]}).status_code == 401
        assert classify(url, {"text": TEXTS[0]}, headers={"x-api-key": "from-env"}).json()["label"] in LABELS
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "fintrl: interrupted" in err and "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_cli_serve_on_a_busy_port_is_a_one_line_error(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(tiny_run), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_micro_batcher_fills_batches_and_isolates_a_failing_one() -> None:
    seen: list[list[str]] = []

    def score(texts: list[str]) -> list[str]:
        seen.append(texts)
        if "bad" in texts:
            raise ValueError("bad batch")
        return [t.upper() for t in texts]

    async def scenario() -> tuple[list, list]:
        batcher = MicroBatcher(score, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        try:
            ok = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(10)), batcher.submit(["a", "b"]))
            failed = await asyncio.gather(batcher.submit(["bad"]), return_exceptions=True)
            return ok, [*failed, await batcher.submit(["after"])]
        finally:
            await batcher.stop()
            stats = batcher.stats
            assert (stats.batches, stats.failed_batches, stats.texts, stats.sizes) == (4, 1, 13, {4: 3, 1: 1})

    ok, rest = asyncio.run(scenario())
    assert ok == [[f"T{i}"] for i in range(10)] + [["A", "B"]]
    assert [len(b) for b in seen[:3]] == [4, 4, 4] and isinstance(rest[0], ValueError) and rest[1] == ["AFTER"]


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/setup installs them with apt-get when run as root)",
)
def test_try_it_page_in_a_real_browser(served, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,720"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
        assert browser.find_element(By.ID, "labels").text == ", ".join(LABELS)
        assert browser.find_element(By.ID, "version").text.startswith("sha256:")
        browser.find_element(By.ID, "text").send_keys("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.")
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda b: b.find_element(By.ID, "label").text != "")
        label = browser.find_element(By.ID, "label").text
        bars = [b.get_attribute("data-label") for b in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")]
        shot = tmp_path / "serve_page.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    expected = classify(url, {"text": "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn."}).json()["label"]
    assert label == expected and bars == LABELS
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("FINTRL_TEST_ARTIFACTS"):
        artifacts = Path(os.environ["FINTRL_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, artifacts / shot.name)


def test_answers_are_not_held_back_by_nagle(tiny_run: Path) -> None:
    """asyncio turns Nagle's algorithm off only on accepted sockets whose proto says TCP (they inherit the listening
    socket's); with it on, every answer waited for the client's delayed ACK (~40 ms a request on Linux)."""
    from fintrl.serve.app import bind

    listening = bind("127.0.0.1", 0)
    with listening, socket.create_connection(listening.getsockname()[:2]):
        accepted, _ = listening.accept()
        with accepted:
            assert accepted.proto == socket.IPPROTO_TCP

            async def transport_nodelay() -> int:
                loop = asyncio.get_running_loop()
                transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
                value = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                transport.abort()
                return value

            assert asyncio.run(transport_nodelay()) != 0


def test_an_ensemble_is_served_as_predict_scores_it(
    tiny_run: Path, second_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fintrl.scoring.ensemble import FORM, resolve_ensemble

    ensemble = resolve_ensemble([str(tiny_run), str(second_run)])
    with running(create_app(ensemble.members[0], ensemble=ensemble)) as url:
        wait_ready(url)
        answer = classify(url, {"texts": TEXTS}).json()
        info = httpx.get(url + "/info").json()
    assert main(["predict", str(tiny_run), str(second_run), *[a for t in TEXTS for a in ("--text", t)]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"text"')]
    for served, predicted in zip(answer["results"], rows):
        assert served["label"] == predicted["label"]
        assert served["probabilities"] == pytest.approx(predicted["probabilities"], abs=2e-6)
    assert info["ensemble"]["members"] == [str(tiny_run), str(second_run)] and info["inference"]["form"] == FORM
    assert answer["model"] == info["model"] == "run + run" and answer["version"].count("sha256:") == 2
