"""`fintrl serve` as a command: the API key from the environment, a clean stop on Ctrl-C, a busy port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fintrl.cli.main import main
from tests.helpers import LABELS, ROOT
from tests.serve.helpers import TEXTS, classify, wait_ready


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
