"""Faults: what a user, a kill or the engine does to a devshell mid-flight, and what must hold
after: the next launch recovers on its own, and nothing in the volume or the drop dir is lost.

Each test marked `fault(NAME)` puts a file in the volume and a patch in the drop dir first
(`precious`), injects its fault, launches again through the real CLI and checks both sha256s;
the "fault table" at the end of the run lists every fault and whether it recovered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

import devshell
from devshell.labels import MANAGED
from devshell.options import to_argv
from devshell.spec import INIT_PATH, STATE_DIR, container_name

OK = "#!/bin/sh\necho recovered\n"
PACKAGE_DIR = os.path.dirname(devshell.__file__) + os.sep


def launch(shell, *args, env=None, **options):
    """The real CLI as a child we can signal: python -m devshell with shell's flags."""
    argv = [sys.executable, "-m", "devshell", *to_argv(shell.opts._replace(**options)), *args]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, start_new_session=True)


def interpreter_starting(child, err: str, sig) -> bool:
    """A SIGINT that landed while the interpreter itself was starting (importing `site`, or
    `runpy` for -m), before any of devshell ran: Python reports that in its own words (exit 1,
    "Fatal Python error" or "Could not import runpy module" and a KeyboardInterrupt traceback),
    which is not devshell's to change. A KeyboardInterrupt escaping devshell's own code is not
    this: its traceback names a file of the devshell package."""
    lines = err.strip().splitlines()
    if sig != signal.SIGINT or child.returncode != 1 or not lines:
        return False
    in_devshell = any(PACKAGE_DIR in line for line in lines if line.lstrip().startswith("File "))
    return not in_devshell and (
        lines[0].startswith("Fatal Python error: init_import_site")
        or (lines[0] == "Could not import runpy module" and lines[-1] == "KeyboardInterrupt"))


def interrupt(child, sig):
    """sig to the CLI's whole process group, as a terminal sends ^C or ^\\ (the docker CLI it
    started gets it too)."""
    os.killpg(child.pid, sig)


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture
def script(tmp_path):
    def write(body=OK, name="s.sh"):
        path = tmp_path / name
        path.write_text(body)
        return str(path)
    return write


@pytest.fixture
def precious(devshell_factory):
    """A devshell holding a file in its volume and a patch in its drop dir, and check(shell)
    that proves both are still there, byte for byte, through a launch that must succeed."""
    shell = devshell_factory.open()
    src = dict(shell.spec.env)["DEVSHELL_SRC"]
    body = os.urandom(4096).hex()
    assert shell.run(f"printf %s {body} > {src}/precious").exit_code == 0
    patch = os.path.join(shell.opts.patches_out, "0001-keep.patch")
    with open(patch, "w") as f:
        f.write("From: dev\nSubject: [PATCH] keep\n\n" + body + "\n")
    want = {"volume": hashlib.sha256(body.encode()).hexdigest(), "patch": _sha(patch)}

    def check(after, *, patch_at=patch):
        assert after.exit_code == 0, after.stderr
        assert "recovered" in after.stdout
        got = shell.engine.exec(shell.name, ["sha256sum", f"{src}/precious"]).stdout.split()[:1]
        assert {"volume": got[0] if got else None, "patch": _sha(patch_at)} == want
    return Precious(shell, check)


class Precious:
    """A Devshell (every attribute passes through) with check(after)."""

    def __init__(self, shell, check):
        self.shell, self.check = shell, check

    def __getattr__(self, name):
        return getattr(self.shell, name)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def again(devshell_cli, shell, script, **options):
    return devshell_cli(shell, "--script", script(), **options)


def processes(shell, marker):
    """Pids inside whose command line matches the regex marker. Its first character goes in
    brackets, so that the search (whose own command lines hold the pattern) never finds itself."""
    pattern = f"[{marker[0]}]{marker[1:]}"
    found = shell.engine.exec(shell.name, ["bash", "-c", (
        "for c in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$c 2>/dev/null | grep -q '" + pattern
        + "' && echo ${c//[!0-9]/}; done; true")])
    return found.stdout.split()


# --- the engine's view of the container changes ------------------------------------------------

@pytest.mark.fault("container stopped")
def test_stopped_container_recovers(precious, devshell_cli, script):
    docker("stop", "-t", "1", precious.name)
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("container paused")
def test_paused_container_recovers(precious, devshell_cli, script):
    docker("pause", precious.name)
    done = again(devshell_cli, precious, script)
    precious.check(done)
    assert "unpaused" in done.stderr


