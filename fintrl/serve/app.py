"""`fintrl serve`: real-time classification over HTTP (FastAPI + uvicorn), with dynamic batching.

    POST /classify  {"text": "..."} or {"texts": ["...", ...]} -> label(s), every class probability, truncation,
                    model and version
    GET  /health    503 while the model loads (or if it failed to), then 200: for a load balancer's health check
    GET  /info      labels, base model, adapter, version, scoring mode, max length, batching settings, counters
    GET  /metrics   the counters in Prometheus' text format
    GET  /          a try-it page (plain HTML + fetch);  GET /docs: OpenAPI docs (/openapi.json)

The model loads in a background thread once the server is up, so /health answers at once. Texts from concurrent
requests are scored together (`fintrl.serve.batcher.MicroBatcher`: up to max_batch_size texts or max_wait_ms, one
LabelScorer batch in a worker thread). Bad input is a 4xx with a one-line `detail`; a batch whose scoring fails is a
500 for the requests in it only. With an API key (`--api-key` or FINTRL_API_KEY) every endpoint that touches the model
(/classify, /info, /metrics) needs `Authorization: Bearer KEY` or `X-API-Key: KEY`; /health, the page and the docs
carry no model data and stay open (a browser cannot add a header to a page load; the page asks for the key).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import ValidationError

from fintrl.errors import RecipeError, first_line
from fintrl.serve.batcher import BatcherClosed

try:
    import uvicorn
    from fastapi import Depends, FastAPI, HTTPException, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
except ModuleNotFoundError as err:  # the `serve` extra is not installed
    raise RecipeError(f"`fintrl serve` needs {err.name}, which is not installed: pip install 'fintrl[serve]'") from None
from fintrl.scoring.ensemble import Ensemble, ensemble_scorer, inference_form, resolve_scored
from fintrl.scoring.targets import Target
from fintrl.serve.service import (
    Calibrate,
    ClassifyRequest,
    ClassifyResponse,
    Loader,
    Service,
    calibration,
    load_scorer,
    target_labels,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "FINTRL_API_KEY"
MAX_TEXTS_PER_REQUEST = 256
MAX_BODY_BYTES = 1 << 20  # 1 MiB
BODY_TIMEOUT_S = 10.0  # a body that stops arriving (a declared Content-Length never sent) is answered 408 then
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PAGE = Path(__file__).resolve().parents[1] / "resources" / "serve" / "index.html"
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


# -- the app -----------------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 before the app sees any of it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send, more=True)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:  # noqa: UP041 - a distinct class on Python 3.10
                detail = f"the request body did not arrive within {BODY_TIMEOUT_S:g} s (is its Content-Length right?)"
                return await JSONResponse({"detail": detail}, 408, headers={"connection": "close"})(
                    scope, receive, send
                )
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send, more=message.get("more_body", False))
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable, more: bool) -> None:
        # Read (and drop) the rest of a body up to 16x the limit first: a client still sending when the connection
        # closes may see a reset instead of the answer. Beyond that, answer at once.
        drained = 0
        while more and drained < 16 * self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        detail = f"request body too large: at most {self.max_bytes} bytes; send fewer or shorter texts per request"
        await JSONResponse({"detail": detail}, status_code=413, headers={"connection": "close"})(scope, receive, send)


class LoopbackGuard:
    """ASGI middleware for a keyless server on loopback: only requests addressed to this machine by name (a Host header
    of localhost, 127.0.0.1 or ::1: no DNS-rebinding page can reach it) and not sent by another site's page (an Origin
    header, when there is one, naming this machine too: no cross-origin form POST) are served; others get a 403."""

    def __init__(self, app: Any, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    def _ours(self, value: str | None, *, url: bool) -> bool:
        if value is None:
            return url  # no Origin: not a browser's cross-site request (curl, scripts); no Host: refused
        from urllib.parse import urlsplit

        host = urlsplit(value if url else f"//{value}").hostname
        return host is not None and host.lower() in self.allowed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if not self._ours(headers.get("host", ""), url=False) or not self._ours(headers.get("origin"), url=True):
            detail = "this server answers requests to localhost only (Host, Origin); --api-key serves others"
            return await JSONResponse({"detail": detail}, 403)(scope, receive, send)
        return await self.app(scope, receive, send)


def check_api_key(api_key: str | None) -> str | None:
    """The key to require: --api-key, else $FINTRL_API_KEY, else none. An empty one (an unset shell variable in
    `--api-key "$KEY"`) is refused: it would silently serve without a key."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
        where = f"${API_KEY_ENV}"
    else:
        where = "--api-key"
    if api_key is not None and not api_key.strip():
        raise RecipeError(f"{where} is empty (an unset variable?); give a key, or leave it out to serve without one")
    return api_key


