"""What the serve tests share: texts to classify, a real uvicorn server on a free loopback port, and its client."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from fintrl.serve.app import bind

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


def classify(url: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(url + "/classify", json=body, timeout=60, **kwargs)


def counters(url: str, **kwargs) -> dict:
    return httpx.get(url + "/info", **kwargs).json()["counters"]