@pytest.mark.fault("container removed")
def test_removed_container_recovers(precious, devshell_cli, script):
    docker("rm", "-f", precious.name)
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("container and volume removed behind our back")
def test_removed_volume_recovers_with_a_new_one(precious, devshell_cli, script):
    docker("rm", "-f", precious.name)
    docker("volume", "rm", precious.spec.volume)
    done = again(devshell_cli, precious, script)
    assert done.exit_code == 0, done.stderr
    assert "fresh" in done.stderr
    # The volume's file went with the volume (the user removed it); the drop dir's patch did not.
    assert os.path.exists(os.path.join(precious.opts.patches_out, "0001-keep.patch"))


@pytest.mark.fault("container killed mid-session")
def test_container_killed_mid_session_is_one_line_then_recovers(precious, devshell_cli, script):
    child = launch(precious, "--script", script("#!/bin/sh\necho in; sleep 60\n", "long.sh"))
    _wait_for(lambda: processes(precious, "sleep 60 $"))
    docker("kill", precious.name)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("devshell: error: ") and "was stopped during the session" in lines[-1]
    assert "Traceback" not in err and "OCI" not in err
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("container removed mid-session")
def test_container_removed_mid_session_is_one_line_then_recovers(precious, devshell_cli, script):
    child = launch(precious, "--script", script("#!/bin/sh\necho in; sleep 60\n", "long.sh"))
    _wait_for(lambda: processes(precious, "sleep 60 $"))
    docker("rm", "-f", precious.name)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2, err
    last = err.strip().splitlines()[-1]  # the engine may still be removing it when asked
    assert "was removed during the session" in last or "was stopped during the session" in last
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("container killed mid-init")
def test_container_killed_mid_init_recovers(slow_init_cell, devshell_instance, script, tmp_path):
    argv = slow_init_cell(tmp_path, devshell_instance())
    name = container_name(argv[0], argv[argv.index("--instance") + 1])

    def cli(*more):
        return subprocess.Popen([sys.executable, "-m", "devshell", *argv, *more], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # What must survive: a file in the volume and a patch in the drop dir.
    first = cli("--script", script("#!/bin/sh\nhead -c 4096 /dev/urandom > $DEVSHELL_SRC/precious\n"
                                   "sha256sum < $DEVSHELL_SRC/precious\necho p > /patches/0001-keep.patch\n"))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    patch = tmp_path / "drop" / "0001-keep.patch"
    want = out.split()[0], _sha(patch)
    cli("--rm").communicate(timeout=60)  # the next launch makes a new container: init runs again
    child = cli("--script", script())
    # The cell's setup sleeps inside init: kill the container while init holds its lock.
    log = f"{STATE_DIR}/init.log"
    _wait_for(lambda: docker("exec", name, "test", "-e", log, check=False).returncode == 0)
    docker("kill", name)
    child.communicate(timeout=60)
    assert child.returncode != 0
    after = cli("--script", script("#!/bin/sh\nsha256sum < $DEVSHELL_SRC/precious\n"))
    out, err = after.communicate(timeout=300)
    assert after.returncode == 0, err
    assert (out.split()[0], _sha(patch)) == want


@pytest.fixture
def slow_init_cell(devshell_cell, devshell_cells_path):
    """slow_init_cell(tmp, instance): CLI argv for a copy of --cell whose setup sleeps 3 s (its
    image is the same recipe: nothing is built), with its own checkout and drop dir."""
    def make(tmp, instance):
        name = f"{devshell_cell.name}-slowinit"
        flags = _copy_cell(devshell_cell, devshell_cells_path, tmp / "cells", name, setup="sleep 3\n")
        (tmp / "checkout").mkdir(mode=0o755)
        return [name, *flags, "--checkout", str(tmp / "checkout"), "--patches-out", str(tmp / "drop"),
                "--instance", instance, "--uid", "1000", "--gid", "1000"]
    return make


# --- a half-made container ---------------------------------------------------------------------

def _create_half_made(shell):
    """What a launch killed between create and copy-in leaves: the container, never started,
    without init."""
    from urllib.parse import urlencode

    query, config = shell.spec.api_create()
    config["Labels"] = {**config["Labels"], MANAGED: "1"}
    shell.engine._call("POST", f"/containers/create?{urlencode(query)}", config)


@pytest.mark.fault("launch interrupted between create and start (half-made container)")
def test_half_made_container_is_recreated(precious, devshell_cli, script):
    docker("rm", "-f", precious.name)
    _create_half_made(precious)
    done = again(devshell_cli, precious, script)
    precious.check(done)
    assert "half-made" in done.stderr


def test_control_a_half_made_container_cannot_run(precious):
    """The control: the container the fault leaves really is broken (no init to run)."""
    docker("rm", "-f", precious.name)
    _create_half_made(precious)
    docker("start", precious.name, check=False)
    _wait_for(lambda: not precious.engine.inspect(precious.name)["State"]["Running"], timeout=30)
    state = precious.engine.inspect(precious.name)["State"]
    assert state["ExitCode"] != 0, "it died: its idle command, init, is not there"
    assert INIT_PATH in docker("logs", precious.name).stderr


# --- signals at the CLI ------------------------------------------------------------------------

def test_only_python_s_own_startup_is_excused():
    """The excuse above covers the interpreter's words, never a KeyboardInterrupt out of devshell."""
    class Child:
        returncode = 1
    runpy = "Could not import runpy module\nTraceback (most recent call last):\n" \
            '  File "<frozen runpy>", line 15, in <module>\nKeyboardInterrupt\n'
    ours = runpy.replace("<frozen runpy>", PACKAGE_DIR + "cli.py")
    assert interpreter_starting(Child, runpy, signal.SIGINT)
    assert interpreter_starting(Child, "Fatal Python error: init_import_site: Failed\n", signal.SIGINT)
    assert not interpreter_starting(Child, ours, signal.SIGINT)
    assert not interpreter_starting(Child, runpy, signal.SIGTERM)


@pytest.mark.fault("SIGINT/SIGTERM to the CLI during a cold start")
@pytest.mark.parametrize("delay", [0.2, 0.45, 0.7, 1.0, 1.4, 2.0])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_during_cold_start_recovers(precious, devshell_cli, script, sig, delay):
    docker("rm", "-f", precious.name)
    child = launch(precious, "--script", script())
    time.sleep(delay)
    interrupt(child, sig)
    _, err = child.communicate(timeout=60)
    assert "Traceback" not in err or interpreter_starting(child, err, sig), err
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("SIGINT/SIGTERM to the CLI during --script")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGQUIT, 131),
                                           (signal.SIGTERM, 143)], ids=["INT", "QUIT", "TERM"])
