"""Promises of parse -> plan that must hold for every flag combination (hypothesis, no Docker).

An invocation is generated as groups (the cell, or one flag with its value), so shuffling the
groups is a legal reordering of argv. `refusal()` is the oracle for inputs that are invalid by
design; every other invocation must parse.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import assume, example, given
from hypothesis import strategies as st
from test_spec import read_mount  # the strict --mount reader, one copy for both

from devshell import cells, egress, seccomp
from devshell.errors import DevshellError
from devshell.options import HostFacts, Options, parse, to_argv
from devshell.spec import (
    CACHE,
    CHECKOUT,
    HOME_IN_VOLUME_ENV,
    LOCKED_TMPFS,
    MAX_KEY_BYTES,
    PATCHES,
    PROFILE_ENV,
    ContainerSpec,
    Mount,
    ai_key,
    ai_repo,
    differences,
    host_binds,
    memory_dir,
    plan,
    session,
)

INIT = "#!/bin/sh\n"
ARM_CELL = cells.parse({"platform": "linux/arm64", "image": {"ref": "example/arm:1"},
                        "workspace": "/workspaces/arm", "setup": "true\n"},
                       source="arm.yaml", stem="arm")



def shipped(name: str) -> cells.Cell:
    """Parsed, not loaded: loading may write a cache, and import time has no tmp_path."""
    path = os.path.join(cells.shipped_cells_dir(), f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        return cells.parse(yaml.safe_load(f), source=path, stem=name)


CELLS = {c.name: c for c in [*map(shipped, ("bookworm", "runner-1001", "ubuntu-24.04")), ARM_CELL]}
DEFAULT_HOST_CACHE = "~/.cache/devshell/host-cache"
CONTRACT = {"HOME", "DEVSHELL_CELL", "DEVSHELL_DEV_UID", "DEVSHELL_DEV_GID", "DEVSHELL_DEV_HOME",
            "DEVSHELL_PATCHES_MOUNT", "DEVSHELL_CHECKOUT_MOUNT", "DEVSHELL_WORKSPACE",
            "DEVSHELL_SRC", "DEVSHELL_BUILD", "DEVSHELL_CCACHE", "DEVSHELL_AI_REPO",
            "DEVSHELL_AI_REPO_ENCODED"}
MAX_ID = 2**31 - 2

# Path characters: spaces, unicode, CSV and JSON specials, Windows-ish ':' and '\', C0 controls
# and DEL (refused in a bound dir), and U+0080 (a C1 control, which is kept).
CHARS = "abzXZ09 ._-~é中🙂,\"\\:=/\n\t\x7f\x80"
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
VALUED = (("--host-cache-dir", paths), ("--patches-out", paths), ("--checkout", paths),
          ("--uid", explicit_ids), ("--gid", explicit_ids), ("--image", images),
          ("--instance", instances), ("--cells-dir", paths), ("--cells-dir", paths),
          ("--script", paths))
SWITCHES = ("--host-cache", "--as-root", "--json", "--ai-config-rw")
bitmasks = st.integers(0, 2 ** (len(VALUED) + len(SWITCHES)) - 1)
seeds = st.integers(0, 2**32 - 1)
profile_flags = st.sampled_from([None, *cells.PROFILES])
network_flags = st.sampled_from([None, *cells.NETWORK_MODES])
runtimes = st.sampled_from([None, "runsc", "runc", "io.containerd.runsc.v1", "kata_1"])
pids_limits = st.integers(cells.MIN_PIDS_LIMIT, 1 << 22)
memory_limits = st.integers(cells.MIN_MEMORY_LIMIT, 1 << 40)
# What differs per checkout: one baked image serves every checkout, so none of these is baked in.
PER_CHECKOUT_ENV = {"DEVSHELL_AI_REPO", "DEVSHELL_AI_REPO_ENCODED", "DEVSHELL_BIND_IDS",
                    "DEVSHELL_CACHE_MOUNT", "DEVSHELL_AI_CONFIG"}
BASE_ID = "sha256:" + "1" * 64


@st.composite
def hosts(draw: st.DrawFn) -> HostFacts:
    """State dir: the default (~/.local/state/devshell), elsewhere, spelled oddly, or inside cwd
    (then the default drop dir lies inside the default checkout)."""
    home, cwd = draw(st.sampled_from(HOST_PLACES))
    state = draw(st.sampled_from([None, None, "/var/st é/devshell", f"{home}//st/../st2/devshell",
                                  f"{cwd.rstrip('/')}/.st/devshell"]))
    return HostFacts(cwd=cwd, home=home, uid=draw(host_ids), gid=draw(host_ids), state=state)


@dataclass(frozen=True)
class Invocation:
    host: HostFacts
    groups: tuple[tuple[str, ...], ...]
    cell: str | None
    checkout: str | None
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
                      values.get("--checkout"), values.get("--patches-out"), "--host-cache" in switches,
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


# A host cache of / (refused for entering, planned for --rm): random runs found it three times.
ROOT_CACHE_FROM_HOME = Invocation(HostFacts(cwd="/home/alice", home="/home/alice", uid=0, gid=0),
                                  (("--rm",), ("--host-cache-dir", "../..")), None, None, None, False,
                                  "../..", None, None)


def below(root: str, rel: str) -> str:
    """root's entry rel (which starts with '/'), spelt as one path: below / it is rel itself."""
    return root.rstrip("/") + rel


