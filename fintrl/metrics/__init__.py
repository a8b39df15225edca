"""The maths of a report, on numpy arrays: classification metrics and baselines, plots, intervals and paired tests."""
