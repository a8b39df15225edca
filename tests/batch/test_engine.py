"""`fintrl predict --engine ray` on a local Ray cluster (2 CPUs) with the tiny run: the same labels and probabilities
as `fintrl predict` without Ray, from CSV, JSONL, Parquet and a folder; a rerun writes only missing shards; bad inputs
are one line each; without Ray installed it says how to install it."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fintrl.cli.main import main
from tests.helpers import ROOT

ray = pytest.importorskip("ray")

N_ROWS = 2000  # a few thousand short rows: the quickstart's validation texts, repeated
TOLERANCE = 2e-6  # both sides round to 6 decimals; a batch of other texts moves the 7th (seen: 1e-6 at most)


@pytest.fixture(scope="module")
def cluster(fintrl_home: Path):
    """A local cluster for this module (the commands reuse it), shut down at the end."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # as the command starts it: a failing actor's traceback stays in Ray's logs
        runtime_env={"env_vars": {"FINTRL_HOME": str(fintrl_home)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with (ROOT / "fintrl" / "resources" / "quickstart" / "validation.csv").open(newline="", encoding="utf-8") as f:
        distinct = [row["text"] for row in csv.DictReader(f)]
    return [distinct[i % len(distinct)] for i in range(N_ROWS)]


@pytest.fixture(scope="module")
def reference(tiny_run: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """`fintrl predict` without Ray on the same texts (one per line): the answers Ray must give."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    assert (
        main(["predict", str(tiny_run), "--input", str(folder / "texts.txt"), "--output", str(folder / "p.jsonl")]) == 0
    )
    return [json.loads(line) for line in (folder / "p.jsonl").read_text(encoding="utf-8").splitlines()]


def write_csv(path: Path, texts: list[str], column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column])
        writer.writerows(enumerate(texts))
    return path


def read_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    shards = sorted(folder.glob("part-*"))
    if shards[0].suffix == ".jsonl":
        return [json.loads(line) for shard in shards for line in shard.read_text(encoding="utf-8").splitlines()]
    return pq.read_table(shards).to_pylist()


def assert_same_answers(rows: list[dict], reference: list[dict]) -> None:
    """Row by row (the reference for the same text): the label exactly, every probability within rounding."""
    by_text = {r["text"]: r for r in reference}
    assert len(rows) > 0
    for row in rows:
        ref = by_text[row["text"]]
        assert row["label"] == ref["label"], row
        assert row["probabilities"].keys() == ref["probabilities"].keys()
        assert all(abs(row["probabilities"][k] - p) <= TOLERANCE for k, p in ref["probabilities"].items()), row


@pytest.mark.slow
def test_ray_gives_the_answers_of_predict_without_ray(
    cluster, tiny_run: Path, texts: list[str], reference: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", texts)
    out = tmp_path / "scored"
    argv = ["predict", str(tiny_run), "--engine", "ray", "--input", str(source), "--output", str(out)]
    assert main([*argv, "--num-workers", "2", "--shard-rows", "512"]) == 0
    summary = capsys.readouterr().out
    assert f"{N_ROWS} rows in 4 shards" in summary and "4 shards written, 0 already there" in summary
    assert "examples/s" in summary
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:06d}.parquet" for i in range(4)]
    rows = read_rows(out)
    assert [r["row"] for r in rows] == list(range(N_ROWS)) == [r["source_row"] for r in rows]
    assert [r["text"] for r in rows] == [r["text"] for r in reference]
    for row, ref in zip(rows, reference):  # row for row, against `fintrl predict` without Ray
        assert row["label"] == ref["label"]
        assert all(abs(row["probabilities"][k] - p) <= TOLERANCE for k, p in ref["probabilities"].items())
    assert {r["source"] for r in rows} == {str(source)}


@pytest.mark.slow
def test_jsonl_parquet_and_folder_inputs(
    cluster, tiny_run: Path, texts: list[str], reference: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = texts[:150]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(part)), encoding="utf-8")
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": part, "n": list(range(len(part)))}), parquet)
    folder = tmp_path / "folder"  # two CSV parts (read in name order); hidden and other files are left alone
    write_csv(folder / "b" / "part2.csv", part[100:], column="body")
    write_csv(folder / "a.csv", part[:100], column="body")
    write_csv(folder / "c.csv", ["Profit rose.\nMargins, too.", "2024"], column="body")  # a quoted newline; a number
    write_csv(folder / ".hidden.csv", ["not me"], column="body")
    (folder / "notes.md").write_text("not data")
    lines = tmp_path / "in.txt"  # one text a line, as plain `fintrl predict --input` reads it
    lines.write_text("".join(t + "\n" for t in part), encoding="utf-8")
    out = tmp_path / "out-txt"
    assert main(["predict", str(tiny_run), "--engine", "ray", "--input", str(lines), "--output", str(out)]) == 0
    assert_same_answers(read_rows(out), reference)
    for source, expected in ((jsonl, part), (parquet, part), (folder, [*part, "Profit rose.\nMargins, too.", "2024"])):
        out = tmp_path / f"out-{source.name}"
        argv = ["predict", str(tiny_run), "--engine", "ray", "--input", str(source), "--output", str(out)]
        assert main([*argv, "--text-column", "body", "--output-format", "jsonl", "--shard-rows", "64"]) == 0
        rows = read_rows(out)
        assert [r["text"] for r in rows] == expected and [r["row"] for r in rows] == list(range(len(expected)))
        assert_same_answers(rows[: len(part)], reference)
    capsys.readouterr()
    where = [(Path(r["source"]).name, r["source_row"]) for r in rows]  # files in path order: a.csv, b/part2.csv, c.csv
    assert where == [("a.csv", i) for i in range(100)] + [("part2.csv", i) for i in range(50)] + [
        ("c.csv", 0),
        ("c.csv", 1),
    ]


def test_a_rerun_writes_only_the_missing_shards(
    cluster, tiny_run: Path, texts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", texts[:300])
    out = tmp_path / "scored"
    argv = ["predict", str(tiny_run), "--engine", "ray", "--input", str(source), "--output", str(out)]
    argv += ["--shard-rows", "100", "--min-confidence", "0.4"]
    assert main(argv) == 0
    first = {p.name: p.read_bytes() for p in out.glob("part-*")}
    assert len(first) == 3
    (out / "part-000001.parquet").unlink()  # as a job killed while scoring it leaves things:
    (out / ".part-000001.parquet.tmp").write_bytes(b"half a shard")  # the shard missing, a temporary half-written
    before = {name: (out / name).stat().st_mtime_ns for name in ("part-000000.parquet", "part-000002.parquet")}
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 shards written, 2 already there; 100 rows scored" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before  # untouched
    again = {p.name: p.read_bytes() for p in out.glob("part-*")}
    assert again.keys() == first.keys() and all(again[n] == first[n] for n in before)  # the kept shards, byte for byte
    import io

    import pyarrow.parquet as pq

    old, new = (
        pq.read_table(io.BytesIO(d[part])).to_pylist() for d in (first, again) for part in ["part-000001.parquet"]
    )
    assert [r["label"] for r in new] == [r["label"] for r in old]  # the rescored shard: the same answers, and
    assert all(  # probabilities within the 6-decimal rounding (its rows were batched with others the first time)
        abs(a["probabilities"][k] - b["probabilities"][k]) <= 2e-6 for a, b in zip(old, new) for k in a["probabilities"]
    )
    rows = read_rows(out)
    assert [r["row"] for r in rows] == list(range(300))
    for r in rows:  # --min-confidence 0.4: abstain below it, the top label and its probability kept
        assert r["top_label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["confidence"] == r["probabilities"][r["top_label"]]
        assert r["label"] == ("abstain" if r["confidence"] < 0.4 else r["top_label"])

    assert main(argv) == 0  # all written: nothing to do
    assert "0 shards written, 3 already there; 0 rows scored" in capsys.readouterr().out


def test_bad_inputs_are_one_line_each(
    cluster, tiny_run: Path, texts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path / "in.csv", texts[:20])
    ray_argv = ["predict", str(tiny_run), "--engine", "ray"]

    def fails(argv: list[str], code: int, message: str) -> None:
        assert main(argv) == code
        err = capsys.readouterr().err.strip()  # progress bars may come first; then one line, the error
        errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert errors == [err.splitlines()[-1]] and errors[0].startswith("fintrl: error: ") and message in errors[0], (
            err
        )

    fails([*ray_argv, "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o")], 3, "no such file")
    fails([*ray_argv, "--input", str(source), "--output", str(tmp_path / "o"), "--text-column", "body"], 3, "'body'")
    fails([*ray_argv, "--input", str(source)], 2, "--output FOLDER")
    fails([*ray_argv, "--text", "Profit rose.", "--output", str(tmp_path / "o")], 2, "--input FILE|FOLDER")
    (tmp_path / "in.md").write_text("a text\n")
    fails([*ray_argv, "--input", str(tmp_path / "in.md"), "--output", str(tmp_path / "o")], 3, ".txt, .csv, .jsonl or")
    (tmp_path / "in.txt").write_text("a text\n")
    txt = [*ray_argv, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o")]
    fails([*txt, "--text-column", "body"], 3, "no columns")
    fails(["predict", str(tiny_run), "--text", "x", "--num-workers", "2"], 2, "--num-workers: only with --engine ray")
    fails([*ray_argv, "--input", str(source), "--output", str(tmp_path / "o"), "--num-workers", "0"], 2, "give 1")

    gpus = ["--num-workers", "2", "--num-gpus-per-worker", "1", "--output", str(tmp_path / "g")]
    fails([*ray_argv, "--input", str(source), *gpus], 2, "needs 2 GPUs; the Ray cluster has 0")  # not a wait for ever

    mine = tmp_path / "mine"  # a folder fintrl did not write is never written into
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    fails([*ray_argv, "--input", str(source), "--output", str(mine)], 5, "not a fintrl --engine ray output")

    out = tmp_path / "out"
    assert main([*ray_argv, "--input", str(source), "--output", str(out), "--shard-rows", "10"]) == 0
    capsys.readouterr()
    fails([*ray_argv, "--input", str(source), "--output", str(out), "--shard-rows", "5"], 5, "shard_rows differ")
    assert main([*ray_argv, "--input", str(source), "--output", str(out), "--shard-rows", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:06d}.parquet" for i in range(4)]
    capsys.readouterr()

    # the actors load the model: their error comes back as the command's one line (a missing base: exit 4)
    fails(
        [*ray_argv, "--input", str(source), "--output", str(tmp_path / "o2"), "--set", "model.name_or_path=/nope"],
        4,
        "/nope",
    )


def test_without_ray_it_says_how_to_install_it(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    argv = ["predict", str(tiny_run), "--engine", "ray", "--input", "x.csv", "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and 'pip install -e ".[ray]"' in err


@pytest.mark.slow
def test_the_command_starts_and_stops_its_own_cluster(tiny_run: Path, texts: list[str], tmp_path: Path) -> None:
    """As a user runs it: no cluster running, so it starts one on loopback and shuts it down at the end."""
    source = write_csv(tmp_path / "in.csv", texts[:40])
    out = tmp_path / "scored"
    done = subprocess.run(
        [sys.executable, "-m", "fintrl.cli.main", "predict", str(tiny_run), "--engine", "ray", "--input", str(source)]
        + ["--output", str(out), "--output-format", "jsonl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "40 rows in 1 shards" in done.stdout
    assert len(read_rows(out)) == 40