def within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def has_control(path: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)


def expected_cache(inv: Invocation) -> str | None:
    if inv.cache_dir is not None:
        return resolve(inv.cache_dir, inv.host)
    return resolve(DEFAULT_HOST_CACHE, inv.host) if inv.cache_switch else None


def expected_checkout(inv: Invocation) -> str:
    return resolve(inv.checkout or inv.host.cwd, inv.host)


def expected_patches(inv: Invocation) -> str:
    """--patches-out, else devshell's drop dir: the checkout's path as one name in the state dir."""
    if inv.patches is not None:
        return resolve(inv.patches, inv.host)
    state = inv.host.state or f"{inv.host.home}/.local/state/devshell"
    checkout = expected_checkout(inv)
    key = "".join("-" if c in "/\\:" else c for c in checkout)
    digest = hashlib.sha256(checkout.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return resolve(f"{state}/patches/{key}.{digest}", inv.host)


def refusal(inv: Invocation) -> str | None:
    """Why this invocation is invalid by design, or None if it must parse."""
    if inv.uid == 0 or inv.gid == 0:
        return "uid/gid 0"
    if not enters(inv):
        return None  # nothing is bound: the checkout, patches dir and cache are not checked
    home = resolve(inv.host.home, inv.host)
    cache = expected_cache(inv)
    binds = [expected_checkout(inv), expected_patches(inv), *([cache] if cache is not None else [])]
    if any(has_control(path) for path in binds):
        # A bound dir's path reaches init in the environment, and the checkout's names the
        # memory mount point.
        return "a bound dir holds a control character"
    if any(path == "/" or within(home, path) for path in binds):
        return "a bound dir is / or holds home"
    if any(within(a, b) or within(b, a) for a, b in itertools.combinations(binds, 2)):
        return "two bound dirs overlap"
    return None


def is_valid(inv: Invocation) -> bool:
    return refusal(inv) is None


def enters(inv: Invocation) -> bool:
    """Opens a shell (or runs a script): only then is anything bound, so only then checked."""
    return not {"--rm", "--verify", "--list"} & set(inv.argv)


valid_invocations = invocations().filter(is_valid)


def opened(argv: list[str], host: HostFacts, *, ids: bool = False) -> tuple[Options, ContainerSpec]:
    """parse -> plan; ids stands in for the identities prepare_host_dirs reads off the host
    (one per host_binds entry, by role, in its order)."""
    opts = parse(argv, host)
    if ids:
        opts = opts._replace(bind_ids=tuple((b.role, f"{n + 40}:{n * 7 + 2}")
                                            for n, b in enumerate(host_binds(opts))))
    return opts, plan(opts, CELLS[opts.cell], init=INIT)


def expected_memory(opts: Options) -> str:
    """This checkout's memory dir below the host cache, as init finds it inside:
    $CACHE/ai/memory/$DEVSHELL_AI_REPO/$DEVSHELL_AI_REPO_ENCODED."""
    return f"/ai/memory/{ai_repo(opts.checkout)}/{ai_key(opts.checkout)}"


def init_bind_target(role: str, env: dict[str, str]) -> str:
    """init.sh's bind_target: where a recorded role must be mounted."""
    cache = env.get("DEVSHELL_CACHE_MOUNT", "")
    return {"checkout": env["DEVSHELL_CHECKOUT_MOUNT"], "patches": env["DEVSHELL_PATCHES_MOUNT"],
            "ai": f"{cache}/ai", "memories": f"{cache}/ai/memory",
            "memory": (f"{cache}/ai/memory/{env['DEVSHELL_AI_REPO']}/"
                       f"{env['DEVSHELL_AI_REPO_ENCODED']}")}.get(role, f"/nonexistent/{role}")


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == flag]


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
    "checkout ~": lambda host: [("--checkout", "~/")],
    "checkout /": lambda host: [("--checkout=/",)],
    "checkout climbs to home": lambda host: [("--checkout", "~/a/..")],
    "cache /": lambda host: [("--host-cache-dir", "/")],
    "cache home": lambda host: [("--host-cache-dir", "~/")],
    "cache = patches": lambda host: [("--patches-out", "/p x"), ("--host-cache-dir", "/p x/")],
    "cache holds patches": lambda host: [("--patches-out", "/p x/d"), ("--host-cache-dir", "/p x")],
    "patches = checkout": lambda host: [("--checkout", "/p x"), ("--patches-out", "/p x/")],
    "patches in checkout": lambda host: [("--checkout", "/p x"), ("--patches-out", "/p x/d")],
    "checkout in patches": lambda host: [("--checkout", "/p x/d"), ("--patches-out", "/p x")],
    "cache in checkout": lambda host: [("--checkout", "/p x"), ("--host-cache-dir", "/p x/c")],
    "checkout holds cache": lambda host: [("--checkout", "/p"), ("--host-cache-dir", "/p/.c")],
    "checkout with a line break": lambda host: [("--checkout", "/p\nx")],
    "patches with a tab": lambda host: [("--patches-out=/o/\t",)],
    "cache with DEL": lambda host: [("--host-cache-dir", "/c\x7f")],
    "cache with ESC": lambda host: [("--host-cache-dir", "/c/\x1b[0m")],
    # No --patches-out: the default drop dir, which this checkout holds.
    "checkout holds its drop dir": lambda host: [("--checkout", host.state or "~/.local/state")],
}
# A poison stands for the default of these flags too: any given value would override it.
DEFAULTED = {"checkout holds its drop dir": {"--patches-out"}}


