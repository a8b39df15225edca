"""Data -> labelled splits -> conversational prompt-completion examples.

Everything the later stages need about the data (label names, sizes, provenance, what was dropped) travels in
`LabeledData`, so scoring, metrics and the model card never re-read the source.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fintrl.data import checks as data_checks
from fintrl.data.files import file_sha256, load_raw
from fintrl.data.presets import PRESETS, Preset, data_task
from fintrl.data.sampling import balance_classes, weighted_indices
from fintrl.errors import DataError, FintrlError, RecipeError
from fintrl.recipe.schema import SOURCE_FIELDS, DataSection, MixtureSource, label_names

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class LabeledData:
    """Train and eval splits with integer labels into `labels`, plus what a report must say about them."""

    train: Dataset
    eval: Dataset
    labels: list[str]
    source: str  # portable: the Hub dataset id, else the preset's or the local folder's / file's name (never a path)
    task: str
    license: str | None
    eval_split: str
    dropped: dict[str, int] = field(default_factory=dict)
    mixture: list[dict[str, Any]] = field(default_factory=list)  # per-source provenance of a `data.mixture`
    checks: dict[str, int] = field(default_factory=dict)  # duplicate / overlap counts (`data_checks.text_checks`)
    config_name: str | None = None  # the Hub dataset's config (a Hub source only)
    files: dict[str, str] = field(default_factory=dict)  # local files read: name -> sha256 (`source/name` in a mixture)
    excluded: dict[str, Any] | None = None  # what `data.exclude` left out of train (`fintrl.data.exclusion`)

    def eval_groups(self) -> dict[str, list[int]]:
        """Eval row indices per source (a mixture's eval carries a `source` column); empty for a single source."""
        if SOURCE_COLUMN not in self.eval.column_names:
            return {}
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(self.eval[SOURCE_COLUMN]):
            groups.setdefault(name, []).append(i)
        return groups

    def describe(self) -> dict[str, Any]:
        """What the report says about the data: only portable values (no local path leaves the machine in it)."""
        counts = {name: Counter(ds["label"]) for name, ds in (("train", self.train), ("eval", self.eval))}
        out = {
            "source": self.source,
            "task": self.task,
            "eval_split": self.eval_split,
            "labels": self.labels,
            "n_train": len(self.train),
            "n_eval": len(self.eval),
            "label_counts": {s: {self.labels[i]: c[i] for i in range(len(self.labels))} for s, c in counts.items()},
            "dropped": self.dropped,
            **({"excluded": {k: v for k, v in self.excluded.items() if k != "sha256"}} if self.excluded else {}),
            "checks": self.checks,
            "license": self.license,
        }
        if self.config_name:
            out["config_name"] = self.config_name
        if self.mixture:
            out["mixture"] = self.mixture
        return out


def resolve_data(section: DataSection) -> tuple[DataSection, Preset | None]:
    """Fill a data section from its preset: values the recipe gives win, and a local `path` reads `text,label`.

    A field left at its default takes the preset's value, whether or not the YAML names it: a run folder's recipe.yaml
    writes every field, defaults included, and must resolve to the same labels (in the same order) as the recipe the
    run was made from.
    """
    if section.preset is None:
        return section, None
    if section.preset not in PRESETS:
        import difflib

        hint = difflib.get_close_matches(section.preset, PRESETS, n=1)
        raise RecipeError(
            f"data.preset: unknown preset {section.preset!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {sorted(PRESETS)}")
        )
    preset = PRESETS[section.preset]
    fields = ["labels"] + (["config_name", "text_column", "label_column"] if section.path is None else [])
    updates: dict[str, Any] = {}
    for key in fields:
        if getattr(section, key) == DataSection.model_fields[key].default:
            value = getattr(preset, key)
            updates[key] = list(value) if isinstance(value, tuple) else value
    if section.path is None:  # Hub layout of the preset
        updates["source"] = section.source or preset.source
    return section.model_copy(update=updates), preset


def _to_label_ids(
    values: list[Any], labels: list[str], id_map: dict[int, str] | None, preset: Preset | None, where: str
) -> list[int]:
    index = {name: i for i, name in enumerate(labels)}
    if preset and preset.score_thresholds and values and all(isinstance(v, float) for v in values):
        lo, hi = preset.score_thresholds
        values = ["negative" if v < lo else "neutral" if v < hi else "positive" for v in values]
    out, unknown = [], Counter()
    for v in values:
        name = (id_map or dict(enumerate(labels))).get(v) if isinstance(v, int) and not isinstance(v, bool) else v
        if isinstance(name, str) and name in index:
            out.append(index[name])
        else:
            unknown[v if isinstance(v, (str, int, float, type(None))) else repr(v)] += 1
    if unknown:
        raise DataError(
            f"{where}: {sum(unknown.values())} rows have labels outside the label set {labels}: "
            f"{dict(unknown.most_common(5))}. Fix data.labels (names, or an id -> name map) or the data."
        )
    return out


