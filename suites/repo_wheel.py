"""devshell's wheel, built from this repository for the suites that install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def beside_the_repository() -> bool:
    """A wheel can be built here: not so in an installed copy of the suites (devshell.contract)."""
    return (REPO / "pyproject.toml").is_file()


def build(out: str | Path) -> Path:
    """The wheel, in out. With the test extra's hatchling and no isolated build environment:
    pip's own would be made (and its backend fetched) anew for every build."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(REPO)], check=True, capture_output=True)
    return next(Path(out).glob("devshell-*.whl"))