@given(valid_invocations, st.sampled_from(sorted(POISONS)), st.data())
def test_invalid_by_design_inputs_raise_devshell_error(inv, poison, data):
    bad = POISONS[poison](inv.host)
    flags = ({g[0].split("=")[0] for g in bad} | DEFAULTED.get(poison, set())
             | {"--rm", "--verify", "--list"})  # poisons bind
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


@given(valid_invocations)
def test_checkout_and_patches_dir_resolve_as_documented(inv):
    """The checkout is --checkout or cwd; /patches is --patches-out or the checkout's drop dir."""
    opts = parse(inv.argv, inv.host)
    if enters(inv):  # --rm, --verify and --list leave them unchecked
        assert opts.checkout == expected_checkout(inv)
        assert opts.patches_out == expected_patches(inv)


@given(invocations())
def test_parsed_binds_never_overlap_nor_reach_root_or_home(inv):
    """Whatever parses for entering (valid by the oracle or not): the patches dir never overlaps
    the checkout or the host cache, nor those two each other, and none is / or holds home."""
    assume(enters(inv))
    try:
        opts = parse(inv.argv, inv.host)
    except DevshellError:
        return
    home = resolve(inv.host.home, inv.host)
    binds = [opts.checkout, opts.patches_out, *([opts.host_cache] if opts.host_cache else [])]
    for path in binds:
        assert path != "/" and not within(home, path)
        assert not has_control(path), path
    for a, b in itertools.combinations(binds, 2):
        assert not within(a, b) and not within(b, a), (a, b)


# --- the container ---------------------------------------------------------------------------


@example(Invocation(HostFacts(cwd="/home/u", home="/home/u", uid=1000, gid=1000),
                    (("--rm",), ("--host-cache-dir", "../..")), None, None, None, False, "../..", None, None),
         False)  # a random run found it: a host cache of / was bound as //ai
