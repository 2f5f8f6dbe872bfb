"""Run devshell's contract suites against any cell, e.g. a downstream repository's own:

    python -m devshell.contract --cell=NAME --cells-dir=cells [pytest args]

It is `pytest <devshell's suites> ARGS`: "our cell keeps the devshell promises" as one command.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def suites_dir() -> Path:
    """The suites that come with devshell: inside the wheel, or at the repository root."""
    packaged = Path(__file__).parent / "suites"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "suites"


def main(argv: Sequence[str] | None = None) -> int:
    import pytest

    args = list(sys.argv[1:] if argv is None else argv)
    return int(pytest.main([str(suites_dir()), "-p", "no:cacheprovider", *args]))


if __name__ == "__main__":
    raise SystemExit(main())
