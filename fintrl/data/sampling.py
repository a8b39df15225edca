"""Seeded row sampling: class balancing by oversampling, and a mixture source's weight as row indices."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset


def balance_classes(train: Dataset, balance: float, seed: int) -> Dataset:
    """Oversample: class c gets round(n_c + balance * (n_max - n_c)) rows (every row int(k) times plus a seeded
    sample), so rare classes are seen more often without dropping any row of the common ones."""
    labels = train["label"]
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    largest = max(len(rows) for rows in by_class.values())
    rows = []
    for y, members in sorted(by_class.items()):
        target = len(members) + balance * (largest - len(members))
        rows += [members[j] for j in weighted_indices(len(members), target / len(members), seed + y)]
    return train.select(rows).shuffle(seed=seed)


def weighted_indices(n: int, weight: float, seed: int) -> list[int]:
    """round(weight * n) row indices: every row int(weight) times, plus a seeded sample (no repeats) for the rest."""
    import numpy as np

    copies = int(weight)
    extra = min(n, max(0, round(weight * n) - copies * n))
    sample = np.random.default_rng(seed).choice(n, size=extra, replace=False) if extra else []
    return list(range(n)) * copies + sorted(int(i) for i in sample)
