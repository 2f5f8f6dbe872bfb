"""Flags -> Options: a pure function of argv and the host facts, so it can be fuzzed.

Grammar: ``devshell [CELL] [FLAGS]``. Every flag either takes no value or always takes exactly
one, so no flag can swallow the cell positional, and order never matters. Subcommands
(``patches``, ``status``, ``down``, ``doctor``; ``cache`` reserved) are words that no cell may be named.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .cells import DEFAULT_CELL, NETWORK_MODES, PROFILES
from .errors import DevshellError

DEFAULT_HOST_CACHE = "~/.cache/devshell/host-cache"
# Drop dirs live below here, one per checkout: devshell creates them, so it may give them to dev.
DROPS = "patches"
EGRESS_LOGS = "egress"  # below the state dir: one directory per devshell under --network allow
_RUNTIME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_INSTANCE = 40  # devshell-CELL-INSTANCE stays a comfortable container and volume name
# Host uid/gid 0 must never become dev's: map to the first ordinary id instead.
ROOT_FALLBACK_ID = 1000


def dev_ids(uid: int, gid: int) -> tuple[int, int]:
    """dev's uid and gid for a host user: the user's own, so what dev writes to /patches is
    theirs to read and remove; never root's."""
    return uid or ROOT_FALLBACK_ID, gid or ROOT_FALLBACK_ID


