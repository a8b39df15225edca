"""`fintrl` command line: the only module that knows about argv and exit codes. Heavy imports stay inside commands."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from fintrl import distributed, run_folder
from fintrl.cli_args import add_overrides, add_target, add_trust_remote_code
from fintrl.errors import DataError, RecipeError, first_line, translate
from fintrl.recipe import load_recipe
from fintrl.run_folder import RunFolder

logger = logging.getLogger("fintrl")

# Modules that add their own subcommand (`register(sub)`); each imports only light things at its top.
COMMAND_MODULES = ("fintrl.predict", "fintrl.audit", "fintrl.export")


def cmd_validate(args: argparse.Namespace) -> int:
    from fintrl.checks import check_recipe
    from fintrl.train import TRAIN_DEFAULTS

    recipe = load_recipe(args.recipe, overrides=args.overrides, output_dir=args.output_dir)
    if args.num_processes is not None and args.num_processes < 1:
        raise RecipeError(f"--num-processes {args.num_processes}: give at least 1")
    if args.accelerate_config:
        launch = distributed.launch_from_config(args.accelerate_config, args.num_processes)
    else:
        processes = args.num_processes or distributed.world_size()
        launch = dataclasses.replace(distributed.launch_from_env(), processes=processes)
    check_recipe(recipe, launch=launch)  # short of weights and network; imports TRL, PEFT, transformers (a few s)
    data = recipe.data
    sources = [m.display_name for m in data.mixture] if data.mixture else [data.preset or data.path or data.source]
    batch = distributed.describe_batch({**TRAIN_DEFAULTS, **recipe.train}, launch.processes)
    print(
        f"{args.recipe}: ok (model {recipe.model.name_or_path}, data {' + '.join(map(str, sources))}, "
        f"output {recipe.output_dir}; {batch})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fintrl.runner import run
    from fintrl.stats import summary

    recipe = load_recipe(args.recipe, overrides=args.overrides, output_dir=args.output_dir)
    args.work_folder = run_folder.work_folder(Path(recipe.output_dir))  # for the Ctrl-C hint
    metrics = run(recipe, resume=args.resume, overwrite=args.overwrite)
    if distributed.is_main():  # one process speaks for a run launched as several
        print(json.dumps(summary(metrics, recipe.output_dir), indent=2))  # headline metrics with intervals, baselines
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fintrl.data import load_labeled_data
    from fintrl.prompts import PromptBuilder
    from fintrl.runner import evaluate
    from fintrl.stats import summary
    from fintrl.targets import load_for_inference, resolve_target

    if distributed.is_distributed():  # its output folder has one writer; a run under a launcher scores in shards
        raise RecipeError("fintrl eval runs as one process: start it without accelerate launch / torchrun")
    target = resolve_target(
        args.target, recipe_path=args.recipe, overrides=args.overrides, trust_remote_code=args.trust_remote_code
    )
    recipe = target.recipe
    if args.mode:
        recipe.eval.mode = args.mode
    out_dir = Path(args.output_dir or (Path("runs") / "eval" / Path(args.target).name))
    with run_folder.eval_output(out_dir, overwrite=args.overwrite) as work:
        data = load_labeled_data(recipe.data)
        if target.labels is not None and target.labels != data.labels:
            raise DataError(
                f"label sets differ: the adapter was trained on {target.labels}, the eval data has {data.labels}"
            )
        model, tokenizer = load_for_inference(target)
        builder = PromptBuilder(recipe.prompt, data.labels, data.task)
        calibration = None if args.uncalibrated else target.calibration  # the run's calibration.json, by default
        metrics = evaluate(model, tokenizer, builder, data, recipe.eval, work, target.name, calibration)
        RunFolder(work).write_metrics(metrics)
    print(json.dumps(summary(metrics, str(out_dir)), indent=2))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from fintrl.card import write_card

    print(write_card(Path(args.run_dir), repo_id=args.repo))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from fintrl.export_card import require_publishable
    from fintrl.hub import publish

    section = (
        RunFolder(Path(args.run_dir)).require_finished("publish").recipe().publish
    )  # flags override the recipe's `publish:` section
    require_publishable(Path(args.run_dir), merged=args.merged)  # --merged for a merged export, and only for one
    if args.merged:  # the recipe's publish.repo_id and version are the adapter's: a merged model has its own repo
        section = section.model_copy(update={"repo_id": None, "version": None})
    repo_id = args.repo or section.repo_id
    if not repo_id:
        raise RecipeError(
            "publish --merged needs --repo org/name: a repo of its own, not the adapter's"
            if args.merged
            else "publish needs a repo: pass --repo org/name or set publish.repo_id in the recipe"
        )
    result = publish(
        Path(args.run_dir),
        repo_id,
        version=args.version or section.version,
        private=args.private or section.private,
        base_model=args.base_model or section.base_model,
    )
    print(json.dumps(vars(result), indent=2))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from fintrl.hub import list_versions

    if args.compare:
        from fintrl.compare import cmd_compare  # `versions org/name --compare OLD NEW`

        return cmd_compare(args)
    versions = list_versions(args.repo)
    if args.json:
        print(json.dumps(versions, indent=2))
    elif not versions:
        print(f"{args.repo}: no published versions")
    else:
        columns = ("version", "date", "commit", "base_model", "data", "accuracy", "f1_macro")
        rows = [columns] + [tuple(_cell(v[c], c) for c in columns) for v in versions]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _cell(value: object, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)[:12] if column == "commit" else str(value)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other fintrl error (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"fintrl: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fintrl", description="Instruction-tune causal LMs to classify financial text.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="train, score and write a run folder from a recipe")
    p.add_argument("recipe")
    add_overrides(p)
    p.add_argument("--output-dir", help="run folder (overrides the recipe's output_dir)")
    once = p.add_mutually_exclusive_group()
    once.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished (or train further a finished) run "
        "from its last complete checkpoint; the recipe must match the checkpoint's",
    )
    once.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in the output folder, only once the new run has succeeded",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a recipe without loading weights or data, or using the network")
    p.add_argument("recipe")
    add_overrides(p)
    p.add_argument("--output-dir")
    p.add_argument("--full", action="store_true", help="accepted for old scripts: every check is now the default")
    p.add_argument(
        "--accelerate-config",
        metavar="FILE",
        help="check the recipe against this accelerate config too (recipes/accelerate/*.yaml: FSDP-QLoRA's rules)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="processes the run will have, for the effective batch (default: the accelerate config's, else "
        "$WORLD_SIZE, else 1)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("eval", help="score a run folder, adapter, Hub repo or base model on a dataset split")
    add_target(p)
    p.add_argument("--output-dir", help="where metrics.json, predictions and plots go (never a run folder)")
    p.set_defaults(func=cmd_eval)

    for module in COMMAND_MODULES:  # commands that declare their own parser (`register(sub)`)
        importlib.import_module(module).register(sub)

    p = sub.add_parser("serve", help="classify over HTTP: POST /classify, a try-it page at /, docs at /docs")
    p.add_argument("target", help="as for predict: run folder, adapter folder, or Hub repo id (org/name@v1.0.0)")
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
    p.set_defaults(func="fintrl.serve:cmd_serve")  # imported when run: the commands' own modules

    p = sub.add_parser("card", help="(re)render a run folder's model card README.md")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="repo id shown in the usage snippet")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("publish", help="upload a run folder to the Hub as one commit, tagged with a new version")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="org/name (default: the recipe's publish.repo_id)")
    p.add_argument("--version", help="vMAJOR.MINOR.PATCH (default: v1.0.0, then the next minor version)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument(
        "--base-model",
        metavar="ORG/NAME",
        help="the base model's Hub id, named in the published adapter and "
        "recipe (default: the recipe's publish.base_model, else its model when that is a Hub id or an "
        "offline name of one; a local base folder needs it)",
    )
    p.add_argument(
        "--merged",
        action="store_true",
        help="RUN_DIR is a merged export (`fintrl export RUN --merged OUT`): publish it as a model of its own",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("versions", help="list a repo's published versions with their metrics, highest first")
    p.add_argument("repo", help="org/name")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare org/name@OLD org/name@NEW instead")
    p.add_argument("--output", help="with --compare: also write the comparison as JSON")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("compare", help="is B better than A? paired bootstrap and McNemar on the same eval rows")
    for side in ("a", "b"):
        p.add_argument(side, help="run folder, eval output folder, adapter folder or Hub repo (org/name@v1.0.0)")
    p.add_argument("--output", help="also write the comparison as JSON")
    p.add_argument("--trust-remote-code", action="store_true", help="let a base model run its own code (scoring)")
    p.set_defaults(func="fintrl.compare:cmd_compare")
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


def _command(func: Callable[[argparse.Namespace], int] | str) -> Callable[[argparse.Namespace], int]:
    """A command function, or "module:function" for commands that live in their own module (imported when run)."""
    if callable(func):
        return func
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(module), name)


def _resume_hint(args: argparse.Namespace) -> str:
    work = getattr(args, "work_folder", None)
    if work is None:
        return ""
    if work.is_dir():
        return f"; `fintrl run {args.recipe} --resume` continues from the last checkpoint (kept in {work})"
    return "; no checkpoint was reached, so nothing was kept: rerun the same command"


def main(argv: list[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and its exit code (see `fintrl.errors`)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return _command(args.func)(args)
    except KeyboardInterrupt:
        if distributed.is_main():  # Ctrl-C reaches every process of a launch: one line says it
            print(f"fintrl: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary
        code = _report(exc, verbose=args.verbose)
        if getattr(exc, "shared", False):  # raised on every process by `distributed.on_main`: all exit once the main
            distributed.wait_for_everyone()  # process has printed why (a launcher stops the rest when one exits)
        return code


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
