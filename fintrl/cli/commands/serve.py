"""`fintrl serve TARGET`: classify over HTTP (`fintrl.serve.app`)."""

from __future__ import annotations

import argparse

from fintrl.cli.options import add_exact_4bit, add_overrides, add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="classify over HTTP: POST /classify, a try-it page at /, docs at /docs")
    p.add_argument(
        "target",
        nargs="+",
        help="as for predict: run folder, adapter folder, or Hub repo id (org/name@v1.0.0); several adapters of one "
        "base: their ensemble",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most texts scored together (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a text waits for others to batch with")
    p.add_argument(
        "--api-key",
        help="require this key (Authorization: Bearer KEY or X-API-Key) on all but /health, the page and the docs "
        "(default: $FINTRL_API_KEY; none: open)",
    )
    p.add_argument("--recipe", help="recipe giving labels and prompt (default: the run folder's / repo's)")
    add_overrides(p)
    add_trust_remote_code(p)
    add_exact_4bit(p)


def run(args: argparse.Namespace) -> int:
    from fintrl.serve.app import serve

    return serve(
        args.target,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        api_key=args.api_key,
        recipe=args.recipe,
        overrides=args.overrides,
        trust_remote_code=args.trust_remote_code,
        exact_4bit=args.exact_4bit,
        access_log=args.verbose,
    )