@given(valid_invocations, st.booleans())
def test_mounts_are_only_volume_patches_checkout_and_cache(inv, ids):
    """Exactly: the volume; /patches writable; /checkout read-only; with a host cache,
    /cache/ai (read-only unless --ai-config-rw), /cache/ai/memory (read-only) and this
    checkout's memory below it (writable), each over the same part of the host cache. Nothing
    else, and no target twice."""
    opts, spec = opened(inv.argv, inv.host, ids=ids)
    cell = CELLS[opts.cell]
    expected = {Mount("volume", spec.volume, cell.workspace), Mount("bind", opts.patches_out, PATCHES),
                Mount("bind", opts.checkout, CHECKOUT, read_only=True)}
    if opts.host_cache is not None:
        memory = expected_memory(opts)
        expected |= {Mount("bind", below(opts.host_cache, "/ai"), f"{CACHE}/ai",
                           read_only=opts.ai_config_ro),
                     Mount("bind", below(opts.host_cache, "/ai/memory"), f"{CACHE}/ai/memory",
                           read_only=True),
                     Mount("bind", below(opts.host_cache, memory), CACHE + memory)}
    assert set(spec.mounts) == expected
    assert len({m.target for m in spec.mounts}) == len(spec.mounts)
    # The general rule: a bind below /cache is the same part of the host cache.
    for m in spec.mounts:
        if m.kind == "bind" and m.target not in (PATCHES, CHECKOUT):
            assert m.target.startswith(CACHE + "/") and opts.host_cache is not None
            assert m.source == below(opts.host_cache, m.target[len(CACHE):])
    for m in spec.mounts:  # every path as the engine and a reader of `docker inspect` expect it
        assert m.source == posixpath.normpath(m.source) or m.kind == "volume", m.source


@given(valid_invocations, st.booleans())
def test_plan_binds_exactly_host_binds(inv, ids):
    """host_binds is the one list of host dirs: what the launcher checks, creates and records
    is, in order, what plan binds; the workspace volume is the only other mount."""
    opts, spec = opened(inv.argv, inv.host, ids=ids)
    binds = host_binds(opts)
    assert [m for m in spec.mounts if m.kind == "bind"] == [
        Mount("bind", b.source, b.target, b.read_only) for b in binds]
    assert [m.kind for m in spec.mounts if m.kind != "bind"] == ["volume"]
    assert [b.role for b in binds] == ["patches", "checkout",
                                       *(["ai", "memories", "memory"] if opts.host_cache is not None
                                         else [])]


@example(Invocation(HostFacts(cwd="/", home="/home/alice", uid=0, gid=0),
                    (("--rm",), ("--host-cache-dir", ".")), None, None, None, False, ".", None, None))
@given(valid_invocations)  # above: a random run found the oracle's own //ai
def test_the_host_cache_itself_is_never_bound(inv):
    """What is bound read-write, root inside can chown and chmod: never the host cache, only ai/
    and below it. Nothing is mounted at /cache itself."""
    opts, spec = opened(inv.argv, inv.host)
    assert CACHE not in {m.target for m in spec.mounts}
    if opts.host_cache is None:
        return
    for m in spec.mounts:
        if m.target.startswith(CACHE + "/"):
            assert within(m.target, f"{CACHE}/ai")
            assert within(m.source, below(opts.host_cache, "/ai"))
    if enters(inv):  # --rm and --verify check no paths: the checkout may be the cache there
        assert opts.host_cache not in {m.source for m in spec.mounts}


@given(valid_invocations, st.booleans())
def test_checkout_is_always_read_only(inv, ids):
    """The checkout is one read-only mount, nothing is bound inside it, and (when entering: only
    then is anything bound) no writable mount reaches it or holds it on the host: the agent can
    read and clone it, never write it."""
    opts, spec = opened(inv.argv, inv.host, ids=ids)
    assert [m for m in spec.mounts if m.target == CHECKOUT] == [
        Mount("bind", opts.checkout, CHECKOUT, read_only=True)]
    assert not [m for m in spec.mounts if m.target.startswith(CHECKOUT + "/")]
    if not enters(inv):
        return
    for m in spec.mounts:
        if m.kind == "bind" and not m.read_only:
            assert not within(m.source, opts.checkout) and not within(opts.checkout, m.source), m


