"""Class 9: the user's files keep their owner and mode, and the user's git keeps working.

A session that writes to /patches, clones /checkout, commits, formats patches and leaves memory
notes must leave every entry of the host checkout (its top directory included) with the owner
and mode it had, so that the user's own `git status` there never meets "dubious ownership":
for a root host (CI) and for an ordinary host user, who runs the real CLI. The control shows
what a changed owner does: host git refuses the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hostuser import as_tester  # suites/hostuser.py: its fixtures come through suites/conftest.py

from devshell.spec import container_name

CLASS = "9 owner and mode"

SESSION = """
set -e
echo "work" > /patches/notes.txt
git clone -q /checkout "$DEVSHELL_SRC/p" && cd "$DEVSHELL_SRC/p"
git config user.name Agent && git config user.email agent@devshell.invalid
echo more >> README && git commit -qam "More README" && git format-patch -q -o /patches -1
if [ -d /cache/ai/memory ]; then echo "a note" > ~/.claude/projects/-patches/memory/note.md; fi
"""


@pytest.mark.attack(CLASS, "a full session changes the checkout's owner or mode [root]")
def test_a_session_leaves_the_checkout_owner_mode_and_git_as_they_were(devshell_factory, make_repo,
                                                                        host_cache_dir, tmp_path_factory,
                                                                        host_tree, host_git):
    checkout = make_repo(tmp_path_factory.mktemp("owned") / "checkout")
    before = host_tree(checkout)
    shell = devshell_factory.open(checkout=checkout, host_cache=host_cache_dir())
    result = shell.run(SESSION)
    assert result.exit_code == 0, result.stderr
    assert host_tree(checkout) == before  # owner, mode and content of every entry, top dir too
    status = host_git(checkout, "status", "--porcelain", check=False)
    assert status.returncode == 0 and "dubious" not in status.stderr, status.stderr
    assert status.stdout == ""


@pytest.fixture
def tester_checkout(tester, tester_base, devshell_instance, devshell_cell):
    """A checkout made by the tester; its devshell, volume and drop dir go at the end."""
    from devshell.options import default_patches_out

    checkout = os.path.join(tester_base, "checkout")
    for argv in (["mkdir", checkout], ["git", "-C", checkout, "init", "-q", "-b", "main"],
                 ["sh", "-c", f"echo hello > {checkout}/README && chmod 0640 {checkout}/README"],
                 ["git", "-C", checkout, "add", "-A"], ["git", "-C", checkout, "commit", "-qm", "initial"]):
        done = as_tester(tester, *argv, cwd=tester_base)
        assert done.returncode == 0, done.stderr
    instance = devshell_instance()
    drop = default_patches_out(os.path.realpath(checkout), tester.pw_dir, {})
    yield checkout, instance, drop
    name = container_name(devshell_cell.name, instance)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(["docker", "volume", "rm", name], capture_output=True)
    shutil.rmtree(drop, ignore_errors=True)


@pytest.mark.attack(CLASS, "a full session changes the checkout's owner or mode [non-root]")
def test_a_non_root_users_checkout_keeps_owner_mode_and_git(tester, tester_python, tester_base,
                                                            tester_checkout, host_tree, devshell_cell,
                                                            devshell_cells_path):
    checkout, instance, drop = tester_checkout
    before = host_tree(checkout)
    script = os.path.join(tester_base, "s.sh")  # the tester's real CLI reads it
    with open(script, "w") as f:
        f.write(SESSION)
    python, env = tester_python
    done = as_tester(tester, python, "-m", "devshell", devshell_cell.name, "--script", script,
                     "--instance", instance, *[f"--cells-dir={d}" for d in devshell_cells_path[:-1]],
                     cwd=checkout, env=env)
    assert done.returncode == 0, done.stderr
    notes = os.path.join(drop, "notes.txt")
    assert os.stat(notes).st_uid == tester.pw_uid  # the session ran, into the default drop dir
    assert host_tree(checkout) == before
    status = as_tester(tester, "git", "status", "--porcelain", cwd=checkout)
    assert status.returncode == 0 and "dubious" not in status.stderr, status.stderr
    assert status.stdout == ""


@pytest.mark.control(CLASS, "a full session changes the checkout's owner or mode")
@pytest.mark.parametrize("host_user", ["root", "non-root"])
def test_a_checkout_whose_top_dir_changed_owner_is_dubious_to_host_git(host_user, make_repo, tmp_path,
                                                                       host_git, request):
    """The guard absent: what a launcher that chowned the checkout's top dir to dev (as earlier
    versions did) would do to the user's git."""
    if host_user == "root":
        repo = make_repo(tmp_path / "checkout")
        os.chown(repo, 1000, 1000)
        status = host_git(repo, "status", check=False)
    else:
        tester = request.getfixturevalue("tester")
        base = request.getfixturevalue("tester_base")
        repo = make_repo(os.path.join(base, "checkout"), owner=(tester.pw_uid, tester.pw_gid))
        os.chown(repo, 1000, 1000)
        status = as_tester(tester, "git", "-C", repo, "status", cwd="/")
    assert status.returncode != 0 and "dubious ownership" in status.stderr, status.stderr
