"""Patch intake on the host: list, check and apply what the agent left in the patches dir.

Everything in the patches dir was written from inside the container (possibly by root there), so
all of it is hostile input. The host side:

- trusts one repository only: ``--repo DIR``, else the one holding the current directory; never
  one whose work tree or git dir lies in the patches dir or in devshell's drop-dir root, and it
  never looks for a repository from inside the patches dir (a .git planted there would make the
  host's git run the agent's config, attributes, filters and drivers);
- gives every git it runs a configuration it controls: no system or global config, no inherited
  GIT_* variable, hooks and fsmonitor off, no per-user or system attributes file;
- reads only regular files named ``*.patch`` at the top of the patches dir, through O_NOFOLLOW,
  within size limits (MAX_PATCH_BYTES each, MAX_PATCHES files, MAX_TOTAL_BYTES together); git
  only ever sees private copies of those bytes;
- reviews in a private scratch repository (a temp dir; it borrows the user's objects read-only
  through objects/info/alternates), so neither the user's repository config nor its attributes,
  filters or merge drivers run on agent input. The policy is judged on what git makes of the
  patches, not on our reading of their text: each mail is applied as ``git am --3way`` would, on
  top of the ones before, and the tree it produces is checked. A patch that touches a protected
  path or ``.git``, leaves a new or changed symlink that resolves out of the repository or into
  ``.git`` (through other symlinks too), or adds a gitlink (unless allowed), is refused, naming
  the patch and the path;
- applies all or nothing, and only what was reviewed: ``git am --3way`` runs in the scratch
  repository and must make the reviewed tree; then the work tree is checked (no symlink and no
  untracked file on a changed path), the new objects are copied into the user's repository, and
  its work tree and branch are fast-forwarded. Patches move to ``applied/`` only after success;
  nothing is ever deleted;
- reports what else the agent left there (nested .git, symlinks, special, setuid/setgid,
  capable, executable or foreign-owned files); apply refuses while dangerous ones are there;
- escapes control and bidi characters (and bytes that are not UTF-8) in all it prints as text.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import json
import os
import posixpath
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from .errors import DevshellError
from .options import default_patches_out, drops_root, inside

# .devcontainer.json is the other place the dev container spec reads; its initializeCommand
# runs on the host.
DEFAULT_PROTECTED = (".github/workflows/**", ".gitmodules", ".gitattributes", ".devcontainer/**",
                     ".devcontainer.json")
APPLIED = "applied"
SYMLINK = "120000"
GITLINK = "160000"
ABSENT = "000000"
MAX_LINK_DEPTH = 40

# What the host reads from the patches dir is bounded: a sparse file can claim any size.
MAX_PATCH_BYTES = 8 << 20
MAX_PATCHES = 1000
MAX_TOTAL_BYTES = 64 << 20
MAX_MAILS = 1000  # per patch file: each mail costs two git processes
MAX_DIR_ENTRIES = 100_000  # the top of the patches dir, scanned for *.patch
MAX_WALK_ENTRIES = 10_000  # the walk for leftovers
MAX_WALK_DEPTH = 32

# Every git devshell runs: no hooks, no fsmonitor (both run commands), no per-user attributes
# file (it may name filters), and no gc or maintenance started behind our back.
HARDENED = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
            "-c", "core.attributesFile=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false")


@dataclass(frozen=True)
class Commit:
    """One mail of a patch file as `git am` reads it (git mailsplit + git mailinfo)."""

    subject: str
    author: str
    diff: bytes


@dataclass(frozen=True)
class Patch:
    name: str
    data: bytes
    commits: tuple[Commit, ...]
    files: int
    insertions: int
    deletions: int

    @property
    def subject(self) -> str:
        more = len(self.commits) - 1
        return self.commits[0].subject + (f" (+{more} more commit(s) in this file)" if more else "")

    @property
    def author(self) -> str:
        return self.commits[0].author

    def diffstat(self) -> str:
        return (f"{self.files} file{'s' if self.files != 1 else ''} changed, "
                f"{self.insertions} insertion(s)(+), {self.deletions} deletion(s)(-)")


@dataclass
class Verdict:
    patch: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Leftover:
    """Something in the patches dir that is not a patch and deserves a look."""

    path: str
    what: tuple[str, ...]
    dangerous: bool

    def line(self) -> str:
        return f"LEFTOVER {self.path}: {', '.join(self.what)}" + (" (dangerous)" if self.dangerous else "")

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "what": list(self.what), "dangerous": self.dangerous}


# --- git, under devshell's configuration ------------------------------------------------------

def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git devshell runs: no GIT_* variable of the caller (GIT_DIR,
    GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT/KEY/VALUE, GIT_EXEC_PATH …), no system or global
    config or system attributes, no replace refs (review and apply must see the same objects)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_ATTR_NOSYSTEM="1",
               GIT_NO_REPLACE_OBJECTS="1", GIT_TERMINAL_PROMPT="0")
    return {**env, **(extra or {})}


def _run(argv: Sequence[str], cwd: str, env: dict[str, str] | None = None,
         stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        if stdin is None:
            return subprocess.run(["git", *HARDENED, *argv], cwd=cwd, env=git_env(env),
                                  capture_output=True, stdin=subprocess.DEVNULL)
        return subprocess.run(["git", *HARDENED, *argv], cwd=cwd, env=git_env(env), input=stdin,
                              capture_output=True)
    except OSError as e:
        raise DevshellError(f"cannot run git in {_show(cwd)} ({e.strerror})",
                            "install git, or check the path") from None


def _failed(args: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> DevshellError:
    return DevshellError(f"git {' '.join(args[:2])} failed: {_show(_first_line(_decode(done.stderr)))}",
                         "check the repository")


@dataclass(frozen=True)
class Repo:
    """A repository devshell has decided to trust, addressed explicitly (no discovery)."""

    top: str
    git_dir: str

    def run(self, *args: str, env: dict[str, str] | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _run([f"--git-dir={self.git_dir}", f"--work-tree={self.top}", *args], self.top, env, stdin)

    def out(self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> bytes:
        """Raw output of a git command that must succeed (paths may be any bytes)."""
        done = self.run(*args, env=env, stdin=stdin)
        if done.returncode:
            raise _failed(args, done)
        return done.stdout

    def line(self, *args: str, env: dict[str, str] | None = None) -> str:
        return _decode(self.out(*args, env=env)).strip()


@dataclass(frozen=True)
class Scratch(Repo):
    tmp: str = ""  # private files beside the scratch repository (diffs, patch copies)


class NoRepo(DevshellError):
    """The start directory is in no git work tree (list still lists then)."""


def _fences(patches_dir: str | None) -> list[tuple[str, str]]:
    fences = [(os.path.realpath(drops_root(os.path.expanduser("~"), os.environ)), "devshell's drop-dir root")]
    if patches_dir is not None:
        fences.insert(0, (os.path.realpath(patches_dir), "the patches dir"))
    return fences


def open_repo(start: str, patches_dir: str | None = None) -> Repo:
    """The repository holding start, if devshell may trust it: neither start nor the repository's
    work tree or git dirs lie in the patches dir or the drop-dir root (agent-written places)."""
    fences = _fences(patches_dir)
    real = os.path.realpath(start)
    for fence, what in fences:
        # Checked before git runs: git's own discovery would already read a planted .git's config.
        if inside(real, fence):
            raise DevshellError(f"refusing to look for a repository in {_show(real)}: it lies in "
                                f"{what} {_show(fence)}, which the agent writes",
                                "run devshell patches in your own checkout, or pass --repo DIR")
    if not os.path.isdir(real):
        raise DevshellError(f"{_show(start)} is not a directory", "pass --repo DIR")
    done = _run(["rev-parse", "--path-format=absolute", "--show-toplevel", "--git-dir",
                 "--git-common-dir"], real)
    lines = _decode(done.stdout).splitlines()
    if done.returncode or len(lines) != 3:
        raise NoRepo(f"{_show(start)} is not in a git work tree "
                     f"({_show(_first_line(_decode(done.stderr)))})", "pass --repo DIR")
    top, git_dir, common = (os.path.realpath(p) for p in lines)
    for path in (top, git_dir, common):
        for fence, what in fences:
            if inside(path, fence):
                raise DevshellError(f"refusing repository {_show(top)}: {_show(path)} lies in {what} "
                                    f"{_show(fence)}, which the agent writes",
                                    "pass --repo DIR with your own checkout")
    return Repo(top, git_dir)


def _as_repo(repo: str | Repo, patches_dir: str | None = None) -> Repo:
    return repo if isinstance(repo, Repo) else open_repo(repo, patches_dir)


@contextmanager
def scratch(user: Repo) -> Iterator[Scratch]:
    """A private repository in a temp dir that sees the user's objects (read-only, through
    objects/info/alternates) and nothing else of it: no config, attributes, hooks or refs.
    New objects land in the scratch repository only."""
    fmt = user.line("rev-parse", "--show-object-format")
    objects = user.line("rev-parse", "--path-format=absolute", "--git-path", "objects")
    with tempfile.TemporaryDirectory(prefix="devshell-scratch-") as d:
        top = os.path.join(d, "repo")
        done = _run(["init", "-q", "--template=", f"--object-format={fmt}", "-b", "devshell", top],
                    d, {"GIT_CEILING_DIRECTORIES": d})
        if done.returncode:
            raise _failed(["init"], done)
        git_dir = os.path.join(top, ".git")
        info = os.path.join(git_dir, "objects", "info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "alternates"), "w", encoding="utf-8",
                  errors="surrogateescape") as f:
            f.write(objects + "\n")
        yield Scratch(top, git_dir, d)


@contextmanager
def _nowhere() -> Iterator[str]:
    """A private temp dir that is no repository, where git cannot find one above either."""
    with tempfile.TemporaryDirectory(prefix="devshell-mail-") as d:
        yield d


def _loose(d: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return _run(args, d, {"GIT_CEILING_DIRECTORIES": os.path.dirname(d)}, stdin)


def _first_line(text: str) -> str:
    """git's reason: its first error: or fatal: line, else its first line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "fatal:"))]
    return (errors or lines or ["(no message)"])[0]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# --- output ----------------------------------------------------------------------------------

