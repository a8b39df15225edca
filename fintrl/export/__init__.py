"""`fintrl export --merged`: the adapter merged into its base as a plain transformers model (`merge`), and its card."""
