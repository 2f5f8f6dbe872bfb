"""An ordinary host user, for the promises that must hold when devshell is not run by root.

Fixtures (registered by suites/conftest.py): `tester` (the user, made once: devshell-tester, in
the docker group), `tester_python` (an interpreter and environment it can run devshell with),
`tester_base` (a directory of its own). `as_tester(tester, *argv, cwd=...)` runs a command as it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

TESTER = "devshell-tester"


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
        if os.path.isdir(os.path.join(code, "cells")):  # the shipped cells, as a wheel carries them
            shutil.copytree(os.path.join(code, "cells"), os.path.join(copy, "devshell", "cells"),
                            dirs_exist_ok=True)
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
