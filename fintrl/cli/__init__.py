"""The `fintrl` command: argv in, one line and an exit code out for every failure (`main`); a module per verb in
`commands/`."""
