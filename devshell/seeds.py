"""Fetching a build cache entry to the host: the first half of seeding (docs/design.md
"Build caches").

An entry is fetched by its key and its manifest's sha256 from a directory, a file:// URL or an
http(s):// base. The manifest is checked against that sha256 before it is read, and every
archive against the manifest's sha256 as it is downloaded, so a server (or a mirror, or a disk)
cannot substitute one. Downloads land in a content-addressed cache on the host
(~/.cache/devshell/seeds/<sha256>), written through a partial name and renamed only when whole
and verified: what is in the cache under a name is that content. Nothing here touches a
container or a volume.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from . import buildcache
from .cells import SHA256_PATTERN, cache_dir
from .errors import DevshellError, for_terminal

FETCH_TIMEOUT = 30.0  # seconds a server may stay silent
CHUNK = 1 << 20
Progress = Callable[[str, int, int | None, float], None]  # file, bytes so far, total, seconds


class Fetched(NamedTuple):
    """A verified entry in the host's seed cache."""

    manifest: dict[str, Any]
    manifest_sha256: str
    install: str  # path of the install archive
    ccache: str | None  # path of the ccache archive; None: the entry has none


def seeds_dir() -> str:
    return os.path.join(cache_dir(), "seeds")


def fetch(source: str, key: str, manifest_sha256: str, *, progress: Progress | None = None,
          check: Callable[[dict[str, Any]], None] | None = None) -> Fetched:
    """The entry key at source, verified, in the seed cache. DevshellError (one line) for an
    unreachable source, a checksum mismatch or a malformed manifest; then nothing new is left
    in the cache. check: called with the verified manifest before any archive is downloaded
    (an entry the caller cannot take costs no download)."""
    buildcache.check_key(key)
    if not re.fullmatch(SHA256_PATTERN, manifest_sha256):
        raise DevshellError(f"{manifest_sha256!r} is not a sha256", "pin the manifest's 64 hex digits")
    store = seeds_dir()
    # What is taken from it unread (an archive of the right size) must be the user's; made only
    # by the first download, so a fetch refused before one leaves nothing behind.
    _store(store, make=False)
    manifest_name = buildcache.names(key)[2]
    manifest_path = os.path.join(store, manifest_sha256)
    data = _cached(manifest_path, buildcache.MAX_MANIFEST_BYTES)
    if data is None or hashlib.sha256(data).hexdigest() != manifest_sha256:  # small: checked every time
        _download(_url(source, manifest_name), manifest_path, manifest_sha256, None,
                  limit=buildcache.MAX_MANIFEST_BYTES)
        data = _cached(manifest_path, buildcache.MAX_MANIFEST_BYTES) or b""
    doc = buildcache.loads(data, f"{_url(source, manifest_name)}")
    if doc["key"] != key:
        raise DevshellError(f"the manifest pinned for {key} is the entry {doc['key']}'s",
                            "pin the sha256 of this key's manifest")
    if check is not None:
        check(doc)
    paths: dict[str, str | None] = {}
    for role, archive in doc["archives"].items():
        if archive is None:
            paths[role] = None
            continue
        path = os.path.join(store, archive["sha256"])
        if not (os.path.isfile(path) and os.path.getsize(path) == archive["size"]):
            _download(_url(source, archive["file"]), path, archive["sha256"], archive["size"],
                      limit=archive["size"], progress=progress)
        paths[role] = path
    install = paths["install"]
    assert install is not None
    return Fetched(doc, manifest_sha256, install, paths["ccache"])


def forget(manifest_sha256: str) -> None:
    """Remove one entry (its manifest and the archives it names) from the seed cache."""
    store = seeds_dir()
    data = _cached(os.path.join(store, manifest_sha256), buildcache.MAX_MANIFEST_BYTES)
    names = [manifest_sha256]
    try:
        doc = buildcache.loads(data or b"", "the cached manifest")
        names += [a["sha256"] for a in doc["archives"].values() if a]
    except DevshellError:
        pass
    for name in names:
        path = os.path.join(store, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)


def prune() -> tuple[int, int]:
    """Empty the seed cache: (files removed, bytes freed). Partial downloads included."""
    store = seeds_dir()
    count = freed = 0
    if not os.path.isdir(store) or os.path.islink(store):
        return 0, 0
    for name in os.listdir(store):
        path = os.path.join(store, name)
        if os.path.isfile(path) and not os.path.islink(path):
            freed += os.path.getsize(path)
            os.unlink(path)
            count += 1
    return count, freed


def _url(source: str, file: str) -> str:
    try:
        scheme = urlsplit(source).scheme
    except ValueError as e:
        raise DevshellError(f"cannot fetch from {for_terminal(source)} ({e})",
                            "check the seed's from: (a directory, file://, http:// or https://)") from None
    if not scheme:
        source = os.path.expanduser(source)
    return source.rstrip("/") + "/" + file


