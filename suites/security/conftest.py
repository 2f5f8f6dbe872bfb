"""The standing attack suite: what an agent inside a devshell (dev, or root through sudo under
the standard profile) tries, and what must stay true on the host afterwards.

Every attack test asserts that its attempt FAILS and that the host is unchanged; every attack
has a CONTROL test that runs the same attempt where the guard is absent (a writable copy, a
plain `docker run` of the same image, plain git on a plain directory) and asserts that it
WORKS there, so no attack test passes because the attempt was broken to begin with.

Attempts as root through sudo are marked `standard_profile` (suites/conftest.py): under the
locked profile there is no sudo, and the run deselects them.

Mark a test `@pytest.mark.attack(CLASS, ATTEMPT)` or `@pytest.mark.control(CLASS, ATTEMPT)`
(registered in suites/conftest.py, which also prints the "attack table" at the end of the run,
so suites/test_profiles.py's attempts are in it too).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from devshell.plugin import tree_state

# --- helpers shared by the modules (fixtures, so that no module imports another) -------------

@pytest.fixture(scope="session")
def host_tree():
    """host_tree(path): owner, mode and content of path and everything under it
    (devshell.plugin.tree_state)."""
    return tree_state


def sudo(command: str) -> str:
    """command as root inside the devshell, through the passwordless sudo dev has."""
    import shlex

    return f"sudo -n sh -c {shlex.quote(command)}"


ENTERED = "--- session entered ---"


@pytest.fixture(scope="session")
def agent():
    """agent(shell, script): run script in the devshell as shell.run does, but first prove the
    session itself started (init and verify passed), so that a failing attempt failed on its
    own and not because the session never ran. The proof is taken off stdout."""
    def run(shell, script: str):
        result = shell.run(f"echo '{ENTERED}'\n{script}")
        assert result.stdout.startswith(f"{ENTERED}\n"), f"the session did not start: {result.stderr}"
        return result._replace(stdout=result.stdout[len(ENTERED) + 1:])
    return run


@pytest.fixture(scope="session")
def as_user():
    """as_user(command, user): the command for dev ("dev") or for root via sudo ("root")."""
    def wrap(command: str, user: str) -> str:
        return command if user == "dev" else sudo(command)
    return wrap


@pytest.fixture(scope="session")
def agent_users(devshell_profile):
    """Who the agent can be inside: dev, and root via sudo under the standard profile only
    (locked has no sudo), for tests that make every attempt as each in one go."""
    return ("dev", "root") if devshell_profile == "standard" else ("dev",)


@pytest.fixture(scope="session")
def plain_docker():
    """plain_docker(shell, script, *flags): the devshell's own image (shell.spec.image) in
    `docker run --rm --network=none`, as root, WITHOUT devshell's guards (the --cap-drop of
    devshell.seccomp.CAP_DROP and its seccomp allowlist): the engine's defaults, plus whatever
    flags a control adds. Returns the CompletedProcess."""

    def run(shell, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
        assert not any("cap-drop" in f or ("seccomp=" in f and "unconfined" not in f) for f in flags)
        return subprocess.run(["docker", "run", "--rm", "--network=none", "--user", "0", *flags,
                               shell.spec.image, "bash", "-c", script],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    return run


@pytest.fixture(scope="session")
def host_cache_dir(tmp_path_factory):
    """A new host cache dir, as a user's ~/.cache would be: readable by others (dev must pass
    through it to reach ai/memory; devshell creates ai/ and ai/memory below it for dev)."""
    def make(name: str = "host-cache"):
        path = tmp_path_factory.mktemp(name)
        path.chmod(0o755)
        return path
    return make


@pytest.fixture(scope="session")
def host_git():
    """host_git(repo, *args): plain git on the host, no safe.directory, fixed identities."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "Host User", "GIT_AUTHOR_EMAIL": "host@example.com",
           "GIT_COMMITTER_NAME": "Host User", "GIT_COMMITTER_EMAIL": "host@example.com"}

    def git(repo, *args, check=True, **kw):
        return subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True, text=True,
                              check=check, env=env, stdin=subprocess.DEVNULL, **kw)
    return git


@pytest.fixture(scope="session")
def make_repo(host_git):
    """make_repo(path): a real git repository with one commit (README, src/main.c, tools/run.sh),
    readable by others like a user's checkout."""
    def make(path, owner: tuple[int, int] | None = None):
        path = os.fspath(path)
        os.makedirs(os.path.join(path, "src"))
        os.makedirs(os.path.join(path, "tools"))
        with open(os.path.join(path, "README"), "w") as f:
            f.write("hello\n")
        with open(os.path.join(path, "src", "main.c"), "w") as f:
            f.write("int main(void) { return 0; }\n")
        with open(os.path.join(path, "tools", "run.sh"), "w") as f:
            f.write("#!/bin/sh\necho run\n")
        os.chmod(os.path.join(path, "tools", "run.sh"), 0o755)
        os.chmod(path, 0o755)
        host_git(path, "init", "-q", "-b", "main")
        host_git(path, "add", "-A")
        host_git(path, "commit", "-q", "-m", "initial")
        if owner is not None:
            for dirpath, dirnames, filenames in os.walk(path):
                for name in [".", *dirnames, *filenames]:
                    os.lchown(os.path.join(dirpath, name), *owner)
        return path
    return make


@pytest.fixture(scope="session")
def devshell_patches():
    """devshell_patches(*args, cwd=DIR): the host's `python -m devshell patches ...` (or with
    script=True the `devshell` command), with a timeout: a hung host tool fails its test, not
    the run."""
    import sys

    def run(*args, cwd, prefix=(), env=None, timeout=120, script=False):
        # script=True: the installed `devshell` command, as a user types it. `python -m` puts
        # the cwd first on sys.path, which matters where the cwd is agent-written.
        entry = [os.path.join(os.path.dirname(sys.executable), "devshell")] if script else \
            [sys.executable, "-m", "devshell"]
        return subprocess.run([*prefix, *entry, "patches", *args],
                              cwd=os.fspath(cwd), capture_output=True, text=True, errors="surrogateescape",
                              stdin=subprocess.DEVNULL, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": _repo_root(), **(env or {})})
    return run


def _repo_root() -> str:
    import devshell

    return os.path.dirname(os.path.dirname(os.path.abspath(devshell.__file__)))
