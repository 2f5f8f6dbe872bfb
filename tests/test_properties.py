"""Promises of parse -> plan that must hold for every flag combination (hypothesis, no Docker).

An invocation is generated as groups (the cell, or one flag with its value), so shuffling the
groups is a legal reordering of argv. `refusal()` is the oracle for inputs that are invalid by
design; every other invocation must parse.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from devshell import cells
from devshell.errors import DevshellError
from devshell.options import HostFacts, Options, parse, to_argv
from devshell.spec import CACHE, PATCHES, ContainerSpec, ai_key, ai_repo, plan, session

INIT = "#!/bin/sh\n"
ARM_CELL = cells.parse({"platform": "linux/arm64", "image": {"ref": "example/arm:1"},
                        "workspace": "/w/arm", "setup": "true\n"},
                       source="arm.yaml", stem="arm")



def shipped(name: str) -> cells.Cell:
    """Parsed, not loaded: loading may write a cache, and import time has no tmp_path."""
    path = os.path.join(cells.shipped_cells_dir(), f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        return cells.parse(yaml.safe_load(f), source=path, stem=name)


CELLS = {c.name: c for c in [*map(shipped, ("bookworm", "runner-1001", "ubuntu-24.04")), ARM_CELL]}
DEFAULT_HOST_CACHE = "~/.cache/devshell/host-cache"
CONTRACT = {"HOME", "DEVSHELL_CELL", "DEVSHELL_DEV_UID", "DEVSHELL_DEV_GID", "DEVSHELL_DEV_HOME",
            "DEVSHELL_PATCHES_MOUNT", "DEVSHELL_WORKSPACE", "DEVSHELL_SRC", "DEVSHELL_BUILD",
            "DEVSHELL_CCACHE", "DEVSHELL_AI_REPO", "DEVSHELL_AI_REPO_ENCODED"}
MAX_ID = 2**31 - 2

# Path characters: spaces, unicode, CSV and JSON specials, Windows-ish ':' and '\', line breaks.
CHARS = "abzXZ09 ._-~é中🙂,\"\\:=/\n"
HOMES = ("/home/alice", "/Users/v é", "/root", "/home/bob/")
CWDS = {home: (home, "/", f"{home.rstrip('/')}/proj", f"{home.rstrip('/')}/a b/ü,x\"q",
               "/srv/w 中/x", f"{home.rstrip('/')}/~x/.y/z", "//srv//w")
        for home in HOMES}
TRICKY_PATHS = ("~", "~/", ".", "..", "../..", "./a/../b/", "a/./b//c/", "../x y", "~/../z",
                "~x", "/p x/", "/x,y/\"z\"")


# Named predicates and draws of few, large choices: hypothesis is fast per draw, not per value,
# and describes lambda filters by reading their source, which is slow.
def sane(path: str) -> bool:
    """`--flag=--` is refused outright (test_options.py pins it); keep it out of the mix."""
    return path != "--"


paths = st.one_of(
    st.builds("{}{}".format, st.sampled_from(["/", "", "~/"]), st.text(CHARS, min_size=1, max_size=12)),
    st.sampled_from(TRICKY_PATHS),
).filter(sane)
HOST_PLACES = [(home, cwd) for home in HOMES for cwd in CWDS[home]]
host_ids = st.sampled_from([0, 1, 20, 501, 1000, 1001, 65534, MAX_ID])
images = st.sampled_from(["img:1", "registry.example/x/y:2", "d@sha256:" + "a" * 64])
instances = st.text("abXY09._-", min_size=1, max_size=40).filter(sane)
explicit_ids = st.integers(0, MAX_ID)
cell_names = st.none() | st.sampled_from(sorted(CELLS))
actions_with_cell = st.sampled_from(["", "--rm", "--verify", "--script"])
actions = st.sampled_from(["", "--rm", "--verify", "--script", "--list"])  # --list takes no cell
VALUED = (("--host-cache-dir", paths), ("--patches-out", paths), ("--uid", explicit_ids),
          ("--gid", explicit_ids), ("--image", images), ("--instance", instances),
          ("--cells-dir", paths), ("--cells-dir", paths), ("--script", paths))
SWITCHES = ("--host-cache", "--as-root", "--json")
bitmasks = st.integers(0, 2 ** (len(VALUED) + len(SWITCHES)) - 1)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def hosts(draw: st.DrawFn) -> HostFacts:
    home, cwd = draw(st.sampled_from(HOST_PLACES))
    return HostFacts(cwd=cwd, home=home, uid=draw(host_ids), gid=draw(host_ids))


@dataclass(frozen=True)
class Invocation:
    host: HostFacts
    groups: tuple[tuple[str, ...], ...]
    cell: str | None
    patches: str | None
    cache_switch: bool
    cache_dir: str | None
    uid: int | None
    gid: int | None

    @property
    def argv(self) -> list[str]:
        return flat(list(self.groups))


def valued(flag: str, value: str, equals: bool) -> tuple[str, ...]:
    # A separate value starting with '-' would read as a flag; argparse needs the = form then.
    return (f"{flag}={value}",) if equals or value.startswith("-") else (flag, value)


@st.composite
def invocations(draw: st.DrawFn) -> Invocation:
    """Every flag, each present or not, separate or `=` form, in a shuffled order."""
    host = draw(hosts())
    cell = draw(cell_names)
    action = draw(actions_with_cell if cell else actions)
    present, equals = draw(bitmasks), draw(bitmasks)
    groups: list[tuple[str, ...]] = [(cell,)] if cell else []
    if action and action != "--script":
        groups.append((action,))
    values: dict[str, Any] = {}
    for bit, (flag, strategy) in enumerate(VALUED):
        if (present >> bit) & 1 and (flag != "--script" or action == "--script"):
            value = draw(strategy)
            values.setdefault(flag, value)
            groups.append(valued(flag, str(value), bool((equals >> bit) & 1)))
    if action == "--script" and "--script" not in values:
        groups.append(("--script", "run.sh"))
    switches = {s for bit, s in enumerate(SWITCHES, start=len(VALUED)) if (present >> bit) & 1}
    groups += [(s,) for s in sorted(switches)]
    shuffled = list(groups)
    random.Random(draw(seeds)).shuffle(shuffled)
    return Invocation(host, tuple(keep_cells_dir_order(groups, shuffled)), cell,
                      values.get("--patches-out"), "--host-cache" in switches,
                      values.get("--host-cache-dir"), values.get("--uid"), values.get("--gid"))


def flat(groups: list[tuple[str, ...]]) -> list[str]:
    return [token for group in groups for token in group]


def keep_cells_dir_order(original: list[tuple[str, ...]],
                         shuffled: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Repeated --cells-dir keep their relative order: it is the search order, and it matters."""
    def is_dir(g: tuple[str, ...]) -> bool:
        return g[0].startswith("--cells-dir")

    dirs = iter([g for g in original if is_dir(g)])
    return [next(dirs) if is_dir(g) else g for g in shuffled]


