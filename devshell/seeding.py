"""Seeding a devshell's volume from a build cache entry (docs/design.md "Build caches").

The entry is fetched and verified on the host first (seeds.py), and its archives are read
through once before anything reaches the volume: a member that is not a plain file, directory
or link inside its tree, anything written or resolved through a link of the archive, or a tree
larger than MAX_TREE_BYTES refuses the seed with the volume as it was. Then, in a container made
for the seed (no session runs there), streamed to tar inside as dev (nothing of the volume is
bound on the host, and nothing is unpacked as root):

    1. a marker `partial` (the host's record of it first)   <- from here on, an interrupted
    2. the trees the seed replaces are removed                 seed is redone at the next entry
    3. the install tree and the ccache, dev's, without set-id bits or extended attributes
    4. the source commit, fetched inside the container into a src dir without one
    5. the marker `complete`, last

The marker lives in the volume (`WORKSPACE/.devshell-seed`): it is what decides whether a seed
is whole. The host's record (state dir, seeds/<volume>.json) mirrors it for what cannot look
into a volume without a container: `--list`, and the warm path, which must not reuse a running
container whose seed a killed launch left half done. Both are the agent's to forge at most for
itself: the marker is read bounded and shape-checked, and anything unreadable counts as no seed."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from . import buildcache, seeds
from .cells import CACHE_KEY_PATTERN, SHA256_PATTERN, Cell
from .engine import Engine, Progress, stderr_progress, this_maker
from .errors import DevshellError, for_terminal
from .labels import MAKER
from .options import HostFacts, state_dir
from .spec import INIT_PATH

if TYPE_CHECKING:  # tarfile is imported where a seed is made: the warm path only asks unfinished()
    import tarfile

MARKER = ".devshell-seed"
MAX_MARKER_BYTES = 4096
# What one tree of a seed may unpack to: the size `cache pack` refuses to write by default.
MAX_TREE_BYTES = buildcache.MAX_TREE_GIB << 30
STATES = ("partial", "complete")
RECORDS = "seeds"  # below the state dir: the host's record of each volume's seed
# A tree of more members is no build tree (and the names kept to check links grow with them);
# a header longer than this is no path.
MAX_MEMBERS = 1 << 20
MAX_HEADER_BYTES = 1 << 20
_BLOCK = 512  # tar's block
_CHUNK = 1 << 20


class Marker(NamedTuple):
    state: str  # partial or complete
    key: str
    manifest_sha256: str

    def to_bytes(self) -> bytes:
        return (json.dumps({"state": self.state, "key": self.key,
                            "manifest_sha256": self.manifest_sha256}, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        """--list's words: seeded KEY, or partial KEY."""
        return f"{'seeded' if self.state == 'complete' else 'partial'} {self.key}"


def parse_marker(data: bytes | None) -> Marker | None:
    """A marker (or record) as written, else None: it sits where the agent can write."""
    if not data or len(data) > MAX_MARKER_BYTES:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    state, key, sha = doc.get("state"), doc.get("key"), doc.get("manifest_sha256")
    if (state not in STATES or not isinstance(key, str) or not isinstance(sha, str)
            or not re.fullmatch(CACHE_KEY_PATTERN, key) or not re.fullmatch(SHA256_PATTERN, sha)):
        return None
    return Marker(state, key, sha)


# --- the host's record ---------------------------------------------------------------------


def record_path(volume: str) -> str:
    host = HostFacts.current()
    return posixpath.join(host.state or state_dir(host.home, {}), RECORDS, f"{volume}.json")


def volume_identity(info: dict[str, Any]) -> str:
    """What tells one volume from another of the same name made later: the launch that made it
    (its MAKER label: host:pid). Not CreatedAt, which the engine reads off the volume's
    directory, and which moves when its content does."""
    return str((info.get("Labels") or {}).get(MAKER, ""))


