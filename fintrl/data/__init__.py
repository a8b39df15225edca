"""Data: sources and presets -> labelled train/eval splits (`loading`), the file and label checks before training
(`checks`), seeded sampling."""
