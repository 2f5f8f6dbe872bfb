"""The harness is public API: downstream repositories get the fixtures by installing devshell,
runs clean up after themselves (and after killed runs), and no engine is never a green run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from devshell.labels import MANAGED
from devshell.plugin import LABEL_PID, LABEL_RUN

DOWNSTREAM_TEST = '''
def test_our_project_commits_in_this_cell(devshell):
    result = devshell.run(
        'cd "$DEVSHELL_SRC" && git init -q proj && cd proj'
        ' && git -c user.email=a@example.com -c user.name=a commit -q --allow-empty -m first'
        ' && git format-patch -q --root -o /patches && ls /patches'
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["0001-first.patch"]
'''


def cell_args(devshell_cell, devshell_cells_path, profile):
    # The profile in force too: a downstream run opens its devshells under it, as this run does.
    return [f"--cell={devshell_cell.name}", f"--profile={profile}",
            *(f"--cells-dir={d}" for d in devshell_cells_path[:-1])]


def run_id(result) -> str:
    text = "\n".join(result.outlines + result.errlines)
    found = re.search(r"devshell: --cell=\S+, .*test run ([0-9a-f]+)", text)
    assert found, text
    return found.group(1)


def leftovers(engine, run: str) -> list[str]:
    f = {"label": f"{LABEL_RUN}={run}"}
    return ([c.name for c in engine.client.containers.list(all=True, filters=f)]
            + [v.name for v in engine.client.volumes.list(filters=f)])


def test_downstream_repo_gets_the_fixtures_by_installing_devshell(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile),
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert leftovers(devshell_engine, run_id(result)) == []


def test_failing_run_leaves_no_containers_or_volumes(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    pytester.makepyfile(test_fails="""
        def test_fails(devshell):
            assert devshell.run('false').exit_code == 0
    """)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile))
    result.assert_outcomes(failed=1)
    assert leftovers(devshell_engine, run_id(result)) == []


def test_killed_runs_leftovers_are_swept_at_the_next_session(
        pytester, devshell, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()

    labels = {LABEL_RUN: "deadbeef", LABEL_PID: f"{os.uname().nodename}:{dead}", MANAGED: "1"}
    devshell_engine.client.volumes.create("devshell-orphan-tdeadbeef-1", labels=labels)
    devshell_engine.client.containers.create(devshell.spec.image, ["true"], labels=labels,
                                             name="devshell-orphan-tdeadbeef-1")
    pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile))
    result.assert_outcomes(passed=1)
    assert leftovers(devshell_engine, "deadbeef") == []


def test_a_leftover_the_engine_will_not_remove_yet_does_not_fail_the_next_run(
        pytester, devshell, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    """A killed run's volume that a container still holds (as one whose removal another
    process has begun) answers the sweep with 409: left for a later sweep, not an error in
    every test of the next run."""
    from docker.errors import APIError
    from docker.types import Mount

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    run = os.urandom(4).hex()  # of its own: runs beside this one sweep dead runs too
    labels = {LABEL_RUN: run, LABEL_PID: f"{os.uname().nodename}:{dead}", MANAGED: "1"}
    # Made by the holder's mount, so that it is held from its first moment: no sweep can take
    # it before. The holder belongs to no run, and the sweep leaves it alone.
    holder = devshell_engine.client.containers.run(
        devshell.spec.image, ["sleep", "300"], detach=True, network_mode="none", name=f"holder-t{run}",
        mounts=[Mount("/held", f"devshell-orphan-t{run}-1", type="volume", labels=labels)])
    volume = devshell_engine.client.volumes.get(f"devshell-orphan-t{run}-1")
    try:
        with pytest.raises(APIError) as refused:  # the premise: the engine refuses it now
            devshell_engine.client.api.remove_volume(volume.name, force=True)
        assert refused.value.status_code == 409
        pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
        args = cell_args(devshell_cell, devshell_cells_path, devshell_profile)
        result = pytester.runpytest_subprocess(*args)
        result.assert_outcomes(passed=1)
        assert leftovers(devshell_engine, run) == [volume.name]  # left, and said
        assert f"the engine is still removing or using {volume.name}" in result.stdout.str()
    finally:
        holder.remove(force=True)
        volume.remove(force=True)


def test_no_engine_fails_the_gate_in_one_line(pytester, devshell_cell, devshell_cells_path, devshell_profile,
                                              monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile))
    assert result.ret not in (0, 5)
    errors = [line for line in result.errlines if "no Docker engine answers" in line]
    assert len(errors) == 1, result.errlines


def test_contract_suites_run_against_a_downstream_cell(pytester, devshell_engine, devshell_profile):
    cells = pytester.mkdir("cells")
    # A downstream cell: same recipe as bookworm (so the base image is shared), its own workspace.
    (cells / "mycell.yaml").write_text(
        "platform: linux/amd64\n"
        "image: {recipe: {debootstrap: {suite: bookworm, include: [git, sudo, passwd, ca-certificates]}}}\n"
        "workspace: /workspaces/mycell\n")
    result = pytester.run(sys.executable, "-m", "devshell.contract", "--cell=mycell",
                          f"--cells-dir={cells}", f"--profile={devshell_profile}",
                          "-k", "mounts_are_exactly or verify_passes")
    result.assert_outcomes(passed=2)
