"""Scoring a dataset into a report (`report`), and two models compared on the same rows (`compare`)."""
