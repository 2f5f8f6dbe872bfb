"""The harness is public API: downstream repositories get the fixtures by installing devshell,
runs clean up after themselves (and after killed runs), and no engine is never a green run."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hostuser import as_tester

from devshell.labels import MANAGED
from devshell.options import state_dir
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


# The state dir of the user running the suites, read before pytester gives each test a HOME of
# its own. Every pytest run of one user reads the same state dir (the --devshell-keep-failed
# records every sweep honours among them); so do the runs these tests start, beside the other
# worker's: with a state dir a HOME each, one test's sweep took another's kept devshell.
USER_STATE_DIR = state_dir(os.path.expanduser("~"), os.environ)


@pytest.fixture(autouse=True)
def one_state_dir_for_every_run(monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", os.path.dirname(USER_STATE_DIR))


@pytest.fixture
def pytester(pytester):
    """The runs these tests start have what a downstream repository's have (devshell[pytest]):
    not hypothesis, whose plugin this environment would load into each (its end-of-run summary
    took 0.25 of a small run's 0.65 CPU-s). Each string here is a -p of every subprocess run."""
    pytester.plugins.append("no:hypothesispytest")
    return pytester


FIXTURES_MD = Path(__file__).resolve().parent.parent / "docs" / "fixtures.md"


def python_examples(markdown: Path) -> list[str]:
    """Every ```python block of a page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown.read_text(), flags=re.MULTILINE | re.DOTALL)


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


# The docs travel with the repository, not with a wheel: where they are not beside the suites
# (an installed copy run by devshell.contract), these tests are not defined at all.
if FIXTURES_MD.is_file():
    EXAMPLES = python_examples(FIXTURES_MD)

    def test_fixtures_md_has_its_examples():
        """The page's examples are found: a parser that found none would make the next test vanish."""
        assert len(EXAMPLES) >= 3

    def test_every_python_example_in_fixtures_md_runs_as_written(
            pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
        # One run, a module an example, as a downstream suite holds them: each example's
        # tests pass by name (one pytest run less per example: the gate's time).
        pytester.makepyfile(**{f"test_example_{n + 1}": example for n, example in enumerate(EXAMPLES)})
        args = cell_args(devshell_cell, devshell_cells_path, devshell_profile)
        result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", "-rA")
        for n, example in enumerate(EXAMPLES):
            for test in re.findall(r"^def (test_\w+)", example, flags=re.MULTILINE):
                result.stdout.fnmatch_lines([f"PASSED test_example_{n + 1}.py::{test}"])
        result.assert_outcomes(passed=sum(len(re.findall(r"^def test_", e, flags=re.MULTILINE))
                                          for e in EXAMPLES))
        assert leftovers(devshell_engine, run_id(result)) == []


def test_the_reaper_is_turned_off_only_in_a_run_that_uses_the_fixtures(pytester, monkeypatch):
    """testcontainers' Ryuk cannot be pulled here, and devshell's sweep does its job, but only
    for a run that uses devshell's fixtures: installing devshell changes no other run."""
    monkeypatch.delenv("TESTCONTAINERS_RYUK_DISABLED", raising=False)
    pytester.makepyfile(
        test_plain="import os\n\ndef test_plain():\n"
                   "    assert 'TESTCONTAINERS_RYUK_DISABLED' not in os.environ\n",
        test_uses="import os\n\ndef test_uses(devshell_cell):\n"
                  "    assert os.environ['TESTCONTAINERS_RYUK_DISABLED'] == 'true'\n")
    pytester.runpytest_subprocess("test_plain.py", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest_subprocess("test_uses.py", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_non_root_user_reads_and_removes_what_its_devshell_wrote(
        tester, tester_python, tester_base, devshell_cell, devshell_cells_path, devshell_profile):
    """The fixtures' dev is the user running pytest: the patch the agent wrote is theirs, and so
    is every directory the run left under pytest's basetemp (a fixed 1000 made both unreadable
    to any other user, and the temporary directories piled up)."""
    python, env = tester_python
    with open(os.path.join(tester_base, "test_downstream.py"), "w") as f:
        f.write(DOWNSTREAM_TEST + '''

def test_the_patch_is_mine(devshell):
    import os, pathlib
    patch = pathlib.Path(devshell.opts.patches_out) / "0001-first.patch"
    assert (patch.stat().st_uid, devshell.opts.uid) == (os.getuid(), os.getuid())
    assert os.listdir(devshell.opts.patches_out) == [patch.name] and patch.read_bytes() is not None
''')
    basetemp = os.path.join(tester_base, "basetemp")
    # The cells dirs are readable by the tester as the suites' copy of this environment is.
    args = cell_args(devshell_cell, [d for d in devshell_cells_path if os.access(d, os.R_OK)],
                     devshell_profile)
    done = as_tester(tester, python, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                     "test_downstream.py", *args, cwd=tester_base, env=env, timeout=600)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
    removed = as_tester(tester, "rm", "-rf", basetemp, cwd=tester_base)
    assert removed.returncode == 0 and not os.path.exists(basetemp), removed.stderr


def test_failing_run_leaves_nothing_and_says_where_to_look(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    pytester.makepyfile(test_fails="""
        def test_fails(devshell):
            # What root inside writes to the init log reaches the report, never as an escape.
            devshell.exec(["sh", "-c", "printf '\\\\033[31mred\\\\n' >> /var/lib/devshell/init.log"])
            # The control: the log itself holds the raw escape.
            assert "\\x1b[31mred" in devshell.exec(["cat", "/var/lib/devshell/init.log"]).stdout
            assert devshell.run('false').exit_code == 0

        def test_bad(devshell_factory):
            devshell_factory.open(checkout="/no/such/checkout")
    """)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile))
    result.assert_outcomes(failed=2)
    assert leftovers(devshell_engine, run_id(result)) == []
    out = result.stdout.str()
    failed, bad = out.split("_ test_bad _")
    # A failed test's report says where to look: verify, the init log, the output, how to enter.
    for needle in ("- devshell devshell-", "enter: ", " -m devshell ", "--verify:\n(exit 0)",
                   "init log (/var/lib/devshell/init.log", "\\x1b[31mred", "container output (last"):
        assert needle in failed, out
    assert "\x1b[31m" not in out
    # A fixture that cannot open its devshell fails in one line, never a traceback.
    assert "DevshellError: checkout /no/such/checkout does not exist; fix: " in bad, out
    assert "Traceback" not in bad and "raise DevshellError" not in bad, out


def test_keep_failed_keeps_a_failed_tests_devshell_past_the_next_runs_sweep(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    pytester.makepyfile(test_fails="""
        def test_passes(devshell_factory):
            assert devshell_factory.open().run('true').exit_code == 0

        def test_fails(devshell_factory):
            assert devshell_factory.open().run('false').exit_code == 0
    """)
    args = cell_args(devshell_cell, devshell_cells_path, devshell_profile)
    # The record lives in this user's state dir, the one every run of this user (the suites'
    # own, beside this one) reads before it sweeps.
    records = os.path.join(USER_STATE_DIR, "tests-kept")
    result = pytester.runpytest_subprocess(*args, "--devshell-keep-failed")
    result.assert_outcomes(passed=1, failed=1)
    run = run_id(result)
    kept = re.findall(rf"^(devshell-\S+-t{run}-\d+): ", result.stdout.str(), flags=re.MULTILINE)
    try:
        assert len(kept) == 1, result.stdout.str()
        assert sorted(leftovers(devshell_engine, run)) == [kept[0], kept[0]]  # its container and volume
        # The kept container's run is dead now: the next run's sweep must leave it.
        pytester.makepyfile(test_fails="def test_nothing(devshell_run_labels):\n    pass\n")
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
        assert sorted(leftovers(devshell_engine, run)) == [kept[0], kept[0]]
        # The control: without its record, the next run's sweep takes it.
        os.unlink(os.path.join(records, kept[0]))
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
        assert leftovers(devshell_engine, run) == []
    finally:
        devshell_engine.remove_all({"label": f"{LABEL_RUN}={run}"})
        for name in kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(records, name))


REUSED_TEST = '''
import json, os

def test_reuse(devshell):
    seen = devshell.run('ls -A /patches; cat "$DEVSHELL_SRC/kept" 2>/dev/null || true; '
                        'touch /patches/left-by-the-last-run; echo kept > "$DEVSHELL_SRC/kept"')
    assert seen.exit_code == 0, seen.stderr
    with open(os.environ["REUSE_REPORT"], "w") as f:
        json.dump({"name": devshell.name, "outcome": devshell.outcome.state, "seen": seen.stdout}, f)
'''


def test_a_second_run_with_reuse_re_enters_its_devshell_warm(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile, monkeypatch):
    """--devshell-reuse: the run's devshell outlives it; the next run re-enters it on the warm
    path (the same container, not restarted), with the workspace kept and /patches emptied."""
    import json

    pytester.makepyfile(test_reuse=REUSED_TEST)
    report = pytester.path / "report.json"
    monkeypatch.setenv("REUSE_REPORT", str(report))
    args = [*cell_args(devshell_cell, devshell_cells_path, devshell_profile), "--devshell-reuse"]
    runs, name = [], None
    try:
        for _ in range(2):
            pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
            runs.append(json.loads(report.read_text()))
            name = runs[-1]["name"]
            runs[-1]["state"] = devshell_engine.inspect(name)["State"]
        first, second = runs
        assert first["name"] == second["name"] and first["outcome"] == "fresh", runs
        assert second["outcome"] == "reused", runs
        assert second["state"]["StartedAt"] == first["state"]["StartedAt"], "restarted, not re-entered"
        assert (first["seen"], second["seen"]) == ("", "kept\n"), runs  # workspace kept, /patches emptied
    finally:
        if name is not None:
            devshell_engine.remove_all({"name": name})
    # The control: without the flag, every run opens its own, and removes it.
    pytester.runpytest_subprocess(*args[:-1]).assert_outcomes(passed=1)
    again = json.loads(report.read_text())
    assert again["name"] != name and again["outcome"] == "fresh"
    assert devshell_engine.inspect(again["name"]) is None


def test_xdist_workers_share_the_devshell_fixture_and_the_controller_removes_it(
        pytester, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile, monkeypatch):
    seen = pytester.path / "seen"
    seen.mkdir()
    monkeypatch.setenv("SEEN", str(seen))
    pytester.makepyfile(test_share="""
        import os, pathlib, pytest

        @pytest.fixture(scope="session")
        def own(devshell_factory):
            # The control: what the devshell fixture would be without sharing, a session
            # fixture of each worker's own.
            return devshell_factory.open()

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.parametrize("kind", ["devshell", "own"])
        def test_share(request, worker_id, kind, n):
            shell = request.getfixturevalue(kind)
            assert shell.run("true").exit_code == 0
            seen = pathlib.Path(os.environ["SEEN"]) / f"{kind}-{n}-{worker_id}"
            seen.write_text(f"{kind} {worker_id} {shell.name}")
    """)
    # --dist each: every worker runs every test, so both ask for both kinds whatever the timing.
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile),
                                           "-n", "2", "--dist", "each", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=16)
    rows = [p.read_text().split() for p in seen.iterdir()]
    for kind, names in (("devshell", 1), ("own", 2)):
        assert len({w for k, w, _ in rows if k == kind}) == 2, rows  # both workers ran tests ...
        assert len({name for k, _, name in rows if k == kind}) == names, rows  # ... in 1 (control: 2)
    assert leftovers(devshell_engine, run_id(result)) == []  # removed once every worker was done


def test_a_downstream_run_cleans_up_after_itself_and_after_killed_runs(
        pytester, devshell, devshell_cell, devshell_cells_path, devshell_engine, devshell_profile):
    """A repository gets the fixtures by installing devshell. Its run removes what it made,
    sweeps what a killed run left, and leaves what the engine will not remove yet: a killed
    run's volume a container still holds (as one whose removal another process has begun)
    answers 409, and is said and left for a later sweep, not an error in every test."""
    from docker.errors import APIError
    from docker.types import Mount

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    # Runs of their own: runs beside this one sweep dead runs too.
    killed, held = os.urandom(4).hex(), os.urandom(4).hex()

    def labels(run):
        return {LABEL_RUN: run, LABEL_PID: f"{os.uname().nodename}:{dead}", MANAGED: "1"}
    devshell_engine.client.volumes.create(f"devshell-orphan-t{killed}-1", labels=labels(killed))
    devshell_engine.client.containers.create(devshell.spec.image, ["true"], labels=labels(killed),
                                             name=f"devshell-orphan-t{killed}-1")
    # Made by the holder's mount, so that it is held from its first moment: no sweep can take
    # it before. The holder belongs to no run, and the sweep leaves it alone.
    holder = devshell_engine.client.containers.run(
        devshell.spec.image, ["sleep", "300"], detach=True, network_mode="none", name=f"holder-t{held}",
        mounts=[Mount("/held", f"devshell-orphan-t{held}-1", type="volume", labels=labels(held))])
    volume = devshell_engine.client.volumes.get(f"devshell-orphan-t{held}-1")
    try:
        with pytest.raises(APIError) as refused:  # the premise: the engine refuses it now
            devshell_engine.client.api.remove_volume(volume.name, force=True)
        assert refused.value.status_code == 409
        pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
        args = cell_args(devshell_cell, devshell_cells_path, devshell_profile)
        result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        assert leftovers(devshell_engine, run_id(result)) == []
        assert leftovers(devshell_engine, killed) == []
        assert leftovers(devshell_engine, held) == [volume.name]  # left, and said
        assert f"the engine is still removing or using {volume.name}" in result.stdout.str()
    finally:
        holder.remove(force=True)
        volume.remove(force=True)
        devshell_engine.remove_all({"label": f"{LABEL_RUN}={killed}"})


def test_no_engine_fails_the_gate_in_one_line(pytester, devshell_cell, devshell_cells_path, devshell_profile,
                                              monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    pytester.makepyfile(test_downstream=DOWNSTREAM_TEST)
    result = pytester.runpytest_subprocess(*cell_args(devshell_cell, devshell_cells_path, devshell_profile))
    assert result.ret not in (0, 5)
    errors = [line for line in result.errlines if "no Docker engine answers" in line]
    assert len(errors) == 1, result.errlines