def _one_line(err: ValidationError | RequestValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = str(first.get("msg", "invalid input")).removeprefix("Value error, ")
    more = len(err.errors()) - 1
    return f"{where + ': ' if where else ''}{message}" + (f" (and {more} more problems)" if more else "")


def create_app(
    target: Target,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 10.0,
    api_key: str | None = None,
    loader: Loader | None = None,
    exact_4bit: bool = False,
    calibrate: Calibrate | None = None,
    max_texts_per_request: int = MAX_TEXTS_PER_REQUEST,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_load_error: Callable[[BaseException], None] | None = None,
    allowed_hosts: set[str] | None = None,
    ensemble: Ensemble | None = None,
) -> FastAPI:
    """The FastAPI app serving `target`. `loader(target) -> (LabelScorer, InferenceForm)` (default: `load_scorer`,
    in the dense merged form unless `exact_4bit`) runs in a thread once the app starts; `calibrate(result)`
    (default: the run's calibration, when it has one) maps every batch's scores. `allowed_hosts`: serve
    only requests whose Host (and Origin) name one of them (`LoopbackGuard`). With an `api_key`, nothing about the
    model is shown without it: the API docs name neither the model, its labels nor its version. An `ensemble`
    (`target` is its first member) is served as `fintrl predict A B` scores it: each member calibrated, averaged."""
    if ensemble is not None:
        loader = loader or (lambda _t: (ensemble_scorer(ensemble, batch_size=max_batch_size), inference_form()))
    service = Service(
        target,
        loader=loader or (lambda t: load_scorer(t, max_batch_size, exact_4bit=exact_4bit)),
        calibrate=None if ensemble else calibrate or calibration(target),
        batcher_args={"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
        ensemble=ensemble,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        loading = asyncio.create_task(service.load(on_load_error))
        try:
            yield
        finally:
            loading.cancel()
            await service.batcher.stop()

    app = FastAPI(
        title="fintrl",
        summary="Classify financial text"
        + ("" if api_key else f" with {service.model_id}: labels {', '.join(service.labels)}"),
        version="-" if api_key else service.version or "local",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if allowed_hosts:
        app.add_middleware(LoopbackGuard, allowed={h.lower() for h in allowed_hosts})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err)}, status_code=422)

    def require_key(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
        key: Annotated[str | None, Security(_KEY_HEADER)],
    ) -> None:
        given = key or (credentials.credentials if credentials else None)
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header Authorization: Bearer KEY or X-API-Key: KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_key)] if api_key else []
    page_html = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/health", summary="200 once the model is loaded, 503 before (or when loading failed)")
    async def health() -> JSONResponse:
        if service.scorer is not None:
            return JSONResponse({"status": "ok"})
        if service.load_error is not None:
            err = service.load_error
            return JSONResponse({"status": "failed", "detail": f"{type(err).__name__}: {first_line(err)}"}, 503)
        return JSONResponse({"status": "loading"}, 503, headers={"retry-after": "1"})

    @app.get("/info", dependencies=guarded, summary="what is served, batching settings and counters")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse, summary="Prometheus counters")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics(), media_type="text/plain; version=0.0.4")

    schema = ClassifyRequest.model_json_schema()
    request_body = {"required": True, "content": {"application/json": {"schema": schema}}}

    @app.post(
        "/classify",
        dependencies=guarded,
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        openapi_extra={"requestBody": request_body},
        summary="label and every class probability for one text or a list",
        responses={413: {"description": "body too large"}, 422: {"description": "bad input"}},
    )
    async def classify(request: Request) -> ClassifyResponse:
        # The body is read as JSON whatever its content-type: `curl -d '{"text": ...}'` sends a form content-type.
        try:
            payload = json.loads(await request.body())
        except ValueError as err:
            raise HTTPException(
                400, f'the body is not JSON ({first_line(err)}); send {{"text": "..."}} or {{"texts": [...]}}'
            ) from None
        try:
            req = ClassifyRequest.model_validate(payload)
        except ValidationError as err:
            raise HTTPException(422, _one_line(err)) from None
        texts = [req.text] if req.text is not None else req.texts
        if len(texts) > max_texts_per_request:
            raise HTTPException(
                422, f"too many texts: {len(texts)} in one request, at most {max_texts_per_request}; split the list"
            )
        if service.scorer is None:
            status = "failed to load" if service.load_error else "is loading"
            raise HTTPException(503, f"the model {status}; see GET /health", headers={"retry-after": "1"})
        service.requests += 1
        try:
            predictions = await service.batcher.submit(texts)
        except BatcherClosed as err:
            raise HTTPException(503, str(err)) from None
        except Exception as err:
            raise HTTPException(
                500, f"scoring failed for this batch: {type(err).__name__}: {first_line(err)}"
            ) from None
        common = {"model": service.model_id, "version": service.version, "calibrated": service.calibrated}
        if req.text is not None:
            return ClassifyResponse(**common, **predictions[0].model_dump())
        return ClassifyResponse(**common, results=predictions)

    return app