_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029}
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def _show(text: str) -> str:
    """text safe for a terminal: C0, DEL and C1 controls (so every ANSI escape), bidi overrides
    and line separators become escapes, and so do bytes that were not UTF-8 (surrogateescape)."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif o in _BIDI or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _say(line: str, err: bool = False) -> None:
    """One line to a terminal, escaped, in whatever encoding it has (never a UnicodeError)."""
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(_show(line).encode(encoding, "backslashreplace").decode(encoding), file=stream)


# --- reading ---------------------------------------------------------------------------------

def _open_dir(patches_dir: str) -> int:
    try:
        return os.open(patches_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise DevshellError(f"cannot read patches dir {_show(patches_dir)} ({e.strerror})",
                            "pass --patches-dir DIR") from None


def read_dir(patches_dir: str) -> tuple[list[Patch], list[str]]:
    """The *.patch files at the top of patches_dir, in name order, and what was skipped (why)."""
    top = _open_dir(patches_dir)
    try:
        patches, skipped, budget = [], [], MAX_TOTAL_BYTES
        for name in _patch_names(top, patches_dir):
            data = _read_patch(top, name, budget)
            if isinstance(data, str):
                skipped.append(f"{name}: {data}")
                continue
            budget -= len(data)
            try:
                patches.append(parse(name, data))
            except ValueError as e:
                skipped.append(f"{name}: {e}")
        return patches, skipped
    finally:
        os.close(top)


def _patch_names(top: int, patches_dir: str) -> list[str]:
    names: list[str] = []
    with os.scandir(top) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_DIR_ENTRIES:
                raise DevshellError(f"{_show(patches_dir)} holds more than {MAX_DIR_ENTRIES} entries",
                                    "clear out the patches dir")
            if entry.name.endswith(".patch"):
                names.append(entry.name)
            if len(names) > MAX_PATCHES:
                # A subset of a series would not be the series: refuse rather than pick some.
                raise DevshellError(f"more than {MAX_PATCHES} *.patch files in {_show(patches_dir)}",
                                    "move some away and apply the series in parts")
    return sorted(names)


def _read_patch(top: int, name: str, budget: int) -> bytes | str:
    """The bytes of one regular file, or why not. lstat first: opening a device node can have
    effects, and a FIFO would block; O_NOFOLLOW and fstat then close the race with a swap."""
    not_regular = "not a regular file (a symlink is never followed)"
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=top, follow_symlinks=False).st_mode):
            return not_regular
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=top)
    except OSError as e:
        return not_regular if e.errno == errno.ELOOP else f"cannot open it ({e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return not_regular
        if st.st_size > MAX_PATCH_BYTES:
            return f"{st.st_size} bytes, over the limit of {_mib(MAX_PATCH_BYTES)} per patch file"
        if st.st_size > budget:
            return f"{st.st_size} bytes, over the limit of {_mib(MAX_TOTAL_BYTES)} for all patches together"
        limit = min(MAX_PATCH_BYTES, budget)
        data = _read_at_most(fd, limit)
        if data is None:
            return f"grew while it was read, past the limit of {_mib(limit)}"
        return data
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _read_at_most(fd: int, limit: int) -> bytes | None:
    """All of fd if it holds at most limit bytes, else None (never more than limit + 1 read)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