def resolve(path: str, host: HostFacts) -> str:
    if path == "~" or path.startswith("~/"):
        path = f"{host.home}/{path[2:]}"
    path = posixpath.normpath(posixpath.join(host.cwd, path))
    return "/" + path.lstrip("/")


def within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def expected_cache(inv: Invocation) -> str | None:
    if inv.cache_dir is not None:
        return resolve(inv.cache_dir, inv.host)
    return resolve(DEFAULT_HOST_CACHE, inv.host) if inv.cache_switch else None


def refusal(inv: Invocation) -> str | None:
    """Why this invocation is invalid by design, or None if it must parse."""
    if inv.uid == 0 or inv.gid == 0:
        return "uid/gid 0"
    if {"--rm", "--verify", "--list"} & set(inv.argv):
        return None  # nothing is bound: the patches dir and cache are not checked
    home = resolve(inv.host.home, inv.host)
    patches = resolve(inv.patches or inv.host.cwd, inv.host)
    if patches == "/" or within(home, patches):
        return "patches dir is / or holds home"
    cache = expected_cache(inv)
    if cache is not None and (cache == "/" or within(home, cache) or within(cache, patches)
                              or within(patches, cache)):
        return "host cache is /, holds home, or overlaps the patches dir"
    return None


def is_valid(inv: Invocation) -> bool:
    return refusal(inv) is None


valid_invocations = invocations().filter(is_valid)


