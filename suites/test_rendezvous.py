"""The rendezvous: the agent clones the read-only checkout, commits inside and formats patches
into /patches (the drop dir); on the host, `devshell patches apply` applies them to the
checkout under the host's identity, and the checkout keeps its owner and mode throughout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from devshell.engine import ExecResult
from devshell.launcher import Devshell

AGENT = "Agent Smith <agent@devshell.invalid>"
HOST_ENV = {"GIT_COMMITTER_NAME": "Host User", "GIT_COMMITTER_EMAIL": "host@example.com",
            "GIT_AUTHOR_NAME": "Host User", "GIT_AUTHOR_EMAIL": "host@example.com"}


def git(repo, *args):
    # No safe.directory: the checkout stays the user's, so the user's git must trust it as is.
    return subprocess.run(["git", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, **HOST_ENV}).stdout


@pytest.fixture
def host_repo(tmp_path):
    return new_repo(tmp_path)


def new_repo(parent):
    parent.chmod(0o755)  # a user's checkout is usually readable by others, and so by dev
    repo = parent / "myproject"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hello\n")
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


AGENT_WORK = f"""
set -e
git config --global user.name "{AGENT.split(' <')[0]}"
git config --global user.email "{AGENT.split('<')[1].rstrip('>')}"
git clone -q /checkout "$DEVSHELL_SRC/myproject"
cd "$DEVSHELL_SRC/myproject"
echo "built by the agent" >> README
git commit -q -am "Teach README a second line"
echo new > NEWS && git add NEWS && git commit -q -m "Add NEWS"
git format-patch -q -o /patches origin/main
"""


def devshell_patches(shell, *args):
    """On the host, in the checkout, as the user: the drop dir is named explicitly because the
    fixture put it in a temporary directory instead of devshell's state dir."""
    return subprocess.run([sys.executable, "-m", "devshell", "patches", *args, "--patches-dir",
                           shell.opts.patches_out], cwd=shell.opts.checkout,
                          capture_output=True, text=True, env={**os.environ, **HOST_ENV})


def owners_and_modes(repo):
    out = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in [".", *dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), repo)] = (st.st_uid, st.st_gid, st.st_mode)
    return out


class AgentWork(NamedTuple):
    shell: Devshell
    repo: Path
    owners_before: dict[str, tuple[int, int, int]]  # the checkout's, before the devshell opened
    result: ExecResult  # of AGENT_WORK


@pytest.fixture(scope="module")
def worked(devshell_factory, tmp_path_factory) -> AgentWork:
    """A devshell on a host checkout after the agent's work, for the tests that only read what
    came of it."""
    repo = new_repo(tmp_path_factory.mktemp("rendezvous"))
    before = owners_and_modes(repo)
    shell = devshell_factory.open(checkout=repo)
    return AgentWork(shell, repo, before, shell.run(AGENT_WORK))


def test_patches_formatted_inside_are_owned_by_the_dev_ids(worked):
    shell = worked.shell
    assert worked.result.exit_code == 0, worked.result.stderr
    drop = shell.opts.patches_out
    made = sorted(p for p in os.listdir(drop) if p.endswith(".patch"))
    assert made == ["0001-Teach-README-a-second-line.patch", "0002-Add-NEWS.patch"]
    for name in made:
        st = os.stat(os.path.join(drop, name))
        assert (st.st_uid, st.st_gid) == (shell.opts.uid, shell.opts.gid)


def test_the_checkout_keeps_its_owner_and_mode_and_the_users_git_works(worked):
    assert worked.result.exit_code == 0, worked.result.stderr
    assert owners_and_modes(worked.repo) == worked.owners_before
    assert git(worked.repo, "status", "--porcelain") == ""  # no "dubious ownership"


def test_patches_apply_on_the_host_with_author_from_patch_and_host_committer(devshell_factory,
                                                                              host_repo):
    shell = devshell_factory.open(checkout=host_repo)
    assert shell.run(AGENT_WORK).exit_code == 0
    checked = devshell_patches(shell, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    applied = devshell_patches(shell, "apply")
    assert applied.returncode == 0, applied.stderr
    log = git(host_repo, "log", "--format=%s|%an <%ae>|%cn <%ce>", "-2").splitlines()
    assert log == [f"Add NEWS|{AGENT}|Host User <host@example.com>",
                   f"Teach README a second line|{AGENT}|Host User <host@example.com>"]
    assert (host_repo / "NEWS").read_text() == "new\n"
    assert sorted(os.listdir(os.path.join(shell.opts.patches_out, "applied"))) == [
        "0001-Teach-README-a-second-line.patch", "0002-Add-NEWS.patch"]


def test_patches_list_shows_subject_author_and_diffstat(worked):
    assert worked.result.exit_code == 0, worked.result.stderr
    listed = devshell_patches(worked.shell, "list")
    assert listed.returncode == 0, listed.stderr
    assert "Teach README a second line" in listed.stdout
    assert AGENT in listed.stdout
    assert "1 file changed, 1 insertion(s)(+)" in listed.stdout
