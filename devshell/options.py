"""Flags -> Options: a pure function of argv and the host facts, so it can be fuzzed.

Grammar: ``devshell [CELL] [FLAGS]``. Every flag either takes no value or always takes exactly
one, so no flag can swallow the cell positional, and order never matters. Subcommands
(``patches``; ``doctor`` reserved) are words that no cell may be named.
"""

from __future__ import annotations

import argparse
import os
import posixpath
from collections.abc import Sequence
from typing import NamedTuple

from .cells import DEFAULT_CELL
from .errors import DevshellError

DEFAULT_HOST_CACHE = "~/.cache/devshell/host-cache"
# Host uid/gid 0 must never become dev's: map to the first ordinary id instead.
ROOT_FALLBACK_ID = 1000


class HostFacts(NamedTuple):
    """Everything planning needs to know about the host, gathered once at the edge."""

    cwd: str
    home: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> HostFacts:
        getuid = getattr(os, "getuid", lambda: ROOT_FALLBACK_ID)
        getgid = getattr(os, "getgid", lambda: ROOT_FALLBACK_ID)
        return cls(cwd=os.getcwd(), home=os.path.expanduser("~"), uid=getuid(), gid=getgid())


class Options(NamedTuple):
    cell: str = DEFAULT_CELL
    script: str | None = None
    rm: bool = False
    as_root: bool = False
    verify: bool = False
    host_cache: str | None = None
    # Skills and settings.json read-only inside (memory stays writable).
    ai_config_ro: bool = True
    patches_out: str = "."
    image: str | None = None
    instance: str | None = None
    uid: int = ROOT_FALLBACK_ID
    gid: int = ROOT_FALLBACK_ID
    list: bool = False
    json: bool = False
    cells_dirs: tuple[str, ...] = ()
    # Read off the host by check_host_paths: the patches dir's .git when it is a git checkout.
    patches_git: str | None = None
    notes: tuple[str, ...] = ()


