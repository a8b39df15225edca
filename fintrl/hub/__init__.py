"""The Hub: Hub ids, staging what may leave the machine, the model card, publishing versions and reading them back."""
