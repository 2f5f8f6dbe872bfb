"""Hypothesis profiles: `dev` keeps the edit loop fast, `ci` is thorough and reproducible, and
`random` looks somewhere new each run.

Hypothesis ships its own `ci` profile and auto-loads it when CI is set; registering ours under
the same name replaces it, and loading explicitly makes the choice independent of that magic.
HYPOTHESIS_PROFILE wins over CI, so CI can run a `random` stage beside the derandomized one.
"""

import os
import secrets

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=50)
settings.register_profile("ci", max_examples=500, derandomize=True, deadline=None, print_blob=True)
# A derandomized run replays the same examples forever and never finds anything new: this one
# draws a fresh seed each run (printed in the header, so a failure is replayed with
# --hypothesis-seed=N); what it finds becomes an @example in the test.
settings.register_profile("random", max_examples=200, deadline=None, print_blob=True)

if "HYPOTHESIS_PROFILE" in os.environ:
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif os.environ.get("CI", "").lower() in ("true", "1"):
    settings.load_profile("ci")
else:
    settings.load_profile("dev")


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own configure reads --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    if settings.get_current_profile_name() == "random" and config.getoption("hypothesis_seed") is None:
        config.option.hypothesis_seed = str(secrets.randbelow(2**32))


def pytest_report_header(config: pytest.Config) -> str:
    s = settings.default
    seed = config.getoption("hypothesis_seed")
    # A derandomized profile ignores the seed: the advice is for the random one only.
    replay = (f", seed {seed}: replay with HYPOTHESIS_PROFILE=random pytest ... --hypothesis-seed={seed}"
              if seed is not None and not s.derandomize else "")
    return (f"hypothesis profile: {settings.get_current_profile_name()} (max_examples={s.max_examples}, "
            f"derandomize={s.derandomize}){replay}")