# -- `fintrl serve` ------------------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening address for uvicorn (port 0: any free port); a clear error when it is taken."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on accepted sockets whose proto
        # says TCP, and they inherit it from this one; with it on, each answer waited ~40 ms for a delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise RecipeError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port or --host"
        ) from None
    sock.set_inheritable(True)
    sock.listen(2048)  # from now on connections queue (uvicorn starts accepting them once it runs)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    targets: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 32,
    max_wait_ms: float = 10.0,
    api_key: str | None = None,
    recipe: str | None = None,
    overrides: list[str] = (),
    trust_remote_code: bool = False,
    exact_4bit: bool = False,
    access_log: bool = False,
) -> int:
    """Serve `targets` (one, or several adapters' ensemble) until Ctrl-C (uvicorn shuts down gracefully, then
    KeyboardInterrupt reaches the CLI: exit 130)."""
    if max_batch_size < 1 or max_wait_ms < 0:
        raise RecipeError("--max-batch-size must be at least 1 and --max-wait-ms 0 or more")
    api_key = check_api_key(api_key)
    if not 0 <= port <= 65535:
        raise RecipeError(f"--port {port}: give a port between 1 and 65535 (0: any free port)")
    options = {"recipe_path": recipe, "overrides": overrides, "trust_remote_code": trust_remote_code}
    resolved = resolve_scored(targets, **options)
    ensemble = resolved if isinstance(resolved, Ensemble) else None
    target = ensemble.members[0] if ensemble else resolved
    target_labels(target)  # before binding: a target without labels fails at once
    sock = bind(host, port)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_load_error(err: BaseException) -> None:
        failed.append(err)
        server.should_exit = True

    address, bound_port = sock.getsockname()[:2]
    app = create_app(
        target,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        api_key=api_key,
        exact_4bit=exact_4bit,
        on_load_error=stop_on_load_error,
        ensemble=ensemble,
        allowed_hosts={*LOOPBACK_NAMES, address} if _is_loopback(address) and not api_key else None,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=access_log, timeout_graceful_shutdown=10))
    url = f"http://{f'[{address}]' if ':' in address else address}:{bound_port}"
    print(
        f"fintrl: serving {(ensemble or target).name} on {url} (try-it page {url}/, API docs {url}/docs; "
        f"batches of up to {max_batch_size} texts, {max_wait_ms:g} ms wait; "
        f"{'API key required' if api_key else 'no API key'}); loading the model, GET /health says when it is ready",
        file=sys.stderr,
        flush=True,
    )
    if not _is_loopback(address) and not api_key:
        logger.warning("listening on %s without an API key: anyone who can reach it can use it", address)
    server.run(sockets=[sock])
    if failed:
        raise failed[0]
    return 0