def _cached(path: str, limit: int) -> bytes | None:
    """A file of the seed cache (which _store has checked is the user's alone), or None."""
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError:
        return None


def _store(path: str, *, make: bool = True) -> None:
    """The seed cache's directory, made if missing (and asked to), and refused unless it is a
    plain directory only this user can write: what is in it under a sha256 is taken to be that
    content."""
    import stat

    if make:
        os.makedirs(path, mode=0o700, exist_ok=True)
    elif not os.path.lexists(path):
        return
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise DevshellError(f"the seed cache {path} is not a directory that only you can write",
                            "remove it (devshell makes it again), or set XDG_CACHE_HOME elsewhere")


def _open(url: str) -> tuple[IO[bytes], int | None]:
    """A reader of url and its length when known: a local path, file://, http:// or https://."""
    import http.client
    import stat

    parts = urlsplit(url) if "://" in url else None
    try:
        if parts is None or parts.scheme == "file":
            path = unquote(parts.path) if parts is not None else url
            # Non-blocking, then only a regular file: a FIFO there would hang the fetch.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise DevshellError(f"cannot fetch {for_terminal(url)}: not a regular file",
                                    "point the seed's from: at the entry's directory")
            return os.fdopen(fd, "rb"), st.st_size
        if parts.scheme in ("http", "https"):
            import urllib.request

            answer = urllib.request.urlopen(url, timeout=FETCH_TIMEOUT)  # (schemes checked above)
            length = answer.headers.get("Content-Length")
            return answer, int(length) if length and length.isdigit() else None
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DevshellError(f"cannot fetch {for_terminal(url)} ({for_terminal(str(reason))})",
                            "check the seed's from: (a directory, file://, http:// or https://) "
                            "and the network") from None
    raise DevshellError(f"cannot fetch {for_terminal(url)}: {for_terminal(parts.scheme)}: is not a way "
                        "devshell fetches", "use a directory, file://, http:// or https://")


def _download(url: str, path: str, sha256: str, size: int | None, *, limit: int,
              progress: Progress | None = None) -> None:
    """url into path, only if its bytes hash to sha256 (and number size, when known): through a
    partial file, renamed when whole; nothing is left behind otherwise."""
    import http.client
    import tempfile

    reader, length = _open(url)
    try:
        _store(os.path.dirname(path))
        # A name of its own, made exclusively (never through a link someone put there).
        fd, partial = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.", suffix=".partial",
                                       dir=os.path.dirname(path))
    except BaseException:
        reader.close()
        raise
    digest, got, started = hashlib.sha256(), 0, time.monotonic()
    try:
        with reader, os.fdopen(fd, "wb") as out:
            while chunk := reader.read(CHUNK):
                got += len(chunk)
                if got > limit:
                    raise DevshellError(f"{for_terminal(url)} is larger than its manifest says "
                                        f"({limit} bytes): not the entry's file",
                                        "check the seed's from: and key")
                digest.update(chunk)
                out.write(chunk)
                if progress:
                    progress(os.path.basename(url), got, size or length, time.monotonic() - started)
        if digest.hexdigest() != sha256 or (size is not None and got != size):
            raise DevshellError(f"checksum mismatch for {for_terminal(url)}: expected sha256 {sha256}, "
                                f"got {digest.hexdigest()} ({got} bytes)",
                                "the entry at the source is not the one pinned: pin the right sha256, "
                                "or publish the entry again")
        os.replace(partial, path)
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise DevshellError(f"cannot fetch {for_terminal(url)} ({for_terminal(str(reason))})",
                            "check the network, and the disk space in ~/.cache/devshell") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def terminal_progress(stream: Any = sys.stderr) -> Progress:
    """On a terminal, one line that updates (bytes, rate); otherwise a line per finished file."""
    tty = stream.isatty()
    last: dict[str, float] = {}

    def show(file: str, got: int, total: int | None, seconds: float) -> None:
        rate = got / seconds / (1 << 20) if seconds > 0 else 0.0
        of = f"/{total / (1 << 20):.1f}" if total else ""
        text = f"devshell: seed {file}: {got / (1 << 20):.1f}{of} MiB at {rate:.1f} MiB/s"
        if tty:
            if time.monotonic() - last.get(file, 0.0) > 0.2 or (total and got >= total):
                last[file] = time.monotonic()
                stream.write("\r" + text + ("\n" if total and got >= total else ""))
                stream.flush()
        elif total and got >= total:
            print(text, file=stream)

    return show


def describe(fetched: Fetched) -> str:
    sizes = {role: a["size"] for role, a in fetched.manifest["archives"].items() if a}
    return ", ".join(f"{role} {size / (1 << 20):.1f} MiB" for role, size in sizes.items())