def parse(name: str, data: bytes) -> Patch:
    """A patch file as `git am` will read it: split into mails and each mail into author,
    subject and diff by git itself (with devshell's config, as in the scratch repository where
    git am runs), never by us."""
    with _nowhere() as d:
        commits = split(data, d)
        files = insertions = deletions = 0
        for commit in commits:
            f, i, dl = _numstat(commit.diff, d)
            files, insertions, deletions = files + f, insertions + i, deletions + dl
    return Patch(name, data, commits, files, insertions, deletions)


def split(data: bytes, d: str) -> tuple[Commit, ...]:
    """The mails of data (at most MAX_MAILS), in the private dir d. Every file git writes here
    comes from data, so it is no bigger than data."""
    mbox, mails = os.path.join(d, "mbox"), os.path.join(d, "mails")
    os.mkdir(mails)
    with open(mbox, "wb") as f:
        f.write(data)
    # The same split as git am: -b takes a file without a 'From ' line as one mail.
    if _loose(d, "mailsplit", "-b", f"-o{mails}", "--", mbox).returncode:
        raise ValueError("not a mailbox git am can read")
    names = sorted(os.listdir(mails))
    if len(names) > MAX_MAILS:
        raise ValueError(f"more than {MAX_MAILS} mails in it")
    commits = []
    for mail in names:
        msg, diff = os.path.join(d, "msg"), os.path.join(d, "diff")
        with open(os.path.join(mails, mail), "rb") as f:
            info = _loose(d, "mailinfo", msg, diff, stdin=f.read())
        if info.returncode:
            raise ValueError("a mail git mailinfo cannot read")
        fields = dict(line.partition(": ")[::2] for line in
                      _decode(info.stdout).splitlines() if ": " in line)
        with open(diff, "rb") as f:
            body = f.read()
        author = f"{fields.get('Author', '')} <{fields.get('Email', '')}>"
        if not fields.get("Subject") or not fields.get("Email"):
            raise ValueError("not a git format-patch mail (no From: or Subject: header)")
        if not body.strip():
            raise ValueError("carries no diff (git am would stop on it)")
        commits.append(Commit(fields["Subject"], author, body))
    if not commits:
        raise ValueError("no mail in it")
    return tuple(commits)


