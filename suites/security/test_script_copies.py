"""Class 8: a --script runs the host's bytes, whatever the agent did to the kept copy.

init keeps each script it runs at /var/lib/devshell/scripts/<sha256 prefix>, root's and read-only
to dev, and runs a kept copy only after comparing its bytes with the ones the launcher brought.
Root inside (the agent through sudo, under the standard profile) can rewrite the copy between
sessions; the next session must still run the host script. The control runs the tampered copy
directly: it is 'pwned'.
"""

from __future__ import annotations

import hashlib

import pytest

from devshell.spec import STATE_DIR

CLASS = "8 --script copies"
SCRIPTS = f"{STATE_DIR}/scripts"

PWNED = "printf '#!/bin/sh\\necho pwned\\n'"

# name -> (user, how the kept copy @K@ is tampered with)
ATTEMPTS = {
    "root overwrites the kept copy": ("root", f"{PWNED} > @K@"),
    "root swaps the kept copy for a symlink": (
        "root", f"{PWNED} > /tmp/evil && chmod 755 /tmp/evil && ln -sfn /tmp/evil @K@"),
    "root swaps the scripts dir for its own": (
        "root", f"mkdir -p /tmp/evil-dir && {PWNED} > /tmp/evil-dir/$(basename @K@) "
                f"&& chmod -R 777 /tmp/evil-dir && rm -rf {SCRIPTS} && ln -s /tmp/evil-dir {SCRIPTS}"),
    "root makes the scripts dir world-writable, dev overwrites": (
        "root", f"chmod 777 {SCRIPTS} @K@ && su -s /bin/sh dev -c \"echo 'echo pwned' > @K@\""),
    "dev overwrites the kept copy": ("dev", f"{PWNED} > @K@"),
}


def attempts(*users):
    """The attempts by these users; root's (through sudo) need the standard profile."""
    return [pytest.param(a, marks=pytest.mark.standard_profile) if user == "root" else a
            for a, (user, _) in ATTEMPTS.items() if user in users]


@pytest.fixture(scope="module")
def shell(devshell_factory):
    return devshell_factory.open(host_cache=False)


@pytest.fixture
def kept(shell, devshell_cli, tmp_path, request):
    """A host script, run once through the CLI, so the container keeps a copy of it."""
    token = hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    script = tmp_path / "s.sh"
    script.write_text(f"#!/bin/sh\necho from-the-host-{token}\n")
    first = devshell_cli(shell, "--script", str(script))
    assert first.exit_code == 0, first.stderr
    assert first.stdout == f"from-the-host-{token}\n"
    sha = hashlib.sha256(script.read_bytes()).hexdigest()[:32]
    return script, f"{SCRIPTS}/{sha}", first.stdout


@pytest.mark.attack(CLASS, "tamper with the kept copy of a --script")
@pytest.mark.parametrize("attempt", attempts("root", "dev"))
def test_the_next_session_runs_the_hosts_script_not_the_tampered_copy(shell, kept, attempt, devshell_cli,
                                                                      as_user, agent):
    script, copy, expected = kept
    user, tamper = ATTEMPTS[attempt]
    tampered = agent(shell, as_user(tamper.replace("@K@", copy), user))
    if user == "dev":  # dev cannot write it at all
        assert tampered.exit_code != 0, "dev overwrote the kept copy"
    again = devshell_cli(shell, "--script", str(script))
    assert again.exit_code == 0, again.stderr
    assert again.stdout == expected
    assert "pwned" not in again.stdout + again.stderr


@pytest.mark.control(CLASS, "tamper with the kept copy of a --script")
@pytest.mark.parametrize("attempt", attempts("root"))
def test_the_tampered_copy_run_directly_is_pwned(shell, kept, attempt, as_user):
    _, copy, _ = kept
    _, tamper = ATTEMPTS[attempt]
    assert shell.run(as_user(tamper.replace("@K@", copy), "root")).exit_code == 0
    assert shell.run(copy).stdout == "pwned\n"


@pytest.mark.control(CLASS, "tamper with the kept copy of a --script")
@pytest.mark.parametrize("attempt", ["dev overwrites the kept copy"])
def test_dev_can_overwrite_a_copy_of_the_kept_file_it_owns(shell, kept, attempt):
    """The guard absent: the same overwrite of a dev-owned copy works; only the kept copy's
    owner and mode stop dev."""
    _, copy, _ = kept
    result = shell.run(f"cp {copy} /tmp/mine && printf '#!/bin/sh\\necho pwned\\n' > /tmp/mine && /tmp/mine")
    assert result.stdout == "pwned\n", result.stderr