class _Formatter(argparse.HelpFormatter):
    """argparse builds a formatter per add_argument, and its default asks shutil for the
    terminal width: a 6 ms import on every entry. Ask the environment, like shutil would."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=int(os.environ.get("COLUMNS", "0") or 0) or 100)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise DevshellError(message, "see devshell --help")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="devshell",
        description="Open a hermetic development container (a devshell) for a cell.",
        allow_abbrev=False,
        formatter_class=_Formatter,
    )
    p.add_argument("cell", nargs="?", default=None,
                   help=f"the cell to open (default: {DEFAULT_CELL})")
    p.add_argument("--script", metavar="PATH",
                   help="run this host script inside as dev and exit with its code")
    p.add_argument("--rm", action="store_true",
                   help="remove the cell's container; keep its volume and the host cache")
    p.add_argument("--as-root", action="store_true",
                   help="exec as root (escape hatch: files written to /patches become root's)")
    p.add_argument("--verify", action="store_true",
                   help="check the promised in-container state and exit with the failure count")
    p.add_argument("--host-cache", action="store_true",
                   help=f"bind the host cache at /cache (default dir {DEFAULT_HOST_CACHE})")
    p.add_argument("--host-cache-dir", metavar="DIR",
                   help="bind this host cache dir at /cache (wins over --host-cache)")
    p.add_argument("--ai-config-ro", action="store_true",
                   help="skills and settings.json read-only inside; memory writable (the default)")
    p.add_argument("--ai-config-rw", action="store_true",
                   help="let the agent change skills and settings.json in the host cache")
    p.add_argument("--patches-out", metavar="DIR",
                   help="host dir bound at /patches (default: the current directory)")
    p.add_argument("--image", metavar="IMAGE", help="use this image instead of the cell's")
    p.add_argument("--instance", metavar="NAME",
                   help="a second devshell of the same cell: devshell-CELL-NAME")
    p.add_argument("--uid", type=_id, metavar="N", help="dev's uid (default: the host's)")
    p.add_argument("--gid", type=_id, metavar="N", help="dev's gid (default: the host's)")
    p.add_argument("--cells-dir", action="append", default=[], metavar="DIR",
                   help="also look for cells in DIR (repeatable; before the shipped cells)")
    p.add_argument("--list", action="store_true", help="list cells with image/container/volume state")
    p.add_argument("--json", action="store_true", help="machine-readable --list and session summary")
    return p


def _id(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= n <= 2**31 - 2:
        raise argparse.ArgumentTypeError(f"{n} is out of range")
    return n


def parse(argv: Sequence[str], host: HostFacts) -> Options:
    """Resolve argv against the host facts. Touches neither Docker nor the filesystem."""
    ns = parser().parse_args(list(argv))
    notes: list[str] = []
    for flag, value in vars(ns).items():
        # argparse turns a value of exactly "--" (--uid=--) into [] without calling type=.
        values = value if flag == "cells_dir" else [value]
        if any(v == [] or v == "" for v in values):
            raise DevshellError(f"--{flag.replace('_', '-')} needs a non-empty value", "see devshell --help")

    actions = [flag for flag, on in (("--script", ns.script), ("--rm", ns.rm),
                                     ("--verify", ns.verify), ("--list", ns.list)) if on]
    if len(actions) > 1:
        raise DevshellError(f"{' and '.join(actions)} cannot be combined", "pick one")
    if ns.ai_config_ro and ns.ai_config_rw:
        raise DevshellError("--ai-config-ro and --ai-config-rw contradict each other", "pick one")
    if ns.list and ns.cell:
        raise DevshellError("--list takes no cell", f"run devshell --list, not {ns.cell} --list")

    if ns.uid == 0 or ns.gid == 0:
        raise DevshellError("--uid/--gid 0 would make dev root", "use --as-root for a root shell")
    uid = ns.uid if ns.uid is not None else host.uid or ROOT_FALLBACK_ID
    gid = ns.gid if ns.gid is not None else host.gid or ROOT_FALLBACK_ID
    mapped = [f"{what} 0 -> {new}" for what, given, host_id, new in
              (("uid", ns.uid, host.uid, uid), ("gid", ns.gid, host.gid, gid))
              if given is None and host_id == 0]
    if mapped:
        notes.append(f"host runs as root: dev never does ({', '.join(mapped)}; see --uid/--gid)")

    patches = absolute(ns.patches_out or host.cwd, host)
    entering = not (ns.list or ns.rm or ns.verify)  # only entering binds anything
    if entering:
        check_patches_dir(patches, absolute(host.home, host))

    host_cache = None
    if ns.host_cache_dir is not None:
        host_cache = absolute(ns.host_cache_dir, host)
    elif ns.host_cache:
        host_cache = absolute(DEFAULT_HOST_CACHE, host)
    if host_cache is not None and entering:
        check_cache_dir(host_cache, patches, host.home)

    if ns.instance is not None and not _safe_name(ns.instance):
        raise DevshellError(f"--instance {ns.instance!r}: expected letters, digits, '.', '_' or '-'",
                            "pick a simple name")

    return Options(
        cell=ns.cell or DEFAULT_CELL,
        script=absolute(ns.script, host) if ns.script else None,
        rm=ns.rm,
        as_root=ns.as_root,
        verify=ns.verify,
        host_cache=host_cache,
        ai_config_ro=not ns.ai_config_rw,
        patches_out=patches,
        image=ns.image,
        instance=ns.instance,
        uid=uid,
        gid=gid,
        list=ns.list,
        json=ns.json,
        cells_dirs=tuple(absolute(d, host) for d in ns.cells_dir),
        notes=tuple(notes),
    )


def inside(path: str, parent: str) -> bool:
    """path is parent or lies below it (lexically)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def check_patches_dir(patches: str, home: str) -> None:
    if patches == "/" or inside(home, patches):
        raise DevshellError(f"refusing {patches} as the patches dir: the container could write all of "
                            f"{'it' if patches == '/' else 'your home'}",
                            "cd into a project directory or pass --patches-out DIR")


def check_cache_dir(cache: str, patches: str, home: str) -> None:
    """The host cache must be its own directory: not /, not $HOME (or above it), and neither
    inside the patches dir nor holding it, or /patches would reach the read-only AI config."""
    if cache == "/" or inside(home, cache) or inside(cache, patches) or inside(patches, cache):
        raise DevshellError(f"refusing {cache} as the host cache dir",
                            "pass a dedicated directory (outside the project) to --host-cache-dir")


def absolute(path: str, host: HostFacts) -> str:
    """Expand ~ against the host's home and anchor relative paths at its cwd, lexically."""
    if path == "~" or path.startswith("~/"):
        path = host.home + path[1:]
    path = posixpath.normpath(posixpath.join(host.cwd, path))
    # POSIX lets normpath keep exactly two leading slashes; on Linux //x is /x.
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _safe_name(s: str) -> bool:
    return bool(s) and len(s) <= 40 and all(c.isascii() and (c.isalnum() or c in "._-") for c in s)



def to_argv(opts: Options) -> list[str]:
    """Flags that parse() turns back into opts (for a given host): harnesses re-enter with them."""
    # --flag=value: a value that starts with '-' must not read as a flag.
    argv = [opts.cell, f"--patches-out={opts.patches_out}", f"--uid={opts.uid}", f"--gid={opts.gid}"]
    for flag, value in (("--host-cache-dir", opts.host_cache), ("--image", opts.image),
                        ("--instance", opts.instance), ("--script", opts.script)):
        if value is not None:
            argv.append(f"{flag}={value}")
    for flag, on in (("--rm", opts.rm), ("--as-root", opts.as_root), ("--verify", opts.verify),
                     ("--json", opts.json), ("--ai-config-rw", not opts.ai_config_ro)):
        if on:
            argv.append(flag)
    argv += [f"--cells-dir={d}" for d in opts.cells_dirs]
    return argv