def _numstat(diff: bytes, d: str) -> tuple[int, int, int]:
    """git's own count: files changed (a rename is one), lines added and removed."""
    done = _loose(d, "apply", "--numstat", "-z", "-", stdin=diff)
    if done.returncode or not done.stdout:
        raise ValueError("carries no diff git can read")
    files = insertions = deletions = 0
    fields = done.stdout.split(b"\0")
    i = 0
    while i < len(fields) and fields[i]:
        added, deleted, path = fields[i].split(b"\t", 2)
        files += 1
        insertions += int(added) if added.isdigit() else 0
        deletions += int(deleted) if deleted.isdigit() else 0
        i += 3 if path == b"" else 1  # a rename: the two paths follow in their own fields
    return files, insertions, deletions


# --- leftovers -------------------------------------------------------------------------------

class _Cut(Exception):
    pass


def leftovers(patches_dir: str) -> list[Leftover]:
    """What the agent left in the patches dir that deserves a look, walked through directory fds
    opened with O_NOFOLLOW (no link is ever followed, no file opened), at most MAX_WALK_ENTRIES
    entries and MAX_WALK_DEPTH levels deep. Plain files and directories are not reported."""
    top = _open_dir(patches_dir)
    walk = _Walk({os.getuid(), os.fstat(top).st_uid}, os.path.realpath(patches_dir))
    try:
        walk.dir(top, "", 1)
    except _Cut:
        pass
    finally:
        os.close(top)
    return walk.found


class _Walk:
    def __init__(self, owners: set[int], real_top: str) -> None:
        self.owners, self.real_top = owners, real_top
        self.found: list[Leftover] = []
        self.seen = 0

    def dir(self, fd: int, rel: str, depth: int) -> None:
        with os.scandir(fd) as entries:
            for entry in entries:
                self.seen += 1
                if self.seen > MAX_WALK_ENTRIES:
                    self.found.append(Leftover(rel or ".", (
                        f"the walk stopped after {MAX_WALK_ENTRIES} entries; the rest is unchecked",), True))
                    raise _Cut
                path = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone meanwhile
                what, dangerous = self.judge(fd, entry.name, path, st)
                if stat.S_ISDIR(st.st_mode) and not _is_git(entry.name):
                    more = self.descend(fd, entry.name, path, depth)
                    what, dangerous = what + more, dangerous or bool(more)
                if what:
                    self.found.append(Leftover(path, tuple(what), dangerous))

    def descend(self, fd: int, name: str, path: str, depth: int) -> list[str]:
        """Walk into a directory; what is wrong with it if that is not possible (unchecked)."""
        if depth >= MAX_WALK_DEPTH:
            return [f"deeper than {MAX_WALK_DEPTH} levels; not walked further"]
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
                          | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            return [f"cannot be walked ({e.strerror}); unchecked"]
        try:
            self.dir(sub, path, depth + 1)
        finally:
            os.close(sub)
        return []

    def judge(self, fd: int, name: str, path: str, st: os.stat_result) -> tuple[list[str], bool]:
        what: list[str] = []
        bad = False
        mode = st.st_mode
        if _is_git(name):
            what.append("a nested .git (git run there would use its config, hooks and attributes)")
            bad = True
        if stat.S_ISLNK(mode):
            target = _decode(os.fsencode(os.readlink(name, dir_fd=fd)))
            # realpath only reads links (lstat, readlink), it opens nothing.
            out = not inside(os.path.realpath(os.path.join(self.real_top, path)), self.real_top)
            what.append(f"symlink -> {target}" + (", leading out of the patches dir" if out else ""))
            bad = bad or out
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            what.append("a device node")
            bad = True
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            what.append("a FIFO" if stat.S_ISFIFO(mode) else "a socket")
            bad = True
        elif stat.S_ISREG(mode):
            # setgid on a directory only passes its group on (and may be inherited from the host's
            # parent dir), so only files count.
            for bit, word in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")):
                if mode & bit:
                    what.append(word)
                    bad = True
            if mode & 0o111:
                what.append("executable")
            caps = _capabilities(fd, name, os.path.join(self.real_top, path))
            if caps:
                what.append(caps)
                bad = bad or caps == "file capabilities"
        if st.st_uid not in self.owners:
            what.append(f"owned by uid {st.st_uid}")
            bad = True
        return what, bad


def _capabilities(fd: int, name: str, path: str) -> str | None:
    """'file capabilities' if the file carries security.capability, never following a link.
    Through /proc/self/fd the directory is the one the walk holds, not one swapped in since."""
    if not hasattr(os, "getxattr"):
        return None
    where = f"/proc/self/fd/{fd}/{name}" if os.path.isdir(f"/proc/self/fd/{fd}") else path
    try:
        os.getxattr(where, "security.capability", follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        return f"capabilities unknown ({e.strerror})"
    return "file capabilities"


# --- policy ----------------------------------------------------------------------------------

def path_problems(path: str, protected: Sequence[str]) -> list[str]:
    """Why a changed path may not come from the agent."""
    if any(_is_git(part) for part in path.split("/")):
        return [f"touches {path} (inside .git)"]
    for glob in protected:
        if _protected(path, glob):
            return [f"touches protected path {path} (matches {glob})"]
    return []


def _protected(path: str, glob: str) -> bool:
    """fnmatch, where '*' also crosses '/'; a glob without '/' matches a name at any depth
    (.gitattributes and .gitmodules act in every directory)."""
    if "/" not in glob:
        return fnmatch.fnmatchcase(posixpath.basename(path), glob)
    return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, glob.removesuffix("/**"))


