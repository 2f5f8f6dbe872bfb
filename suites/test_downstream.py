"""A downstream repository, as a team adopts devshell: installed from a wheel (never this
checkout), with a cell of its own, its own fixture tests and `python -m devshell.contract`,
run as root and as an ordinary host user.

Defined only beside the repository that builds the wheel: an installed copy run by
devshell.contract has no pyproject.toml to build one from (and is the installed package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import repo_wheel
from hostuser import as_tester

# Its own cell: bookworm's recipe (so the base image is shared), its own workspace.
CELL = ("platform: linux/amd64\n"
        "image: {recipe: {debootstrap: {suite: bookworm, include: [git, sudo, passwd, ca-certificates]}}}\n"
        "workspace: /workspaces/ourproject\n")

OUR_TESTS = '''
import os
from pathlib import Path

import devshell


def test_devshell_is_the_installed_wheel():
    assert devshell.__file__.startswith(os.environ["DEVSHELL_SITE"]), devshell.__file__


def test_a_commit_comes_back_as_a_patch_we_own(devshell):
    result = devshell.run(
        'cd "$DEVSHELL_SRC" && git init -q ours && cd ours && echo hello > README && git add README'
        ' && git -c user.name=me -c user.email=me@example.com commit -q -m First'
        ' && git format-patch -q --root -o /patches'
    )
    assert result.exit_code == 0, result.stderr
    patch = Path(devshell.opts.patches_out) / "0001-First.patch"
    # dev is the user running pytest (root's dev is 1000), and so is the patch's owner.
    assert patch.stat().st_uid == devshell.opts.uid == (os.getuid() or 1000)
    assert "Subject: [PATCH] First" in patch.read_text()


def test_our_cell_is_the_one_in_force(devshell):
    assert devshell.spec.cell == "ourcell" and devshell.spec.workspace == "/workspaces/ourproject"
'''

# Two of the contract's tests, by name: enough to show the installed suites run against the
# downstream cell (the whole contract runs against every shipped cell in tox's envs).
CONTRACT_SUBSET = "mounts_are_exactly or verify_passes"

if repo_wheel.beside_the_repository():

    @pytest.fixture(scope="module")
    def wheel_site():
        """devshell installed from its wheel (pip install --no-deps --target) into a directory
        every user can read; its dependencies come from the environment the tests run in."""
        site = tempfile.mkdtemp(prefix="devshell-wheel-")
        os.chmod(site, 0o755)
        try:
            built = repo_wheel.build(os.path.join(site, "dist"))
            target = os.path.join(site, "lib")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                            "--target", target, str(built)], check=True, capture_output=True)
            yield target
        finally:
            shutil.rmtree(site, ignore_errors=True)

    def make_repo(base: str) -> None:
        os.makedirs(os.path.join(base, "cells"))
        os.makedirs(os.path.join(base, "tests"))
        Path(base, "cells", "ourcell.yaml").write_text(CELL)
        Path(base, "tests", "test_ours.py").write_text(OUR_TESTS)

    def outcomes(stdout: str) -> dict[str, int]:
        """The counts on pytest's summary line (pytest's own parser) but deselected and warnings,
        e.g. {"passed": 3}: a failure, an error or a skip is there too, and fails the comparison."""
        try:
            counts = pytest.RunResult.parse_summary_nouns(stdout.splitlines())
        except ValueError:  # no summary line: the run ended before one (the assertion shows it)
            return {}
        return {noun: n for noun, n in counts.items() if noun not in ("deselected", "warnings")}

    def downstream_runs(run, python: str, env: dict[str, str], profile: str) -> None:
        """Its own tests, then devshell's contract, both against its own cell."""
        cell = ["--cell=ourcell", "--cells-dir=cells", f"--profile={profile}"]
        ours = run(python, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp=basetemp", "tests", *cell,
                   env=env)
        assert (ours.returncode, outcomes(ours.stdout)) == (0, {"passed": 3}), ours.stdout + ours.stderr
        contract = run(python, "-m", "devshell.contract", *cell, "--basetemp=basetemp-contract",
                       "-k", CONTRACT_SUBSET, env=env)
        assert (contract.returncode, outcomes(contract.stdout)) == (0, {"passed": 2}), \
            contract.stdout + contract.stderr
        # ... and the suites that ran are the wheel's own (pytest names them from the cwd).
        site = env["DEVSHELL_SITE"]
        theirs = os.path.relpath(os.path.join(site, "devshell", "suites", "test_storage.py"),
                                 os.path.dirname(os.path.dirname(site)))
        assert theirs in contract.stdout, contract.stdout

    def test_a_downstream_repo_installed_from_the_wheel_passes_as_root(wheel_site, tmp_path,
                                                                       devshell_profile):
        # (Every session and CI here runs as root; so must this, or it shows nothing of root.)
        assert os.geteuid() == 0, "run as root: this test is the root host user's run"
        base = str(tmp_path / "ours")
        make_repo(base)
        # The environment's other packages after the wheel: the editable checkout is shadowed.
        env = {**os.environ, "PYTHONPATH": wheel_site, "DEVSHELL_SITE": wheel_site}
        env.pop("DEVSHELL_CELLS_PATH", None)

        def run(*argv, env):
            return subprocess.run(argv, cwd=base, env=env, capture_output=True, text=True, timeout=600)
        downstream_runs(run, sys.executable, env, devshell_profile)

    def test_a_downstream_repo_installed_from_the_wheel_passes_as_a_non_root_user(
            wheel_site, tester, tester_python, tester_base, devshell_profile):
        python, tester_env = tester_python
        base = os.path.join(tester_base, "ours")
        make_repo(base)
        for dirpath, _, filenames in os.walk(base):
            for path in (dirpath, *(os.path.join(dirpath, name) for name in filenames)):
                os.chown(path, tester.pw_uid, tester.pw_gid)
        env = {"PYTHONPATH": f"{wheel_site}:{tester_env['PYTHONPATH']}", "DEVSHELL_SITE": wheel_site}

        def run(*argv, env):
            return as_tester(tester, *argv, cwd=base, env=env, timeout=600)
        downstream_runs(run, python, env, devshell_profile)