def load_labeled_data(section: DataSection) -> LabeledData:
    """Load, map labels to ids, drop (and count) empty texts, carve a validation split when missing; then balance the
    train classes if asked (after max_train_samples, never the eval rows)."""
    data = load_mixture(section) if section.mixture is not None else _load_source(section)
    if section.exclude:  # before balancing: an excluded row is never copied
        from fintrl.data.exclusion import exclude_flagged

        data.train, data.excluded = exclude_flagged(data.train, data.labels, section.exclude, section.exclude_top)
        data.files[f"{data.excluded['file']} (data.exclude)"] = data.excluded["sha256"]
        logger.info("data.exclude: %d train rows left out (%s)", data.excluded["rows"], data.excluded["why"])
    if section.balance:
        data.train = balance_classes(data.train, section.balance, section.seed)
    return data


def _load_source(section: DataSection, in_mixture: bool = False) -> LabeledData:
    """One source; `in_mixture`: class-coverage problems and duplicates are the mixture's to raise and warn about."""
    from datasets import ClassLabel, Dataset, Features, Value

    section, preset = resolve_data(section)
    raw, files = load_raw(section)
    source = section.path or section.source or ""
    if section.train_split not in raw:
        raise DataError(f"data.train_split: split {section.train_split!r} not found; {source} has {sorted(raw)}")

    def file(split: str) -> str:
        return str(files[split]) if split in files else f"{source} ({split} split)"

    def columns(split: str) -> Dataset:
        ds = raw[split]
        for key in ("text_column", "label_column"):
            column = getattr(section, key)
            if column not in ds.column_names:
                raise DataError(
                    f"data.{key}: column {column!r} not found in {file(split)}; it has {ds.column_names}"
                    + data_checks.delimiter_hint(ds.column_names)
                )
        return ds

    first = columns(section.train_split)
    id_map = section.labels if isinstance(section.labels, dict) else None
    labels = section.label_names or []
    if not labels:
        values = first[section.label_column]
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise RecipeError("data.labels: integer labels need names (data.labels: {0: negative, 1: ...})")
        labels = sorted({v for v in values if isinstance(v, str) and v.strip()})
        logger.warning("data.labels not given: using the %d names found in the train split: %s", len(labels), labels)

    features = Features({"text": Value("string"), "label": ClassLabel(names=labels)})
    dropped: dict[str, int] = {}

    def convert(split: str) -> Dataset:
        ds = columns(split)
        texts = data_checks.texts(ds[section.text_column], f"data.text_column ({file(split)})")
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if len(keep) < len(texts):
            dropped[f"{split}_empty_text"] = len(texts) - len(keep)
            logger.warning("%s: dropped %d rows with empty text", file(split), len(texts) - len(keep))
        values = ds[section.label_column]
        ids = _to_label_ids([values[i] for i in keep], labels, id_map, preset, f"data.label_column ({file(split)})")
        return Dataset.from_dict({"text": [texts[i] for i in keep], "label": ids}, features=features)

    train = convert(section.train_split)
    if section.eval_split in raw:
        eval_ds, eval_split = convert(section.eval_split), section.eval_split
    else:
        data_checks.check_classes(
            train["label"], None, labels, f"data ({file(section.train_split)})", strict=not in_mixture
        )
        data_checks.check_carve(
            train["label"], labels, section.validation_fraction, f"data.validation_fraction ({source})"
        )
        parts = train.train_test_split(
            test_size=section.validation_fraction, seed=section.seed, stratify_by_column="label"
        )
        train, eval_ds = parts["train"], parts["test"]
        eval_split = f"{section.train_split} (held-out {section.validation_fraction:.0%}, seed {section.seed})"
        logger.info("no %r split: carved %d validation rows from train", section.eval_split, len(eval_ds))
    fixes = data_checks.fixes(
        section,
        carved=section.eval_split not in raw,
        eval_cut=len(eval_ds) > (section.max_eval_samples or len(eval_ds)),
    )
    if section.max_train_samples:
        train = train.shuffle(seed=section.seed).select(range(min(section.max_train_samples, len(train))))
    if section.max_eval_samples:
        eval_ds = eval_ds.shuffle(seed=section.seed).select(range(min(section.max_eval_samples, len(eval_ds))))
    data_checks.check_classes(
        train["label"], eval_ds["label"], labels, f"data ({source})", *fixes, strict=not in_mixture
    )
    hub = not files  # read from the Hub: its id is portable; a local folder or file is named, never its path
    return LabeledData(
        train=train,
        eval=eval_ds,
        labels=labels,
        source=source if hub else section.preset or Path(source).name,
        task=data_task(section),
        license=preset.license if preset else None,
        eval_split=eval_split,
        dropped=dropped,
        config_name=section.config_name if hub else None,
        files={path.name: file_sha256(path) for path in files.values()},
        checks=data_checks.text_checks(train["text"], eval_ds["text"], f"data ({source})", warn=not in_mixture),
    )


SOURCE_COLUMN = "source"
_PER_SOURCE_FIELDS = {*SOURCE_FIELDS, "labels"}


