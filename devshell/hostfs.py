"""Host directories a devshell binds, handled as the agent could have left them.

The agent writes into the drop dir and the host cache between launches, and processes of other
devshells may run while this one launches. So every path here is walked one component at a time
from ``/`` with ``O_NOFOLLOW``: a component that became a symlink after ``realpath`` is an error,
never a detour. Directories are created the same way, and only those devshell creates are ever
given to dev; what exists keeps its owner and mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress

from .errors import DevshellError

# A directory reached by name, never through a symlink (the agent may have planted one).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The AI configuration is walked at every launch that binds it read-only; past this many
# entries it is not a configuration any more, and the walk must stay bounded.
MAX_CONFIG_ENTRIES = 10_000
MAX_CONFIG_DEPTH = 32


@contextmanager
def open_dir(path: str, *, create: int | None = None,
             owner: tuple[int, int] | None = None) -> Iterator[int]:
    """An fd of the directory at the absolute, symlink-free path, reached without following
    any link. With create=MODE, missing components are made with that mode; with owner, the
    last one is given to owner if devshell made it (never what already existed)."""
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", DIR_FLAGS)
    try:
        for n, part in enumerate(parts):
            here = "/" + "/".join(parts[:n + 1])
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise DevshellError(f"{here} does not exist", f"create {path}") from None
                child = _make(fd, part, here, create, owner if n == len(parts) - 1 else None)
            except OSError as e:
                raise _unopenable(fd, part, here, e) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def empty_dir(path: str, keep: Collection[str] = ()) -> None:
    """Remove everything below the directory path but the directories named in keep (absolute
    paths below it), which are emptied in turn. Never through a link: what the agent can write
    there (a reused devshell's drop dir and host cache, while its container runs) may swap a
    directory for a symlink at any moment, and every step goes by descriptor, refusing one."""

    def clear(fd: int, here: str) -> None:
        with os.scandir(fd) as entries:
            found = list(entries)  # read whole before any removal changes the directory
        for entry in found:
            inside = f"{here}/{entry.name}"
            if not entry.is_dir(follow_symlinks=False):
                with suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
                continue
            try:
                child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)  # a link swapped in: ELOOP
            except FileNotFoundError:
                continue
            try:
                clear(child, inside)
            finally:
                os.close(child)
            if not any(k == inside or k.startswith(inside + "/") for k in keep):
                os.rmdir(entry.name, dir_fd=fd)

    with open_dir(path) as fd:
        clear(fd, path.rstrip("/"))


def _make(parent: int, name: str, here: str, mode: int, owner: tuple[int, int] | None) -> int:
    made = True
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        made = False  # made meanwhile by someone else: then it is not ours to give away
    except OSError as e:
        raise DevshellError(f"cannot create {here} ({e.strerror})",
                            "check its parent's permissions") from None
    try:
        # Swapped for a symlink (or a file) since: an error like any other component's.
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        raise _unopenable(parent, name, here, e) from None
    if made and owner is not None:
        try:
            os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _unopenable(parent: int, name: str, here: str, e: OSError) -> DevshellError:
    """The error for a component that would not open as a directory: say so when it is a link."""
    what = ("is a symlink (never followed here)" if _is_link(parent, name)
            else f"cannot be opened ({e.strerror})")
    return DevshellError(f"{here} {what}", f"make {here} a plain directory")


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode)
    except OSError:
        return False


def read_regular(path: str, limit: int) -> bytes | None:
    """The first limit + 1 bytes of path (so a caller sees it is too long), or None when path
    is not a regular file (links followed, as open follows them). Looked at before it is
    opened, since opening some devices does something (a watchdog arms, a terminal becomes the
    controlling one), and again after, opened without waiting (a FIFO swapped in meanwhile
    blocks nothing). OSError as stat, open and read raise it."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else None


def identity(fd: int) -> str:
    """What the mount inside must be: the same device and inode (a path can be swapped)."""
    return identity_of(os.fstat(fd))


def identity_of(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def may_write(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether uid:gid may create files in the directory st describes (owner, group and other
    bits; ACLs and supplementary groups aside, as verify judges it inside)."""
    if st.st_uid == uid:
        return st.st_mode & 0o300 == 0o300
    if st.st_gid == gid:
        return st.st_mode & 0o030 == 0o030
    return st.st_mode & 0o003 == 0o003


def strict_problem(st: os.stat_result, uids: tuple[int, int], gids: tuple[int, int]) -> str | None:
    """Why a host path the agent writes in could be another user's to change: owned by neither
    the user nor dev, writable by others, or by a group that is neither's (like ssh's
    StrictModes). Root inside can chown and chmod what it has bound read-write."""
    if st.st_uid not in uids:
        return f"belongs to uid {st.st_uid}, neither yours nor dev's"
    if st.st_mode & 0o002:
        return "is writable by every user"
    if st.st_mode & 0o020 and st.st_gid not in gids:
        return f"is writable by group {st.st_gid}, neither yours nor dev's"
    return None


def config_problems(ai: str, memory_name: str) -> list[str]:
    """Why the AI configuration under ai/ (everything but ai/memory) would not be read-only
    inside although it is bound read-only: a file with another hard link (an earlier
    --ai-config-rw session could have linked it into memory, which stays writable) or a
    symlink that leads out of the configuration (into memory, or to an absolute path the agent
    can write inside). Walked without following links, depth first with one open directory
    per level, and bounded in entries and depth (an earlier session may have written it)."""
    problems: list[str] = []
    seen = 0

    def walk(fd: int, rel: str, depth: int) -> None:
        nonlocal seen
        if depth > MAX_CONFIG_DEPTH:
            raise DevshellError(f"{ai}/{rel} is nested deeper than {MAX_CONFIG_DEPTH} directories",
                                "keep only skills and settings.json in it")
        with os.scandir(fd) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_CONFIG_ENTRIES:
                    raise DevshellError(f"{ai} holds more than {MAX_CONFIG_ENTRIES} entries",
                                        "keep only skills and settings.json in it")
                name = f"{rel}{entry.name}"
                if name == memory_name:
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                    try:
                        walk(child, f"{name}/", depth + 1)
                    finally:
                        os.close(child)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.name, dir_fd=fd)
                    if not _stays_in_config(rel, target, memory_name):
                        problems.append(f"{ai}/{name} is a symlink to {target[:200]}, outside the "
                                        "read-only configuration")
                elif st.st_nlink > 1:
                    problems.append(f"{ai}/{name} has {st.st_nlink} hard links; one may be "
                                    "writable (an earlier --ai-config-rw session)")

    with open_dir(ai) as top:
        walk(top, "", 0)
    return problems


def _stays_in_config(rel: str, target: str, memory_name: str) -> bool:
    """A relative link target that, resolved lexically from its directory, stays inside ai/
    and out of memory (where a link to a link is judged at that link).

    Lexical resolution is exact only while '..' climbs real directories: the walk reached
    `rel` without following links, but a name inside the target may itself be a link, and
    '..' after it climbs from where that link leads (from ai/x/y/l -> ../../skills, 'l/../memory'
    is ai/memory, not ai/x/y/memory). So '..' may only lead the target."""
    if target.startswith("/"):
        return False
    parts = [p for p in rel.split("/") if p]
    descended = False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts or descended:
                return False
            parts.pop()
        else:
            parts.append(comp)
            descended = True
    return bool(parts) and parts[0] != memory_name
