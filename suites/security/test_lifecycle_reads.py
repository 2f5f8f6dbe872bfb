"""What `devshell status` and `down` read from inside a devshell is the agent's to forge: a du
that never answers or floods its output must not hold the host's command, nor its memory."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from devshell.engine import USAGE_TIMEOUT
from devshell.options import to_argv

CLASS = "9 lifecycle reads"
FAKE_DU = {
    "never answers": "#!/bin/sh\nexec sleep 3600\n",
    "floods its output": "#!/bin/sh\nexec cat /dev/zero\n",
    "answers garbage": "#!/bin/sh\nprintf '99999999999999999999999999999\\tx\\n'; exec sleep 3600\n",
}


@pytest.fixture
def forged_du(devshell_factory):
    """A devshell in which root inside put its own du first on PATH."""
    def make(body):
        shell = devshell_factory.open()
        put = f"cat > /usr/local/bin/du <<'EOF'\n{body}EOF\nchmod 755 /usr/local/bin/du"
        assert shell.exec(["sh", "-c", put]).exit_code == 0
        return shell
    return make


# Root inside puts its du in /usr/local/bin: under locked the root filesystem is read-only and
# nobody inside is root, so no du of the agent's is on the image's PATH, which status runs du by.
@pytest.mark.attack(CLASS, "a du inside that hangs, floods or lies, to hold `devshell status`")
@pytest.mark.standard_profile
@pytest.mark.parametrize("du", list(FAKE_DU), ids=list(FAKE_DU))
def test_status_is_bounded_whatever_du_inside_does(forged_du, devshell_cli, du):
    shell = forged_du(FAKE_DU[du])
    started = time.monotonic()
    done = devshell_cli(None, "status", *to_argv(shell.opts), "--json")
    took = time.monotonic() - started
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["volume_size"] is None
    assert took < USAGE_TIMEOUT + 20, f"status took {took:.0f} s"


@pytest.mark.control(CLASS, "a du inside that hangs, floods or lies, to hold `devshell status`")
@pytest.mark.standard_profile
def test_control_the_forged_du_does_hang_a_plain_exec(forged_du):
    shell = forged_du(FAKE_DU["never answers"])
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["docker", "exec", shell.name, "du", "-sxB1", "/"], capture_output=True, timeout=5)