@example(ROOT_CACHE_FROM_HOME)  # a random run found it: the oracle's own //ai
@given(valid_invocations)
def test_ai_memory_is_its_own_writable_mount_whenever_a_host_cache_is_bound(inv):
    """In both modes: link(2) does not cross mounts, so no hard link joins memory and config.
    The memory leaf is writable, strictly inside /cache/ai, exactly this checkout's dir (two
    plain names below memory/, no '.' or '..' to lead it elsewhere), and where init looks; the
    rest of memory/ is a read-only mount of its own. Nothing else below /cache is writable."""
    opts, spec = opened(inv.argv, inv.host)
    env, mounts = dict(spec.env), {m.target: m for m in spec.mounts}
    leaves = [m for m in spec.mounts if m.target.startswith(f"{CACHE}/ai/memory/")]
    if opts.host_cache is None:
        assert not leaves and f"{CACHE}/ai" not in mounts and "DEVSHELL_AI_CONFIG" not in env
        assert f"{CACHE}/ai/memory" not in mounts
        return
    assert len(leaves) == 1
    memory = leaves[0]
    assert mounts[f"{CACHE}/ai/memory"] == Mount("bind", below(opts.host_cache, "/ai/memory"),
                                                 f"{CACHE}/ai/memory", read_only=True)
    writable = [m for m in spec.mounts if m.target.startswith(CACHE + "/") and not m.read_only]
    assert writable in ([memory], [mounts[f"{CACHE}/ai"], memory])
    assert (len(writable) == 2) == ("--ai-config-rw" in inv.argv)
    assert memory == Mount("bind", below(opts.host_cache, expected_memory(opts)),
                           CACHE + expected_memory(opts))
    assert not memory.read_only
    assert memory.target.startswith(f"{CACHE}/ai/") and memory.target != f"{CACHE}/ai"
    assert posixpath.normpath(memory.target) == memory.target
    parts = memory.target.split("/")
    assert parts[:4] == ["", "cache", "ai", "memory"] and len(parts) == 6
    assert not {"", ".", ".."} & set(parts[4:])
    assert memory.target == init_bind_target("memory", env)
    assert mounts[f"{CACHE}/ai"].read_only == opts.ai_config_ro == ("--ai-config-rw" not in inv.argv)
    assert env["DEVSHELL_AI_CONFIG"] == ("ro" if opts.ai_config_ro else "rw")


@given(valid_invocations)
def test_patches_dir_never_overlaps_the_checkout_or_the_cache(inv):
    assume(enters(inv))
    opts, spec = opened(inv.argv, inv.host)
    patches = [m.source for m in spec.mounts if m.target == PATCHES]
    assert patches == [opts.patches_out]
    for m in spec.mounts:
        if m.kind == "bind" and m.target != PATCHES:
            assert not within(m.source, opts.patches_out) and not within(opts.patches_out, m.source)
    if opts.host_cache is not None:
        assert not within(opts.patches_out, opts.host_cache)
        assert not within(opts.host_cache, opts.patches_out)


@given(valid_invocations)
def test_containment_is_always_set(inv):
    """MKNOD and SETFCAP dropped and devshell's seccomp profile set, in every rendering, for
    every invocation (--as-root included: it only changes the session)."""
    _, spec = opened(inv.argv, inv.host)
    assert {"MKNOD", "SETFCAP"} <= set(spec.cap_drop)
    assert spec.seccomp == seccomp.profile() != ""
    argv, sdk = spec.run_argv(), spec.sdk_kwargs()
    assert {"MKNOD", "SETFCAP"} <= set(flag_values(argv, "--cap-drop"))
    assert flag_values(argv, "--security-opt") == [f"seccomp={spec.seccomp_file()}"]
    assert {"MKNOD", "SETFCAP"} <= set(sdk["cap_drop"])
    assert sdk["security_opt"] == [f"seccomp={spec.seccomp}"]
    host_config = spec.api_create()[1]["HostConfig"]
    assert {"MKNOD", "SETFCAP"} <= set(host_config["CapDrop"])
    assert host_config["SecurityOpt"] == [f"seccomp={spec.seccomp}"]
    identity = spec.identity()
    assert identity["seccomp"] == hashlib.sha256(spec.seccomp.encode()).hexdigest()[:16]
    assert {"MKNOD", "SETFCAP"} <= set(identity["cap_drop"])


