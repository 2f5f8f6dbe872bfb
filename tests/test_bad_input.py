"""The bad-input table, for input that needs no engine (issue 9).

Each row is one bad input. The project's rule: one line on stderr, ``devshell: error: <problem>;
fix: <fix>``, exit 2, no traceback, and nothing changed. Every row runs with a temporary HOME and
XDG dirs, and with DOCKER_HOST at a socket nobody serves, so a row that got as far as the engine
would fail with the engine's error instead of its own. "Nothing changed" is checked on every
file under the test's temporary directory (type, mode and sha256 of each) and on the names and
states of devshell's containers and volumes in the local engine, when there is one.

Rows for the real engine are in suites/test_bad_input.py (and suites/test_errors.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import devshell
from devshell import cells, cli
from devshell.launcher import MAX_SCRIPT_BYTES
from devshell.plugin import tree_state

VALID_CELL = ("platform: linux/amd64\nimage: {ref: 'debian:bookworm'}\n"
              "workspace: /workspaces/c\n")
GIT_ID = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
          "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}


# --- the place every row runs in ------------------------------------------------------------


@dataclass
class Place:
    """tmp_path laid out as a user's machine: a home, a checkout (a git repository), a cells dir."""

    root: Path
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def checkout(self) -> Path:
        return self.root / "checkout"

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    def cell(self, name: str, text: str | bytes) -> list[str]:
        """Write cells/NAME.yaml; the flags that open it."""
        path = self.cells / f"{name}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [name, "--cells-dir", str(self.cells)]

    def file(self, name: str, data: bytes = b"") -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def script(self, data: bytes = b"#!/bin/sh\ntrue\n") -> list[str]:
        return ["--script", self.file("s.sh", data)]

    def git(self, cwd: Path, *args: str) -> None:
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                       env={**self.env, **GIT_ID, "GIT_CONFIG_GLOBAL": os.devnull})


@dataclass
class Case:
    """What a row runs and what its one line must name."""

    argv: list[str]
    needles: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # default: the checkout
    subprocess: bool = False  # through `python -m devshell`, not cli.main in this process
    cwd_removed: bool = False  # start in cwd, and have it removed before devshell runs


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Place:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "DEVSHELL_", "DOCKER_", "GIT_", "COLUMNS"))}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "home/.local/state"),
               XDG_CACHE_HOME=str(tmp_path / "home/.cache"), XDG_CONFIG_HOME=str(tmp_path / "home/.config"),
               DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock", PYTHONDONTWRITEBYTECODE="1")
    p = Place(tmp_path, env)
    for d in (p.home, p.checkout, p.cells):
        d.mkdir()
    (p.home / ".gitconfig").write_text("[user]\n\tname = T\n\temail = t@example.com\n")
    p.git(p.checkout, "init", "-q", "-b", "main")
    (p.checkout / "README").write_text("hello\n")
    p.git(p.checkout, "add", "README")
    p.git(p.checkout, "commit", "-q", "-m", "init")
    for k in [k for k in os.environ if k not in env]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(p.checkout)
    return p


# --- nothing changed ------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    return tree_state(root)


