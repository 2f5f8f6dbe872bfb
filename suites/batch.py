"""Many attempts in one entry: a session each would be most of a suite's time."""

from __future__ import annotations

import re


def exit_codes(shell, scripts: dict) -> dict:
    """Each script's exit code, run one after another in one entry (shell.run), each in a shell
    of its own with its output dropped, so that one cannot stop or hide another."""
    body = "".join(f"( {script}\n) >/dev/null 2>&1; echo \"{n} $?\"\n"
                   for n, script in enumerate(scripts.values()))
    result = shell.run(body)
    codes = dict(re.findall(r"^(\d+) (\d+)$", result.stdout, flags=re.MULTILINE))
    assert len(codes) == len(scripts), result.stdout + result.stderr
    return {name: int(codes[str(n)]) for n, name in enumerate(scripts)}
