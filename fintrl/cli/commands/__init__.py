"""One module per `fintrl` verb, each with `register(sub)` (its parser) and `run(args)` (argparse in, typed library
calls out)."""