def opened(argv: list[str], host: HostFacts, *,
           checkout: bool = False) -> tuple[Options, ContainerSpec]:
    """parse -> plan; checkout stands in for what check_host_paths reads off the host."""
    opts = parse(argv, host)
    opts = opts._replace(patches_git=posixpath.join(opts.patches_out, ".git") if checkout else None)
    return opts, plan(opts, CELLS[opts.cell], init=INIT)


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == flag]


def mount_from_cli(value: str) -> dict[str, Any]:
    fields = next(csv.reader([value]))
    kv = dict(f.partition("=")[::2] for f in fields if "=" in f)
    return {"Type": kv["type"], "Source": kv["source"], "Target": kv["target"],
            "ReadOnly": "readonly" in fields}


def spellings(path: str) -> set[str]:
    """A path as it appears raw, inside a JSON label, and inside a CSV --mount value."""
    return {path, json.dumps(path)[1:-1], path.replace('"', '""')}


# --- parsing --------------------------------------------------------------------------------


@given(invocations())
def test_parse_refuses_exactly_the_invalid_by_design_inputs(inv):
    if refusal(inv) is None:
        parse(inv.argv, inv.host)
    else:
        with pytest.raises(DevshellError):
            parse(inv.argv, inv.host)


POISONS: dict[str, Callable[[HostFacts], list[tuple[str, ...]]]] = {
    "uid 0": lambda host: [("--uid", "0")],
    "gid 0": lambda host: [("--gid=0",)],
    "patches ~": lambda host: [("--patches-out", "~")],
    "patches home": lambda host: [("--patches-out", host.home)],
    "patches /": lambda host: [("--patches-out", "/")],
    "patches climbs to /": lambda host: [("--patches-out", "/a/../..")],
    "cache /": lambda host: [("--host-cache-dir", "/")],
    "cache home": lambda host: [("--host-cache-dir", "~/")],
    "cache = patches": lambda host: [("--patches-out", "/p x"), ("--host-cache-dir", "/p x/")],
}


@given(valid_invocations, st.sampled_from(sorted(POISONS)), st.data())
def test_invalid_by_design_inputs_raise_devshell_error(inv, poison, data):
    bad = POISONS[poison](inv.host)
    flags = {g[0].split("=")[0] for g in bad} | {"--rm", "--verify", "--list"}  # poisons bind
    groups = [g for g in inv.groups if g[0].split("=")[0] not in flags]
    for g in bad:
        groups.insert(data.draw(st.integers(0, len(groups))), g)
    with pytest.raises(DevshellError):
        parse(flat(groups), inv.host)


@given(valid_invocations, st.data())
def test_cell_positional_is_never_swallowed(inv, data):
    groups = [g for g in inv.groups if g != (inv.cell,)]
    if inv.cell is not None:
        # Right after --host-cache when present: the flag most likely to be read as taking it.
        at = (groups.index(("--host-cache",)) + 1 if ("--host-cache",) in groups
              else data.draw(st.integers(0, len(groups))))
        groups.insert(at, (inv.cell,))
    assert parse(flat(groups), inv.host).cell == (inv.cell or cells.DEFAULT_CELL)


@given(valid_invocations, st.data())
def test_argument_order_never_changes_options_or_spec(inv, data):
    shuffled = keep_cells_dir_order(list(inv.groups), data.draw(st.permutations(inv.groups)))
    opts, spec = opened(inv.argv, inv.host)
    opts2, spec2 = opened(flat(shuffled), inv.host)
    assert (opts2, opts2.notes) == (opts, opts.notes)
    assert spec2 == spec
    assert spec2.hash() == spec.hash()


@given(valid_invocations)
def test_host_cache_dir_wins_over_host_cache(inv):
    assert parse(inv.argv, inv.host).host_cache == expected_cache(inv)


@given(valid_invocations)
def test_dev_is_never_root(inv):
    opts, spec = opened(inv.argv, inv.host)
    assert opts.uid != 0
    assert opts.gid != 0
    env = dict(spec.env)
    assert (env["DEVSHELL_DEV_UID"], env["DEVSHELL_DEV_GID"]) == (str(opts.uid), str(opts.gid))


