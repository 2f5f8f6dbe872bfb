"""The bad-input table, for input that needs the real engine (issue 9; the rows that need none
are in tests/test_bad_input.py).

Each row: exit 2, one line on stderr naming the problem and the fix, no traceback, and nothing
changed: the names, ids and states of the containers and volumes the row could touch (docker ps
-a, docker volume ls), and every file under the test's temporary directory (its HOME, XDG dirs,
cells, scripts). Rows kept in suites/test_errors.py, not repeated here: a cell whose image is
missing and has no recipe (test_unpullable_image_is_one_line_and_creates_nothing), a missing
--image (test_missing_image_override_is_one_line_and_creates_nothing), and a missing docker CLI
with a container to replace (test_a_missing_docker_cli_is_found_before_anything_changes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from devshell import cells
from devshell.engine import host_platform
from devshell.labels import CELL, MANAGED
from devshell.launcher import Devshell
from devshell.options import to_argv
from devshell.plugin import DevshellFactory, tree_state
from devshell.spec import container_name

# Lock files devshell takes around a build or launch (engine.py): left behind by design.
LOCKS = os.path.join("home", ".cache", "devshell", "locks")


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    return tree_state(root, skip=(LOCKS,))


def engine_state(*names: str) -> tuple[list[str], list[str]]:
    """docker ps -a and docker volume ls, as name, id and state, for the names a row could touch
    (other xdist workers and runs create theirs meanwhile)."""
    ps = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.ID}} {{.State}}"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
    volumes = subprocess.run(["docker", "volume", "ls", "--format", "{{.Name}}"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    return (sorted(line for line in ps if line.split()[0] in names),
            sorted(v for v in volumes if v in names))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A temporary HOME and XDG dirs: nothing touches the real user's. The shipped cells are
    remembered there first (devshell caches a validated cell file: a cache, not a change)."""
    (tmp_path / "home").mkdir()
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "home/.local/state"),
           "XDG_CACHE_HOME": str(tmp_path / "home/.cache"), "XDG_CONFIG_HOME": str(tmp_path / "home/.config")}
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    cells.available([cells.shipped_cells_dir()])
    return env


def cli(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "devshell", *argv], capture_output=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env}, cwd=cwd, timeout=600)


def assert_one_line(done: subprocess.CompletedProcess[bytes], *needles: str) -> None:
    err = done.stderr.decode(errors="backslashreplace")
    assert "Traceback" not in err, err
    assert done.returncode == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("devshell: error: ") and "; fix: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- rows against an open devshell: bad input must leave its container as it is ---------------


def _script(data: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "s.sh").write_bytes(data)
        return ["--script", str(tmp / "s.sh")]
    return make


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "fifo")
    return ["--script", str(tmp / "fifo")]


ON_A_DEVSHELL: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "CRLF script": (_script(b"#!/bin/sh\r\necho hi\r\n"), ("CRLF", "dos2unix")),
    "script that is a FIFO": (_fifo, ("not a regular file",)),
    "script that is a directory": (lambda tmp: ["--script", str(tmp)], ("not a regular file",)),
    "script /dev/zero": (lambda tmp: ["--script", "/dev/zero"], ("not a regular file",)),
    "script missing": (lambda tmp: ["--script", str(tmp / "nope.sh")], ("No such file",)),
    "binary script": (_script(b"\x7fELF\0"), ("binary",)),
    "--image ../../x": (lambda tmp: ["--image", "../../x"], ("path component '..'",)),
    "--uid 0": (lambda tmp: ["--uid=0"], ("would make dev root",)),
    "--patches-out a file": (lambda tmp: [f"--patches-out={_file(tmp)}"], ("not a directory",)),
    "--host-cache-dir a file": (lambda tmp: [f"--host-cache-dir={_file(tmp)}"], ("not a directory",)),
    "--rm with --script": (lambda tmp: ["--rm"], ("cannot be combined",)),
    "--runtime not registered": (lambda tmp: ["--runtime", "no-such-runtime"],
                                 ("'no-such-runtime' is not registered", "daemon.json")),
    # Refused whether runsc is registered (gVisor only under locked) or not (unregistered).
    "--runtime runsc under --profile standard": (lambda tmp: ["--runtime", "runsc", "--profile", "standard"],
                                                 ("runsc",)),
}


def _file(tmp: Path) -> Path:
    (tmp / "f").write_text("")
    return tmp / "f"


@pytest.fixture(scope="module")
def target(devshell_factory: DevshellFactory) -> Devshell:
    """The open devshell the rows aim at: one for them all, since each row compares the engine's
    state before and after itself (not the devshell's first state), and a row that changed it
    fails there. Not the session's shared one: a row that got through (--rm) would take it from
    every other test."""
    return devshell_factory.open()


@pytest.mark.parametrize("row", list(ON_A_DEVSHELL))
def test_bad_input_leaves_an_open_devshell_as_it_was(row: str, target: Devshell,
                                                     home: dict[str, str], tmp_path: Path) -> None:
    shell = target
    make, needles = ON_A_DEVSHELL[row]
    extra = make(tmp_path)
    # The flags that opened it, with this row's flag in place of its own (a flag given twice is
    # a row of its own, in tests/).
    flags = [a for a in to_argv(shell.opts) if a.split("=")[0] not in {e.split("=")[0] for e in extra}]
    if "--rm" in extra:
        flags += _script(b"true\n")(tmp_path)
    before = engine_state(shell.name), tree(tmp_path)
    assert_one_line(cli([*flags, *extra], home), *needles)
    assert (engine_state(shell.name), tree(tmp_path)) == before


