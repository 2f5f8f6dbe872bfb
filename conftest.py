"""Hypothesis profiles: `dev` keeps the edit loop fast, `ci` is thorough and reproducible.

Hypothesis ships its own `ci` profile and auto-loads it when CI is set; registering ours under
the same name replaces it, and loading explicitly makes the choice independent of that magic.
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50)
settings.register_profile("ci", max_examples=500, derandomize=True, deadline=None, print_blob=True)

if os.environ.get("CI", "").lower() in ("true", "1"):
    settings.load_profile("ci")
else:
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_report_header() -> str:
    s = settings.default
    return (f"hypothesis profile: {settings.get_current_profile_name()} (max_examples={s.max_examples}, "
            f"derandomize={s.derandomize})")