def _is_git(part: str) -> bool:
    return part.lower().rstrip(". ") == ".git"


class LinkResolver:
    """Resolves symlinks inside one tree (path -> target), as the kernel would, each link once:
    a chain of links that refer to each other several times costs linear, not exponential, time."""

    def __init__(self, links: dict[str, str]) -> None:
        self.links = links
        self.done: dict[str, list[str] | str] = {}
        self.active: set[str] = set()

    def escapes(self, link: str) -> str | None:
        """None if the link at path `link` stays in the repository and out of any .git."""
        result = self._resolve(link)
        return result if isinstance(result, str) else None

    def _resolve(self, link: str) -> list[str] | str:
        if link in self.done:
            return self.done[link]
        if link in self.active or len(self.active) > MAX_LINK_DEPTH:
            return "a symlink loop"
        self.active.add(link)
        try:
            result = self._walk(link.split("/")[:-1], self.links[link])
        finally:
            self.active.discard(link)
        self.done[link] = result
        return result

    def _walk(self, base: list[str], target: str) -> list[str] | str:
        if target.startswith("/"):
            return f"an absolute path ({target})"
        parts = list(base)
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    return "outside the repository"
                parts.pop()
                continue
            parts.append(comp)
            if _is_git(comp):
                return "into .git"
            here = "/".join(parts)
            if here in self.links:
                resolved = self._resolve(here)
                if isinstance(resolved, str):
                    return resolved
                parts = list(resolved)
        return parts


def link_escapes(link: str, links: dict[str, str]) -> str | None:
    """Where the symlink at path `link` leads, in a tree whose symlinks are `links`: None if it
    stays in the repository and out of .git, else why not."""
    return LinkResolver(links).escapes(link)


def _protected_dirs(protected: Sequence[str]) -> set[str]:
    """The literal directories of the protected globs (.github, .github/workflows, …): a symlink
    there would put a protected path's contents under another name."""
    out = set()
    for glob in protected:
        parts = glob.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            if any(c in "".join(parts[:n]) for c in "*?["):
                break
            out.add("/".join(parts[:n]))
    return out


# --- review ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    old_mode: str
    new_mode: str
    path: str


def _changes(repo: Repo, old: str, new: str) -> list[Change]:
    """Every path that differs between two trees, with its modes (git diff-tree, raw, -z)."""
    fields = repo.out("diff-tree", "-r", "-z", "--no-renames", old, new).split(b"\0")
    out = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):  # a trailing "" is left over
        if meta.startswith(b":"):
            modes = meta[1:].split()
            out.append(Change(modes[0].decode(), modes[1].decode(), _decode(path)))
    return out


def tree_problems(repo: str | Repo, old: str, new: str, protected: Sequence[str],
                  allow_gitlinks: bool = False) -> list[str]:
    """What is wrong with going from tree old to tree new: changed paths that are protected or
    in .git; new or changed gitlinks (a submodule commit; git may fetch and check it out later);
    symlinks placed where a protected directory is; and any symlink that leads out of the
    repository or into .git in new but did not in old (a new or changed link, or an unchanged
    one that a changed directory now sends elsewhere)."""
    r = _as_repo(repo)
    changes = _changes(r, old, new)
    changed = [c.path for c in changes]
    out = [why for path in changed for why in path_problems(path, protected)]
    if not allow_gitlinks:
        out += [f"adds gitlink {c.path} (a submodule commit); --allow-gitlinks accepts it"
                for c in changes if c.new_mode == GITLINK]
    before, after = _links(r, old), _links(r, new)
    guarded = _protected_dirs(protected)
    out += [f"puts symlink {link} where protected directory {link}/ belongs"
            for link in sorted(set(changed) & after.keys() & guarded)]
    was, now = LinkResolver(before), LinkResolver(after)
    for link in sorted(after):
        why = now.escapes(link)
        if not why:
            continue
        if link in changed or link not in before:
            out.append(f"creates symlink {link} -> {after[link]}, which leads {why}")
        elif not was.escapes(link):
            out.append(f"makes symlink {link} -> {after[link]} lead {why}")
    return out


def _links(repo: Repo, tree: str) -> dict[str, str]:
    """Every symlink in tree: path -> target."""
    shas: dict[str, str] = {}
    for entry in repo.out("ls-tree", "-r", "-z", "--full-tree", tree).split(b"\0"):
        meta, _, name = entry.partition(b"\t")
        if meta.startswith(SYMLINK.encode()):
            shas[_decode(name)] = meta.split()[2].decode()
    return dict(zip(shas, _blobs(repo, list(shas.values())), strict=True))


