"""Class 9: the user's files keep their owner and mode, and the user's git keeps working.

A session that writes to /patches, clones /checkout, commits, formats patches and leaves memory
notes must leave every entry of the host checkout (its top directory included) with the owner
and mode it had, so that the user's own `git status` there never meets "dubious ownership":
for a root host (CI) and for an ordinary host user, who runs the real CLI. The control shows
what a changed owner does: host git refuses the repository.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from devshell.spec import container_name

CLASS = "9 owner and mode"
TESTER = "devshell-tester"

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
    shell = devshell_factory(checkout=checkout, host_cache=host_cache_dir())
    result = shell.run(SESSION)
    assert result.exit_code == 0, result.stderr
    assert host_tree(checkout) == before  # owner, mode and content of every entry, top dir too
    status = host_git(checkout, "status", "--porcelain", check=False)
    assert status.returncode == 0 and "dubious" not in status.stderr, status.stderr
    assert status.stdout == ""


@pytest.fixture(scope="module")
def tester():
    """An ordinary host user in the docker group (created if missing; kept for later runs)."""
    if os.geteuid() != 0:
        pytest.skip("making and becoming a second host user needs root")
    try:
        pwd.getpwnam(TESTER)
    except KeyError:
        subprocess.run(["useradd", "-m", TESTER], check=True)
    subprocess.run(["usermod", "-aG", "docker", TESTER], check=True)
    return pwd.getpwnam(TESTER)


def as_tester(tester, *argv, cwd, timeout=300, env=None):
    env = {**(env or {}), "HOME": tester.pw_dir, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8", "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["runuser", "-u", TESTER, "--", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture(scope="module")
def tester_python(tester):
    """An interpreter the tester may run, and the environment that finds devshell with it: this
    one, or (when it lives where the tester cannot reach, e.g. under /root, as CI's clone may
    too) the system's python of the same version with a readable copy of this environment's
    packages and of devshell. Never a skip: a run that cannot test the non-root user fails."""
    import devshell

    code = os.path.dirname(os.path.dirname(os.path.abspath(devshell.__file__)))
    if as_tester(tester, sys.executable, "-c", "import devshell.cli", cwd="/",
                 env={"PYTHONPATH": code}).returncode == 0:
        yield sys.executable, {"PYTHONPATH": code}
        return
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    copy = tempfile.mkdtemp(prefix="devshell-tester-python-")
    os.chmod(copy, 0o755)
    try:
        dev_only = shutil.ignore_patterns("__pycache__", "mypy*", "hypothesis*", "pip", "pip-*",
                                          "pygments*", "tox*", "ruff*", "*.pth")
        for site in (p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)):
            shutil.copytree(site, copy, ignore=dev_only, dirs_exist_ok=True)
        shutil.copytree(os.path.join(code, "devshell"), os.path.join(copy, "devshell"),
                        ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(copy):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644 if not name.endswith(".so") else 0o755)
        env = {"PYTHONPATH": copy}
        done = as_tester(tester, system, "-c", "import devshell.cli", cwd="/", env=env)
        assert done.returncode == 0, f"{TESTER} cannot run devshell with {system}: {done.stderr}"
        yield system, env
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture
def tester_base(tester, devshell_instance):
    """A directory of the tester's own, in its home (a root test's tmp_path is out of its reach),
    removed at the end."""
    base = os.path.join(tester.pw_dir, f"devshell-security-{devshell_instance()}")
    os.mkdir(base, 0o755)
    os.chown(base, tester.pw_uid, tester.pw_gid)
    yield base
    shutil.rmtree(base, ignore_errors=True)


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