def test_signal_during_script_stops_it_inside(precious, devshell_cli, script, sig, code):
    child = launch(precious, "--script", script("#!/bin/sh\nsleep 61 & sleep 62\necho never\n", "long.sh"))
    _wait_for(lambda: processes(precious, "sleep 62 $"))
    interrupt(child, sig)
    out, err = child.communicate(timeout=30)
    assert child.returncode == code, err
    # (^\ also reaches the docker CLI, whose Go runtime answers with its goroutine dump.)
    assert "never" not in out and "Traceback" not in err
    _wait_for(lambda: not processes(precious, "sleep 6[12] $"), timeout=10)
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("SIGINT/SIGTERM to the CLI at any point of a --script session")
@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_at_any_point_of_a_session_leaves_nothing_running(precious, devshell_cli, script, sig, delay):
    child = launch(precious, "--script", script("#!/bin/sh\nsleep 64\n", "long.sh"))
    time.sleep(delay)
    interrupt(child, sig)
    _, err = child.communicate(timeout=30)
    # Before the CLI has set its handlers (Python is still starting), the signal's default
    # action ends it: a shell reports that as 128 + the signal too.
    if not interpreter_starting(child, err, sig):
        assert child.returncode in (128 + sig, -sig), err
        assert "Traceback" not in err
    # Even a signal that came before the exec had started inside leaves nothing behind.
    _wait_for(lambda: not processes(precious, "sleep 64 $"), timeout=15)
    precious.check(again(devshell_cli, precious, script))


def test_control_a_bare_docker_exec_leaves_the_script_running(precious, script):
    """The control: what devshell adds. The same script under a bare `docker exec`, whose CLI
    is interrupted, runs on inside."""
    child = subprocess.Popen(["docker", "exec", precious.name, "sh", "-c", "sleep 63"],
                             stdin=subprocess.DEVNULL)
    _wait_for(lambda: processes(precious, "sleep 63 $"))
    child.send_signal(signal.SIGINT)
    child.wait(timeout=30)
    assert processes(precious, "sleep 63 $")
    for pid in processes(precious, "sleep 63 $"):
        precious.exec(["kill", pid])