@given(valid_invocations, profile_flags, st.sampled_from(cells.PROFILES), runtimes, pids_limits,
       memory_limits, st.data())
def test_profile_runtime_and_limits_reach_every_rendering(inv, flag, cell_profile, runtime, pids, memory,
                                                          data):
    """The profile in force is --profile's, else the cell's, and never locked with --as-root.
    argv, SDK kwargs and API body agree: locked is a read-only root, tmpfs and no-new-privileges,
    standard none of them; the limits are the cell's, swap is memory; the runtime is there only
    when given. The bake env holds nothing per checkout and only what the container gets."""
    added = ([("--profile", flag)] if flag else []) + ([(f"--runtime={runtime}",)] if runtime else [])
    groups = list(inv.groups)
    for group in added:
        groups.insert(data.draw(st.integers(0, len(groups))), group)
    cell = CELLS[inv.cell or cells.DEFAULT_CELL]._replace(profile=cell_profile, pids_limit=pids,
                                                          memory_limit=memory)
    profile = flag or cell_profile
    locked = profile == "locked"
    if locked and ("--as-root",) in inv.groups:
        with pytest.raises(DevshellError, match="--as-root"):
            plan(parse(flat(groups), inv.host), cell, init=INIT)
        return
    opts = parse(flat(groups), inv.host)
    spec = plan(opts, cell, init=INIT)
    argv, sdk, host_config = spec.run_argv(), spec.sdk_kwargs(), spec.api_create()[1]["HostConfig"]
    env = dict(spec.env)
    assert spec.profile == env[PROFILE_ENV] == profile
    assert (HOME_IN_VOLUME_ENV in env) == locked
    assert (argv.count("--read-only"), sdk["read_only"], host_config["ReadonlyRootfs"]) == (
        int(locked), locked, locked)
    tmpfs = dict(LOCKED_TMPFS) if locked else {}
    assert dict(v.split(":", 1) for v in flag_values(argv, "--tmpfs")) == sdk["tmpfs"] == \
        host_config["Tmpfs"] == tmpfs
    no_new_privileges = ["no-new-privileges"] if locked else []
    # After the seccomp profile, which the CLI names by file and the others carry inline.
    assert flag_values(argv, "--security-opt")[1:] == sdk["security_opt"][1:] == \
        host_config["SecurityOpt"][1:] == no_new_privileges
    limits = [a for a in argv if a.startswith(("--pids-limit", "--memory"))]
    assert limits == [f"--pids-limit={pids}", f"--memory={memory}", f"--memory-swap={memory}"]
    assert (sdk["pids_limit"], sdk["mem_limit"], sdk["memswap_limit"]) == (pids, memory, memory)
    assert (host_config["PidsLimit"], host_config["Memory"], host_config["MemorySwap"]) == (
        pids, memory, memory)
    assert [a for a in argv if a.startswith("--runtime")] == ([f"--runtime={runtime}"] if runtime else [])
    assert sdk.get("runtime") == host_config.get("Runtime") == (runtime or None)
    baked = spec.bake_env()
    assert not PER_CHECKOUT_ENV & set(baked)
    assert baked.items() <= env.items()


@given(valid_invocations)
def test_the_baked_image_is_one_for_every_checkout(inv):
    """Baked once per base image, init, cell and dev's ids: what an invocation says about the
    checkout, the patches dir, the host cache, the instance or the bound dirs changes nothing."""
    opts, _ = opened(inv.argv, inv.host, ids=True)
    locked = opts._replace(profile="locked", as_root=False)
    bare = Options(cell=opts.cell, uid=opts.uid, gid=opts.gid, checkout="/c", patches_out="/p",
                   profile="locked")
    cell = CELLS[opts.cell]
    baked = plan(locked, cell, init=INIT).baked_image(BASE_ID)
    assert baked == plan(bare, cell, init=INIT).baked_image(BASE_ID)