def read_record(volume: str, identity: str | None = None) -> Marker | None:
    """The launcher's record of volume's seed; with identity (volume_identity), only a record
    of that very volume (one removed and made again has a seed of its own, or none)."""
    try:
        with open(record_path(volume), "rb") as f:
            data = f.read(MAX_MARKER_BYTES + 1)
    except OSError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if identity is not None and (not isinstance(doc, dict) or doc.get("volume") != identity):
        return None
    return parse_marker(data)


def write_record(volume: str, marker: Marker, identity: str) -> None:
    path = record_path(volume)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    doc = json.loads(marker.to_bytes())
    doc["volume"] = identity
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True)
    os.replace(partial, path)


def forget_record(volume: str) -> None:
    """The host's record of a volume that is gone (devshell down --volume)."""
    with contextlib.suppress(OSError):
        os.unlink(record_path(volume))


def unfinished(cell: Cell, volume: str) -> bool:
    """The warm path's question: did a launch start seeding this volume and not finish?"""
    if cell.seed is None:
        return False
    record = read_record(volume)
    return record is not None and record.state == "partial"


# --- checking an entry before it reaches the volume ----------------------------------------


def check_fits(cell: Cell, manifest: dict[str, Any]) -> None:
    """The entry was built where this cell builds: the same workspace (ccache's keys and every
    absolute path in the install tree name it) and platform."""
    if manifest["workspace"] != cell.workspace:
        raise DevshellError(f"the seed {manifest['key']} was built at {manifest['workspace']}, and cell "
                            f"{cell.name} works at {cell.workspace}: ccache's keys would not match",
                            f"set workspace: {manifest['workspace']} in {cell.source}, or seed from an "
                            "entry built by this cell")
    ccache_dir = dict(cell.env).get("CCACHE_DIR", cell.ccache)
    if posixpath.normpath(ccache_dir) != cell.ccache:
        raise DevshellError(f"cell {cell.name} sets CCACHE_DIR to {ccache_dir}, not its dirs.ccache "
                            f"{cell.ccache}, where the seed's ccache goes: it would never be read",
                            f"set CCACHE_DIR to {cell.ccache} in {cell.source}, or drop it")
    if manifest["platform"] != cell.platform:
        raise DevshellError(f"the seed {manifest['key']} is for {manifest['platform']}, cell {cell.name} "
                            f"runs {cell.platform}", "seed from an entry built for the cell's platform")


def _members(path: str, top: str, sha256: str | None = None) -> Iterator[tuple[tarfile.TarFile,
                                                                             tarfile.TarInfo]]:
    """The members of a zstd-compressed tar, each checked to be a plain file, directory or
    link strictly inside top (the tree's own directory), at most MAX_MEMBERS of them within
    MAX_TREE_BYTES in all, no header larger than MAX_HEADER_BYTES; with sha256, the file's bytes
    must hash to it (checked at the end: the caller has consumed every member by then)."""
    import hashlib
    import tarfile

    import zstandard

    where = os.path.basename(path)

    class BoundedInfo(tarfile.TarInfo):
        # A pax or GNU long-name header is read whole into memory: a few KiB of zstd can say
        # a GiB. (tarfile's own hooks for these two headers; everything else is its parsing.)
        def _proc_pax(self, archive: Any) -> Any:
            _bounded(self.size)
            return super()._proc_pax(archive)  # type: ignore[misc]

        def _proc_gnulong(self, archive: Any) -> Any:
            _bounded(self.size)
            return super()._proc_gnulong(archive)  # type: ignore[misc]

    def _bounded(size: int) -> None:
        if size > MAX_HEADER_BYTES:
            raise DevshellError(f"the seed archive {where} has a header of {size} bytes",
                                "seed from an entry devshell cache pack made")

    digest = hashlib.sha256()

    class Hashing:
        def __init__(self, raw: Any) -> None:
            self.raw = raw

        def read(self, size: int = -1) -> bytes:
            data: bytes = self.raw.read(size)
            digest.update(data)
            return data

    total = count = 0
    with open(path, "rb") as raw, \
            zstandard.ZstdDecompressor().stream_reader(cast(Any, Hashing(raw))) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedInfo, encoding="utf-8",
                              errors="surrogateescape") as tar:
                for member in tar:
                    tar.members = []  # type: ignore[attr-defined]  # a stream is read once: nothing needs the members it kept
                    why = member_problem(member, top)
                    if why:
                        raise DevshellError(f"the seed archive {where} holds {for_terminal(member.name)}: "
                                            f"{why}", "seed from an entry devshell cache pack made")
                    total += member.size
                    count += 1
                    if total > MAX_TREE_BYTES or count > MAX_MEMBERS:
                        raise DevshellError(f"the seed archive {where} unpacks to more than "
                                            f"{MAX_TREE_BYTES >> 30} GiB or {MAX_MEMBERS} members",
                                            "seed from a smaller entry")
                    yield tar, member
            while stream.read(_CHUNK):  # the rest of the file, for its hash
                pass
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
            raise DevshellError(f"the seed archive {where} is not a zstd-compressed tar ({e})",
                                "run devshell cache prune, then launch again") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise DevshellError(f"the seed archive {where} changed in the seed cache since it was checked",
                            "run devshell cache prune, then launch again")