def test_records_of_ended_sessions_do_not_pile_up(precious, devshell_cli, script):
    records = f"{STATE_DIR}/sessions"
    precious.exec(["bash", "-c", f"for n in $(seq 100); do echo 999999 > {records}/dead$n; done"])
    assert again(devshell_cli, precious, script).exit_code == 0
    left = precious.exec(["bash", "-c", f"ls {records} | wc -l"]).stdout.strip()
    assert int(left) <= 2, "the dead sessions' records were swept; this session's is kept"


# --- concurrency -------------------------------------------------------------------------------

@pytest.mark.fault("four concurrent first launches")
@pytest.mark.parametrize("locks", ["one lock", "a lock each (as four host users have)"])
def test_four_first_launches_share_one_container(devshell_factory, script, locks, tmp_path):
    shell = devshell_factory.open()
    docker("rm", "-f", shell.name)
    docker("volume", "rm", shell.spec.volume)
    body = "#!/bin/sh\ntouch /patches/ran-$$\necho recovered\n"
    envs = [{"XDG_CACHE_HOME": str(tmp_path / f"cache{n}")} if locks != "one lock" else {} for n in range(4)]
    children = [launch(shell, "--script", script(body, f"s{n}.sh"), env=envs[n]) for n in range(4)]
    results = [(c.wait(timeout=300), *c.communicate()) for c in children]
    assert [code for code, _, _ in results] == [0] * 4, [err for _, _, err in results]
    assert len(docker("ps", "-aq", "--filter", f"name=^/{shell.name}$").stdout.split()) == 1
    assert len([f for f in os.listdir(shell.opts.patches_out) if f.startswith("ran-")]) == 4


@pytest.mark.fault("four concurrent re-entries")
def test_four_reentries_at_once(precious, devshell_cli, script):
    children = [launch(precious, "--script", script(OK, f"s{n}.sh")) for n in range(4)]
    results = [(c.wait(timeout=300), *c.communicate()) for c in children]
    assert [code for code, _, _ in results] == [0] * 4, [err for _, _, err in results]
    precious.check(again(devshell_cli, precious, script))


# --- host paths changed under a running container ----------------------------------------------

@pytest.mark.fault("drop dir replaced under a running container")
def test_replaced_drop_dir_is_bound_anew(precious, devshell_cli, script):
    drop = precious.opts.patches_out
    aside = drop + ".aside"
    os.rename(drop, aside)
    os.mkdir(drop, 0o700)
    os.chown(drop, precious.opts.uid, precious.opts.gid)
    done = devshell_cli(precious, "--script", script("#!/bin/sh\ntouch /patches/new\necho recovered\n"))
    precious.check(done, patch_at=os.path.join(aside, "0001-keep.patch"))
    assert "recreated" in done.stderr
    assert os.path.exists(os.path.join(drop, "new"))


@pytest.mark.fault("host cache deleted under a running container")
def test_deleted_host_cache_is_made_and_bound_anew(precious, devshell_cli, script):
    shutil.rmtree(precious.opts.host_cache)
    done = devshell_cli(precious, "--script", script("#!/bin/sh\ntouch ~/.claude/projects/x 2>/dev/null; "
                                                       "echo recovered\n"))
    precious.check(done)
    assert "recreated" in done.stderr
    assert os.path.isdir(os.path.join(precious.opts.host_cache, "ai", "memory"))


@pytest.mark.fault("drop dir made unwritable under a running container")
def test_unwritable_drop_dir_fails_loudly_then_recovers(precious, devshell_cli, script):
    os.chmod(precious.opts.patches_out, 0o555)
    try:
        verified = devshell_cli(precious, "--verify")
        assert verified.exit_code != 0 and "FAIL patches-writable" in verified.stdout
        refused = again(devshell_cli, precious, script)
        assert refused.exit_code == 2 and "cannot write the patches dir" in refused.stderr
    finally:
        os.chmod(precious.opts.patches_out, 0o700)
    precious.check(again(devshell_cli, precious, script))


# --- the engine --------------------------------------------------------------------------------

