"""`fintrl serve` over HTTP with the tiny trained run: the same answers as `fintrl predict`, batched requests each
answered alone, a failure kept to its batch, health while the model loads, calibration and ensembles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fintrl.cli.main import main
from fintrl.errors import ModelError
from fintrl.scoring.targets import resolve_target
from fintrl.serve.app import bind, create_app
from tests.helpers import LABELS
from tests.serve.helpers import LONG, TEXTS, classify, counters, running, wait_ready


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


def test_answers_are_not_held_back_by_nagle(tiny_run: Path) -> None:
    """asyncio turns Nagle's algorithm off only on accepted sockets whose proto says TCP (they inherit the listening
    socket's); with it on, every answer waited for the client's delayed ACK (~40 ms a request on Linux)."""

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
