"""The Ray cluster fintrl's Ray engines run on (`predict --engine ray` on Ray Data, `sweep --engine ray` on Ray
Tune): a running one joined by `--address`, or a local one started on loopback and stopped after; and a failure
inside Ray given back as the user's one-line error."""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any

from fintrl.errors import FintrlError, RecipeError

INSTALL_HINT = 'pip install -e ".[ray]"'
RAY_CONNECT_TIMEOUT_S = 5.0
ENV = ("FINTRL_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRACKIO_DIR")  # what Ray's workers must see as the driver does


def require_ray(part: str, flag: str = "--engine ray") -> None:
    """`part`: "data" or "tune", the Ray library the command needs."""
    try:
        __import__(f"ray.{part}")
    except ImportError:
        name = {"data": "Ray Data", "tune": "Ray Tune"}[part]
        raise RecipeError(f"{flag} needs {name}, which is not installed: {INSTALL_HINT}") from None


def reachable(address: str) -> None:
    """A `host:port` --address answers a TCP connection within seconds (Ray itself would wait with no end)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RecipeError(f"--address {address}: give host:port (the Ray head's GCS, e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RecipeError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); start one with "
            "`ray start --head`, or leave --address out for a local one"
        ) from None


def start_ray(address: str | None, verbose: bool) -> bool:
    """Connect to `address`, or start a local cluster on loopback; False when Ray was already up (tests).

    The workers' own output (library chatter, and a failing worker's traceback, which we report as one line) stays in
    Ray's session logs unless -v."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in ENV if k in os.environ}
    options: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": {"env_vars": env}}
    options["log_to_driver"] = verbose
    if address:
        reachable(address)
        ray.init(address=address, **options)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", **options)
    return True


def unwrap(err: BaseException) -> BaseException:
    """The FintrlError a worker raised (a base that will not load, ...) as the user's one-line error: Ray hands it
    back wrapped (ActorDiedError, RayTaskError, TuneError) with the remote traceback's last line as
    `fintrl.errors.Kind: text`."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, FintrlError):
            return seen
        seen = seen.__cause__ or seen.__context__
    kinds = {kind.__name__: kind for kind in FintrlError.__subclasses__()}
    match = re.search(r"fintrl\.errors\.(\w+): ([^\n]+)\s*$", str(err))
    return kinds[match.group(1)](match.group(2).strip()) if match and match.group(1) in kinds else err
