"""Everything `fintrl validate` (and `fintrl run`, before it loads anything) checks without weights or network: the
recipe against presets, paths, the model and placeholders (`recipe`), and the pass-through sections against the real
TRL, PEFT and transformers classes (`library_fields`)."""