class HostFacts(NamedTuple):
    """Everything planning needs to know about the host, gathered once at the edge."""

    cwd: str
    home: str
    uid: int
    gid: int
    # devshell's state dir (XDG_STATE_HOME/devshell); None: ~/.local/state/devshell.
    state: str | None = None

    @classmethod
    def current(cls) -> HostFacts:
        getuid = getattr(os, "getuid", lambda: ROOT_FALLBACK_ID)
        getgid = getattr(os, "getgid", lambda: ROOT_FALLBACK_ID)
        try:
            cwd = os.getcwd()
        except OSError as e:  # the directory was removed (or made unreadable) under the shell
            raise DevshellError(f"the current directory is gone or unreadable ({e.strerror})",
                                "cd into an existing directory, or pass --checkout DIR") from None
        home = os.path.expanduser("~")
        # devshell makes its state (drop dirs) and caches below home: a HOME that is not a
        # directory would have them made somewhere nobody looks, as whoever runs devshell.
        if not os.path.isdir(home):
            raise DevshellError(f"HOME {home} is not an existing directory",
                                "set HOME to your home directory")
        return cls(cwd=cwd, home=home, uid=getuid(), gid=getgid(),
                   state=state_dir(home, os.environ))

    def drop_dir(self, checkout: str) -> str:
        """The drop dir devshell makes for a checkout: one per checkout path, outside it."""
        import hashlib

        from .spec import ai_key

        state = self.state or state_dir(self.home, {})
        # ai_key reads well but is not one-to-one (/a-b and /a/b): the digest keeps two
        # checkouts' patches apart. Normalized (absolute) like every path the overlap checks
        # compare: XDG_STATE_HOME may be spelled /a//b/../c.
        digest = hashlib.sha256(checkout.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return absolute(posixpath.join(state, DROPS, f"{ai_key(checkout)}.{digest}"), self)


    def egress_dir(self, devshell: str) -> str:
        """Where the egress proxy of a devshell logs (on the host, out of the agent's reach)."""
        state = self.state or state_dir(self.home, {})
        return absolute(posixpath.join(state, EGRESS_LOGS, devshell), self)


class Options(NamedTuple):
    cell: str = DEFAULT_CELL
    script: str | None = None
    rm: bool = False
    as_root: bool = False
    verify: bool = False
    host_cache: str | None = None
    # Skills and settings.json read-only inside (memory stays writable).
    ai_config_ro: bool = True
    # The user's working directory, bound read-only at /checkout: the agent can read and clone
    # it, never write it.
    checkout: str = "."
    # The drop dir bound read-write at /patches: --patches-out, else devshell's own for the
    # checkout (HostFacts.drop_dir; the launcher derives it again from the checkout's real path).
    patches_out: str = ""
    image: str | None = None
    instance: str | None = None
    uid: int = ROOT_FALLBACK_ID
    gid: int = ROOT_FALLBACK_ID
    list: bool = False
    json: bool = False
    cells_dirs: tuple[str, ...] = ()
    # Read off the host by the launcher: (role, "st_dev:st_ino") of every bound host directory
    # (spec.host_binds). init refuses a mount that is not exactly the directory checked.
    bind_ids: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    # The trust profile (standard, locked) and the engine runtime; None: the cell's (else
    # standard), and the engine's default runtime.
    profile: str | None = None
    runtime: str | None = None
    # The network mode (open, none); None: the cell's (else open).
    network: str | None = None
    # Seed the volume again (reseed) from the cell's seed, emptied first (clean).
    reseed: bool = False
    clean: bool = False


class _Formatter(argparse.HelpFormatter):
    """argparse builds a formatter per add_argument, and its default asks shutil for the
    terminal width: a 6 ms import on every entry. Ask the environment, like shutil would."""

    def __init__(self, prog: str) -> None:
        columns = os.environ.get("COLUMNS", "")
        # COLUMNS is the terminal's to set, and may hold anything: never a reason to fail.
        super().__init__(prog, width=int(columns) if columns.isdigit() and int(columns) > 20 else 100)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise DevshellError(message, "see devshell --help")


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's grammar (down, doctor, net, cache): its errors are one line that points
    at its own help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DevshellError(message, f"see {self.prog} --help")


def devshell_parser(prog: str, description: str, cell_help: str) -> SubcommandParser:
    """A subcommand that acts on one devshell, named by CELL and --instance (devshell_by_name)."""
    p = SubcommandParser(prog=prog, allow_abbrev=False, description=description)
    p.add_argument("cell", nargs="?", default=None, help=cell_help)
    _once_flag(p, "--instance", metavar="NAME", help="the devshell devshell-CELL-NAME")
    return p


def devshell_by_name(cell: str, instance: str | None) -> str:
    """The devshell a subcommand names by cell and instance, checked as names only (its cell
    file need not exist: a devshell outlives it): its container name."""
    import re

    from .cells import NAME_PATTERN, RESERVED_NAMES

    if not re.fullmatch(NAME_PATTERN, cell) or cell in RESERVED_NAMES:
        raise DevshellError(f"{cell!r} is not a cell name", "see devshell --list")
    if instance is not None and not _safe_name(instance):
        raise DevshellError(f"--instance {instance!r} is not an instance name",
                            "pass the --instance it was opened with (devshell status lists them)")
    from .spec import container_name

    return container_name(cell, instance)


class _Once(argparse.Action):
    """A flag that may be given once: argparse keeps the last of two silently, so
    `--script a.sh … --script b.sh` would run only one of them without a word."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        seen: set[str] = getattr(namespace, "_given", set())
        if self.dest in seen:
            raise argparse.ArgumentError(self, "given twice")
        namespace._given = seen | {self.dest}
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def _once_flag(p: argparse.ArgumentParser, *names: str, **kwargs: Any) -> None:
    if kwargs.pop("action", None) == "store_true":
        kwargs.update(nargs=0, default=False)
    p.add_argument(*names, action=_Once, **kwargs)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="devshell",
        description="Open a hermetic development container (a devshell) for a cell.",
        allow_abbrev=False,
        formatter_class=_Formatter,
    )
    p.add_argument("cell", nargs="?", default=None,
                   help=f"the cell to open (default: {DEFAULT_CELL})")
    _once_flag(p, "--script", metavar="PATH",
                  help="run this host script inside as dev and exit with its code")
    _once_flag(p, "--rm", action="store_true",
                  help="remove the cell's container; keep its volume and the host cache")
    _once_flag(p, "--as-root", action="store_true",
                  help="exec as root (escape hatch: files written to /patches become root's)")
    _once_flag(p, "--verify", action="store_true",
                  help="check the promised in-container state and exit with the failure count")
    _once_flag(p, "--host-cache", action="store_true",
                  help=f"bind the host cache at /cache (default dir {DEFAULT_HOST_CACHE})")
    _once_flag(p, "--host-cache-dir", metavar="DIR",
                  help="bind this host cache dir at /cache (wins over --host-cache)")
    _once_flag(p, "--ai-config-ro", action="store_true",
                  help="skills and settings.json read-only inside; memory writable (the default)")
    _once_flag(p, "--ai-config-rw", action="store_true",
                  help="let the agent change skills and settings.json in the host cache")
    _once_flag(p, "--checkout", metavar="DIR",
                  help="host dir bound read-only at /checkout (default: the current directory)")
    _once_flag(p, "--patches-out", metavar="DIR",
                  help="host dir bound at /patches, where the agent leaves patches (default: "
                       "devshell's own drop dir for the checkout)")
    _once_flag(p, "--image", metavar="IMAGE", help="use this image instead of the cell's")
    _once_flag(p, "--instance", metavar="NAME",
                  help="a second devshell of the same cell: devshell-CELL-NAME")
    _once_flag(p, "--uid", type=_id, metavar="N", help="dev's uid (default: the host's)")
    _once_flag(p, "--gid", type=_id, metavar="N", help="dev's gid (default: the host's)")
    p.add_argument("--cells-dir", action="append", default=[], metavar="DIR",
                   help="also look for cells in DIR (repeatable; before the shipped cells)")
    _once_flag(p, "--profile", choices=PROFILES, metavar="PROFILE",
                  help="standard (dev has passwordless sudo) or locked (never root, read-only "
                       "root filesystem, no capabilities); default: the cell's, else standard")
    _once_flag(p, "--network", choices=NETWORK_MODES, metavar="MODE",
                  help="open (the engine's network: whatever the host reaches) or none "
                       "(loopback only); default: the cell's, else open")
    _once_flag(p, "--runtime", metavar="NAME",
                  help="an engine runtime registered in daemon.json, e.g. runsc (gVisor)")
    _once_flag(p, "--reseed", action="store_true",
                  help="seed the volume again from the cell's seed: (keeps the rest of the volume)")
    _once_flag(p, "--clean", action="store_true", help="with --reseed: empty the volume first")
    _once_flag(p, "--list", action="store_true", help="list cells with image/container/volume state")
    _once_flag(p, "--json", action="store_true", help="machine-readable --list and session summary")
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
        if flag.startswith("_"):  # _Once's bookkeeping
            continue
        # argparse turns a value of exactly "--" (--uid=--) into [] without calling type=.
        values = value if flag == "cells_dir" else [value]
        if any(v == [] or v == "" for v in values):
            raise DevshellError(f"--{flag.replace('_', '-')} needs a non-empty value", "see devshell --help")

    actions = [flag for flag, on in (("--script", ns.script), ("--rm", ns.rm),
                                     ("--verify", ns.verify), ("--list", ns.list)) if on]
    if len(actions) > 1:
        raise DevshellError(f"{' and '.join(actions)} cannot be combined", "pick one")
    if ns.reseed and (ns.rm or ns.verify or ns.list):
        flag = "--rm" if ns.rm else "--verify" if ns.verify else "--list"
        raise DevshellError(f"--reseed and {flag} cannot be combined", "pick one")
    if ns.clean and not ns.reseed:
        raise DevshellError("--clean empties the volume only for a seed", "pass --reseed --clean")
    if ns.ai_config_ro and ns.ai_config_rw:
        raise DevshellError("--ai-config-ro and --ai-config-rw contradict each other", "pick one")
    if ns.as_root and ns.profile == "locked":
        raise DevshellError("--as-root is refused under --profile locked: its promise is that "
                            "nothing in the devshell runs as root for you", "drop one of them")
    if ns.runtime is not None and not _RUNTIME_NAME.fullmatch(ns.runtime):
        raise DevshellError(f"--runtime {ns.runtime!r} is not a runtime name",
                            "pass the name daemon.json registers it under, e.g. runsc")
    if ns.list and ns.cell:
        raise DevshellError("--list takes no cell", f"run devshell --list, not {ns.cell} --list")

    if ns.uid == 0 or ns.gid == 0:
        raise DevshellError("--uid/--gid 0 would make dev root", "use --as-root for a root shell")
    own_uid, own_gid = dev_ids(host.uid, host.gid)
    uid = ns.uid if ns.uid is not None else own_uid
    gid = ns.gid if ns.gid is not None else own_gid
    mapped = [f"{what} 0 -> {new}" for what, given, host_id, new in
              (("uid", ns.uid, host.uid, uid), ("gid", ns.gid, host.gid, gid))
              if given is None and host_id == 0]
    if mapped:
        notes.append(f"host runs as root: dev never does ({', '.join(mapped)}; see --uid/--gid)")

    checkout = absolute(ns.checkout or host.cwd, host)
    patches = absolute(ns.patches_out, host) if ns.patches_out else host.drop_dir(checkout)
    host_cache = None
    if ns.host_cache_dir is not None:
        host_cache = absolute(ns.host_cache_dir, host)
    elif ns.host_cache:
        host_cache = absolute(DEFAULT_HOST_CACHE, host)
    if not (ns.list or ns.rm or ns.verify):  # only entering binds anything
        check_binds(checkout, patches, host_cache, absolute(host.home, host))

    if ns.instance is not None and not _safe_name(ns.instance):
        raise DevshellError(f"--instance {ns.instance!r}: expected 1 to {MAX_INSTANCE} letters, digits, "
                            "'.', '_' or '-'", "pick a short, simple name")
    if ns.image is not None:
        why = image_problem(ns.image)
        if why:
            raise DevshellError(f"--image {ns.image!r} is not an image reference: {why}",
                                "pass NAME[:TAG][@sha256:DIGEST], e.g. debian:bookworm or "
                                "registry.example:5000/team/img:1")

    return Options(
        cell=ns.cell or DEFAULT_CELL,
        script=absolute(ns.script, host) if ns.script else None,
        rm=ns.rm,
        as_root=ns.as_root,
        verify=ns.verify,
        host_cache=host_cache,
        ai_config_ro=not ns.ai_config_rw,
        checkout=checkout,
        patches_out=patches,
        image=ns.image,
        instance=ns.instance,
        uid=uid,
        gid=gid,
        list=ns.list,
        json=ns.json,
        cells_dirs=tuple(absolute(d, host) for d in ns.cells_dir),
        notes=tuple(notes),
        profile=ns.profile,
        runtime=ns.runtime,
        network=ns.network,
        reseed=ns.reseed,
        clean=ns.clean,
    )


def state_dir(home: str, environ: Mapping[str, str]) -> str:
    """devshell's per-user state (XDG_STATE_HOME/devshell, else ~/.local/state/devshell)."""
    # The XDG spec: a relative XDG_STATE_HOME is invalid and must be ignored (it would make the
    # drop dir relative to wherever devshell runs).
    base = environ.get("XDG_STATE_HOME", "")
    if not posixpath.isabs(base):
        base = posixpath.join(home, ".local", "state")
    return posixpath.join(base, "devshell")


def drops_root(home: str, environ: Mapping[str, str]) -> str:
    """Where every default drop dir lives: agent-written files, never a repository to trust."""
    return posixpath.join(state_dir(home, environ), DROPS)


def default_patches_out(checkout: str, home: str, environ: Mapping[str, str]) -> str:
    """The drop dir bound at /patches for a checkout (see HostFacts.drop_dir)."""
    return HostFacts(checkout, home, 0, 0, state_dir(home, environ)).drop_dir(checkout)


def inside(path: str, parent: str) -> bool:
    """path is parent or lies below it (lexically)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def check_binds(checkout: str, patches: str, cache: str | None, home: str) -> None:
    """The host directories a devshell binds must each be their own: never /, never $HOME or a
    directory holding it (the container would see all of it), and none inside another, or one
    mount would reach what another guards (agent-written files in the read-only checkout, the
    read-only AI config through /patches)."""
    named = [("the checkout", checkout, "cd into a project directory or pass --checkout DIR"),
             ("the patches dir", patches, "omit --patches-out, or pass a dedicated new directory"),
             ("the host cache dir", cache, "pass a dedicated directory to --host-cache-dir")]
    given = [(what, path, fix) for what, path, fix in named if path is not None]
    for what, path, fix in given:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            # Paths reach init in the environment and a checkout's name becomes a mount point.
            raise DevshellError(f"refusing {path} as {what}: it holds a control character",
                                "rename it")
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in path):
            # The engine's API is JSON: a name that is not UTF-8 cannot reach it intact.
            raise DevshellError(f"refusing {path} as {what}: its name is not valid UTF-8", "rename it")
        if path == "/" or inside(home, path):
            raise DevshellError(f"refusing {path} as {what}: the container could reach all of "
                                f"{'it' if path == '/' else 'your home'}", fix)
    # Blame the later one: the checkout is where the user is, the others are what they chose.
    for n, (what, path, _) in enumerate(given):
        for other, other_path, fix in given[n + 1:]:
            if inside(path, other_path) or inside(other_path, path):
                raise DevshellError(f"refusing {other_path} as {other}: it overlaps {what} {path}", fix)


def absolute(path: str, host: HostFacts) -> str:
    """Expand ~ against the host's home and anchor relative paths at its cwd, lexically."""
    if path == "~" or path.startswith("~/"):
        path = host.home + path[1:]
    path = posixpath.normpath(posixpath.join(host.cwd, path))
    # POSIX lets normpath keep exactly two leading slashes; on Linux //x is /x.
    return "/" + path.lstrip("/") if path.startswith("//") else path


# Docker's image reference grammar (distribution/reference): NAME[:TAG][@DIGEST], where NAME is
# [HOST[:PORT]/]COMPONENT[/COMPONENT…]; a first part holding '.' or ':' (or 'localhost') is the
# registry host. Checked at parse time so that a typo is a reason, not an engine error later.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"  # one part of a DNS name
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}")
MAX_IMAGE_NAME = 255