def load_mixture(section: DataSection) -> LabeledData:
    """Each source loaded as its own data section, labels mapped into one set, train rows weighted, eval per source.

    Train and eval carry a `source` column (the entry's name); `LabeledData.eval_groups` gives the per-source eval rows.
    """
    from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets

    assert section.mixture
    shared = section.model_dump(
        include={"train_split", "eval_split", "validation_fraction", "max_eval_samples", "seed"}
    )
    parts: list[tuple[MixtureSource, LabeledData, list[str]]] = []
    for i, entry in enumerate(section.mixture):
        where = f"data.mixture.{i} ({entry.display_name})"
        try:
            own = {
                k: v
                for k, v in entry.model_dump(include=_PER_SOURCE_FIELDS & entry.model_fields_set).items()
                if v is not None
            }
            one = _load_source(DataSection(**own, **shared), in_mixture=True)
        except FintrlError as err:
            raise type(err)(f"{where}: {err}") from err
        label_map = entry.label_map or {}
        unknown = sorted(set(label_map) - set(one.labels))
        if unknown:
            raise RecipeError(f"{where}.label_map: {unknown} are not labels of this source {one.labels}")
        parts.append((entry, one, [label_map.get(name, name) for name in one.labels]))

    given = section.labels
    if given is not None:
        labels = label_names(given)
        for i, (entry, _, mapped) in enumerate(parts):
            missing = sorted(set(mapped) - set(labels))
            if missing:
                raise RecipeError(
                    f"data.mixture.{i} ({entry.display_name}): labels {missing} are not in data.labels {labels}; "
                    "map them with `label_map` or add them to data.labels"
                )
    else:  # union, in order of first appearance
        labels = list(dict.fromkeys(name for _, _, mapped in parts for name in mapped))
    index = {name: i for i, name in enumerate(labels)}
    features = Features({"text": Value("string"), "label": ClassLabel(names=labels), SOURCE_COLUMN: Value("string")})

    def relabel(ds: Dataset, mapped: list[str], name: str, rows: list[int] | None = None) -> Dataset:
        rows = list(range(len(ds))) if rows is None else rows
        texts, ids = ds["text"], ds["label"]
        return Dataset.from_dict(
            {
                "text": [texts[r] for r in rows],
                "label": [index[mapped[ids[r]]] for r in rows],
                SOURCE_COLUMN: [name] * len(rows),
            },
            features=features,
        )

    trains, evals, provenance, dropped = [], [], [], {}
    for i, (entry, one, mapped) in enumerate(parts):
        name = entry.display_name
        rows = weighted_indices(len(one.train), entry.weight, seed=section.seed + i)
        if not rows:
            logger.warning(
                "data.mixture.%d (%s): weight %g of %d rows takes no train rows", i, name, entry.weight, len(one.train)
            )
        trains.append(relabel(one.train, mapped, name, rows))
        evals.append(relabel(one.eval, mapped, name))
        dropped |= {f"{name}/{k}": v for k, v in one.dropped.items()}
        provenance.append(
            {
                "name": name,
                "source": one.source,
                "config_name": one.config_name,
                "license": one.license,
                "task": one.task,
                "weight": entry.weight,
                "label_map": entry.label_map or {},
                "n_train_source": len(one.train),
                "n_train": len(rows),
                "n_eval": len(one.eval),
                "eval_split": one.eval_split,
                "checks": one.checks,
            }
        )
    train = concatenate_datasets(trains).shuffle(seed=section.seed)
    if section.max_train_samples:
        train = train.select(range(min(section.max_train_samples, len(train))))
    eval_ds = concatenate_datasets(evals)
    carved = any(one.eval_split != section.eval_split for _, one, _ in parts)
    fixes = data_checks.fixes(section, carved, eval_cut=bool(section.max_eval_samples), per_source=True)
    data_checks.check_classes(train["label"], eval_ds["label"], labels, "data.mixture", *fixes)
    # duplicates and overlap across the sources' train rows, each row once (before weights and max_train_samples)
    checks = data_checks.text_checks(
        [t for _, one, _ in parts for t in one.train["text"]], eval_ds["text"], "data.mixture"
    )
    licenses = {one.license for _, one, _ in parts}
    splits = {one.eval_split for _, one, _ in parts}
    logger.info(
        "mixture: %s",
        ", ".join(
            f"{p['name']} {p['n_train']} train ({p['weight']:g} x {p['n_train_source']}) / {p['n_eval']} eval"
            for p in provenance
        ),
    )
    return LabeledData(
        train=train,
        eval=eval_ds,
        labels=labels,
        source="mixture(" + ", ".join(f"{p['name']}*{p['weight']:g}" for p in provenance) + ")",
        task=data_task(section),
        license=licenses.pop() if len(licenses) == 1 else "other",
        eval_split=splits.pop() if len(splits) == 1 else "per source",
        dropped=dropped,
        mixture=provenance,
        checks=checks,
        files={f"{entry.display_name}/{name}": sha for (entry, one, _) in parts for name, sha in one.files.items()},
    )