@given(valid_invocations)
def test_explicit_ids_win_and_host_ids_are_kept_unless_0(inv):
    opts = parse(inv.argv, inv.host)
    assert opts.uid == (inv.uid or inv.host.uid or 1000)
    assert opts.gid == (inv.gid or inv.host.gid or 1000)


@given(valid_invocations)
def test_to_argv_round_trips_through_parse(inv):
    opts = parse(inv.argv, inv.host)
    assume(not opts.list)  # a harness never re-enters with --list, and to_argv does not emit it
    assert parse(to_argv(opts), inv.host) == opts._replace(notes=())  # notes: provenance only


# --- the container ---------------------------------------------------------------------------


@given(valid_invocations, st.booleans())
def test_mounts_are_only_volume_patches_and_cache(inv, checkout):
    """Writable: the volume, /patches, /cache (and its ai/memory, when ai/ is read-only).
    Besides those, only read-only binds of a part of the patches dir or host cache over the
    same part inside (.git, the AI config)."""
    opts, spec = opened(inv.argv, inv.host, checkout=checkout)
    cell = CELLS[opts.cell]
    allowed = {("volume", spec.volume, cell.workspace), ("bind", opts.patches_out, PATCHES),
               ("bind", opts.host_cache, CACHE),
               ("bind", f"{opts.host_cache}/ai/memory", f"{CACHE}/ai/memory")}
    assert {(m.kind, m.source, m.target) for m in spec.mounts if not m.read_only} <= allowed
    for m in spec.mounts:
        if m.read_only:
            host_root, inside = ((opts.patches_out, PATCHES) if m.target.startswith(PATCHES + "/")
                                 else (opts.host_cache, CACHE))
            assert host_root is not None
            assert m.source.startswith(host_root.rstrip("/") + "/")
            assert m.source[len(host_root.rstrip("/")):] == m.target[len(inside):]
    assert len({m.target for m in spec.mounts}) == len(spec.mounts)


@given(valid_invocations, st.booleans())
def test_checkout_git_is_bound_read_only_iff_patches_is_a_checkout(inv, checkout):
    _, spec = opened(inv.argv, inv.host, checkout=checkout)
    git = [m for m in spec.mounts if m.target == f"{PATCHES}/.git"]
    assert [m.read_only for m in git] == ([True] if checkout else [])


@given(valid_invocations)
def test_cache_mount_iff_host_cache_asked(inv):
    _, spec = opened(inv.argv, inv.host)
    asked = inv.cache_switch or inv.cache_dir is not None
    assert (CACHE in {m.target for m in spec.mounts}) == asked


@given(valid_invocations)
def test_no_other_host_path_reaches_the_container(inv):
    """Only the patches dir and the host cache may cross: not home, cwd, script or cells dirs
    (unless they are, or lie inside, one of those two)."""
    opts, spec = opened(inv.argv, inv.host)
    host = inv.host
    allowed = sorted((s for p in (opts.patches_out, opts.host_cache) if p for s in spellings(p)),
                     key=len, reverse=True)
    roots = [posixpath.normpath(host.home)] + ([host.cwd] if host.cwd != "/" else [])
    candidates = {*roots, *opts.cells_dirs, *([opts.script] if opts.script else [])}
    # Only paths under home or cwd are distinctive: '/srv' or '/b' could be container paths.
    forbidden = {s for p in candidates if any(p == r or p.startswith(r + "/") for r in roots)
                 for s in spellings(p)}
    ex = session(spec, opts, script="true", tty=False)
    for token in [*spec.run_argv(), *(v for _, v in spec.env), *ex.cli()]:
        for a in allowed:
            token = token.replace(a, "")
        assert not [p for p in forbidden if p in token], token


@given(valid_invocations)
def test_platform_is_always_pinned(inv):
    opts, spec = opened(inv.argv, inv.host)
    argv = spec.run_argv()
    assert flag_values(argv, "--platform") == [CELLS[opts.cell].platform]
    assert spec.sdk_kwargs()["platform"] == CELLS[opts.cell].platform
    assert spec.platform in cells.PLATFORMS


