"""Exact label scoring: the `LabelScorer`, calibration of its probabilities, and the targets (run, adapter, Hub repo,
base) it scores."""
