"""`devshell cache pack`: a devshell's install tree and ccache, as a build cache entry.

The trees are streamed out of the volume through the engine (its archive API), compressed with
zstandard on the host and hashed as they are written; nothing of the volume is ever bound or
unpacked on the host. The source commit is read by git inside the container, never by host git
on a tree the agent could have written. Whatever comes out of the volume is the agent's: it is
copied as bytes into archives, and the words that reach the manifest (commit, repository) are
checked against their shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from . import buildcache
from .cells import COMMIT_PATTERN, LOCATION
from .engine import Engine
from .errors import DevshellError, for_terminal
from .options import SubcommandParser, _once_flag, devshell_by_name, devshell_parser

USAGE = ("devshell cache pack CELL [--instance NAME] --out DIR [--key KEY] [--json] | "
         "devshell cache fetch FROM KEY --sha256 SHA | devshell cache prune")
# What the agent's volume may make pack write at most, by default: the trees are its to fill.
DEFAULT_MAX_GIB = buildcache.MAX_TREE_GIB
# ccache's settings that decide whether a seeded cache hits: recorded with the entry.
CCACHE_SETTINGS = ("CCACHE_BASEDIR", "CCACHE_COMPILERCHECK", "CCACHE_HASHDIR", "CCACHE_NOHASHDIR",
                   "CCACHE_SLOPPINESS", "CCACHE_COMPRESS", "CCACHE_MAXSIZE")


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("pack", "fetch", "prune"):
        got = f"{argv[0]!r} is not a cache subcommand" if argv else "cache needs a subcommand"
        raise DevshellError(got, USAGE)
    return {"pack": pack, "fetch": fetch, "prune": prune}[argv[0]](argv[1:])


def fetch(argv: Sequence[str]) -> int:
    """Download and verify an entry into the host's seed cache (what seeding a volume starts
    with), e.g. to warm that cache before going offline."""
    from . import seeds

    p = SubcommandParser(prog="devshell cache fetch", allow_abbrev=False,
                description="Fetch a build cache entry into the host's seed cache, verified.")
    p.add_argument("source", nargs="?", default=None,
                   help="a directory, file://, http:// or https:// base")
    p.add_argument("key", nargs="?", default=None, help="the entry's key")
    _once_flag(p, "--sha256", metavar="SHA", help="the sha256 of the entry's manifest (its pin)")
    ns = p.parse_args(list(argv))
    if ns.source is None or ns.key is None or not ns.sha256:
        raise DevshellError("cache fetch needs a source, a key and --sha256", USAGE)
    fetched = seeds.fetch(ns.source, ns.key, ns.sha256, progress=seeds.terminal_progress())
    print(for_terminal(f"fetched {ns.key} ({seeds.describe(fetched)}) into {seeds.seeds_dir()}",
                       backslash=False))
    return 0


def prune(argv: Sequence[str]) -> int:
    from . import seeds

    if argv:
        raise DevshellError(f"cache prune takes no arguments, and was given {argv[0]!r}",
                            "devshell cache prune")
    count, freed = seeds.prune()
    print(for_terminal(f"removed {count} file(s), {_mib(freed)}, from {seeds.seeds_dir()}", backslash=False))
    return 0


def pack(argv: Sequence[str]) -> int:
    p = devshell_parser("devshell cache pack",
                        "Pack a devshell's install tree and ccache into a build cache entry.",
                        "the cell whose devshell to pack")
    _once_flag(p, "--out", metavar="DIR", help="where the entry's three files go (created if missing)")
    _once_flag(p, "--key", metavar="KEY", help="the entry's key (default: CELL-<commit>)")
    _once_flag(p, "--max-size", metavar="GIB", type=int, default=DEFAULT_MAX_GIB,
               help=f"refuse to write more than GIB GiB of archives (default {DEFAULT_MAX_GIB})")
    _once_flag(p, "--json", action="store_true", help="one JSON document on stdout")
    ns = p.parse_args(list(argv))
    if ns.cell is None or not ns.out:
        raise DevshellError("cache pack needs a cell and --out DIR", USAGE)
    name = devshell_by_name(ns.cell, ns.instance)
    if ns.key is not None:
        buildcache.check_key(ns.key)
    out = os.path.abspath(os.path.expanduser(ns.out))
    if os.path.lexists(out) and (os.path.islink(out) or not os.path.isdir(out)):
        raise DevshellError(f"--out {out} is not a directory", "pass a directory (it is created if missing)")
    engine = Engine.connect()
    info = engine.inspect_own(name, ns.cell)
    if info is None or not info["State"]["Running"]:
        state = "not there" if info is None else "not running"
        instance = f" --instance {ns.instance}" if ns.instance else ""
        raise DevshellError(f"{name} is {state}: there is nothing to pack",
                            f"open it first (devshell {ns.cell}{instance})")
    env = dict(e.split("=", 1) for e in info["Config"].get("Env") or [] if "=" in e)
    workspace = env.get("DEVSHELL_WORKSPACE", "")
    install, ccache = env.get("DEVSHELL_INSTALL", ""), env.get("DEVSHELL_CCACHE", "")
    src = env.get("DEVSHELL_SRC", "")
    if not all(path.startswith(workspace + "/") for path in (install, ccache, src)) or not workspace:
        raise DevshellError(f"{name} was made by a devshell that did not record its install dir",
                            f"launch it once with this version (devshell {ns.cell}), then pack again")
    repo, commit = source_of(engine, name, src, env.get("DEVSHELL_DEV_UID", "0"))
    key = ns.key or buildcache.default_key(ns.cell, commit)
    buildcache.check_key(key)
    files = buildcache.names(key)
    taken = [f for f in files if os.path.lexists(os.path.join(out, f))]
    if taken:
        raise DevshellError(f"{out} already holds {taken[0]}: an entry is never overwritten",
                            "pass another --key or --out, or remove the old entry")
    if ns.max_size is None or ns.max_size < 1:
        raise DevshellError("--max-size takes a whole number of GiB, at least 1", "pass --max-size GIB")
    budget = [ns.max_size << 30]
    made = _missing_parents(out)
    os.makedirs(out, mode=0o755, exist_ok=True)
    notes: list[str] = []
    written: list[str] = []
    try:
        install_archive = write_archive(engine.archive(name, install), out, files[0], written, budget)
        if install_archive is None:
            raise DevshellError(f"{name} has no install tree at {install}", "install the build there "
                                "(e.g. cmake --install build --prefix $DEVSHELL_INSTALL)")
        ccache_archive = write_archive(engine.archive(name, ccache), out, files[1], written, budget)
        if ccache_archive is None:
            notes.append(f"{name} has no ccache dir at {ccache}: the entry has no ccache archive "
                         "(a devshell seeded from it starts with a cold ccache)")
        settings = {k: v for k, v in env.items() if k in CCACHE_SETTINGS}
        doc = buildcache.manifest(
            key=key, cell=ns.cell, platform=platform_of(info), workspace=workspace,
            install=os.path.basename(install), ccache_dir=os.path.basename(ccache),
            ccache_settings=settings, repo=repo, commit=commit,
            install_archive=install_archive, ccache_archive=ccache_archive)
        data = buildcache.dumps(doc)
        _write_new(os.path.join(out, files[2]), data, written)  # last: an entry without it is not one
    except BaseException:
        for path in written:
            with _quiet():
                os.unlink(path)
        for path in reversed(made):  # what pack made, and only if still empty
            with _quiet():
                os.rmdir(path)
        raise
    digest = hashlib.sha256(data).hexdigest()
    result = {"key": key, "out": out, "files": [f for f in files if os.path.exists(os.path.join(out, f))],
              "manifest_sha256": digest, "source": doc["source"], "archives": doc["archives"], "notes": notes}
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        sizes = ", ".join(f"{role} {_mib(a['size'])}" for role, a in doc["archives"].items() if a)
        print(for_terminal(f"packed {key} into {out} ({sizes}); manifest sha256 {digest}", backslash=False))
        for note in notes:
            print(f"devshell: note: {for_terminal(note, backslash=False)}", file=sys.stderr)
    return 0


def source_of(engine: Engine, name: str, src: str, dev_uid: str) -> tuple[str | None, str | None]:
    """The source repository and commit, as git inside reads them (as dev: the src tree is
    dev's); each checked against its shape, since anything in the volume may be the agent's."""
    # Bounded reads: git inside is the agent's to replace, and may flood or hang.
    commit = engine.bounded_exec(name, ["git", "-C", src, "rev-parse", "--verify", "-q", "HEAD"],
                                 limit=66, user=dev_uid).decode("ascii", "replace").strip()
    repo = engine.bounded_exec(name, ["git", "-C", src, "config", "--get", "remote.origin.url"],
                               limit=2050, user=dev_uid).decode("ascii", "replace").strip()
    return (repo if re.fullmatch(LOCATION["pattern"], repo) else None,
            commit if re.fullmatch(COMMIT_PATTERN, commit) else None)


def platform_of(info: dict[str, Any]) -> str:
    try:
        found = json.loads((info["Config"].get("Labels") or {}).get("devshell.spec", "{}")).get("platform")
    except ValueError:
        found = None
    return found if isinstance(found, str) and found else "linux/amd64"


def write_archive(chunks: Iterable[bytes] | None, out: str, file: str, written: list[str],
                  budget: list[int]) -> dict[str, Any] | None:
    """The tar stream compressed with zstd into out/file (through a partial file of its own,
    linked to its name when whole: a file that appeared meanwhile is never replaced), hashed as
    it is written, within budget[0] bytes of tar (what is left of it is put back); None when
    there was no such tree."""
    if chunks is None:
        return None
    import tempfile

    import zstandard

    path = os.path.join(out, file)
    digest = hashlib.sha256()
    size = unpacked = 0

    class Hashing:
        def write(self, data: bytes) -> int:
            nonlocal size
            digest.update(data)
            size += len(data)
            return sink.write(data)

    fd, partial = tempfile.mkstemp(prefix=f".{file}.", suffix=".partial", dir=out)
    written.append(partial)
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    hashing: Any = Hashing()  # a writer, as stream_writer takes one
    try:
        with os.fdopen(fd, "wb") as sink, compressor.stream_writer(hashing, closefd=False) as z:
            for chunk in chunks:
                unpacked += len(chunk)
                if unpacked > budget[0]:
                    raise DevshellError(f"the trees to pack are larger than --max-size "
                                        f"({budget[0] >> 30} GiB left); nothing was kept",
                                        "pass a larger --max-size, or clean the tree")
                z.write(chunk)
    except zstandard.ZstdError as e:
        raise DevshellError(f"compressing {file} failed ({e})", "check the disk space of --out") from None
    budget[0] -= unpacked
    os.chmod(partial, 0o644)
    try:
        os.link(partial, path)
    except FileExistsError:
        raise DevshellError(f"{path} appeared while packing", "pass another --key or --out") from None
    written.append(path)
    os.unlink(partial)
    written.remove(partial)
    return {"file": file, "sha256": digest.hexdigest(), "size": size}


def _missing_parents(path: str) -> list[str]:
    """The directories from the first missing one down to path, outermost first."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def _write_new(path: str, data: bytes, written: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    written.append(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _quiet() -> Any:
    import contextlib

    return contextlib.suppress(OSError)
