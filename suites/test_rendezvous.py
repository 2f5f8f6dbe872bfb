"""The rendezvous: the agent commits inside and formats patches into /patches; on the host,
`devshell patches apply` applies them with git am under the host's identity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

AGENT = "Agent Smith <agent@devshell.invalid>"
HOST_ENV = {"GIT_COMMITTER_NAME": "Host User", "GIT_COMMITTER_EMAIL": "host@example.com",
            "GIT_AUTHOR_NAME": "Host User", "GIT_AUTHOR_EMAIL": "host@example.com"}


def git(repo, *args):
    # The work tree's top dir now belongs to dev's uid, which root (CI) does not share.
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, **HOST_ENV}).stdout


@pytest.fixture
def host_repo(tmp_path):
    repo = tmp_path / "myproject"
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
git config --global --add safe.directory /patches/.git  # the host user owns it (root in CI)
git clone -q /patches "$DEVSHELL_SRC/myproject"
cd "$DEVSHELL_SRC/myproject"
echo "built by the agent" >> README
git commit -q -am "Teach README a second line"
echo new > NEWS && git add NEWS && git commit -q -m "Add NEWS"
git format-patch -q -o /patches origin/main
"""


def devshell_patches(cwd, *args):
    return subprocess.run([sys.executable, "-m", "devshell", "patches", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **HOST_ENV})


def test_patches_formatted_inside_are_owned_by_the_host_ids(devshell_factory, host_repo):
    shell = devshell_factory(patches=host_repo)
    result = shell.run(AGENT_WORK)
    assert result.exit_code == 0, result.stderr
    made = sorted(p for p in os.listdir(host_repo) if p.endswith(".patch"))
    assert made == ["0001-Teach-README-a-second-line.patch", "0002-Add-NEWS.patch"]
    for name in made:
        st = os.stat(host_repo / name)
        assert (st.st_uid, st.st_gid) == (shell.opts.uid, shell.opts.gid)


def test_patches_apply_on_the_host_with_author_from_patch_and_host_committer(devshell_factory,
                                                                              host_repo):
    shell = devshell_factory(patches=host_repo)
    assert shell.run(AGENT_WORK).exit_code == 0
    checked = devshell_patches(host_repo, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    applied = devshell_patches(host_repo, "apply")
    assert applied.returncode == 0, applied.stderr
    log = git(host_repo, "log", "--format=%s|%an <%ae>|%cn <%ce>", "-2").splitlines()
    assert log == [f"Add NEWS|{AGENT}|Host User <host@example.com>",
                   f"Teach README a second line|{AGENT}|Host User <host@example.com>"]
    assert (host_repo / "NEWS").read_text() == "new\n"
    assert sorted(os.listdir(host_repo / "applied")) == ["0001-Teach-README-a-second-line.patch",
                                                         "0002-Add-NEWS.patch"]


def test_patches_list_shows_subject_author_and_diffstat(devshell_factory, host_repo):
    shell = devshell_factory(patches=host_repo)
    assert shell.run(AGENT_WORK).exit_code == 0
    listed = devshell_patches(host_repo, "list")
    assert listed.returncode == 0, listed.stderr
    assert "Teach README a second line" in listed.stdout
    assert AGENT in listed.stdout
    assert "1 file changed, 1 insertion(s)(+)" in listed.stdout