def image_problem(ref: str) -> str | None:
    """Why ref is no Docker image reference, or None when it is one."""
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return f"digest {digest!r}: expected sha256: and 64 lowercase hex digits (or sha384:, sha512:)"
    # A ':' after the last '/' starts the tag; one before it is a registry port.
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.fullmatch(tag):
            return f"tag {tag!r}: expected letters, digits, '_', '.' or '-' (not first), at most 128"
    if not name:
        return "the name is empty"
    if len(name) > MAX_IMAGE_NAME:
        return f"the name is longer than {MAX_IMAGE_NAME} characters"
    parts = name.split("/")
    if len(parts) > 1 and parts[0] not in (".", "..") and (
            "." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if not _HOST.fullmatch(parts[0]):
            return f"registry {parts[0]!r} is not HOST[:PORT]"
        parts = parts[1:]
    for part in parts:
        if not _PATH_COMPONENT.fullmatch(part):
            return (f"path component {part!r}: expected lowercase letters and digits, separated by "
                    "'.', '_', '__' or '-' (never '..' or an empty component)")
    return None


def _safe_name(s: str) -> bool:
    return bool(s) and len(s) <= MAX_INSTANCE and all(c.isascii() and (c.isalnum() or c in "._-") for c in s)



def to_argv(opts: Options) -> list[str]:
    """Flags that parse() turns back into opts (for a given host): harnesses re-enter with them."""
    # --flag=value: a value that starts with '-' must not read as a flag.
    argv = [opts.cell, f"--checkout={opts.checkout}", f"--uid={opts.uid}", f"--gid={opts.gid}"]
    for flag, value in (("--patches-out", opts.patches_out),
                        ("--host-cache-dir", opts.host_cache), ("--image", opts.image),
                        ("--instance", opts.instance), ("--script", opts.script),
                        ("--profile", opts.profile), ("--runtime", opts.runtime),
                        ("--network", opts.network)):
        if value is not None:
            argv.append(f"{flag}={value}")
    for flag, on in (("--rm", opts.rm), ("--as-root", opts.as_root), ("--verify", opts.verify),
                     ("--json", opts.json), ("--ai-config-rw", not opts.ai_config_ro),
                     ("--reseed", opts.reseed), ("--clean", opts.clean)):
        if on:
            argv.append(flag)
    argv += [f"--cells-dir={d}" for d in opts.cells_dirs]
    return argv