def _blobs(repo: Repo, shas: list[str]) -> list[str]:
    """Contents of blobs (symlink targets), in order, from one git cat-file --batch."""
    if not shas:
        return []
    raw = repo.out("cat-file", "--batch", stdin="".join(f"{s}\n" for s in shas).encode())
    out, i = [], 0
    for _ in shas:
        header_end = raw.index(b"\n", i)
        size = int(raw[i:header_end].split()[2])
        out.append(_decode(raw[header_end + 1:header_end + 1 + size]))
        i = header_end + 1 + size + 1
    return out


def _head(user: Repo) -> str:
    done = user.run("rev-parse", "--verify", "-q", "HEAD^{commit}")
    if done.returncode:
        raise DevshellError(f"{_show(user.top)} has no commit yet", "commit something first")
    return _decode(done.stdout).strip()


def review(patches: Sequence[Patch], repo: str | Repo, protected: Sequence[str],
           allow_gitlinks: bool = False) -> tuple[list[Verdict], str | None]:
    """Apply each mail of each patch, in order, on top of the ones before it, as `git am --3way`
    would, in a scratch repository on top of the user's HEAD (the user's repository does not
    change and none of its config runs), and judge the tree each one makes. Returns the
    verdicts and the final tree (None when a patch does not apply)."""
    user = _as_repo(repo)
    head = _head(user)
    with scratch(user) as s:
        return _review(patches, s, head, protected, allow_gitlinks)


def _review(patches: Sequence[Patch], s: Scratch, head: str, protected: Sequence[str],
            allow_gitlinks: bool) -> tuple[list[Verdict], str | None]:
    verdicts = [Verdict(p.name) for p in patches]
    s.out("read-tree", head)
    tree = s.line("rev-parse", f"{head}^{{tree}}")
    diff_file = os.path.join(s.tmp, "diff")
    for n, (verdict, patch) in enumerate(zip(verdicts, patches, strict=True)):
        for commit in patch.commits:  # split by git at read time, with the same config as here
            with open(diff_file, "wb") as f:
                f.write(commit.diff)
            done = s.run("apply", "--cached", "--3way", diff_file)
            if done.returncode:
                verdict.problems.append(f"does not apply: {_first_line(_decode(done.stderr))}")
                for later in verdicts[n + 1:]:
                    later.problems.append(f"not checked: it builds on {verdict.patch}, which does not apply")
                return verdicts, None
            new = s.line("write-tree")
            verdict.problems += tree_problems(s, tree, new, protected, allow_gitlinks)
            tree = new
    return verdicts, tree


def check(patches: Sequence[Patch], repo: str | Repo, protected: Sequence[str],
          allow_gitlinks: bool = False) -> list[Verdict]:
    """Whether each patch is well-formed, allowed, and applies in order to HEAD."""
    return review(patches, repo, protected, allow_gitlinks)[0]


# --- apply -----------------------------------------------------------------------------------