def _engine_get(path: str) -> object:
    """GET path from the local engine's API, or None where there is no engine."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect("/var/run/docker.sock")
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            raw = b"".join(iter(lambda: s.recv(1 << 16), b""))
    except OSError:
        return None
    return json.loads(raw.partition(b"\r\n\r\n")[2] or b"null")


# What a row could create: the default container and volume of a cell it names (the rows give
# no --instance that is accepted). Other names are other processes' (suites, benchmarks, people)
# and change meanwhile.
_ROW_NAMES = re.compile(r"devshell-(c|bookworm|runner-1001|ubuntu-24\.04)")


def engine_state() -> tuple[object, object]:
    """Names and states of the containers and volumes a row could touch (docker ps -a, docker
    volume ls)."""
    containers = _engine_get("/containers/json?all=1") or []
    volumes = (_engine_get("/volumes") or {}).get("Volumes") or []  # type: ignore[union-attr]

    def ours(name: str) -> bool:
        return _ROW_NAMES.fullmatch(name) is not None

    names = [(n.lstrip("/"), c["State"]) for c in containers for n in c["Names"]]
    return (sorted((n, state) for n, state in names if ours(n)),
            sorted(v["Name"] for v in volumes if ours(v["Name"])))


def warm(p: Place) -> None:
    """Remember every valid cell the row could load: devshell caches a validated cell file
    under XDG_CACHE_HOME, which is a cache, not a change a bad input made."""
    for d in (p.cells, Path(cells.shipped_cells_dir())):
        for f in sorted(d.glob("*.yaml")):
            with contextlib.suppress(Exception):  # the bad cells are the rows' business
                cells.load(str(f))


# --- running a row --------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(p: Place, case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        timeout: float = 60) -> Result:
    cwd = case.cwd or str(p.checkout)
    if case.subprocess:
        argv = [sys.executable, "-m", "devshell", *case.argv]
        if case.cwd_removed:  # a shell whose directory was removed from another terminal
            argv = ["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", cwd, *argv]
            cwd = "/"
        done = subprocess.run(argv, cwd=cwd,
                              env={**p.env, **case.env}, capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=timeout)
        return Result(done.returncode, done.stdout.decode(errors="backslashreplace"),
                      done.stderr.decode(errors="backslashreplace"))
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = cli.main(case.argv)
    except BaseException as e:  # a traceback reaching the user, in this process
        pytest.fail(f"{type(e).__name__} escaped cli.main: {e}")
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_one_line(result: Result, needles: tuple[str, ...]) -> None:
    assert "Traceback" not in result.err + result.out, result.err
    assert result.code == 2, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("devshell: error: ") and "; fix: " in line, line
    assert line.split("; fix: ", 1)[1].strip(), line  # a fix that says something
    for needle in needles:
        assert needle in line, line


# --- the rows -------------------------------------------------------------------------------


def _deep_yaml(p: Place) -> Case:
    return Case(p.cell("c", "a: " + "[" * 20000 + "]" * 20000 + "\n"), ("c.yaml",))


def _cell_dir(p: Place) -> Case:
    (p.cells / "c.yaml").mkdir()
    return Case(["c", "--cells-dir", str(p.cells)], ("c.yaml", "is not a regular file"))


def _cell_fifo(p: Place) -> Case:
    os.mkfifo(p.cells / "c.yaml")  # nobody writes it: a read would wait forever
    return Case(["c", "--cells-dir", str(p.cells)], ("c.yaml", "is not a regular file"))


def _cell_device(p: Place) -> Case:
    (p.cells / "c.yaml").symlink_to("/dev/zero")  # a read would never end
    return Case(["c", "--cells-dir", str(p.cells)], ("c.yaml", "is not a regular file"))


def _cell_huge(p: Place) -> Case:
    return Case(p.cell("c", VALID_CELL + "#" * (cells.MAX_CELL_BYTES + 1)), ("c.yaml", "larger than"))


def _cell_dangling(p: Place) -> Case:
    (p.cells / "c.yaml").symlink_to(p.root / "absent.yaml")
    return Case(["c", "--cells-dir", str(p.cells)], ("c.yaml", "cannot read cell file"))


def _workspace(path: str, needle: str = "is not strictly below") -> Callable[[Place], Case]:
    def row(p: Place) -> Case:
        text = VALID_CELL.replace("/workspaces/c", path)
        return Case(p.cell("c", text), ("c.yaml", "key 'workspace'", needle))
    return row


def _deleted_cwd(p: Place) -> Case:
    # Outside p.root, whose snapshot must not change: this directory goes.
    return Case(["--list"], ("current directory is gone",), subprocess=True,
                cwd=tempfile.mkdtemp(prefix="devshell-gone-"), cwd_removed=True)


def _fifo(p: Place) -> Case:
    os.mkfifo(p.root / "fifo")
    # Through a subprocess with a timeout: an open that waits for a writer would hang the test.
    return Case(["--script", str(p.root / "fifo")], ("not a regular file",), subprocess=True)


def _home_is(kind: str) -> Callable[[Place], Case]:
    def row(p: Place) -> Case:
        home = p.root / "nowhere" / "x" if kind == "missing" else Path(p.file("home-file"))
        return Case(["--script", p.file("s.sh", b"true\n")], ("HOME", "not an existing directory"),
                    env={"HOME": str(home), "XDG_STATE_HOME": "", "XDG_CACHE_HOME": ""})
    return row


def _patches_repo(p: Place, kind: str) -> Path:
    """A bare clone of the checkout, or a drop dir with one patch adding `new`."""
    if kind == "bare":
        p.git(p.root, "clone", "-q", "--bare", str(p.checkout), "bare.git")
        return p.root / "bare.git"
    agent = p.root / "agent"
    p.git(p.root, "clone", "-q", str(p.checkout), "agent")
    (agent / "new").write_text("from the agent\n")
    p.git(agent, "add", "new")
    p.git(agent, "commit", "-q", "-m", "add new")
    drop = p.root / "drop"
    p.git(agent, "format-patch", "-q", "-1", "-o", str(drop))
    return drop


def _patches_bare(action: str, via_repo: bool) -> Callable[[Place], Case]:
    def row(p: Place) -> Case:
        bare = _patches_repo(p, "bare")
        drop = _patches_repo(p, "drop")
        argv = ["patches", action, "--patches-dir", str(drop)]
        if via_repo:
            return Case([*argv, "--repo", str(bare)], ("not in a git work tree",))
        return Case(argv, ("not in a git work tree",), cwd=str(bare))
    return row


def _patches_untracked(p: Place) -> Case:
    drop = _patches_repo(p, "drop")
    (p.checkout / "new").write_text("mine, untracked\n")
    return Case(["patches", "apply", "--patches-dir", str(drop)], ("untracked", "new"))


def _patches_deleted_cwd(p: Place) -> Case:
    return Case(["patches", "list"], ("current directory is gone",), subprocess=True,
                cwd=tempfile.mkdtemp(prefix="devshell-gone-"), cwd_removed=True)


def _patches_out_not_devs(p: Place) -> Case:
    if os.geteuid() != 0:
        pytest.skip("needs root: a directory of the launching user's that dev (1000) cannot write")
    (p.root / "mine").mkdir(mode=0o700)  # never chowned: devshell did not make it
    return Case(["--patches-out", str(p.root / "mine"), "--uid", "1000", "--gid", "1000",
                 *p.script()], ("patches dir",))


def _no_docker_cli(p: Place) -> Case:
    return Case(p.script(), ("docker CLI is not on PATH",), env={"PATH": str(p.root / "empty-path")})


def _columns(argv: list[str], *needles: str) -> Callable[[Place], Case]:
    return lambda p: Case(argv, needles, env={"COLUMNS": "abc"})


ROWS: dict[str, Callable[[Place], Case]] = {
    # flags: grammar
    "unknown flag": lambda p: Case(["--frobnicate"], ("--frobnicate",)),
    "unknown short flag": lambda p: Case(["-x"], ("-x",)),
    "abbreviated flag": lambda p: Case(["--scr", "s.sh"], ("--scr",)),
    "two cells": lambda p: Case(["bookworm", "runner-1001"], ("runner-1001",)),
    "flag without its value": lambda p: Case(["--script"], ("--script",)),
    "--script given twice": lambda p: Case([*p.script(), "--script", "b.sh"], ("--script", "given twice")),
    "--uid given twice": lambda p: Case(["--uid", "1000", "--uid", "1001"], ("--uid", "given twice")),
    "--checkout given twice": lambda p: Case(["--checkout", ".", "--checkout", "."], ("--checkout", "twice")),
    "--rm given twice": lambda p: Case(["--rm", "--rm"], ("--rm", "given twice")),
    "--image given twice": lambda p: Case(["--image", "a:1", "--image", "b:1"], ("--image", "given twice")),
    "--profile given twice": lambda p: Case(["--profile", "locked", "--profile", "locked"],
                                            ("--profile", "given twice")),
    # flags: conflicts
    "--ai-config-ro with --ai-config-rw": lambda p: Case(["--ai-config-ro", "--ai-config-rw"],
                                                         ("contradict",)),
    "--rm with --script": lambda p: Case(["--rm", *p.script()], ("--script and --rm", "cannot be combined")),
    "--verify with --list": lambda p: Case(["--verify", "--list"], ("cannot be combined",)),
    "--list with a cell": lambda p: Case(["bookworm", "--list"], ("--list takes no cell",)),
    "--profile locked with --as-root": lambda p: Case(["--profile", "locked", "--as-root"],
                                                      ("--as-root is refused under --profile locked",)),
    # flags: ids
    "--uid 0": lambda p: Case(["--uid", "0"], ("would make dev root",)),
    "--gid 0": lambda p: Case(["--gid", "0"], ("would make dev root",)),
    "--uid negative": lambda p: Case(["--uid", "-1"], ("--uid", "out of range")),
    "--gid too large": lambda p: Case(["--gid", str(2**31 - 1)], ("--gid", "out of range")),
    "--uid not a number": lambda p: Case(["--uid", "abc"], ("--uid", "expected a number")),
    "--gid a fraction": lambda p: Case(["--gid=1.5"], ("--gid", "expected a number")),
    # flags: names and references
    "--instance over-long": lambda p: Case(["--instance", "n" * 41], ("--instance",)),
    "--instance with a slash": lambda p: Case(["--instance", "a/b"], ("--instance",)),
    "--image ../../x": lambda p: Case(["--image", "../../x", *p.script()],
                                      ("../../x", "path component '..'")),
    "--image uppercase": lambda p: Case(["--image", "Ubuntu:22.04"], ("'Ubuntu'", "lowercase")),
    "--image short digest": lambda p: Case(["--image", "x@sha256:abc"], ("digest",)),
    "--image two tags": lambda p: Case(["--image", "a:b:c"], ("'a:b'",)),
    "--image empty": lambda p: Case(["--image="], ("--image", "non-empty")),
    "--profile root": lambda p: Case(["--profile", "root"], ("--profile", "invalid choice", "'root'")),
    "--network host": lambda p: Case(["--network", "host"], ("--network", "invalid choice", "'host'")),
    "--network given twice": lambda p: Case(["--network", "none", "--network=none"],
                                            ("--network", "given twice")),
    "--runtime 'a b'": lambda p: Case(["--runtime", "a b"], ("--runtime 'a b'", "not a runtime name")),
    "cell name with bad characters": lambda p: Case(["../etc/passwd"], ("is not a cell name",)),
    "cell name in capitals": lambda p: Case(["Bookworm"], ("is not a cell name",)),
    "unknown cell": lambda p: Case(["nosuchcell"], ("no cell named 'nosuchcell'", "bookworm")),
    # COLUMNS is the terminal's to set: never a reason to fail, with any command
    "COLUMNS=abc --list --json": _columns(["--list", "--json"], "no Docker engine answers"),
    "COLUMNS=abc --rm": _columns(["--rm"], "no Docker engine answers"),
    "COLUMNS=abc --verify": _columns(["--verify"], "no Docker engine answers"),
    "COLUMNS=abc enter": lambda p: Case(p.script(), ("no Docker engine answers",), env={"COLUMNS": "abc"}),
    "COLUMNS=abc bad flag": _columns(["--frobnicate"], "--frobnicate"),
    "COLUMNS=abc patches": _columns(["patches", "frob"], "invalid choice"),
    # cell files
    "env key that is not text": lambda p: Case(p.cell("c", VALID_CELL + "env: {1: a}\n"),
                                               ("line 4", "not text")),
    "duplicate key": lambda p: Case(p.cell("c", VALID_CELL + "platform: linux/arm64\n"), ("given twice",)),
    "cell file that is a list": lambda p: Case(p.cell("c", "- a\n- b\n"), ("c.yaml", "not a mapping")),
    "cell file that is empty": lambda p: Case(p.cell("c", ""), ("c.yaml", "empty")),
    "unknown key": lambda p: Case(p.cell("c", VALID_CELL + "colour: red\n"), ("unknown key", "colour")),
    "unknown nested key": lambda p: Case(p.cell("c", VALID_CELL.replace("{ref:", "{flavour: x, ref:")),
                                         ("key 'image'", "flavour")),
    "name not the file name": lambda p: Case(p.cell("c", VALID_CELL + "name: other\n"), ("key 'name'",)),
    "cell file name in capitals": lambda p: Case(["C", "--cells-dir", str(p.cells)], ("is not a cell name",)),
    "YAML syntax error": lambda p: Case(p.cell("c", "platform: [linux\n"), ("c.yaml", "not valid YAML")),
    "YAML not UTF-8": lambda p: Case(p.cell("c", VALID_CELL.encode() + b"description: \xff\xfe\n"),
                                     ("not valid YAML",)),
    "YAML nested too deeply": _deep_yaml,
    "cell file that is a directory": _cell_dir,
    "cell file that is a FIFO": _cell_fifo,
    "cell file that is a link to /dev/zero": _cell_device,
    "cell file over 1 MiB": _cell_huge,
    "cell file that is a dangling link": _cell_dangling,
    "platform not supported": lambda p: Case(p.cell("c", VALID_CELL.replace("linux/amd64", "linux/s390x")),
                                             ("c.yaml", "platform")),
    "env sets HOME": lambda p: Case(p.cell("c", VALID_CELL + "env: {HOME: /root}\n"), ("env.HOME",)),
    "env value a list": lambda p: Case(p.cell("c", VALID_CELL + "env: {A: [1]}\n"), ("env.A",)),
    "profile root": lambda p: Case(p.cell("c", VALID_CELL + "profile: root\n"),
                                   ("c.yaml", "key 'profile'", "'root'")),
    "network mode host": lambda p: Case(p.cell("c", VALID_CELL + "network: {mode: host}\n"),
                                        ("c.yaml", "key 'network.mode'", "'host'")),
    "network allow an address": lambda p: Case(p.cell("c", VALID_CELL + "network: {allow: [10.0.0.1]}\n"),
                                               ("c.yaml", "key 'network.allow.0'", "is an address")),
    "network allow a URL": lambda p: Case(p.cell("c", VALID_CELL + "network: {mode: allow, allow: ['https://x.org']}\n"),
                                          ("c.yaml", "key 'network.allow.0'", "not a host name")),
    # cache: the build cache
    "cache without a subcommand": lambda p: Case(["cache"], ("cache needs a subcommand",)),
    "cache frob": lambda p: Case(["cache", "frob"], ("'frob' is not a cache subcommand",)),
    "cache pack without --out": lambda p: Case(["cache", "pack", "c"], ("needs a cell and --out DIR",)),
    "cache pack a bad cell name": lambda p: Case(["cache", "pack", "../x", "--out", str(p.root / "o")],
                                                 ("'../x' is not a cell name",)),
    "cache pack a bad key": lambda p: Case(["cache", "pack", "c", "--out", str(p.root / "o"),
                                            "--key", "a/b"], ("'a/b' is not a build cache key",)),
    "cache pack --out a file": lambda p: Case(["cache", "pack", "c", "--out", str(p.checkout / "README")],
                                              ("is not a directory",)),
    "cache fetch without a pin": lambda p: Case(["cache", "fetch", str(p.root), "k"],
                                                ("needs a source, a key and --sha256",)),
    "cache fetch a sha that is not one": lambda p: Case(["cache", "fetch", str(p.root), "k",
                                                         "--sha256", "xyz"], ("'xyz' is not a sha256",)),
    "cache fetch from nowhere": lambda p: Case(["cache", "fetch", str(p.root / "none"), "k",
                                                "--sha256", "a" * 64],
                                               ("cannot fetch", "none/k.manifest.json")),
    "cache prune with an argument": lambda p: Case(["cache", "prune", "all"], ("takes no arguments",)),
    # seeds: a cell's seed:, source: and build:, and the flags that take a seed
    "--clean without --reseed": lambda p: Case(["--clean", *p.script()], ("--clean", "--reseed --clean")),
    "--reseed with --rm": lambda p: Case(["--reseed", "--rm"], ("--reseed and --rm cannot be combined",)),
    "--reseed a cell without a seed": lambda p: Case([*p.cell("c", VALID_CELL), "--reseed", *p.script()],
                                                     ("cell c declares no seed", "seed:")),
    "seed with a sha that is not one": lambda p: Case(
        p.cell("c", VALID_CELL + "seed: {from: /x, key: k, manifest_sha256: abc}\n"),
        ("c.yaml", "key 'seed.manifest_sha256'")),
    "seed without a pin": lambda p: Case(p.cell("c", VALID_CELL + "seed: {from: /x, key: k}\n"),
                                         ("c.yaml", "missing: 'manifest_sha256'")),
    "seed from a place with a space": lambda p: Case(
        p.cell("c", VALID_CELL + f"seed: {{from: '/a b', key: k, manifest_sha256: {'a' * 64}}}\n"),
        ("c.yaml", "key 'seed.from'")),
    "seed from an option": lambda p: Case(
        p.cell("c", VALID_CELL + f"seed: {{from: '--upload-pack=x', key: k, manifest_sha256: {'a' * 64}}}\n"),
        ("c.yaml", "key 'seed.from'")),
    "source with a short commit": lambda p: Case(
        p.cell("c", VALID_CELL + "source: {repo: 'https://x.org/r.git', commit: abc123}\n"),
        ("c.yaml", "key 'source.commit'")),
    "build without a compile step": lambda p: Case(
        p.cell("c", VALID_CELL + "build: {configure: 'cmake .', install: 'make install'}\n"),
        ("c.yaml", "missing: 'compile'")),
    "build project outside the cells dir": lambda p: Case(
        p.cell("c", VALID_CELL + "build: {project: ../x, configure: a, compile: b, install: c}\n"),
        ("c.yaml", "key 'build.project'")),
    "env CCACHE_BASEDIR": lambda p: Case(p.cell("c", VALID_CELL + "env: {CCACHE_BASEDIR: /tmp}\n"),
                                         ("c.yaml", "CCACHE_BASEDIR")),
    # net: the egress log's subcommands
    "net without a subcommand": lambda p: Case(["net"], ("net needs a subcommand",)),
    "net frob": lambda p: Case(["net", "frob"], ("'frob' is not a net subcommand",)),
    "net log without a cell": lambda p: Case(["net", "log"], ("net log needs a cell",)),
    "net log a bad cell name": lambda p: Case(["net", "log", "../x"], ("'../x' is not a cell name",)),
    "net log a bad instance": lambda p: Case(["net", "log", "c", "--instance", "a/b"], ("--instance",)),
    "net log with no log": lambda p: Case(["net", "log", "c"], ("devshell-c has no egress log",
                                                                 "--network allow")),
    "net learn with --rm": lambda p: Case(["net", "learn", "c", "--rm"],
                                          ("net learn runs a session", "--rm")),
    "net learn with --network none": lambda p: Case(["net", "learn", "c", "--network", "none"],
                                                    ("net learn runs under --network allow",)),
    "limits.pids 1": lambda p: Case(p.cell("c", VALID_CELL + "limits: {pids: 1}\n"),
                                    ("c.yaml", "key 'limits.pids'", "minimum of 64")),
    "limits.memory 1k": lambda p: Case(p.cell("c", VALID_CELL + "limits: {memory: 1k}\n"),
                                       ("c.yaml", "key 'limits.memory'", "below 64 MiB")),
    "limits.memory lots": lambda p: Case(p.cell("c", VALID_CELL + "limits: {memory: lots}\n"),
                                         ("c.yaml", "key 'limits.memory'", "'lots'")),
    "limits with cpu": lambda p: Case(p.cell("c", VALID_CELL + "limits: {cpu: 2}\n"),
                                      ("c.yaml", "key 'limits'", "unknown key", "cpu")),
    "workspace / (spelled /x/..)": _workspace("/x/.."),
    "workspace /etc": _workspace("/etc"),
    "workspace /usr": _workspace("/usr"),
    "workspace /bin": _workspace("/bin"),
    "workspace /tmp": _workspace("/tmp/w"),
    "workspace /root": _workspace("/root"),
    "workspace /proc": _workspace("/proc"),
    "workspace /home": _workspace("/home"),
    "workspace /workspaces": _workspace("/workspaces"),
    "workspace /w/cellx": _workspace("/w/cellx"),
    "workspace /home/dev": _workspace("/home/dev/w", "collides with a path devshell owns"),
    "workspace /patches": _workspace("/patches", "collides with a path devshell owns"),
    "--cells-dir missing": lambda p: Case(["--cells-dir", str(p.root / "nope"), "--list"],
                                          ("does not exist",)),
    "--cells-dir a file": lambda p: Case(["--cells-dir", p.file("f"), "--list"], ("is not a directory",)),
    "--cells-dir a file, entering": lambda p: Case(["--cells-dir", p.file("f")], ("--cells-dir",)),
    # host paths
    "--checkout missing": lambda p: Case(["--checkout", str(p.root / "nope"), *p.script()],
                                         ("does not exist",)),
    "--checkout a file": lambda p: Case(["--checkout", p.file("f"), *p.script()], ("not a directory",)),
    "--checkout /": lambda p: Case(["--checkout", "/"], ("checkout",)),
    "--checkout $HOME": lambda p: Case(["--checkout", str(p.home)], ("your home",)),
    "--patches-out inside the checkout": lambda p: Case(["--patches-out", str(p.checkout / "drop")],
                                                        ("overlaps the checkout",)),
    "--patches-out a file": lambda p: Case(["--patches-out", p.file("f"), *p.script()],
                                           ("patches dir", "not a directory")),
    "--patches-out /": lambda p: Case(["--patches-out", "/"], ("patches dir",)),
    "--patches-out not dev's": _patches_out_not_devs,
    "--host-cache-dir a file": lambda p: Case(["--host-cache-dir", p.file("f"), *p.script()],
                                              ("host cache", "not a directory")),
    "--host-cache-dir inside the checkout": lambda p: Case(["--host-cache-dir", str(p.checkout / "c")],
                                                           ("overlaps the checkout",)),
    "deleted working directory": _deleted_cwd,
    "HOME pointing nowhere": _home_is("missing"),
    "HOME a file": _home_is("file"),
    # scripts
    "--script missing": lambda p: Case(["--script", str(p.root / "nope.sh")], ("No such file",)),
    "--script a directory": lambda p: Case(["--script", str(p.root)], ("not a regular file",)),
    "--script a FIFO": _fifo,
    "--script /dev/zero": lambda p: Case(["--script", "/dev/zero"], ("not a regular file",)),
    "--script CRLF": lambda p: Case(p.script(b"#!/bin/sh\r\necho hi\r\n"), ("CRLF", "dos2unix")),
    "--script binary": lambda p: Case(p.script(b"\x7fELF\0\0"), ("binary",)),
    "--script too large": lambda p: Case(p.script(b"#" * (MAX_SCRIPT_BYTES + 1)), ("larger than",)),
    # the engine
    "missing daemon": lambda p: Case([*p.script(), "--host-cache-dir", str(p.root / "cache")],
                                     ("no Docker engine answers", "DOCKER_HOST"),
                                     env={"DOCKER_HOST": "unix:///nonexistent.sock"}),
    "missing daemon, --list": lambda p: Case(["--list"], ("no Docker engine answers",), subprocess=True,
                                             env={"DOCKER_HOST": "unix:///nonexistent.sock"}),
    "missing daemon, --rm": lambda p: Case(["--rm"], ("no Docker engine answers",),
                                           env={"DOCKER_HOST": "unix:///nonexistent.sock"}),
    "missing docker CLI": _no_docker_cli,
    # devshell patches
    "patches check in a bare repository": _patches_bare("check", via_repo=False),
    "patches apply in a bare repository": _patches_bare("apply", via_repo=False),
    "patches list --repo a bare repository": _patches_bare("list", via_repo=True),
    "patches apply over an untracked file": _patches_untracked,
    "patches unknown action": lambda p: Case(["patches", "frob"], ("invalid choice",)),
    "patches dir missing": lambda p: Case(["patches", "check", "--patches-dir", str(p.root / "nope")],
                                          ("cannot read patches dir",)),
    "patches in a deleted working directory": _patches_deleted_cwd,
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_and_changes_nothing(row: str, place: Place, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = ROWS[row](place)
    warm(place)
    before = tree(place.root), engine_state()
    result = run(place, case, capsys, monkeypatch, timeout=30)
    assert_one_line(result, case.needles)
    assert (tree(place.root), engine_state()) == before


def test_the_table_has_at_least_60_rows() -> None:
    assert len(ROWS) >= 60


# --- not one-line errors, but the same promises: no traceback, nothing changed ----------------


def _raw_subject_patch(p: Place) -> Path:
    """A patch whose subject holds bytes that are not UTF-8 and an escape sequence, as a mail
    with no charset can."""
    drop = _patches_repo(p, "drop")
    (name,) = [f for f in drop.iterdir()]
    lines = [b"Subject: [PATCH] raw \xff\xfe \x1b[31m red" if line.startswith(b"Subject:") else line
             for line in name.read_bytes().split(b"\n")
             if not line.startswith((b"MIME-Version", b"Content-Type", b"Content-Transfer"))]
    name.write_bytes(b"\n".join(lines))
    return drop


@pytest.mark.parametrize("terminal", [{}, {"LANG": "C", "LC_ALL": "C"}, {"PYTHONIOENCODING": "ascii"},
                                      {"LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}],
                         ids=["utf-8", "LANG=C", "PYTHONIOENCODING=ascii", "both"])
@pytest.mark.parametrize("action", ["list", "check"])
def test_patches_with_a_subject_that_is_not_utf8_print_escaped_on_any_terminal(
        place: Place, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        terminal: dict[str, str], action: str) -> None:
    drop = _raw_subject_patch(place)
    before = tree(place.root)
    result = run(place, Case(["patches", action, "--patches-dir", str(drop)], (), env=terminal,
                             subprocess=True), capsys, monkeypatch)
    assert "Traceback" not in result.err, result.err
    assert (result.code, result.err) == (0, ""), result.err
    if action == "list":
        assert "raw \\xff\\xfe \\x1b[31m red" in result.out
    assert "\x1b" not in result.out
    assert tree(place.root) == before


def test_patches_check_writes_nothing_into_the_repository(place: Place, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """docs: check touches nothing. Its objects go to a scratch repository, never .git/objects."""
    drop = _patches_repo(place, "drop")
    objects = place.checkout / ".git" / "objects"
    before, listing = tree(place.root), sorted(os.listdir(objects))
    result = run(place, Case(["patches", "check", "--patches-dir", str(drop)], ()), capsys, monkeypatch)
    assert result.code == 0 and result.out.startswith("ok "), result.err
    assert sorted(os.listdir(objects)) == listing
    assert tree(place.root) == before


def test_non_utf8_script_bytes_reach_the_exec_argument_unchanged(place: Place) -> None:
    """Scripts are bytes: read_script's text carries them (surrogateescape) to the argv handed
    to the docker CLI, byte for byte (suites/test_bad_input.py runs one in a real container)."""
    from devshell.launcher import read_script

    data = b"#!/bin/sh\nprintf '%s' '\xff\xfe caf\xc3\xa9'\n"
    text = read_script(place.file("s.sh", data))
    assert text.encode("utf-8", "surrogateescape") == data
    assert os.fsencode(text) == data  # what posix_spawn and subprocess hand to exec


# --- ^C and an engine that never answers ---------------------------------------------------


@pytest.fixture
def silent_engine() -> Iterator[str]:
    """A unix socket that accepts connections and never answers: a hung daemon."""
    d = tempfile.mkdtemp(prefix="ds-")  # a short path: unix socket paths are short
    path = os.path.join(d, "engine.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"unix://{path}"
    stop.set()
    thread.join()
    for s in [*held, server]:
        s.close()
    os.unlink(path)
    os.rmdir(d)


HUNG_ENGINE_SECONDS = 10


def test_an_engine_that_never_answers_is_one_line_well_before_120_s(place: Place, silent_engine: str,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree(place.root)
    try:
        result = run(place, Case(["--list"], (), env={"DOCKER_HOST": silent_engine}, subprocess=True),
                     capsys, monkeypatch, timeout=HUNG_ENGINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {HUNG_ENGINE_SECONDS} s")
    assert_one_line(result, ("did not answer GET /_ping",))
    # The cells --list read were remembered as validated (devshell's own cache, read before
    # the engine is asked); nothing else changed.
    memo = os.path.join("home", ".cache")
    assert {k: v for k, v in tree(place.root).items() if not k.startswith(memo)} == before


def restore_default_sigint() -> None:
    """preexec_fn for a child these tests ^C: an ignored SIGINT survives exec (pytest run as a
    background job of a non-interactive shell starts so), and Python then installs no
    KeyboardInterrupt handler, so the ^C would do nothing and the child would run on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_devshell_is_importing_is_exit_130_without_a_traceback(place: Place) -> None:
    """SIGINT arrives while `python -m devshell` still imports its modules (deterministically:
    a module it imports sends it, standing in for a slow import and a quick ^C)."""
    shim = place.root / "shim"
    shim.mkdir()
    # argparse: imported by devshell.options, by nothing in Python's own startup.
    (shim / "argparse.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                      "time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-m", "devshell", "--list"], cwd=place.checkout,
                          env={**place.env, "PYTHONPATH": str(shim)}, capture_output=True, text=True,
                          timeout=30, preexec_fn=restore_default_sigint)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130, done.stderr


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.5])
def test_ctrl_c_at_any_early_moment_is_no_traceback(place: Place, silent_engine: str, delay: float) -> None:
    """^C at any point of start-up (before Python handles SIGINT, during imports, while the
    engine is asked): killed by the signal or exit 130, never a traceback of devshell's.
    (Python's own start-up, before any devshell code runs, prints one when ^C lands while it
    imports runpy for -m: out of devshell's reach, and told apart here.)"""
    proc = subprocess.Popen([sys.executable, "-m", "devshell", "--list"], cwd=place.checkout,
                            env={**place.env, "DOCKER_HOST": silent_engine},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore_default_sigint)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    # Python's own start-up (site, runpy finding the package for -m) reports a ^C in its own
    # words, before any code of devshell's runs: told apart by having only Python's frames.
    frames = re.findall(r'^  File "([^"]+)"', err, re.MULTILINE)
    if err.startswith(("Could not import runpy module", "Fatal Python error: init_import_site")) or (
            frames and all(f.startswith("<frozen ") for f in frames)):
        assert os.path.dirname(devshell.__file__) not in err, err
        return
    assert "Traceback" not in err, err
    assert proc.returncode in (130, -signal.SIGINT), err
