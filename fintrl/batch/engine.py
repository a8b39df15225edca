"""`fintrl predict --engine ray`: score CSV/JSONL/Parquet files or folders on a Ray cluster, into resumable shards.

Ray Data reads the input (a local file or folder, or any filesystem pyarrow reads: s3://, gs://, ...). The driver
cuts it into shards of `--shard-rows` rows by row index; the shards not yet written stream through `map_batches` to
an actor pool in which each actor holds one LabelScorer (the model loaded once per actor, built as `fintrl predict`
builds it), and the driver writes each shard, atomically, as soon as all its rows are back:
OUTPUT/part-000000.parquet (or .jsonl), one row per input row with its row id, source file and row, the text, the
label and every label's probability. A rerun of the same job skips the shards already written.

Why resume is driven here and not by Ray Data: its `write_*` names files by write-task and block ids, which change
from run to run, and its checkpointing needs an id column that plain text files lack. Here shard k is rows
[k*S, (k+1)*S) of the input in a fixed order (files sorted, rows in file order, read with `preserve_order`), so the
same input always gives the same shards, and OUTPUT/_fintrl_bulk.json records the job so a rerun resumes only it.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.batch.shards import Inputs, ShardWriter, check_columns, list_inputs, output_schema
from fintrl.errors import DataError, RecipeError, RunFolderError, first_line
from fintrl.ray_cluster import require_ray, start_ray, unwrap

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 4096
MAX_BATCH_ROWS = 128  # rows per block and actor call (the scorer's shared prompt prefix: once per call)


@dataclass(frozen=True)
class RaySettings:
    """How batch scoring runs on Ray: the actor pool, the cluster, the input column and the output shards."""

    num_workers: int = 1  # scorer actors, one model each
    num_gpus_per_worker: float = 0.0
    address: str | None = None  # a running cluster (`auto`, host:port); None: a local one, started and stopped here
    text_column: str = "text"
    shard_rows: int = DEFAULT_SHARD_ROWS
    output_format: str = "parquet"


# -- the actor: one model per actor ---------------------------------------------------------------------------------
class ScorerActor:
    """Loads the target once (the same rules as `fintrl predict`: trust_remote_code only from the user's flag) and
    scores each batch: the label, every label's probability (calibrated unless --uncalibrated), abstentions."""

    job: dict[str, Any]  # set on a subclass per command (`_actor_class`): no constructor arguments to keep alive

    def __init__(self) -> None:
        import ray
        import torch

        from fintrl.errors import translate
        from fintrl.scoring.inference import load_inference
        from fintrl.scoring.targets import resolve_target

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus and not torch.cuda.is_available():  # one actor's share of the cores: actors must not contend
            torch.set_num_threads(max(1, int(cpus)))
        job = self.job
        try:
            self.target = resolve_target(
                job["target"], recipe_path=job["recipe"], overrides=job["overrides"], trust_remote_code=job["trust"]
            )
            self.labels = self.target.label_set("predict")
            loaded = load_inference(self.target, exact_4bit=job.get("exact_4bit", False))
        except Exception as err:  # noqa: BLE001 - as the CLI's boundary would: a missing model is the user's error
            mapped = translate(err)
            if mapped is None:
                raise
            raise mapped from None
        self.scorer = self.target.scorer(loaded.model, loaded.tokenizer, mode=job["mode"])  # as predict builds it
        self.schema = output_schema(self.labels, job["min_confidence"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from fintrl.scoring.calibration import predict_rows

        texts = batch.column("text").to_pylist()
        result = self.scorer.score(texts, progress=False)
        if self.job["calibrated"]:
            result = self.target.calibrate(result)
        rows = predict_rows(texts, self.labels, result.predictions, result.probabilities, self.job["min_confidence"])
        ids = batch.select(["row", "source", "source_row"]).to_pylist()
        table = pa.Table.from_pylist([i | r for i, r in zip(ids, rows)], schema=self.schema)
        return table.append_column("shard", batch.column("shard"))


# -- the driver -----------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    rows: int = 0
    shards: int = 0
    skipped_shards: int = 0
    blank: int = 0
    scored: int = 0


def _read(inputs: Inputs, column: str) -> Any:
    import ray.data

    from fintrl.data.texts import csv_options

    kwargs: dict[str, Any] = {"filesystem": inputs.filesystem, "include_paths": True}
    if inputs.reader == "text":  # one text a line; blank lines kept, so row numbers are line numbers (then skipped)
        ds = ray.data.read_text(inputs.files, drop_empty_lines=False, **kwargs)
    elif inputs.reader == "csv":
        parse, convert = csv_options(column)
        ds = ray.data.read_csv(inputs.files, parse_options=parse, convert_options=convert, **kwargs)
    elif inputs.reader == "json":
        # pyarrow's JSON reader (lines=False) reads JSON Lines and takes a filesystem; lines=True (pandas) takes none
        ds = ray.data.read_json(inputs.files, file_extensions=None, **kwargs)
    else:
        ds = ray.data.read_parquet(inputs.files, columns=[column], **kwargs)
    return ds.select_columns([column, "path"])


def pending_shards(ds: Any, column: str, shard_rows: int, done: set[int], tally: Tally) -> tuple[list, dict[int, int]]:
    """Cut the input, in order, into shards of `shard_rows` rows; put each pending one in the object store, in blocks
    of MAX_BATCH_ROWS (row id, source file and row, text). Blank texts are skipped and counted, as `predict` does.

    The texts pass through the driver once (reading costs little beside scoring): that is what numbers the rows the
    same way on every run. Ray's object store holds the pending ones (it spills to disk when they outgrow memory)."""
    import pyarrow as pa
    import ray
    from tqdm.auto import tqdm

    refs, expected = [], {}
    last_path, path_row = None, -1
    batches = ds.iter_batches(batch_size=shard_rows, batch_format="pyarrow")
    for index, batch in enumerate(tqdm(batches, desc="reading", unit="shard", file=sys.stderr)):
        paths = batch.column("path").to_pylist()
        source_rows = []
        for path in paths:  # rows of one file are consecutive: preserve_order
            path_row = path_row + 1 if path == last_path else 0
            last_path = path
            source_rows.append(path_row)
        first, tally.rows, tally.shards = tally.rows, tally.rows + batch.num_rows, index + 1
        if index in done:
            tally.skipped_shards += 1
            continue
        try:
            texts = batch.column(column).cast(pa.string()).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(f"--text-column {column}: not text ({first_line(err)})") from None
        keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        tally.blank += batch.num_rows - len(keep)
        expected[index] = len(keep)
        for start in range(0, len(keep), MAX_BATCH_ROWS):  # blocks the actor pool can share out, a shard or not
            block = keep[start : start + MAX_BATCH_ROWS]  # built anew, not a slice: a slice would carry the shard
            table = {
                "shard": pa.array([index] * len(block), pa.int64()),
                "row": pa.array([first + i for i in block], pa.int64()),
                "source": pa.array([paths[i] for i in block], pa.string()),
                "source_row": pa.array([source_rows[i] for i in block], pa.int64()),
                "text": pa.array([texts[i] for i in block], pa.string()),
            }
            refs.append(ray.put(pa.table(table)))
    return refs, expected


def _actor_cpus(workers: int, gpus: float, address: str | None) -> float:
    """Each actor's share of the CPUs (its torch threads), no more than one node holds; 1 with GPUs. Actors that ask
    for more GPUs than a local cluster has would wait for ever: said at once (a remote one may scale up: warned)."""
    import ray

    if gpus:
        have = ray.cluster_resources().get("GPU", 0)
        if have < workers * gpus:
            message = (
                f"--num-workers {workers} x --num-gpus-per-worker {gpus:g} needs {workers * gpus:g} GPUs; the Ray "
                f"cluster has {have:g}"
            )
            if address is None:
                raise RecipeError(message + ": use fewer workers, or join a cluster with more GPUs (--address)")
            logger.warning("%s now: the actors wait until it has them", message)
        return 1
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, min(int(ray.cluster_resources().get("CPU", 1)) // workers, int(max(nodes, default=1))))


def score_shards(
    refs: list, expected: dict[int, int], job: dict[str, Any], settings: RaySettings, writer: ShardWriter
) -> int:
    """Stream the pending shards through the actor pool; write each shard once all its rows are back."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data
    from tqdm.auto import tqdm

    for index in [i for i, n in expected.items() if n == 0]:  # only blank texts: an empty shard, written now
        writer.write(index, output_schema(job["labels"], job["min_confidence"]).empty_table())
        del expected[index]
    if not refs:
        return 0
    workers, gpus = settings.num_workers, settings.num_gpus_per_worker
    scored = ray.data.from_arrow_refs(refs).map_batches(
        type("ScorerActor", (ScorerActor,), {"job": job}),  # Ray restarts a lost actor from its class alone
        compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool: each actor loads the model once
        batch_size=MAX_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=_actor_cpus(workers, gpus, settings.address),
        **({"num_gpus": gpus} if gpus else {}),
    )
    parts: dict[int, list[pa.Table]] = {}
    got = dict.fromkeys(expected, 0)
    total = sum(expected.values())
    with tqdm(total=total, desc=f"scoring ({workers} workers)", unit="row", file=sys.stderr) as bar:
        for out in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for index in pc.unique(out.column("shard")).to_pylist():
                part = out.filter(pc.equal(out.column("shard"), index))
                parts.setdefault(index, []).append(part)
                got[index] += part.num_rows
                bar.update(part.num_rows)
                if got[index] == expected[index]:
                    table = pa.concat_tables(parts.pop(index)).sort_by("row").drop_columns(["shard"])
                    writer.write(index, table)
    return total


def score_files(
    target: str,
    inputs_path: str,
    output: str,
    *,
    settings: RaySettings = RaySettings(),
    recipe: str | None = None,
    overrides: list[str] = (),
    trust_remote_code: bool = False,
    mode: str | None = None,
    calibrated: bool = True,
    exact_4bit: bool = False,
    min_confidence: float | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> int:
    """Score the texts of CSV/JSONL/Parquet `inputs_path` (a file or folder) with `target` on Ray, into shards under
    `output`; a rerun writes only the shards that are missing. Returns the number of rows scored now.

    ```python
    score_files("runs/quickstart", "texts.csv", "runs/scored", settings=RaySettings(num_workers=2))
    ```
    """
    require_ray("data")
    from fintrl.scoring.targets import resolve_target

    column = settings.text_column
    local = Path(target)
    target_name = str(local.resolve()) if local.exists() else target  # actors may run in another folder
    recipe = str(Path(recipe).resolve()) if recipe else None
    resolved = resolve_target(target_name, recipe_path=recipe, overrides=overrides, trust_remote_code=trust_remote_code)
    inputs = list_inputs(inputs_path)
    check_columns(inputs, column)
    job = {
        "target": target_name,
        "recipe": recipe,
        "overrides": list(overrides),
        "trust": bool(trust_remote_code),
        "mode": mode,
        "calibrated": calibrated,
        **({"exact_4bit": True} if exact_4bit else {}),  # the form scored in: a resume must not mix the two
        "min_confidence": min_confidence,
        "labels": resolved.label_set("predict"),
        "inputs": [[f, s] for f, s in zip(inputs.files, inputs.sizes)],
        "text_column": column,
        "shard_rows": settings.shard_rows,
        "output_format": settings.output_format,
    }
    from fintrl.transaction import enclosing_run

    inside = enclosing_run(Path(output)) if "://" not in output else None
    if inside is not None:
        raise RunFolderError(f"--output {output} is inside the run folder {inside}; write the shards elsewhere")
    if "://" not in output and "://" not in inputs_path:
        out, source = Path(output).resolve(), Path(inputs_path).resolve()
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise RunFolderError(f"--output {output} overlaps --input {inputs_path}; write the shards elsewhere")
    writer = ShardWriter(output, job["output_format"])
    done = writer.prepare(job, overwrite=overwrite)
    workers = settings.num_workers
    print(
        f"fintrl: scoring {len(inputs.files)} {inputs.reader} file(s) on Ray: {workers} worker(s), each loading "
        f"{resolved.recipe.model.name_or_path}" + (f" with adapter {resolved.name}" if resolved.adapter else ""),
        file=sys.stderr,
    )
    started = start_ray(settings.address, verbose)
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines; our bars show progress
    for name in ("ray.data.exceptions", "ray.data._internal.execution.operators.actor_pool_map_operator"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # an actor's failure, logged; we raise it as one line
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": ours replace them
    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False  # fixed row order: stable shards
    tally = Tally()
    try:
        start = time.perf_counter()
        refs, expected = pending_shards(_read(inputs, column), column, job["shard_rows"], done, tally)
        written = len(expected)
        tally.scored = score_shards(refs, expected, job, settings, writer)
        writer.finish()  # an --overwrite's new shards replace the old ones only now
        seconds = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - Ray wraps what actors raise; give the user's error back as one line
        mapped = unwrap(err)
        if mapped is err:
            raise
        raise mapped from err
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started:
            import ray

            ray.shutdown()
    blank = f"; {tally.blank} blank texts skipped" if tally.blank else ""
    print(
        f"fintrl: {tally.rows} rows in {tally.shards} shards -> {output}: {written} shards written, "
        f"{tally.skipped_shards} already there; {tally.scored} rows scored in {seconds:.1f} s "
        f"({tally.scored / seconds:.1f} examples/s){blank}"
    )
    return tally.scored
