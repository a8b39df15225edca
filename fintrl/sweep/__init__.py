"""`fintrl sweep`: a search over recipe fields (space.py) run as an Optuna study of ordinary runs (study.py), with
its results, plot and verdict against the recipe's own settings (results.py)."""