@given(valid_invocations)
def test_bind_ids_name_exactly_the_bound_host_dirs_and_change_nothing_else(inv):
    """Recorded by role; init's map from role to mount target reaches every bind exactly once."""
    _, spec = opened(inv.argv, inv.host)
    iopts, ispec = opened(inv.argv, inv.host, ids=True)
    env = dict(ispec.env)
    assert "DEVSHELL_BIND_IDS" not in dict(spec.env)
    pairs = [item.split("=", 1) for item in env["DEVSHELL_BIND_IDS"].split(" ")]
    assert [tuple(p) for p in pairs] == list(iopts.bind_ids)
    targets = [init_bind_target(role, env) for role, _ in pairs]
    assert sorted(targets) == sorted(m.target for m in ispec.mounts if m.kind == "bind")
    assert ispec.mounts == spec.mounts
    assert {k: v for k, v in ispec.env if k != "DEVSHELL_BIND_IDS"} == dict(spec.env)


@given(valid_invocations)
def test_cache_mounts_iff_host_cache_asked(inv):
    _, spec = opened(inv.argv, inv.host)
    asked = inv.cache_switch or inv.cache_dir is not None
    targets = {m.target for m in spec.mounts}
    assert any(t.startswith(CACHE + "/") for t in targets) == asked
    assert CACHE not in targets


@given(valid_invocations)
def test_no_other_host_path_reaches_the_container(inv):
    """Only the checkout, the patches dir and the host cache may cross: not home, cwd, script or
    cells dirs (unless they are, or lie inside, one of those three). The checkout's memory dir
    is named after the checkout (memory/<basename>/<path as one name>): that crosses too."""
    opts, spec = opened(inv.argv, inv.host)
    host = inv.host
    allowed = sorted((s for p in (opts.checkout, opts.patches_out, opts.host_cache,
                                  opts.host_cache and memory_dir(opts.checkout)) if p
                      for s in spellings(p)), key=len, reverse=True)
    cwd = resolve(host.cwd, host)
    roots = [resolve(host.home, host)] + ([cwd] if cwd != "/" else [])
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


@example(ROOT_CACHE_FROM_HOME)  # a random run found it: the oracle's own //ai
@given(valid_invocations)
def test_env_contract_is_complete_and_agrees_with_mounts(inv):
    opts, spec = opened(inv.argv, inv.host)
    env = dict(spec.env)
    mounts = {m.target: m for m in spec.mounts}
    assert env.keys() >= CONTRACT
    assert env["HOME"] == env["DEVSHELL_DEV_HOME"]
    patches = mounts[env["DEVSHELL_PATCHES_MOUNT"]]
    assert (patches.kind, patches.source, patches.read_only) == ("bind", opts.patches_out, False)
    checkout = mounts[env["DEVSHELL_CHECKOUT_MOUNT"]]
    assert (checkout.kind, checkout.source, checkout.read_only) == ("bind", opts.checkout, True)
    workspace = mounts[env["DEVSHELL_WORKSPACE"]]
    assert (workspace.kind, workspace.source) == ("volume", spec.volume)
    for key in ("DEVSHELL_SRC", "DEVSHELL_BUILD", "DEVSHELL_CCACHE"):
        assert env[key].startswith(env["DEVSHELL_WORKSPACE"] + "/")
    cached = f"{CACHE}/ai" in mounts
    assert ("DEVSHELL_CACHE_MOUNT" in env) == cached == (opts.host_cache is not None)
    if cached:
        assert env["DEVSHELL_CACHE_MOUNT"] == CACHE
        assert mounts[f"{env['DEVSHELL_CACHE_MOUNT']}/ai"].source == below(opts.host_cache, "/ai")
        assert init_bind_target("memory", env) in mounts
    assert ("DEVSHELL_AI_CONFIG" in env) == cached
    assert env["DEVSHELL_AI_REPO"] == ai_repo(checkout.source)
    assert env["DEVSHELL_AI_REPO_ENCODED"] == ai_key(checkout.source)
    assert env["DEVSHELL_CELL"] == spec.cell == opts.cell


