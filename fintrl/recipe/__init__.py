"""Recipes: the typed sections of a run (`schema`) and reading them from YAML with `--set` overrides (`yaml_io`).
What a recipe is checked against beyond its own types lives in `fintrl.checks`."""
