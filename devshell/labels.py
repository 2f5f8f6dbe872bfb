"""Every label devshell puts on an engine object, in one place.

`doctor`, the lifecycle commands and the test sweeps find devshell's objects by these names, so
a label defined anywhere else would be an object nobody can find again.
"""

from __future__ import annotations

# On every container and volume devshell creates: the mark that it is ours to reuse, verify,
# replace or remove. An object with devshell's name but without it is foreign and left alone.
MANAGED = "devshell.managed"
# The cell a container or volume belongs to: an action under another cell's name is refused.
CELL = "devshell.cell"
# The spec's hash (re-entry compares it) and the identity it was hashed from (for `differences`).
SPEC_HASH = "devshell.spec-hash"
SPEC = "devshell.spec"
# host:pid of the launch that made a container or volume: a container that never started is
# half-made only once its maker is gone (until then, another launch is still making it), and
# a launch removes, on failure, only a volume it made itself.
MAKER = "devshell.maker"
# On a container: the trust profile and the runtime it was made with, as the launch read the
# runtime's configuration (e.g. "runsc: gVisor, no network"), for the session line, --list and
# status without asking the engine's configuration again.
PROFILE = "devshell.profile"
# What an object is for, where it is not a devshell itself: the egress proxy of a devshell
# under --network allow, and its network (egress.py), carry "egress-proxy".
ROLE = "devshell.role"
# On an egress proxy that lets every name through for `devshell net learn` ("1"): --list says
# so, since a learning session the CLI could not finish leaves it so until the next launch.
LEARNING = "devshell.egress-learning"
RUNTIME = "devshell.runtime"
# The pytest plugin's run id and the host:pid that owns the run (a dead owner's objects are swept).
TEST_RUN = "devshell.test-run"
TEST_PID = "devshell.test-pid"


def owner_of(found: dict[str, str] | None, cell: str) -> str:
    """Whose an object with devshell's name is, by its labels: 'devshell' (made by devshell for
    cell: ours to reuse, verify, replace or remove), 'other-cell', or 'foreign' (not made by
    devshell at all). Launches, --rm, --verify, status and down all decide by this."""
    found = found or {}
    if MANAGED not in found:
        return "foreign"
    return "devshell" if found.get(CELL) == cell else "other-cell"