def member_problem(member: tarfile.TarInfo, top: str) -> str | None:
    """Why a tar member may not reach the volume, or None. Pure: unit tests feed it TarInfos."""
    import tarfile

    if not _inside(member.name, top):
        return f"not a path inside {top}/"
    # Exactly these types: tarfile's isreg() also takes contiguous and sparse files, which the
    # tar inside may not handle (failing with the volume half emptied).
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return None
    if member.islnk():
        return None if _inside(member.linkname, top) else "a hard link to outside the tree"
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        if member.linkname.startswith("/") or not _inside(target, top):
            return "a symbolic link that leaves the tree"
        return None
    return "not a file, directory or link"


def _inside(name: str, top: str) -> bool:
    parts = name.rstrip("/").split("/")
    return parts[0] == top and all(p not in ("", ".", "..") for p in parts)


def link_problem(names: list[str], links: dict[str, str], hard: dict[str, str]) -> tuple[str, str] | None:
    """(member, why) for the first member that would be written, or a link that would resolve,
    through a symbolic link of the same archive, else None. Each link checked on its own can
    stay inside the tree (install/a/b -> .., install/c -> a/b/../..) while the chain leaves it:
    the engine writes through links it has made, so nothing may pass through one. links: each
    symbolic link's name and target; hard: each hard link's name and target. Pure."""
    for name in names:
        parts = name.rstrip("/").split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in links:
                return name, f"it lies below the symbolic link {'/'.join(parts[:n])}"
    for name, target in hard.items():
        parts = target.split("/")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in links:
                return name, f"a hard link through the symbolic link {'/'.join(parts[:n])}"
    for name, target in links.items():
        path = name.split("/")[:-1]
        steps = target.split("/")
        for n, step in enumerate(steps):
            if step in ("", "."):
                continue
            if step == "..":
                path = path[:-1]
                continue
            path.append(step)
            if n < len(steps) - 1 and "/".join(path) in links:
                return name, f"a symbolic link through another ({'/'.join(path)})"
    return None


def scan(path: str, top: str, sha256: str | None = None) -> int:
    """Read a tree's archive through once (nothing written): the member count, or the one-line
    refusal of its first bad member. With sha256, the archive must still be those bytes."""
    names: list[str] = []
    links: dict[str, str] = {}
    hard: dict[str, str] = {}
    files: set[str] = set()
    for tar, member in _members(path, top, sha256):
        if member.isreg():
            reader = tar.extractfile(member)
            assert reader is not None
            while reader.read(_CHUNK):
                pass
            files.add(member.name)
        elif member.issym():
            links[member.name.rstrip("/")] = member.linkname
        elif member.islnk():
            # Only to a regular file the archive made before: a hard link to a symlink is that
            # symlink again, its text read from elsewhere (install/h -> a/b/c/s's ../../..).
            if member.linkname not in files:
                raise DevshellError(f"the seed archive {os.path.basename(path)} holds "
                                    f"{for_terminal(member.name)}: a hard link to no file before it",
                                    "seed from an entry devshell cache pack made")
            hard[member.name] = member.linkname
        names.append(member.name)
    found = link_problem(names, links, hard)
    if found is not None:
        raise DevshellError(f"the seed archive {os.path.basename(path)} holds {for_terminal(found[0])}: "
                            f"{found[1]}", "seed from an entry devshell cache pack made")
    return len(names)