def committer(user: Repo) -> dict[str, str]:
    """The user's committer identity as the user's own git sees it (GIT_COMMITTER_NAME/EMAIL,
    else user.name/user.email of their normal configuration, else git's fallbacks), for the
    commits git am makes in the scratch repository, which reads no user config."""
    try:
        done = subprocess.run(["git", f"--git-dir={user.git_dir}", "var", "GIT_COMMITTER_IDENT"],
                              cwd=user.top, capture_output=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise DevshellError(f"cannot run git ({e.strerror})", "install git") from None
    m = re.fullmatch(r"(.*) <(.*)> \d+ [-+]\d{4}", _decode(done.stdout).strip())
    if done.returncode or not m:
        why = _show(_first_line(_decode(done.stderr)))
        raise DevshellError(f"git knows no committer identity for you ({why})",
                            "git config --global user.name 'Your Name'; "
                            "git config --global user.email you@example.com")
    return {"GIT_COMMITTER_NAME": m[1], "GIT_COMMITTER_EMAIL": m[2]}


def apply(patches: Sequence[Patch], repo: str | Repo, patches_dir: str, protected: Sequence[str],
          allow_gitlinks: bool = False) -> list[str]:
    """git am --3way, all or nothing, of exactly what review() accepted, then move the patches
    to applied/. Returns their new names. A refused or failing series changes nothing."""
    user = _as_repo(repo, patches_dir)
    if any(os.path.exists(os.path.join(user.git_dir, d)) for d in ("rebase-apply", "rebase-merge")):
        raise DevshellError(f"{_show(user.top)} has an am or rebase in progress", "finish or abort it first")
    if user.out("--no-optional-locks", "status", "--porcelain", "--untracked-files=no").strip():
        raise DevshellError(f"{_show(user.top)} has uncommitted changes", "commit or stash them first")
    head = _head(user)
    done = user.run("symbolic-ref", "-q", "HEAD")
    branch = _decode(done.stdout).strip() if done.returncode == 0 else None
    ident = committer(user)
    with scratch(user) as s:
        verdicts, reviewed = _review(patches, s, head, protected, allow_gitlinks)
        bad = [f"{v.patch}: {why}" for v in verdicts for why in v.problems]
        if bad or reviewed is None:
            more = f" (+{len(bad) - 1} more; see devshell patches check)" if len(bad) > 1 else ""
            fix = ("rebase the work inside the devshell and format the patches again"
                   if reviewed is None else
                   "review the patch; --allow-protected accepts protected paths (never .git or an "
                   "outward symlink), --allow-gitlinks accepts gitlinks")
            raise DevshellError(f"refusing {_show(bad[0])}{more}", fix)
        new = _am(s, patches, head, reviewed, ident)
        changes = _changes(s, head, new)
        _check_work_tree(user, changes)
        # Only objects move into the user's repository: plumbing, no transport, no hooks.
        pack = s.out("pack-objects", "--revs", "--stdout", "-q", stdin=f"{new}\n^{head}\n".encode())
        user.out("unpack-objects", "-q", stdin=pack)
    _fast_forward(user, branch, head, new, ident, len(patches))
    return [_archive(patches_dir, p.name) for p in patches]


def _am(s: Scratch, patches: Sequence[Patch], head: str, reviewed: str, ident: dict[str, str]) -> str:
    """git am --3way in the scratch repository, on a checkout of head; the commit it makes,
    which must carry the reviewed tree."""
    s.out("update-ref", "refs/heads/devshell", head)
    s.out("read-tree", "-u", "--reset", head)
    files = []
    for n, patch in enumerate(patches):  # private copies of the bytes read and reviewed
        files.append(os.path.join(s.tmp, f"{n:04d}.patch"))
        with open(files[-1], "wb") as f:
            f.write(patch.data)
    # am runs only on a series review accepted: no symlink it adds leads out of the tree, and git
    # itself refuses to write beyond a tracked symlink, so it stays in the scratch work tree.
    done = s.run("am", "--3way", "--quiet", *files, env=ident)
    if done.returncode:
        raise DevshellError(f"git am failed, nothing applied: "
                            f"{_show(_first_line(_decode(done.stdout + done.stderr)))}",
                            "rebase the work inside the devshell and format the patches again")
    if s.line("rev-parse", "HEAD^{tree}") != reviewed:
        raise DevshellError("git am made a different tree than the one reviewed; nothing applied",
                            "apply the patches by hand after reading them")
    return s.line("rev-parse", "HEAD")


def _check_work_tree(user: Repo, changes: Sequence[Change]) -> None:
    """Refuse when the work tree holds something git would write through or over: a symlink or
    an untracked file as a leading component of a changed path, or anything where a path is
    added. lstat only: nothing is followed. (git apply follows an untracked symlinked directory.)"""
    gone = {c.path for c in changes if c.new_mode == ABSENT}
    for c in changes:
        parts = c.path.split("/")
        for n in range(1, len(parts)):
            lead = "/".join(parts[:n])
            try:
                st = os.lstat(os.path.join(user.top, lead))
            except FileNotFoundError:
                break  # git makes the directories
            except OSError as e:
                raise _in_the_way(user, lead, c.path, f"unreadable ({e.strerror})") from None
            if stat.S_ISDIR(st.st_mode):
                continue
            if lead in gone:
                break  # a tracked file or link the series removes; git puts a directory there
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "an untracked file"
            raise _in_the_way(user, lead, c.path, what)
        else:
            if c.old_mode == ABSENT and os.path.lexists(os.path.join(user.top, c.path)):
                raise _in_the_way(user, c.path, c.path, "untracked")


def _in_the_way(user: Repo, where: str, path: str, what: str) -> DevshellError:
    return DevshellError(f"refusing: {_show(where)} in {_show(user.top)} is {what}, in the way of "
                         f"{_show(path)}; nothing applied", f"move {_show(where)} away and apply again")


def _fast_forward(user: Repo, branch: str | None, head: str, new: str, ident: dict[str, str],
                  count: int) -> None:
    """Work tree and index from head to new (two-tree read-tree: it checks every path before it
    writes one and refuses to overwrite untracked files), then the branch, only if it still
    points at head; when that fails the work tree and index go back."""
    done = user.run("read-tree", "-m", "-u", head, new)
    if done.returncode:
        raise DevshellError(f"git read-tree refused to update the work tree, nothing applied: "
                            f"{_show(_first_line(_decode(done.stderr)))}", "check the work tree")
    ref = ["HEAD", "--no-deref"] if branch is None else [branch]
    done = user.run("update-ref", "-m", f"devshell patches apply: {count} patch file(s)",
                    *ref[1:], ref[0], new, head, env=ident)
    if done.returncode:
        user.run("read-tree", "-m", "-u", new, head)
        raise DevshellError(f"cannot move {ref[0]} to the new commits, nothing applied: "
                            f"{_show(_first_line(_decode(done.stderr)))}", "check the repository")


def _archive(patches_dir: str, name: str) -> str:
    """Move name into applied/, never over an existing file, and through directory fds opened
    with O_NOFOLLOW: an applied/ that the container made a symlink leads nowhere."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    top = os.open(patches_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with suppress(FileExistsError):
            os.mkdir(APPLIED, dir_fd=top)
        try:
            applied = os.open(APPLIED, flags, dir_fd=top)
        except OSError:
            raise DevshellError(f"{_show(patches_dir)}/{APPLIED} is not a directory (a symlink is never "
                                "followed); the patches were applied but not moved",
                                f"remove {_show(patches_dir)}/{APPLIED} and move them by hand") from None
        try:
            for n in range(1000):
                target = name if n == 0 else f"{name}.{n}"
                try:
                    os.link(name, target, src_dir_fd=top, dst_dir_fd=applied, follow_symlinks=False)
                except FileExistsError:
                    continue
                os.unlink(name, dir_fd=top)
                return f"{APPLIED}/{target}"
            raise DevshellError(f"too many copies of {_show(name)} in {APPLIED}/", "tidy it up")
        finally:
            os.close(applied)
    finally:
        os.close(top)


# --- command line ----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    from .options import _Parser

    p = _Parser(prog="devshell patches", allow_abbrev=False,
                description="Review and apply the patches a devshell left in the patches dir.")
    p.add_argument("action", choices=["list", "check", "apply"])
    p.add_argument("--patches-dir", metavar="DIR",
                   help="where the patches are (default: the drop dir devshell bound at /patches "
                        "for the current directory)")
    p.add_argument("--repo", metavar="DIR",
                   help="the repository to check or apply against (default: the one holding cwd; "
                        "never one inside the patches dir)")
    p.add_argument("--protect", action="append", default=[], metavar="GLOB",
                   help=f"also refuse patches touching GLOB (default: {', '.join(DEFAULT_PROTECTED)})")
    p.add_argument("--allow-protected", action="store_true",
                   help="accept patches that touch protected paths (.git and symlinks leading out "
                        "of the repository are always refused)")
    p.add_argument("--allow-gitlinks", action="store_true",
                   help="accept patches that add or change gitlinks (submodule commits)")
    p.add_argument("--ignore-leftovers", action="store_true",
                   help="apply even though the patches dir holds dangerous leftovers (they are "
                        "reported, never applied, moved or deleted)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str]) -> int:
    ns = parser().parse_args(list(argv))
    if ns.patches_dir:
        patches_dir = os.path.abspath(ns.patches_dir)
    else:
        patches_dir = default_patches_out(os.path.realpath(os.getcwd()), os.path.expanduser("~"), os.environ)
    # The repository is settled first, so that nothing is read while a refused one is in play.
    try:
        repo: Repo | None = open_repo(ns.repo or os.getcwd(), patches_dir)
    except NoRepo:
        if ns.repo or ns.action != "list":
            raise
        repo = None  # list still lists, without verdicts
    patches, skipped = read_dir(patches_dir)
    found = leftovers(patches_dir)
    for line in skipped:
        _say(f"devshell: skipped {line}", err=True)
    protected = [] if ns.allow_protected else [*DEFAULT_PROTECTED, *ns.protect]
    dangerous = [lo for lo in found if lo.dangerous]
    if ns.action == "list":
        verdicts = (check(patches, repo, protected, ns.allow_gitlinks) if repo and patches
                    else [Verdict(p.name) for p in patches])
        rows = [{"patch": p.name, "subject": p.subject, "author": p.author,
                 "diffstat": p.diffstat(), "problems": v.problems}
                for p, v in zip(patches, verdicts, strict=True)]
        if ns.json:
            print(json.dumps({"patches": rows, "leftovers": [lo.as_json() for lo in found],
                              "skipped": skipped}, indent=2))
            return 0
        for p, v in zip(patches, verdicts, strict=True):
            _say(p.name)
            _say(f"    {p.subject}")
            _say(f"    {p.author} \N{MIDDLE DOT} {p.diffstat()}")
            for why in v.problems:
                _say(f"    REFUSED: {why}")
        for lo in found:
            _say(lo.line())
        return 0
    if not patches and (ns.action == "apply" or not found):
        raise DevshellError(f"no patches in {_show(patches_dir)}",
                            "inside the devshell: git format-patch -o /patches <base>")
    assert repo is not None
    if ns.action == "check":
        verdicts = check(patches, repo, protected, ns.allow_gitlinks) if patches else []
        if ns.json:
            print(json.dumps({"patches": [{"patch": v.patch, "ok": v.ok, "problems": v.problems}
                                          for v in verdicts],
                              "leftovers": [lo.as_json() for lo in found], "skipped": skipped}))
        else:
            for v in verdicts:
                _say(f"{'ok  ' if v.ok else 'FAIL'} {v.patch}")
                for why in v.problems:
                    _say(f"     {why}")
            for lo in found:
                _say(lo.line())
        return 0 if all(v.ok for v in verdicts) and not dangerous else 1
    # Leftovers are never applied, moved or run; but a container that left a setuid file, a
    # device or a planted .git misbehaved, and its patches deserve the same doubt: stop and make
    # the user look, unless they did already.
    if dangerous and not ns.ignore_leftovers:
        first = dangerous[0]
        more = f" (+{len(dangerous) - 1} more)" if len(dangerous) > 1 else ""
        raise DevshellError(f"refusing to apply: the patches dir holds {_show(first.path)}: "
                            f"{_show(', '.join(first.what))}{more}",
                            "see devshell patches check, remove what you did not expect, or pass "
                            "--ignore-leftovers")
    for lo in found:
        _say(lo.line(), err=True)
    moved = apply(patches, repo, patches_dir, protected, ns.allow_gitlinks)
    if ns.json:
        print(json.dumps({"applied": [p.name for p in patches], "moved_to": moved}))
    else:
        _say(f"applied {len(patches)} patch(es) to {repo.top}; moved to {APPLIED}/")
    return 0