# --- rows about what the engine holds ------------------------------------------------------


def test_a_container_devshell_did_not_create_is_left_alone(target: Devshell,
                                                           devshell_instance: Callable[[], str],
                                                           home: dict[str, str], tmp_path: Path) -> None:
    """--rm, --verify and entering all refuse a container of that name devshell did not make."""
    image = target.spec.image
    instance = devshell_instance()
    name = container_name(cells.DEFAULT_CELL, instance)
    subprocess.run(["docker", "create", "--name", name, image, "true"], check=True, capture_output=True)
    (tmp_path / "checkout").mkdir()
    (tmp_path / "s.sh").write_text("true\n")
    try:
        for argv in (["--rm"], ["--verify"], ["--checkout", str(tmp_path / "checkout"),
                                              "--script", str(tmp_path / "s.sh")]):
            before = engine_state(name), tree(tmp_path)
            assert_one_line(cli(["--instance", instance, *argv], home), "devshell did not create")
            assert engine_state(name) == before[0]
            assert tree(tmp_path) == before[1]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_volume_of_another_cell_is_never_adopted(target: Devshell,
                                                   devshell_instance: Callable[[], str],
                                                   home: dict[str, str], tmp_path: Path) -> None:
    # target is asked for only so that the image is there
    instance = devshell_instance()
    name = container_name(cells.DEFAULT_CELL, instance)
    subprocess.run(["docker", "volume", "create", "--label", f"{CELL}=other", "--label", f"{MANAGED}=1",
                    name], check=True, capture_output=True)
    (tmp_path / "checkout").mkdir()
    (tmp_path / "s.sh").write_text("true\n")
    before = engine_state(name), tree(tmp_path)
    done = cli(["--instance", instance, "--checkout", str(tmp_path / "checkout"),
                "--patches-out", str(tmp_path / "drop"), "--script", str(tmp_path / "s.sh")], home)
    assert_one_line(done, "belongs to cell other")
    assert engine_state(name) == before[0]
    assert tree(tmp_path) == before[1]


def test_verify_without_a_container_is_one_line(devshell_engine: object, devshell_instance: Callable[[], str],
                                                home: dict[str, str], tmp_path: Path) -> None:
    instance = devshell_instance()
    name = container_name(cells.DEFAULT_CELL, instance)
    before = engine_state(name), tree(tmp_path)
    assert_one_line(cli(["--verify", "--instance", instance], home), f"no container {name}")
    assert (engine_state(name), tree(tmp_path)) == before


OTHER_PLATFORM = "linux/arm64" if host_platform() == "linux/amd64" else "linux/amd64"


def _platform_cells(tmp_path: Path, image: str) -> Path:
    """Two cells naming one image built on this host: 'othercell' for the other platform, and
    'samecell' (the control) for this host's (remembered, like the shipped ones)."""
    d = tmp_path / "cells"
    d.mkdir()
    for name, platform in (("othercell", OTHER_PLATFORM), ("samecell", host_platform())):
        (d / f"{name}.yaml").write_text(f"platform: {platform}\nimage: {{ref: '{image}'}}\n"
                                        f"workspace: /workspaces/{name}\n")
        cells.load(str(d / f"{name}.yaml"))
    return d


def test_list_does_not_call_an_image_of_another_platform_present(
        target: Devshell, home: dict[str, str], tmp_path: Path) -> None:
    import json

    d = _platform_cells(tmp_path, target.spec.image)
    done = cli(["--list", "--json", "--cells-dir", str(d)], home)
    assert done.returncode == 0, done.stderr
    state = {r["cell"]: r["image_state"] for r in json.loads(done.stdout)["cells"]}
    assert state["othercell"] != "present"
    assert state["samecell"] == "present"  # the control: the very image, for this platform


def test_entering_a_cell_whose_image_is_of_another_platform_is_one_line(
        target: Devshell, devshell_instance: Callable[[], str],
        home: dict[str, str], tmp_path: Path) -> None:
    image = target.spec.image
    d = _platform_cells(tmp_path, image)
    instance = devshell_instance()
    name = container_name("othercell", instance)
    (tmp_path / "checkout").mkdir()
    (tmp_path / "s.sh").write_text("true\n")
    before = engine_state(name), tree(tmp_path)
    done = cli(["othercell", "--cells-dir", str(d), "--instance", instance, "--checkout",
                str(tmp_path / "checkout"), "--patches-out", str(tmp_path / "drop"),
                "--script", str(tmp_path / "s.sh")], home)
    assert_one_line(done, image, f"is here for {host_platform()} only")
    assert engine_state(name) == before[0]
    assert tree(tmp_path) == before[1]


# --- not bad input: a script's bytes reach the container as they are --------------------------


def test_a_script_that_is_not_utf8_runs_byte_for_byte(devshell: Devshell, home: dict[str, str],
                                                      tmp_path: Path) -> None:
    """The script travels as one exec argument; bytes that are not UTF-8 must not become U+FFFD."""
    script = tmp_path / "s.sh"
    script.write_bytes(b"#!/bin/sh\nprintf '%s' '\xff\xfe caf\xc3\xa9'\n")
    done = cli([*to_argv(devshell.opts), "--script", str(script)], home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"\xff\xfe caf\xc3\xa9"