def rewrite(path: str, top: str, new_top: str, uid: int, gid: int,
            sha256: str | None = None) -> Iterator[bytes]:
    """The tree's archive as a plain tar for the tar inside: renamed under new_top, owned by
    uid:gid, permission bits only (no set-id, sticky, extended attributes or capabilities),
    every directory and file usable by its owner. Streams: a chunk at a time."""
    import tarfile

    for tar, member in _members(path, top, sha256):
        info = tarfile.TarInfo(new_top + member.name[len(top):])
        info.type = tarfile.REGTYPE if member.isreg() else member.type
        info.mtime = member.mtime
        info.uid, info.gid = uid, gid
        info.mode = (member.mode & 0o777) | (0o700 if member.isdir() else 0o600)
        if member.islnk():
            info.linkname = new_top + member.linkname[len(top):]
        elif member.issym():
            info.linkname = member.linkname
        info.size = member.size if member.isreg() else 0
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if member.isreg():
            reader = tar.extractfile(member)
            assert reader is not None
            while chunk := reader.read(_CHUNK):
                yield chunk
            if member.size % _BLOCK:
                yield b"\0" * (_BLOCK - member.size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


def one_file(name: str, data: bytes, mode: int = 0o644) -> Iterator[bytes]:
    """A tar of one file (dev's, once the tar inside has unpacked it)."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    yield info.tobuf(tarfile.PAX_FORMAT)
    yield data + b"\0" * (-len(data) % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


def fetch(cell: Cell, progress: Progress = stderr_progress) -> seeds.Fetched:
    """The cell's seed on the host, verified, fitting the cell, and every member checked: what
    can go wrong before the volume is touched goes wrong here."""
    assert cell.seed is not None
    seed = cell.seed
    shown = seeds.terminal_progress() if progress is stderr_progress else _lines(progress)
    fetched = seeds.fetch(seed.location, seed.key, seed.manifest_sha256, progress=shown,
                          check=lambda manifest: check_fits(cell, manifest))
    manifest = fetched.manifest
    scan(fetched.install, manifest["install"])
    if fetched.ccache is not None:
        scan(fetched.ccache, manifest["ccache"]["dir"])
    return fetched


def _lines(progress: Progress) -> seeds.Progress:
    def show(file: str, got: int, total: int | None, seconds: float) -> None:
        if total and got >= total:
            progress(f"seed {file}: {got / (1 << 20):.1f} MiB in {seconds:.1f} s")
    return show


# --- seeding a volume ----------------------------------------------------------------------


def begin(engine: Engine, volume: str, cell: Cell) -> None:
    """Record, before the volume is made (or reseeded), that its seed has begun: a launch
    killed anywhere from here on leaves a record the next launch finds, even where no marker
    reached the volume yet. A volume this launch makes will carry its MAKER label."""
    assert cell.seed is not None
    info = engine.volume_info(volume)
    identity = volume_identity(info) if info is not None else this_maker()
    write_record(volume, Marker("partial", cell.seed.key, cell.seed.manifest_sha256), identity)


def read_marker(engine: Engine, container: str, workspace: str) -> Marker | None:
    return parse_marker(engine.read_file(container, posixpath.join(workspace, MARKER), MAX_MARKER_BYTES))


class Decision(NamedTuple):
    """What a launch does about a volume's seed (decide)."""

    seed: bool  # seed it now
    note: str | None = None  # a line for the user
    record: Marker | None = None  # bring the host's record in line with the volume's marker


def decide(cell: Cell, *, created: bool, reseed: bool, marker: Marker | None,
           record: Marker | None) -> Decision:
    """Seed a new volume, one --reseed asks for, and one whose seed was left partial (its marker
    says so, or, killed before the marker reached the volume, only the host's record); leave
    any other volume as it is. Pure."""
    assert cell.seed is not None
    begun = marker is None and record is not None and record.state == "partial"
    if created or reseed or begun or (marker is not None and marker.state == "partial"):
        return Decision(True)
    note = None
    if marker is not None and marker.manifest_sha256 != cell.seed.manifest_sha256:
        note = (f"note: the volume holds the seed {marker.key}; {cell.name} now pins {cell.seed.key} "
                f"(devshell {cell.name} --reseed takes it)")
    # A launch killed between the marker and the record, or another user's seed: the volume is
    # right, and the record follows it (else every launch would take the cold path).
    return Decision(False, note, marker if marker is not None and record != marker else None)


def ensure(engine: Engine, *, container: str, volume: str, cell: Cell, uid: int, gid: int, locked: bool,
           fetched: seeds.Fetched | None, created: bool, fresh: bool, reseed: bool, clean: bool,
           progress: Progress = stderr_progress) -> Marker | None:
    """Seed the volume if decide() says so (fresh: the container was made by this launch, so no
    session runs in it); the seed state the volume is in afterwards."""
    assert cell.seed is not None
    marker = read_marker(engine, container, cell.workspace)
    identity = volume_identity(engine.volume_info(volume) or {})
    decision = decide(cell, created=created, reseed=reseed, marker=marker,
                      record=read_record(volume, identity))
    if decision.note:
        progress(decision.note)
    if decision.record is not None:
        write_record(volume, decision.record, identity)
    if not decision.seed:
        return marker
    if not fresh:
        # Never into a container a session may run in: an agent there could swap a tree for a
        # link while the engine writes into it. The launcher makes a new one for --reseed and for
        # a seed it recorded as begun; this is a partial seed another user's launch left.
        raise DevshellError(f"the seed of {volume} was left partial by another launch",
                            f"devshell {cell.name} --reseed seeds it again in a new container")
    if fetched is None:
        fetched = fetch(cell, progress)
    started = time.monotonic()
    dev = f"{uid}:{gid}"
    # init first, as every session's entry runs it: dev, and the workspace given to dev (a new
    # volume's root is root's); /checkout trusted by git (a source may be fetched from it).
    result = engine.exec(container, [INIT_PATH])
    if result.exit_code:
        raise DevshellError(f"init failed in {container} before the seed: {_said(result.stderr)}",
                            f"see docker exec {container} {INIT_PATH} --verify; the next launch tries again")
    partial = Marker("partial", cell.seed.key, cell.seed.manifest_sha256)
    write_record(volume, partial, identity)
    unpack(engine, container, cell.workspace, one_file(MARKER, partial.to_bytes()), dev)
    # What the seed replaces goes (the whole volume but the marker under --clean). Under locked
    # as dev, where root has no capability to remove dev's files, after giving dev write
    # permission on what it owns (a read-only module cache would stop rm, and then every
    # launch). rm never follows a link, nor does chmod -R below its arguments.
    what = ('cd "$1" && shift && for p in * .[!.]* ..?*; do [ -e "$p" ] || [ -L "$p" ] || continue; '
            f'[ "$p" = {MARKER} ] || set -- "$@" "$p"; done; ' if clean else 'shift; ')
    fix = 'chmod -R u+w -- "$@" 2>/dev/null; ' if locked else ""
    script = f'{what}[ $# = 0 ] || {{ {fix}rm -rf -- "$@"; }}'
    argv = ["sh", "-c", script, "sh", cell.workspace] + ([] if clean else [cell.install, cell.ccache])
    result = engine.exec(container, argv, user=dev if locked else "0")
    if result.exit_code:
        raise DevshellError(f"cannot empty {cell.workspace} for the seed: {_said(result.stderr)}",
                            f"launch again (the seed is redone), or devshell down {cell.name} --volume")
    manifest = fetched.manifest
    for archive, top, into in ((fetched.install, manifest["install"], cell.install),
                               (fetched.ccache, manifest["ccache"]["dir"], cell.ccache)):
        if archive is not None:
            # (rewrite hashes what it reads: bytes changed since fetch checked them fail the
            # unpack, and the seed stays partial)
            sha = manifest["archives"]["install" if into == cell.install else "ccache"]["sha256"]
            unpack(engine, container, cell.workspace,
                   rewrite(archive, top, posixpath.basename(into), uid, gid, sha), dev)
    if fetched.ccache is None:
        progress(f"note: the seed {cell.seed.key} has no ccache archive: the ccache starts cold")
    missed = fetch_source(engine, container, cell, manifest, uid, gid)
    complete = partial._replace(state="complete")
    unpack(engine, container, cell.workspace, one_file(MARKER, complete.to_bytes()), dev)
    write_record(volume, complete, identity)
    progress(f"seeded {volume} from {cell.seed.key} ({seeds.describe(fetched)}) in "
             f"{time.monotonic() - started:.1f} s")
    if missed:
        progress(missed)
    return complete


def unpack(engine: Engine, container: str, workspace: str, tar: Iterator[bytes], dev: str) -> None:
    """A tar stream unpacked into the workspace by tar inside the container, as dev: never by
    the engine's archive API, which unpacks as root, through links and into a read-only root
    filesystem alike. Whatever the checks above missed can reach only what dev can write."""
    result = engine.exec_stdin(container, ["tar", "-x", "-p", "-f", "-", "-C", workspace, "--no-same-owner",
                                           "--delay-directory-restore"], tar, user=dev)
    if result.exit_code:
        raise DevshellError(f"unpacking the seed into {workspace} failed: {_said(result.stderr)}",
                            "check the engine's disk space; the next launch starts the seed again")


# git as the seed runs it in src: with no configuration of the agent's (the repository's own is
# made new, the global one is not read) and none that runs a program: no hooks, no fsmonitor,
# only transports that fetch. The system's (/etc/gitconfig, the image's and init's) is kept: it
# trusts /checkout.
GIT = ["env", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0", "timeout", "300", "git",
       "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "protocol.allow=never",
       *(arg for name in ("file", "https", "http", "git", "ssh")
         for arg in ("-c", f"protocol.{name}.allow=always"))]


def fetch_source(engine: Engine, container: str, cell: Cell, manifest: dict[str, Any], uid: int,
                 gid: int) -> str | None:
    """The source commit the entry was built from (the manifest's, else the cell's source:),
    fetched shallowly inside the container, as dev, into a src dir that holds no commit yet; a
    note when that fails. Never a failure of the seed: the trees are whole without it, and a
    source that cannot be reached (no network, a checkout without the commit) would otherwise
    fail every launch."""
    named = manifest["source"]
    repo, commit = ((named["repo"], named["commit"]) if named["repo"] and named["commit"]
                    else cell.source_pin or (None, None))
    if not repo or not commit:
        return None
    dev = f"{uid}:{gid}"
    # A src dir with a commit checked out is the user's (kept by --reseed); in one without, any
    # .git (an interrupted fetch's, or the agent's, with a configuration that could run
    # programs) is made new.
    if engine.exec(container, [*GIT, "-C", cell.src, "rev-parse", "-q", "--verify", "HEAD"],
                   user=dev).exit_code == 0:
        return None
    script = ('set -e; src=$1 repo=$2 commit=$3; shift 3; mkdir -p "$src"; cd "$src"; rm -rf .git; '
              '"$@" init -q; "$@" fetch -q --depth 1 "$repo" "$commit"; "$@" checkout -q --detach FETCH_HEAD')
    result = engine.exec(container, ["sh", "-c", script, "sh", cell.src, repo, commit, *GIT], user=dev)
    if result.exit_code:
        return (f"note: the source {for_terminal(repo)} at {commit[:12]} was not fetched into {cell.src} "
                f"({_said(result.stderr)}); fetch it there yourself")
    return None


def _said(stderr: str) -> str:
    """What a failed command said, in one line: its first fatal: or error: line, else its last."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    said = (fatal or lines or ["?"])[0 if fatal else -1]
    return for_terminal(said[:300])