@given(valid_invocations)
def test_run_argv_and_sdk_kwargs_agree(inv):
    _, spec = opened(inv.argv, inv.host)
    argv, sdk = spec.run_argv(), spec.sdk_kwargs()
    assert [read_mount(v) for v in flag_values(argv, "--mount")] == sdk["mounts"]
    # Every bind is non-recursive, in both renderings and in what the engine is sent.
    for rendered in (sdk["mounts"], spec.api_create()[1]["HostConfig"]["Mounts"]):
        kinds = [(m["Type"], m.get("BindOptions")) for m in rendered]
        assert kinds == [(m.kind, {"NonRecursive": True} if m.kind == "bind" else None)
                         for m in spec.mounts]
    assert dict(v.partition("=")[::2] for v in flag_values(argv, "--env")) == sdk["environment"]
    assert dict(v.partition("=")[::2] for v in flag_values(argv, "--label")) == sdk["labels"]
    assert flag_values(argv, "--name") == [sdk["name"]]
    assert flag_values(argv, "--cap-drop") == sdk["cap_drop"]
    # The CLI reads the profile from a file named by its content; the SDK carries the content.
    assert [v.replace(spec.seccomp_file(), spec.seccomp) for v in flag_values(argv, "--security-opt")] \
        == sdk["security_opt"]
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
    Two checkouts can share one AI key (and one default drop dir), so nothing may rely on it to
    tell projects apart."""
    assert ai_key("/a-b") == ai_key("/a/b") == "-a-b"


@example("é" * 101)  # a random run found it: 101 characters, 202 bytes, so cut with a digest
@given(st.text())
def test_ai_key_never_contains_path_separators(path):
    """One file name: no separator, and the path character for character while it fits;
    longer (in UTF-8 bytes: multi-byte characters reach the cap sooner), its head and a digest."""
    key = ai_key(path)
    assert not set(key) & {"/", "\\", ":"}
    if len(path.encode("utf-8", "surrogateescape")) <= MAX_KEY_BYTES:
        assert len(key) == len(path)
    else:
        assert len(key.encode("utf-8", "surrogateescape")) <= MAX_KEY_BYTES and key[-9] == "."


@given(st.text())
def test_ai_repo_is_one_nonempty_component(path):
    """One name below memory/, never one that leads elsewhere."""
    repo = ai_repo(path)
    assert repo
    assert repo not in (".", "..")
    assert not set(repo) & {"/", "\\"}


@given(valid_invocations, network_flags, st.sampled_from(cells.NETWORK_MODES), st.data())
def test_the_network_mode_reaches_every_rendering(inv, flag, cell_network, data):
    """The network in force is --network's, else the cell's; none reaches the engine as its
    "none" network in argv, SDK kwargs and API body alike, allow as the devshell's own egress
    network (with DNS to nowhere, IPv6 off and the proxy in the environment), open as the
    engine's default (no setting at all); it is part of the identity, so a change recreates
    the container."""
    groups = list(inv.groups)
    if flag:
        groups.insert(data.draw(st.integers(0, len(groups))), (f"--network={flag}",))
    cell = CELLS[inv.cell or cells.DEFAULT_CELL]._replace(network=cell_network)
    try:
        spec = plan(parse(flat(groups), inv.host), cell, init=INIT)
    except DevshellError:  # --as-root under a locked cell: refused before any network matters
        assume(False)
    network = flag or cell_network
    argv, sdk, host_config = spec.run_argv(), spec.sdk_kwargs(), spec.api_create()[1]["HostConfig"]
    assert spec.network == spec.identity()["network"] == network
    none, allow = network == "none", network == "allow"
    engine_network = "none" if none else egress.proxy_name(spec.name) if allow else None
    rendered = [f"--network={engine_network}"] if engine_network else []
    assert [a for a in argv if a.startswith("--network")] == rendered
    assert sdk.get("network_mode") == host_config.get("NetworkMode") == engine_network
    # without a network the engine writes no address for the hostname: it is given one on lo
    own_name = [f"{spec.name}:127.0.1.1"] if none else []
    assert flag_values(argv, "--add-host") == host_config.get("ExtraHosts", []) == own_name
    assert sdk.get("extra_hosts", {}) == dict(h.split(":") for h in own_name)
    dns = [egress.DNS_NOWHERE] if allow else []
    assert flag_values(argv, "--dns") == host_config.get("Dns", []) == sdk.get("dns", []) == dns
    assert (host_config.get("Sysctls", {}).get("net.ipv6.conf.all.disable_ipv6") == "1") == allow
    env = dict(spec.env)
    assert {k for k in egress.PROXY_ENV_KEYS if k in env} == (set(egress.PROXY_ENV_KEYS) if allow else set())
    assert not set(egress.PROXY_ENV_KEYS) & set(spec.bake_env())  # a bake runs where the proxy is not
    other = spec._replace(network="open" if network != "open" else "none")
    assert other.hash() != spec.hash() and "network" in differences(spec.identity(), other.identity())
