"""Bad inputs on the command line itself: unknown commands and options, serve's options, Ray's cluster address."""

from __future__ import annotations

from tests.cli.bad_inputs import Probe, probe_test, ray_input, ray_predict

P = Probe
PROBES: list[Probe] = [
    # -- the command line --------------------------------------------------------------------------------------------
    P("unknown command", lambda c: ["train", "x"], 2, "invalid choice"),
    P("run without a recipe", lambda c: ["run"], 2, "required: recipe"),
    P("resume and overwrite together", lambda c: ["run", c.recipe(), "--resume", "--overwrite"], 2, "not allowed with"),
    P("bad scoring mode", lambda c: ["eval", str(c.run), "--mode", "best"], 2, "invalid choice"),
    P("--set without =", lambda c: ["validate", c.recipe(), "--set", "train.learning_rate"], 2, "KEY=VALUE"),
    P("--set into a value", lambda c: ["validate", c.recipe(), "--set", "output_dir.x=1"], 2, "is not a section"),
    P("--set past a list's end", lambda c: ["validate", c.recipe(), "--set", "data.mixture.3.path=x"], 2, "."),
    # -- serve's own options ---------------------------------------------------------------------------------------
    P("serve with an empty key", lambda c: ["serve", str(c.run), "--api-key", ""], 2, "--api-key is empty"),
    P("serve with a blank key", lambda c: ["serve", str(c.run), "--api-key", "  "], 2, "--api-key is empty"),
    P(
        "serve with an empty key variable",
        lambda c: ["serve", str(c.run)],
        2,
        "FINTRL_API_KEY is empty",
        patch=lambda mp: mp.setenv("FINTRL_API_KEY", ""),
    ),
    P("serve on port 99999", lambda c: ["serve", str(c.run), "--port", "99999"], 2, "--port 99999"),
    P("serve on a negative port", lambda c: ["serve", str(c.run), "--port", "-1"], 2, "--port -1"),
    # -- Ray's cluster address -------------------------------------------------------------------------------------
    P(
        "ray address nothing answers",
        lambda c: ray_predict(c, ray_input(c), str(c.tmp / "o"), "--address", "127.0.0.1:1"),
        2,
        "no Ray cluster answers",
    ),
    P(
        "ray address not host:port",
        lambda c: ray_predict(c, ray_input(c), str(c.tmp / "o"), "--address", "headnode"),
        2,
        "host:port",
    ),
]

test_bad_input = probe_test(PROBES)
