"""`fintrl` command line: argv in, a command module's `run` called, and for every failure one line on stderr and its
exit code out (`fintrl.errors`). Each verb is a module of `fintrl.cli.commands` with `register(sub)` (its parser) and
`run(args)` (argparse in, typed library calls out); heavy imports stay inside `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings
from types import ModuleType

from fintrl import distributed
from fintrl.errors import first_line, translate

logger = logging.getLogger("fintrl")

# The verbs, in the order `fintrl --help` lists them: fintrl/cli/commands/<verb>.py each
COMMANDS = (
    "run",
    "sweep",
    "validate",
    "eval",
    "predict",
    "audit",
    "export",
    "serve",
    "card",
    "publish",
    "versions",
    "compare",
    "reproduce",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other fintrl error (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"fintrl: error: {message} (see `{self.prog} --help`)\n")


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"fintrl.cli.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fintrl", description="Instruction-tune causal LMs to classify financial text.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        command_module(name).register(sub)
    return parser


# Loggers whose INFO/WARNING lines carry no action for a fintrl user: each HTTP request, file locks, and
# bitsandbytes' "Failed to load CPU gemm_4bit_forward" (it falls back by itself). `-v` shows them all.
_CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "datasets", "huggingface_hub", "bitsandbytes")


def _configure_logging(verbose: bool) -> None:
    """fintrl's own progress at INFO; libraries' request logs, deprecation and future warnings only with -v.
    Under several processes, the others log warnings and errors only, each line tagged with its rank."""
    quiet = not distributed.is_main() and not verbose
    tag = f"[rank {distributed.rank()}] " if distributed.is_distributed() else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format=f"%(asctime)s {tag}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        return
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported


def _resume_hint(args: argparse.Namespace) -> str:
    work = getattr(args, "work_folder", None)
    if work is None:
        return ""
    if work.is_dir():
        return f"; `fintrl run {args.recipe} --resume` continues from the last checkpoint (kept in {work})"
    return "; no checkpoint was reached, so nothing was kept: rerun the same command"


def main(argv: list[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and its exit code (see `fintrl.errors`)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse printed (exit 2): as a code, like every failure
        return exit_.code if isinstance(exit_.code, int) else 2
    _configure_logging(args.verbose)
    try:
        return command_module(args.command).run(args)
    except KeyboardInterrupt:
        if distributed.is_main():  # Ctrl-C reaches every process of a launch: one line says it
            print(f"fintrl: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary
        code = _report(exc, verbose=args.verbose)
        if getattr(exc, "shared", False):  # raised on every process by `distributed.on_main`: all exit once the main
            distributed.wait_for_everyone()  # process has printed why (a launcher stops the rest when one exits)
        return code
    finally:
        distributed.shutdown()  # the exit code, not gloo's abort at exit, is what a launcher reports


def _report(exc: Exception, *, verbose: bool) -> int:
    """One line on stderr for a failure (the main process's own, once: not where it was relayed); its exit code."""
    if verbose:
        traceback.print_exc()
    if getattr(exc, "relayed", False):  # the main process's failure, which it prints: same exit code, silently
        return getattr(exc, "exit_code", 1)
    err = translate(exc)
    prog = "fintrl" if distributed.is_main() else f"fintrl [rank {distributed.rank()}]"
    if err is None:
        print(
            f"{prog}: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with -v for the traceback "
            "and report it)",
            file=sys.stderr,
        )
        return 1
    print(f"{prog}: error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