@given(valid_invocations)
def test_env_contract_is_complete_and_agrees_with_mounts(inv):
    opts, spec = opened(inv.argv, inv.host)
    env = dict(spec.env)
    mounts = {m.target: m for m in spec.mounts}
    assert env.keys() >= CONTRACT
    assert env["HOME"] == env["DEVSHELL_DEV_HOME"]
    patches = mounts[env["DEVSHELL_PATCHES_MOUNT"]]
    assert (patches.kind, patches.source) == ("bind", opts.patches_out)
    workspace = mounts[env["DEVSHELL_WORKSPACE"]]
    assert (workspace.kind, workspace.source) == ("volume", spec.volume)
    for key in ("DEVSHELL_SRC", "DEVSHELL_BUILD", "DEVSHELL_CCACHE"):
        assert env[key].startswith(env["DEVSHELL_WORKSPACE"] + "/")
    assert ("DEVSHELL_CACHE_MOUNT" in env) == (CACHE in mounts)
    if CACHE in mounts:
        assert mounts[env["DEVSHELL_CACHE_MOUNT"]].source == opts.host_cache
    assert env["DEVSHELL_AI_REPO"] == ai_repo(patches.source)
    assert env["DEVSHELL_AI_REPO_ENCODED"] == ai_key(patches.source)
    assert env["DEVSHELL_CELL"] == spec.cell == opts.cell


@given(valid_invocations)
def test_run_argv_and_sdk_kwargs_agree(inv):
    _, spec = opened(inv.argv, inv.host)
    argv, sdk = spec.run_argv(), spec.sdk_kwargs()
    assert [mount_from_cli(v) for v in flag_values(argv, "--mount")] == sdk["mounts"]
    assert dict(v.partition("=")[::2] for v in flag_values(argv, "--env")) == sdk["environment"]
    assert dict(v.partition("=")[::2] for v in flag_values(argv, "--label")) == sdk["labels"]
    assert flag_values(argv, "--name") == [sdk["name"]]
    assert argv[-len(sdk["command"]) - 1:] == [sdk["image"], *sdk["command"]]


@given(valid_invocations, st.none() | st.text(max_size=20), st.booleans(), st.data())
def test_as_root_changes_only_the_session_exec(inv, script, tty, data):
    groups = [g for g in inv.groups if g != ("--as-root",)]
    rooted = list(groups)
    rooted.insert(data.draw(st.integers(0, len(groups))), ("--as-root",))
    opts, spec = opened(flat(groups), inv.host)
    ropts, rspec = opened(flat(rooted), inv.host)
    assert rspec == spec
    assert rspec.hash() == spec.hash()
    plain, root = session(spec, opts, script=script, tty=tty), session(rspec, ropts, script=script,
                                                                          tty=tty)
    assert "--as-root" not in plain.argv
    as_list = list(root.argv)
    as_list.remove("--as-root")
    assert tuple(as_list) == plain.argv
    assert (root.container, root.workdir, root.tty) == (plain.container, plain.workdir, plain.tty)


@given(valid_invocations, st.none() | st.text(max_size=20), st.booleans())
def test_session_carries_the_script_and_a_tty_only_without_one(inv, script, tty):
    opts, spec = opened(inv.argv, inv.host)
    ex = session(spec, opts, script=script, tty=tty)
    assert ("--script" in ex.argv) == (script is not None)
    if script is not None:
        assert ex.argv[ex.argv.index("--script") + 1] == script
    assert ex.tty == (tty and script is None)
    assert ex.container == spec.name == (
        f"devshell-{opts.cell}" + (f"-{opts.instance}" if opts.instance else ""))


# --- ai_key / ai_repo ------------------------------------------------------------------------


def test_ai_key_collides_for_dash_vs_slash():
    """Not a property: the encoding is Claude's, kept for compatibility, and it is not injective.
    Two patches dirs can share one AI key, so nothing may rely on it to tell projects apart."""
    assert ai_key("/a-b") == ai_key("/a/b") == "-a-b"


@given(st.text())
def test_ai_key_never_contains_path_separators(path):
    key = ai_key(path)
    assert not set(key) & {"/", "\\", ":"}
    assert len(key) == len(path)


@given(st.text())
def test_ai_repo_is_one_nonempty_component(path):
    repo = ai_repo(path)
    assert repo
    assert not set(repo) & {"/", "\\"}
