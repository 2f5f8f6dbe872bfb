"""The user's checkout is bound read-only at /checkout: its .git cannot be changed from inside,
by dev or by root through sudo, so the host's next git command never runs code the agent
planted (the rest of the checkout is covered by suites/security)."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess

import pytest
from batch import exit_codes

ATTACKS = {
    "plant a hook": "echo 'touch /tmp/pwned' > /checkout/.git/hooks/post-checkout",
    "set core.fsmonitor": "git -C /checkout config core.fsmonitor 'touch /tmp/pwned'",
    "set core.hooksPath": "git -C /checkout config core.hooksPath /checkout/hooks",
    "set core.sshCommand": "git -C /checkout config core.sshCommand evil",
    "set diff.external": "git -C /checkout config diff.external evil",
    "add a filter driver": "git -C /checkout config filter.x.clean evil",
    "append to config": "echo '[core] fsmonitor = evil' >> /checkout/.git/config",
    "write commondir": "echo /tmp/evil > /checkout/.git/commondir",
    "write config.worktree": "echo '[core] hooksPath = /x' > /checkout/.git/config.worktree",
    "craft the index": "echo garbage > /checkout/.git/index",
    "move .git away": "mv /checkout/.git /checkout/old-git",
    "remove .git": "rm -rf /checkout/.git",
    "replace .git with a gitfile": "rm -rf /checkout/.git; echo 'gitdir: /tmp/evil' > /checkout/.git",
    "chmod .git": "chmod 0777 /checkout/.git",
    "touch HEAD": "touch /checkout/.git/HEAD",
}

# Root inside is a premise of the standard profile only: under locked sudo is not there.
ROOT = "root via sudo"
USERS = ["dev", pytest.param(ROOT, marks=pytest.mark.standard_profile)]


def tree_digest(root):
    """Every file, link and dir under root, with content and mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                body = os.readlink(path).encode()
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    body = f.read()
            else:
                body = b""
            out[os.path.relpath(path, root)] = (st.st_mode, hashlib.sha256(body).hexdigest())
    return out


def as_user(command, user):
    """command as dev, or as root through sudo, with git trusting every repository: the host's
    .git belongs to another uid, and only the read-only bind may be what stops an attack."""
    trust = "GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'"
    if user == "dev":
        return f"export {trust}\n{command}"
    return f"sudo -n env {trust} sh -c {shlex.quote(command)}"


@pytest.fixture(scope="module")
def checkout(devshell_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("checkout")
    repo.chmod(0o755)  # readable by dev, as a user's checkout usually is
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=h", "-c", "user.email=h@x",
                                                  "commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    before = tree_digest(repo / ".git")
    return devshell_factory.open(checkout=repo), repo, before


@pytest.fixture(scope="module")
def attacked(checkout, devshell_profile):
    """Every attack, as each user, against /checkout, and (the controls) against an unprotected
    copy made anew for each; then .git's digest. Run once for the module; the tests read it, so
    an attack that changed .git fails every attack's test (its own exit code names it)."""
    shell, repo, _ = checkout
    copy = "/tmp/unprotected"
    attempts, controls = {}, {}
    for user in ["dev", ROOT] if devshell_profile == "standard" else ["dev"]:
        for attack, command in ATTACKS.items():
            attempts[attack, user] = as_user(command, user)
            # (a copy that could not be made fails the control, never lets the attack pass)
            controls[attack, user] = (f"{{ rm -rf {copy} && cp -r /checkout {copy}; }} || exit 99\n"
                                      + as_user(command.replace("/checkout", copy), user))
    return exit_codes(shell, attempts), exit_codes(shell, controls), tree_digest(repo / ".git")


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_checkout_git_cannot_be_changed_from_inside(checkout, attacked, attack, user):
    _, _, before = checkout
    attempts, _, after = attacked
    assert attempts[attack, user] != 0, f"{attack} as {user} succeeded"
    assert after == before


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_works_on_an_unprotected_copy(attacked, attack, user):
    """The control: every attack above is real, so only the protection makes it fail."""
    _, controls, _ = attacked
    assert controls[attack, user] == 0, f"{attack} as {user} failed on an unprotected copy"


def test_checkout_git_is_byte_identical_after_all_attacks(checkout, devshell_profile):
    shell, repo, before = checkout
    attempts = {f"{name} as dev": command for name, command in ATTACKS.items()}
    if devshell_profile == "standard":  # root via sudo; under locked, dev is all there is
        attempts |= {f"{name} as root": f"sudo -n sh -c {shlex.quote(command)}"
                     for name, command in ATTACKS.items()}
    exit_codes(shell, attempts)
    assert tree_digest(repo / ".git") == before
    assert not (repo / "old-git").exists()


def test_launch_says_the_checkout_is_read_only(devshell_cli, checkout, tmp_path):
    shell, _, _ = checkout
    script = tmp_path / "t.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    result = devshell_cli(shell, "--script", str(script))
    assert result.exit_code == 0, result.stderr
    assert f"/checkout={shell.opts.checkout} (read-only)" in result.stderr