@pytest.fixture
def silent_engine(tmp_path):
    """A socket that accepts and never answers."""
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    held = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"unix://{path}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.fault("engine accepts and never answers")
def test_silent_engine_is_one_line_in_seconds_then_recovers(precious, devshell_cli, script, silent_engine):
    started = time.monotonic()
    done = devshell_cli(precious, "--script", script(), env={"DOCKER_HOST": silent_engine})
    took = time.monotonic() - started
    assert done.exit_code == 2 and "did not answer" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert took < 15, f"took {took:.0f} s: the bound is PING_TIMEOUT (5 s) plus a start"
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("engine unreachable")
def test_unreachable_engine_is_one_line_then_recovers(precious, devshell_cli, script, tmp_path):
    done = devshell_cli(precious, "--script", script(), env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert done.exit_code == 2 and "no Docker engine answers" in done.stderr, done.stderr
    precious.check(again(devshell_cli, precious, script))


# --- objects with devshell's names that are not this cell's ------------------------------------

def _copy_cell(devshell_cell, devshell_cells_path, cells_dir, name, **changes):
    """--cells-dir flags for a copy of --cell named name (same recipe: nothing is built)."""
    with open(devshell_cell.source, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data.update(name=name, **changes)
    cells_dir.mkdir(exist_ok=True)
    (cells_dir / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return ["--cells-dir", str(cells_dir), *[f"--cells-dir={d}" for d in devshell_cells_path[:-1]]]


@pytest.mark.fault("--rm and --verify under another cell whose name collides")
def test_another_cell_never_removes_or_verifies_this_container(
        precious, devshell_cell, devshell_cells_path, devshell_cli, script, tmp_path):
    # cell C with instance 'tX-N' and cell 'C-tX' with instance 'N' name one container.
    head, _, tail = precious.opts.instance.rpartition("-")
    other = f"{devshell_cell.name}-{head}"
    flags = _copy_cell(devshell_cell, devshell_cells_path, tmp_path / "cells", other)
    before = precious.engine.inspect(precious.name)["Id"]
    for action in ("--rm", "--verify"):
        done = devshell_cli(None, other, *flags, "--instance", tail, action)
        assert done.exit_code == 2 and f"belongs to cell {devshell_cell.name}" in done.stderr, done.stderr
    assert precious.engine.inspect(precious.name)["Id"] == before
    # The control: under its own cell, the same --verify acts.
    assert devshell_cli(precious, "--verify").exit_code == 0
    precious.check(again(devshell_cli, precious, script))


@pytest.mark.fault("a volume with devshell's name that devshell did not make")
def test_a_foreign_volume_is_refused_not_adopted(devshell, devshell_cli, devshell_instance, script):
    instance = devshell_instance()
    name = container_name(devshell.spec.cell, instance)
    docker("volume", "create", name)
    docker("run", "--rm", "-v", f"{name}:/v", devshell.spec.image, "sh", "-c", "echo mine > /v/theirs")
    done = devshell_cli(devshell, "--script", script(), instance=instance)
    assert done.exit_code == 2 and "devshell did not create" in done.stderr, done.stderr
    assert devshell.engine.inspect(name) is None
    owner = docker("run", "--rm", "-v", f"{name}:/v", devshell.spec.image, "stat", "-c", "%u %a", "/v/theirs")
    assert owner.stdout.split() == ["0", "644"], "nothing in it was chowned"
    docker("volume", "rm", name)


# --- a cell env that would break the container's own start -------------------------------------

def test_a_cell_path_that_breaks_a_plain_start_does_not_break_the_devshell(
        devshell_cell, devshell_cells_path, devshell_instance, script, tmp_path, devshell):
    name = f"{devshell_cell.name}-badpath"
    flags = _copy_cell(devshell_cell, devshell_cells_path, tmp_path / "cells", name,
                       env={**dict(devshell_cell.env), "PATH": "/nonexistent"})
    (tmp_path / "checkout").mkdir(mode=0o755)
    argv = [name, *flags, "--checkout", str(tmp_path / "checkout"), "--patches-out", str(tmp_path / "drop"),
            "--instance", devshell_instance(), "--uid", "1000", "--gid", "1000", "--script", script()]
    done = subprocess.run([sys.executable, "-m", "devshell", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "recovered" in done.stdout
    # The control: the engine's own start with that PATH (a bare command) dies at once.
    plain = docker("run", "--rm", "--init", "-e", "PATH=/nonexistent", devshell.spec.image,
                   "sleep", "1", check=False)
    assert plain.returncode != 0


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")
