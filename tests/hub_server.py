"""A tiny in-memory Hugging Face Hub, served on 127.0.0.1, for tests.

Why: publishing code talks to the Hub through the real, unmodified clients
(``huggingface_hub``, ``transformers``, ``peft``).  Mocking those clients would
only test the mocks; this server speaks just enough of the Hub's HTTP API for
them to create repos, commit, tag, list and download.

Scope, deliberately small and standard-library only:

* repos live in memory (``tests/hub_api.py``: the repo endpoints and their state);
* preupload always answers ``uploadMode: "regular"``, so file content travels
  base64 inside the commit payload and neither Git-LFS nor Xet is involved;
* repo ids are ``namespace/name``; no pull requests, no pagination, no Range;
* bounded: loopback only, a body-size cap, a socket timeout per request,
  daemon threads, and ``shutdown()`` when the context manager exits;
* ``POST /api/validate-yaml`` checks a card's metadata with huggingface_hub's
  own parser (``yaml.safe_load``, then ``ModelCard``/``DatasetCard`` with
  ``ignore_metadata_errors=False``, which parses ``model-index``) and answers
  400 with ``{"errors": [{"message": ...}]}`` like the real Hub, so the
  client's upload fails with ``ValueError("Invalid metadata in README.md...")``.

Fault injection, for retry tests::

    hub.inject(method="POST", path_contains="/commit/", fault="500", times=2)

The next ``times`` requests (1..1000) whose method is ``method`` (any method
when ``None``) and whose raw path contains ``path_contains`` get ``fault``:

* ``"500"``, ``"502"``, ``"503"``: a JSON error answer with that status;
* ``"drop"``: the request body is read, then the connection is closed without
  an answer (the client sees ``httpx.RemoteProtocolError``, a TransportError);
* ``"slow"``: the answer comes after ``delay`` seconds (0 < delay <= 5).

With ``after=True`` the request is handled first (a commit lands, a tag is
made) and only its answer is replaced: the "it worked but the client never
heard" case.  Faults are consumed in the order they were injected; each
returned :class:`Fault` counts its ``hits``; faulted requests are still
recorded in ``hub.requests``.  ``hub.clear_faults()`` drops the rest.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.hub_api import API_TYPES, File, HubApi, HubError, validate_yaml

MAX_BODY_BYTES = 64 * 1024 * 1024  # tests upload tiny files; refuse anything big
FAULTS = ("500", "502", "503", "drop", "slow")
MAX_FAULT_DELAY = 5.0  # seconds: a "slow" answer never holds a test longer than this
MAX_FAULT_TIMES = 1000


@dataclass
class Fault:
    """One injected fault (see the module docstring); ``hits`` counts the requests it answered."""

    method: str | None
    path_contains: str
    fault: str
    times: int
    delay: float = 0.0
    after: bool = False
    hits: int = 0

    @property
    def status(self) -> int:
        return int(self.fault)

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and self.method in (None, method) and self.path_contains in path


class LocalHub(HubApi):
    """The server over :class:`HubApi`'s repos: routing, faults, HTTP.  ``with LocalHub() as hub:`` serves on a free
    loopback port.

    ``hub.seen_tokens`` lists every bearer token received (for secret-leak
    tests); ``hub.requests`` lists ``(method, path)`` in arrival order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.token = "hf_test_" + secrets.token_hex(12)
        self.seen_tokens: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()  # one request at a time: simple and race-free
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> LocalHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps shutdown() (i.e. fixture teardown) fast.
        serve = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="local-hub", daemon=True)
        serve.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- fault injection -----------------------------------------------------
    def inject(
        self,
        *,
        method: str | None = None,
        path_contains: str = "",
        fault: str | int = "500",
        times: int = 1,
        delay: float = 0.0,
        after: bool = False,
    ) -> Fault:
        """Make the next ``times`` matching requests fail with ``fault`` (see the module docstring)."""
        fault = str(fault)
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, not {fault!r}")
        if not 1 <= times <= MAX_FAULT_TIMES:
            raise ValueError(f"times must be 1..{MAX_FAULT_TIMES}")
        if fault == "slow" and not 0 < delay <= MAX_FAULT_DELAY:
            raise ValueError(f"a slow answer needs 0 < delay <= {MAX_FAULT_DELAY} seconds")
        injected = Fault(method.upper() if method else None, path_contains, fault, times, float(delay), after)
        with self.lock:
            self.faults.append(injected)
        return injected

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """The first injected fault that still applies to this request, counted as hit (caller holds the lock)."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.hits += 1
                return fault
        return None

    # -- routing -------------------------------------------------------------
    def handle(self, method: str, raw_path: str, authorization: str, body: bytes) -> object:
        """Answer one request: JSON-able payload or :class:`File`; errors raise :class:`HubError`."""
        url = urlsplit(raw_path)
        # Unquote per segment: "refs%2Fpr%2F1" or a tree path "a%2Fb.json" stays one part.
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        token = authorization.removeprefix("Bearer ").strip() if authorization else None
        if token is not None:
            self.seen_tokens.append(token)
            if token != self.token:
                raise HubError(401, "Invalid credentials in Authorization header")
        authed = token is not None
        if method == "POST" and parts == ["api", "validate-yaml"]:  # ModelCard.validate() sends no token
            return validate_yaml(json.loads(body or b"{}"))
        if method in ("POST", "DELETE") and not authed:
            raise HubError(401, "Write access needs a token")

        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in API_TYPES:
            repo = self._repo(API_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", authed)
            action, args = (parts[4] if len(parts) > 4 else ""), parts[5:]
            route = getattr(self, f"_{method.lower()}_{action or 'info'}", None)
            if route is not None:
                return route(repo, args, query, body)
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
        parts = parts if repo_type == "model" else parts[1:]
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(repo_type, f"{parts[0]}/{parts[1]}", authed)
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        raise HubError(404, f"LocalHub does not implement {method} {url.path}")


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP shell around :meth:`LocalHub.handle`; HTTP/1.0, one request per connection."""

    timeout = 30  # a stuck client cannot hold a handler thread forever

    def log_message(self, format, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        headers: dict = {}
        fault: Fault | None = None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise HubError(413, "Request body too large for LocalHub")
            body = self.rfile.read(length)
            with hub.lock:
                hub.requests.append((self.command, self.path))
                fault = hub._take_fault(self.command, self.path)
            if fault is not None and not fault.after:
                if fault.fault == "drop":
                    return self._drop()
                if fault.fault == "slow":
                    time.sleep(fault.delay)  # outside the lock: other requests go on
                else:
                    raise HubError(fault.status, f"LocalHub injected fault {fault.fault}")
            with hub.lock:
                answer = hub.handle(self.command, self.path, self.headers.get("Authorization", ""), body)
            status = 200
        except HubError as err:
            status, answer = err.status, {"error": err.message, **err.extra}
            headers = {**err.headers, "X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
        except Exception as err:  # a server bug must be a 500, not a hung client
            print(f"LocalHub failed on {self.command} {self.path}: {err!r}", file=sys.stderr)
            status, answer = 500, {"error": f"LocalHub internal error: {err!r}"}
        if fault is not None and fault.after:  # handled (state changed); only the answer is lost
            if fault.fault == "drop":
                return self._drop()
            if fault.fault == "slow":
                time.sleep(fault.delay)
            else:
                status, answer, headers = fault.status, {"error": f"LocalHub injected fault {fault.fault}"}, {}
        if isinstance(answer, File):
            data, headers, content_type = answer.data, answer.headers, "application/octet-stream"
        else:
            data, content_type = json.dumps(answer).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client gave up (e.g. timed out on a slow answer): nothing left to tell it
            self.close_connection = True

    def _drop(self) -> None:
        """No answer at all: the server closes the connection (HTTP/1.0, so nothing else is pending on it)."""
        self.close_connection = True

    do_HEAD = do_POST = do_DELETE = do_GET


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """Start a :class:`LocalHub` and point the real clients at it, with all caches in ``tmp_path``.

    huggingface_hub reads its environment once, at import, into
    ``huggingface_hub.constants`` and a module-level ``HfApi`` (used by
    ``huggingface_hub.model_info``, ``file_exists``... and so by peft); transformers
    caches its own ``HfApi``.  Env vars alone are too late, so the copies are
    patched as well; monkeypatch restores everything afterwards.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _detect_agent

    home, cache = tmp_path / "hf_home", str(tmp_path / "hf_home" / "hub")
    with LocalHub() as hub:
        for name, value in {
            "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": hub.token,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": cache,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN_PATH": str(home / "token"),
        }.items():
            monkeypatch.setenv(name, value)
        for name, value in {
            "ENDPOINT": hub.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
            "HF_HOME": str(home),
            "HF_HUB_CACHE": cache,
            "HUGGINGFACE_HUB_CACHE": cache,
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
        }.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
        # Building request headers fetches {ENDPOINT}/api/agent-harnesses once per process: skip it.
        monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
        for module, name, value in (
            ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", cache),
            ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(home / "assets")),
            ("transformers.utils.hub", "_hf_api", None),  # rebuilt lazily with the patched endpoint
        ):
            if module in sys.modules:
                monkeypatch.setattr(sys.modules[module], name, value)
        if "datasets.config" in sys.modules:  # datasets reads the endpoint and cache once, at import
            for name, value in (("HF_ENDPOINT", hub.endpoint), ("HF_HUB_OFFLINE", False)):
                monkeypatch.setattr(sys.modules["datasets.config"], name, value)
        from huggingface_hub import HfFileSystem

        HfFileSystem.clear_instance_cache()  # an instance made for an earlier local Hub keeps that Hub's address
        yield hub
        HfFileSystem.clear_instance_cache()
