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
  within limits (MAX_PATCH_BYTES each, MAX_PATCHES files, MAX_TOTAL_BYTES and MAX_MAILS
  together); git only ever sees private copies of those bytes. A ``*.patch`` it skips makes
  ``check`` fail and ``apply`` refuse: the series is then not the one the agent left;
- parses each file once, with git's own mail parser (``git mailsplit -b``, then ``git mailinfo``
  per mail, as git am does), and everything after works on that one reading;
- bounds what git makes of a diff before any git apply reads it: a binary hunk (``literal N``, or
  ``delta N`` with the result size its header names) that git would inflate past MAX_BLOB_BYTES,
  or binary hunks past MAX_SERIES_BLOB_BYTES together, and a hunk whose size cannot be read,
  make the file skipped; review checks the blobs each tree adds against the same limits;
- reviews in a private scratch repository (a temp dir; it borrows the user's objects read-only
  through objects/info/alternates), so neither the user's repository config nor its attributes,
  filters or merge drivers run on agent input. The policy is judged on what git makes of the
  patches, not on our reading of their text: each mail's diff is applied (``git apply --cached
  --3way``) on top of the ones before, the tree it produces is checked, and the mail's commit is
  made of exactly that tree (``git commit-tree``, with the author, date and message mailinfo
  read). A patch that touches a protected path (matched without regard to case, by case folding)
  or ``.git``, leaves a new or changed symlink that resolves out of the repository or into
  ``.git`` (through other symlinks too, with names matched exactly and case-folded, as a
  case-sensitive and a case-insensitive file system would), or to a target no file system takes
  (over MAX_LINK_TARGET bytes, which is never read, or with a NUL byte), or adds a gitlink (unless
  allowed), is refused, naming the patch and path;
- applies all or nothing, and only what was reviewed: the commits review made, one per mail,
  each carrying the tree that was judged (no git am runs: it would read the files again, its
  own way). Then the work tree is checked (no symlink and no untracked file on a changed path,
  every directory to change writable), the patches dir is checked (it must be yours or dev's and
  writable by you, so that the patches can move to ``applied/``), the new objects are copied
  into the user's repository, and its work tree and branch are fast-forwarded; a work-tree
  update that fails partway is rolled back (and if that fails too, the output names what stayed).
  Patches move to ``applied/`` only after success, and only the files that were read (same
  inode, same bytes; a file swapped or rewritten since stays, "changed since it was read");
  nothing is ever deleted (a patch that cannot be moved then stays, and the output says so);
- reports what else the agent left there (nested .git, symlinks, special, setuid/setgid,
  capable, executable or foreign-owned files, a patches dir that is not yours or dev's), judged
  without following any link, in bounded time and output; apply refuses while dangerous ones
  are there;
- escapes control and bidi characters (and bytes that are not UTF-8) in all it prints as text, and
  cuts link targets to SHOW_CHARS.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
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
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from .errors import DevshellError, for_terminal
from .hostfs import DIR_FLAGS, strict_problem
from .options import default_patches_out, drops_root, inside

# .devcontainer.json is the other place the dev container spec reads; its initializeCommand
# runs on the host. .husky/ holds the git hooks husky installs (core.hooksPath=.husky): they run
# on the user's next commit. .lfsconfig is read by git-lfs in every clone: it can send LFS
# transfers (and the credentials they carry) to another server. (.vscode/tasks.json is left to
# --protect: a task runs when the user runs it, or asks first in a trusted workspace.)
# Globs match without regard to case: case-insensitive file systems and checkouts on them
# treat .GitAttributes as .gitattributes.
DEFAULT_PROTECTED = (".github/workflows/**", ".gitmodules", ".gitattributes", ".devcontainer/**",
                     ".devcontainer.json", ".husky/**", ".lfsconfig")
APPLIED = "applied"
SYMLINK = "120000"
GITLINK = "160000"
ABSENT = "000000"
MAX_LINK_DEPTH = 40

# What the host reads from the patches dir is bounded: a sparse file can claim any size.
MAX_PATCH_BYTES = 8 << 20
MAX_PATCHES = 1000
MAX_TOTAL_BYTES = 64 << 20
MAX_MAILS = 1000  # all patch files together: each mail costs a handful of git processes
MAX_DIR_ENTRIES = 100_000  # the top of the patches dir, scanned for *.patch
MAX_WALK_ENTRIES = 10_000  # the walk for leftovers
MAX_WALK_DEPTH = 32
MAX_LEFTOVERS = 200  # reported one by one; the rest are counted
MAX_LINK_STEPS = 200_000  # path components the walk judges in link targets, all links together
SHOW_CHARS = 200  # of a link target or a leftover's path, in a line for the terminal
# What git may make of a patch is bounded too: a binary hunk ('GIT binary patch', 'literal N' or
# 'delta N') is a few bytes of zlib that git inflates to N bytes (a delta then makes a blob of the
# size its header names). Judged on the hunk headers before any git apply reads the diff, and on
# the blobs each reviewed tree holds before a commit reaches your repository.
MAX_BLOB_BYTES = 64 << 20  # any one blob (or binary hunk) a patch makes
MAX_SERIES_BLOB_BYTES = 256 << 20  # all binary hunks of all patches together; all new blobs too
MAX_LINK_TARGET = 4096  # bytes of a symlink target: longer ones no file system accepts
# check makes the commits apply would make, with a committer of its own (they are thrown away).
REVIEW_IDENT = {"GIT_COMMITTER_NAME": "devshell review", "GIT_COMMITTER_EMAIL": "review@devshell.invalid"}

# Every git devshell runs: no hooks, no fsmonitor (both run commands), no per-user attributes
# file (it may name filters), and no gc or maintenance started behind our back.
HARDENED = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
            "-c", "core.attributesFile=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false")


@dataclass(frozen=True)
class Commit:
    """One mail of a patch file as git mailsplit + git mailinfo read it: what list shows, the
    diff review applies, and what the commit made of it carries (raw, as mailinfo wrote it)."""

    subject: str
    author: str
    diff: bytes
    name: bytes = b""
    email: bytes = b""
    date: bytes = b""
    message: bytes = b""  # subject and body, as git am makes the commit message of them

    def author_env(self) -> dict[str, str]:
        env = {"GIT_AUTHOR_NAME": _decode(self.name), "GIT_AUTHOR_EMAIL": _decode(self.email)}
        if self.date:
            env["GIT_AUTHOR_DATE"] = _decode(self.date)
        return env


@dataclass(frozen=True)
class Patch:
    name: str
    data: bytes
    commits: tuple[Commit, ...]
    files: int
    insertions: int
    deletions: int
    blob_bytes: int = 0  # what git inflates its binary hunks to, all together
    ident: tuple[int, int] | None = None  # st_dev, st_ino of the file read (read_dir)

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
        return (f"LEFTOVER {_cut(self.path)}: {', '.join(self.what)}"
                + (" (dangerous)" if self.dangerous else ""))

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
        raise DevshellError(f"cannot run git in {cwd} ({e.strerror})",
                            "install git, or check the path") from None


def _failed(args: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> DevshellError:
    return DevshellError(f"git {' '.join(args[:2])} failed: {_first_line(_decode(done.stderr))}",
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
            raise DevshellError(f"refusing to look for a repository in {real}: it lies in "
                                f"{what} {fence}, which the agent writes",
                                "run devshell patches in your own checkout, or pass --repo DIR")
    if not os.path.isdir(real):
        raise DevshellError(f"{start} is not a directory", "pass --repo DIR")
    done = _run(["rev-parse", "--path-format=absolute", "--show-toplevel", "--git-dir",
                 "--git-common-dir"], real)
    lines = _decode(done.stdout).splitlines()
    if done.returncode or len(lines) != 3:
        raise NoRepo(f"{start} is not in a git work tree "
                     f"({_first_line(_decode(done.stderr))})", "pass --repo DIR")
    top, git_dir, common = (os.path.realpath(p) for p in lines)
    for path in (top, git_dir, common):
        for fence, what in fences:
            if inside(path, fence):
                raise DevshellError(f"refusing repository {top}: {path} lies in {what} "
                                    f"{fence}, which the agent writes",
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

# Errors are escaped where the CLI prints them; everything else printed as text goes through this.
_show = for_terminal


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
        raise DevshellError(f"cannot read patches dir {patches_dir} ({e.strerror})",
                            "pass --patches-dir DIR") from None


def read_dir(patches_dir: str) -> tuple[list[Patch], list[str]]:
    """The *.patch files at the top of patches_dir, in name order, and what was skipped (why)."""
    top = _open_dir(patches_dir)
    try:
        patches, skipped, budget, mails, blobs = [], [], MAX_TOTAL_BYTES, MAX_MAILS, MAX_SERIES_BLOB_BYTES
        for name in _patch_names(top, patches_dir):
            read = _read_patch(top, name, budget)
            if isinstance(read, str):
                skipped.append(f"{name}: {read}")
                continue
            data, ident = read
            budget -= len(data)
            try:
                patch = parse(name, data, mails, blobs)
            except ValueError as e:
                skipped.append(f"{name}: {e}")
                continue
            patches.append(dataclasses.replace(patch, ident=ident))
            mails -= len(patch.commits)
            blobs -= patch.blob_bytes
        return patches, skipped
    finally:
        os.close(top)


def _patch_names(top: int, patches_dir: str) -> list[str]:
    names: list[str] = []
    with os.scandir(top) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_DIR_ENTRIES:
                raise DevshellError(f"{patches_dir} holds more than {MAX_DIR_ENTRIES} entries",
                                    "clear out the patches dir")
            if entry.name.endswith(".patch"):
                names.append(entry.name)
            if len(names) > MAX_PATCHES:
                # A subset of a series would not be the series: refuse rather than pick some.
                raise DevshellError(f"more than {MAX_PATCHES} *.patch files in {patches_dir}",
                                    "move some away and apply the series in parts")
    return sorted(names)


# A file the agent wrote, opened by name: never through a link, never blocking on a FIFO.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_patch(top: int, name: str, budget: int) -> tuple[bytes, tuple[int, int]] | str:
    """The bytes of one regular file and its (st_dev, st_ino), or why not. lstat first: opening
    a device node can have effects, and a FIFO would block; O_NOFOLLOW and fstat then close the
    race with a swap."""
    not_regular = "not a regular file (a symlink is never followed)"
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=top, follow_symlinks=False).st_mode):
            return not_regular
        fd = os.open(name, _FILE_FLAGS, dir_fd=top)
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
        return data, (st.st_dev, st.st_ino)
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


def parse(name: str, data: bytes, max_mails: int = MAX_MAILS, max_blob_bytes: int | None = None) -> Patch:
    """A patch file as git reads a mailbox: split into mails and each mail into author, date,
    subject, message and diff by git itself (with devshell's config), never by us. This reading
    is the only one: review applies these diffs and commits them with these fields. Refused
    before any git apply reads a diff: a binary hunk git would inflate past MAX_BLOB_BYTES, or
    binary hunks past max_blob_bytes together (what is left of MAX_SERIES_BLOB_BYTES)."""
    with _nowhere() as d:
        commits = split(data, d, max_mails)
        diff = b"".join(c.diff for c in commits)
        blob_bytes = _binary_budget(diff, commits, MAX_SERIES_BLOB_BYTES if max_blob_bytes is None
                                    else max_blob_bytes)
        files, insertions, deletions = _numstat(diff, d)
    return Patch(name, data, commits, files, insertions, deletions, blob_bytes)


def _binary_budget(diff: bytes, commits: Sequence[Commit], budget: int) -> int:
    """What git inflates the binary hunks of a file to, all together (each mail's diff alone, as
    review applies it, and all of them at once, as _numstat reads them); ValueError past a limit."""
    each = [binary_sizes(diff), *(binary_sizes(c.diff) for c in commits)]
    for size in (size for sizes in each for size in sizes):
        if size > MAX_BLOB_BYTES:
            raise ValueError(f"a binary hunk git would inflate to {size} bytes, over the limit "
                             f"of {_mib(MAX_BLOB_BYTES)} per blob")
    total = max(sum(each[0]), sum(sum(sizes) for sizes in each[1:]))
    if total > budget:
        raise ValueError(f"binary hunks git would inflate to {total} bytes, over the limit of "
                         f"{_mib(MAX_SERIES_BLOB_BYTES)} for all patches together")
    return total


# A binary hunk as git apply reads one (apply.c, parse_binary_hunk): the method and a size that
# strtoul reads (leading white space and a sign allowed), then lines of a length character
# ('A'-'Z': 1-26 bytes, 'a'-'z': 27-52) and base85, up to an empty line.
_HUNK = re.compile(rb"(literal|delta) [ \t\n\v\f\r]*([-+]?)([0-9]*)")


def binary_sizes(diff: bytes) -> list[int]:
    """What git would allocate for each binary hunk of diff, forward and reverse: for
    'literal N', N; for 'delta N', N and the result size the delta's header names. Found as git
    finds them (a line 'GIT binary patch', then a hunk, then maybe another), wherever such a line
    is; ValueError for a hunk whose size cannot be read."""
    lines = diff.split(b"\n")
    out: list[int] = []
    i = 0
    while i < len(lines):
        if lines[i] != b"GIT binary patch":
            i += 1
            continue
        i += 1
        for _ in range(2):  # the forward hunk, then the reverse one if there is one
            m = _HUNK.match(lines[i]) if i < len(lines) else None
            if not m:
                break
            end = i + 1
            while end < len(lines) and lines[end]:
                end += 1
            size = int(m[3] or b"0")
            if m[2] == b"-" and size:
                raise ValueError("a binary hunk of negative size")
            if m[1] == b"delta":
                size = max(size, _delta_result(lines[i + 1:end]))
            out.append(size)
            i = end + 1
    return out


def _delta_result(lines: Sequence[bytes]) -> int:
    """The result size a delta hunk's header names (after the source size): base85 decoded
    and inflated only as far as the two varints go."""
    undecodable = ValueError("a binary delta hunk git cannot read")
    data = bytearray()
    for line in lines:
        if len(line) < 6 or (len(line) - 1) % 5:
            raise undecodable
        c = line[0]
        if 0x41 <= c <= 0x5A:
            want = c - 0x41 + 1
        elif 0x61 <= c <= 0x7A:
            want = c - 0x61 + 27
        else:
            raise undecodable
        room = (len(line) - 1) // 5 * 4
        if not room - 4 < want <= room:
            raise undecodable
        try:
            data += base64.b85decode(line[1:])[:want]
        except ValueError:
            raise undecodable from None
    try:
        head = zlib.decompressobj().decompress(bytes(data), 32)
    except zlib.error:
        raise undecodable from None
    sizes, value, shift = [], 0, 0
    for byte in head:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            sizes.append(value)
            if len(sizes) == 2:
                return sizes[1]
            value = shift = 0
    raise undecodable


def split(data: bytes, d: str, max_mails: int = MAX_MAILS) -> tuple[Commit, ...]:
    """The mails of data (at most max_mails), in the private dir d. Every file git writes here
    comes from data, so it is no bigger than data."""
    # mailsplit starts a mail only at a line that begins with 'From ' (and with -b, a file that
    # does not begin with one is one mail): that count bounds its work before it runs.
    starts = data.lstrip().startswith(b"From ") + data.count(b"\nFrom ")
    if starts > max_mails:
        raise ValueError(f"may hold {starts} mails, over the limit of {MAX_MAILS} mails "
                         "for all patches together")
    mbox, mails = os.path.join(d, "mbox"), os.path.join(d, "mails")
    os.mkdir(mails)
    with open(mbox, "wb") as f:
        f.write(data)
    # The same split as git am: -b takes a file without a 'From ' line as one mail.
    if _loose(d, "mailsplit", "-b", f"-o{mails}", "--", mbox).returncode:
        raise ValueError("not a mailbox git am can read")
    names = sorted(os.listdir(mails))
    if len(names) > max_mails:
        raise ValueError(f"{len(names)} mails, over the limit of {MAX_MAILS} mails for all patches together")
    commits = []
    for mail in names:
        msg, diff = os.path.join(d, "msg"), os.path.join(d, "diff")
        with open(os.path.join(mails, mail), "rb") as f:
            info = _loose(d, "mailinfo", msg, diff, stdin=f.read())
        if info.returncode:
            raise ValueError("a mail git mailinfo cannot read")
        with open(diff, "rb") as f:
            body = f.read()
        with open(msg, "rb") as f:
            log = f.read()
        commits.append(_commit(info.stdout, log, body))
    if not commits:
        raise ValueError("no mail in it")
    return tuple(commits)


def _commit(info: bytes, log: bytes, diff: bytes) -> Commit:
    """One mail from what git mailinfo wrote: its info lines (read as git am reads them), the
    message body and the diff."""
    fields: dict[bytes, bytes] = {}
    subject: list[bytes] = []
    for line in info.split(b"\n"):
        key, sep, value = line.partition(b": ")
        if not sep:
            continue
        if key == b"Subject":
            subject.append(value)  # git am joins several with a newline, and the rest by appending
        elif key in (b"Author", b"Email", b"Date"):
            fields[key] = fields.get(key, b"") + value
    if not subject or not subject[0] or not fields.get(b"Email"):
        raise ValueError("not a git format-patch mail (no From: or Subject: header)")
    if not diff.strip():
        raise ValueError("carries no diff (git am would stop on it)")
    name, email, date = fields.get(b"Author", b""), fields[b"Email"], fields.get(b"Date", b"")
    if any(b"\0" in v or b"\n" in v for v in (name, email, date)):
        raise ValueError("a mail git mailinfo cannot read")
    text = b"\n".join(subject)
    return Commit(_decode(text), f"{_decode(name)} <{_decode(email)}>", diff, name, email, date,
                  stripspace(text + b"\n\n" + log))


def stripspace(text: bytes) -> bytes:
    """git stripspace without comment stripping, as git am cleans a commit message: trailing
    whitespace of each line removed, runs of empty lines made one, none at either end, and a
    newline after the last line."""
    out: list[bytes] = []
    empties = 0
    for line in text.split(b"\n"):
        line = line.rstrip(b" \t\r")  # git's isspace: these and the newline split off
        if line:
            if empties and out:
                out.append(b"")
            empties = 0
            out.append(line)
        else:
            empties += 1
    return b"".join(line + b"\n" for line in out)


def _numstat(diff: bytes, d: str) -> tuple[int, int, int]:
    """git's own count, of all mails of a file at once: files changed (a rename is one), lines
    added and removed."""
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
    opened with O_NOFOLLOW (no link is ever followed or resolved, no file opened), at most
    MAX_WALK_ENTRIES entries and MAX_WALK_DEPTH levels deep; at most MAX_LEFTOVERS are listed,
    the rest counted. Plain files and directories are not reported; the patches dir itself is,
    when it is not yours or dev's (drop_problem)."""
    top = _open_dir(patches_dir)
    try:
        st = os.fstat(top)
        owners, problem = drop_trust(st)
        walk = _Walk(owners, os.path.realpath(patches_dir))
        if problem:
            walk.add(Leftover(".", (f"the patches dir itself {problem}",), True))
        with suppress(_Cut):
            walk.dir(top, "", 1)
    finally:
        os.close(top)
    if walk.untold:
        walk.found.append(Leftover(".", (f"{walk.untold} more leftover(s) not listed, "
                                         f"{walk.untold_bad} of them dangerous",), walk.untold_bad > 0))
    return walk.found


def drop_trust(st: os.stat_result) -> tuple[set[int], str | None]:
    """Whose files in the patches dir (st: its stat) are expected, and what is wrong with the dir
    itself, if anything. Yours are; and dev's, who devshell gave the dir to: when you are root,
    that is the dir's owner if it is not root and no group or other user can write the dir
    (devshell makes it 0700). Anyone else's dir (root inside can chown and chmod it) is a
    problem: its owner could change what the walk and apply see."""
    me, group = os.getuid(), os.getgid()
    if me == 0 and st.st_uid != 0 and not st.st_mode & 0o022:
        return {me, st.st_uid}, None  # dev's, as devshell made it
    if st.st_uid == me:
        return {me}, strict_problem(st, (me, me), (group, group))
    if me == 0:
        return {me}, (f"belongs to uid {st.st_uid} and is writable by "
                      f"{'every user' if st.st_mode & 0o002 else f'group {st.st_gid}'}")
    return {me}, f"belongs to uid {st.st_uid}, not to you"


class _Walk:
    def __init__(self, owners: set[int], real_top: str) -> None:
        self.owners, self.real_top = owners, real_top
        self.found: list[Leftover] = []
        self.seen = 0
        self.untold = self.untold_bad = 0  # leftovers past MAX_LEFTOVERS: counted, not listed
        self.steps = MAX_LINK_STEPS  # what is left of the budget for link targets

    def add(self, leftover: Leftover) -> None:
        if len(self.found) < MAX_LEFTOVERS:
            self.found.append(leftover)
        else:
            self.untold += 1
            self.untold_bad += leftover.dangerous

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
                what, dangerous = self.judge(fd, entry.name, path, depth - 1, st)
                if stat.S_ISDIR(st.st_mode) and not _is_git(entry.name):
                    more = self.descend(fd, entry.name, path, depth)
                    what, dangerous = what + more, dangerous or bool(more)
                if what:
                    self.add(Leftover(path, tuple(what), dangerous))

    def descend(self, fd: int, name: str, path: str, depth: int) -> list[str]:
        """Walk into a directory; what is wrong with it if that is not possible (unchecked)."""
        if depth >= MAX_WALK_DEPTH:
            return [f"deeper than {MAX_WALK_DEPTH} levels; not walked further"]
        try:
            sub = os.open(name, DIR_FLAGS | os.O_NONBLOCK, dir_fd=fd)
        except OSError as e:
            return [f"cannot be walked ({e.strerror}); unchecked"]
        try:
            self.dir(sub, path, depth + 1)
        finally:
            os.close(sub)
        return []

    def judge(self, fd: int, name: str, path: str, level: int,
              st: os.stat_result) -> tuple[list[str], bool]:
        what: list[str] = []
        bad = False
        mode = st.st_mode
        if _is_git(name):
            what.append("a nested .git (git run there would use its config, hooks and attributes)")
            bad = True
        if stat.S_ISLNK(mode):
            try:
                target = _decode(os.fsencode(os.readlink(name, dir_fd=fd)))
            except OSError as e:
                target = f"(unreadable: {e.strerror})"
            out = self.leads_out(level, target)
            what.append(f"symlink -> {_cut(target)}" + (f", {out}" if out else ""))
            bad = bad or bool(out)
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

    def leads_out(self, level: int, target: str) -> str | None:
        """Whether a link `level` directories below the top, with this target, may lead out of
        the patches dir; judged on the text alone, never by resolving anything (a chain of
        thousands of links costs no more than each link's own target).

        The walk reached the link's directory without following a link, so '..' that lead the
        target climb real directories. A name in the target may itself be a link; where that
        one leads is judged at that link (the walk sees every link in the dir), so a target of
        names alone stays in. But '..' after a name climbs from wherever that name leads: such
        a target is not judged, it is reported."""
        if target.startswith("/"):
            return "leading out of the patches dir"
        parts = [p for p in target.split("/") if p not in ("", ".")]
        lead = 0
        while lead < len(parts) and parts[lead] == "..":
            lead += 1
        if lead > level:
            return "leading out of the patches dir"
        if ".." not in parts[lead:]:
            return None
        self.steps -= len(parts)
        if self.steps >= 0:  # the text alone climbs out: say so
            depth = level
            for p in parts:
                depth += -1 if p == ".." else 1
                if depth < 0:
                    return "leading out of the patches dir"
        return "which may lead out of the patches dir ('..' after a name that may be a link)"


def _cut(text: str) -> str:
    """text, cut to SHOW_CHARS for a line on the terminal (the agent chooses its length)."""
    return text if len(text) <= SHOW_CHARS else f"{text[:SHOW_CHARS]}... ({len(text)} chars)"


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
    """fnmatch, where '*' also crosses '/', without regard to case (a checkout on a
    case-insensitive file system reads .GitAttributes as .gitattributes); a glob without '/'
    matches a name at any depth (.gitattributes and .gitmodules act in every directory)."""
    path, glob = path.casefold(), glob.casefold()
    if "/" not in glob:
        return fnmatch.fnmatchcase(posixpath.basename(path), glob)
    return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, glob.removesuffix("/**"))


def _is_git(part: str) -> bool:
    return part.casefold().rstrip(". ") == ".git"


def _fold(name: str) -> str:
    """name as a case-insensitive file system may see it: canonical caseless (case folded and
    normalized), so that every name such a file system takes for another folds onto it."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _unusable(target: str) -> str | None:
    """Why no file system takes this symlink target (a NUL ends it for the kernel: git's
    checkout makes '..\\0x' a link to '..'), or None."""
    if isinstance(target, _Unread) or len(target) > MAX_LINK_TARGET:
        return f"nowhere a file system accepts (a target over {MAX_LINK_TARGET} bytes)"
    if "\0" in target:
        return "nowhere a file system accepts (a target with a NUL byte, which ends it early)"
    return None


class _Unread(str):
    """Stands for the target of a symlink blob over MAX_LINK_TARGET bytes, which is not read."""


class LinkResolver:
    """Resolves symlinks inside one tree (path -> target), as the kernel would, each link once:
    a chain of links that refer to each other several times costs linear, not exponential, time.
    It resolves twice, and a link must stay inside both times: with names matched exactly (a
    case-sensitive file system), and with names folded (a case-insensitive one, where any
    component that folds onto a symlink is that symlink, and where entries of the tree that
    fold onto the same name make a link on the way unknowable). `names`: every other path of the
    tree (optional), to find those clashes."""

    def __init__(self, links: dict[str, str], names: Iterable[str] = ()) -> None:
        self.exact = _Resolution(links)
        self.folded = _Resolution(links, names, folded=True)

    def escapes(self, link: str) -> str | None:
        """None if the link at path `link` stays in the repository and out of any .git."""
        return self.exact.escapes(link) or self.folded.escapes(link)


class _Resolution:
    """One way of resolving: with exact names, or with folded ones (index: folded path -> the
    links that fold onto it; clash, made when first needed: the folded paths among those that
    name more than one entry of the tree)."""

    def __init__(self, links: dict[str, str], names: Iterable[str] = (), folded: bool = False) -> None:
        self.links, self.names = links, names
        self.index: dict[str, list[str]] | None = None
        if folded:
            self.index = {}
            for link in links:
                self.index.setdefault(_fold(link), []).append(link)
        self.clash: set[str] | None = None
        self.done: dict[str, list[str] | str] = {}
        self.active: set[str] = set()

    def _clashes(self, index: dict[str, list[str]]) -> set[str]:
        if self.clash is None:
            others: set[str] = set()
            for path in self.names:
                parts = path.split("/")
                others.update(_fold("/".join(parts[:n])) for n in range(1, len(parts) + 1))
            for link in self.links:
                parts = link.split("/")
                others.update(_fold("/".join(parts[:n])) for n in range(1, len(parts)))
            self.clash = (others & index.keys()) | {k for k, found in index.items() if len(found) > 1}
        return self.clash

    def escapes(self, link: str) -> str | None:
        result = self._resolve(link)
        return result if isinstance(result, str) else None

    def _resolve(self, link: str) -> list[str] | str:
        if link in self.done:
            return self.done[link]
        if link in self.active or len(self.active) > MAX_LINK_DEPTH:
            return "a symlink loop"
        self.active.add(link)
        try:
            target = self.links[link]
            result = _unusable(target) or self._walk(link.split("/")[:-1], target)
        finally:
            self.active.discard(link)
        self.done[link] = result
        return result

    def _link(self, here: str) -> str | None:
        """The symlink the path `here` names, if any; a clash raises _Clash."""
        if self.index is None:
            return here if here in self.links else None
        found = self.index.get(_fold(here))
        if not found:
            return None
        if _fold(here) in self._clashes(self.index):
            raise _Clash(here)
        return found[0]

    def _walk(self, base: list[str], target: str) -> list[str] | str:
        if target.startswith("/"):
            return f"an absolute path ({_cut(target)})"
        parts = list(base)
        try:
            for n in range(1, len(base) + 1):
                if self.index is not None and self._link("/".join(base[:n])):
                    # the link's own directory is a symlink on a case-insensitive file system
                    raise _Clash("/".join(base[:n]))
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
                link = self._link("/".join(parts))
                if link is not None:
                    resolved = self._resolve(link)
                    if isinstance(resolved, str):
                        return resolved
                    parts = list(resolved)
        except _Clash as e:
            return (f"nowhere known on a case-insensitive file system (through {_cut(e.args[0])}, "
                    "where entries that differ only in case meet)")
        return parts


class _Clash(Exception):
    pass


def link_escapes(link: str, links: dict[str, str], names: Iterable[str] = ()) -> str | None:
    """Where the symlink at path `link` leads, in a tree whose symlinks are `links` (and other
    paths `names`): None if it stays in the repository and out of .git, else why not."""
    return LinkResolver(links, names).escapes(link)


def _protected_dirs(protected: Sequence[str]) -> set[str]:
    """The literal directories of the protected globs (.github, .github/workflows, …), in lower
    case (folded): a symlink there would put a protected path's contents under another name."""
    out = set()
    for glob in protected:
        parts = glob.casefold().split("/")[:-1]
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
    new_id: str = ""  # the object the path holds in the new tree


@dataclass(frozen=True)
class _Tree:
    """What the symlink policy reads of a tree: its symlinks (path -> target) and its other
    paths (for the clashes of a case-insensitive file system)."""

    links: dict[str, str]
    names: tuple[str, ...]


def _changes(repo: Repo, old: str, new: str) -> list[Change]:
    """Every path that differs between two trees, with its modes (git diff-tree, raw, -z)."""
    fields = repo.out("diff-tree", "-r", "-z", "--no-renames", old, new).split(b"\0")
    out = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):  # a trailing "" is left over
        if meta.startswith(b":"):
            modes = meta[1:].split()
            out.append(Change(modes[0].decode(), modes[1].decode(), _decode(path), modes[3].decode()))
    return out


def tree_problems(repo: str | Repo, old: str, new: str, protected: Sequence[str],
                  allow_gitlinks: bool = False) -> list[str]:
    """What is wrong with going from tree old to tree new: changed paths that are protected or
    in .git; new or changed gitlinks (a submodule commit; git may fetch and check it out later);
    symlinks placed where a protected directory is; and any symlink that leads out of the
    repository or into .git in new but did not in old (a new or changed link, or an unchanged
    one that a changed directory now sends elsewhere)."""
    r = _as_repo(repo)
    return _tree_problems(r, old, new, protected, allow_gitlinks, _links(r, old))[0]


def _tree_problems(r: Repo, old: str, new: str, protected: Sequence[str], allow_gitlinks: bool,
                   before: _Tree) -> tuple[list[str], _Tree, int]:
    """tree_problems, given the symlinks of old; the symlinks of new (the next mail's old);
    and the bytes of the blobs new adds or changes."""
    changes = _changes(r, old, new)
    changed = [c.path for c in changes]
    out = [why for path in changed for why in path_problems(path, protected)]
    if not allow_gitlinks:
        out += [f"adds gitlink {c.path} (a submodule commit); --allow-gitlinks accepts it"
                for c in changes if c.new_mode == GITLINK]
    sizes = _sizes(r, [c.new_id for c in changes if c.new_mode not in (ABSENT, GITLINK)])
    out += [f"makes {c.path} a blob of {size} bytes, over the limit of {_mib(MAX_BLOB_BYTES)} per blob"
            for c, size in zip([c for c in changes if c.new_mode not in (ABSENT, GITLINK)], sizes,
                               strict=True) if size > MAX_BLOB_BYTES]
    tree = _links(r, new)
    after = tree.links
    guarded = _protected_dirs(protected)
    out += [f"puts symlink {link} where protected directory {link}/ belongs"
            for link in sorted(set(changed) & after.keys()) if link.casefold() in guarded]
    was, now = LinkResolver(before.links, before.names), LinkResolver(after, tree.names)
    for link in sorted(after):
        why = now.escapes(link)
        if not why:
            continue
        if link in changed or link not in before.links:
            out.append(f"creates symlink {link} -> {_cut(after[link])}, which leads {why}")
        elif not was.escapes(link):
            out.append(f"makes symlink {link} -> {_cut(after[link])} lead {why}")
    return out, tree, sum(sizes)


def _links(repo: Repo, tree: str) -> _Tree:
    """Every symlink in tree (path -> target; a target over MAX_LINK_TARGET bytes is not read)
    and every other path."""
    shas: dict[str, str] = {}
    names: list[str] = []
    for entry in repo.out("ls-tree", "-r", "-z", "--full-tree", tree).split(b"\0"):
        meta, _, name = entry.partition(b"\t")
        if meta.startswith(SYMLINK.encode()):
            shas[_decode(name)] = meta.split()[2].decode()
        elif meta:
            names.append(_decode(name))
    return _Tree(dict(zip(shas, _blobs(repo, list(shas.values())), strict=True)), tuple(names))


def _sizes(repo: Repo, shas: list[str]) -> list[int]:
    """The sizes of objects, in order, from one git cat-file --batch-check (nothing is read)."""
    if not shas:
        return []
    lines = repo.out("cat-file", "--batch-check", stdin="".join(f"{s}\n" for s in shas).encode())
    out = []
    for line in lines.splitlines():
        fields = line.split()
        if len(fields) != 3 or not fields[2].isdigit():
            raise DevshellError(f"git cat-file cannot find {_decode(line)}", "check the repository")
        out.append(int(fields[2]))
    if len(out) != len(shas):
        raise DevshellError("git cat-file --batch-check answered for other objects", "check the repository")
    return out


def _blobs(repo: Repo, shas: list[str]) -> list[str]:
    """Contents of blobs (symlink targets), in order, from one git cat-file --batch; a blob
    over MAX_LINK_TARGET bytes is not read (an _Unread stands for it)."""
    sizes = _sizes(repo, shas)
    small = [sha for sha, size in zip(shas, sizes, strict=True) if size <= MAX_LINK_TARGET]
    read = iter(_read_blobs(repo, small))
    return [next(read) if size <= MAX_LINK_TARGET else _Unread(f"({size} bytes, not read)")
            for size in sizes]


def _read_blobs(repo: Repo, shas: list[str]) -> list[str]:
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
        raise DevshellError(f"{user.top} has no commit yet", "commit something first")
    return _decode(done.stdout).strip()


@dataclass
class Review:
    """What review made of a series: a verdict per patch, and per mail (as far as the series
    applies) the tree it makes and the commit of that tree. tree and commit are the last ones,
    or None when a patch does not apply (or cannot be committed)."""

    verdicts: list[Verdict]
    trees: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    tree: str | None = None
    commit: str | None = None


def review(patches: Sequence[Patch], repo: str | Repo, protected: Sequence[str],
           allow_gitlinks: bool = False) -> Review:
    """Apply each mail of each patch, in order, on top of the ones before it, in a scratch
    repository on top of the user's HEAD (the user's repository does not change and none of its
    config runs), judge the tree each one makes, and make the commit apply would make of it."""
    user = _as_repo(repo)
    head = _head(user)
    with scratch(user) as s:
        return _review(patches, s, head, protected, allow_gitlinks, REVIEW_IDENT)


def _review(patches: Sequence[Patch], s: Scratch, head: str, protected: Sequence[str],
            allow_gitlinks: bool, ident: dict[str, str]) -> Review:
    out = Review([Verdict(p.name) for p in patches])
    s.out("read-tree", head)
    tree, parent = s.line("rev-parse", f"{head}^{{tree}}"), head
    links = _links(s, tree)
    blob_bytes = 0  # the blobs the series adds or changes, all together
    diff_file = os.path.join(s.tmp, "diff")
    for n, (verdict, patch) in enumerate(zip(out.verdicts, patches, strict=True)):
        for commit in patch.commits:  # as git read them in parse(), with the same config as here
            with open(diff_file, "wb") as f:
                f.write(commit.diff)
            done = s.run("apply", "--cached", "--3way", diff_file)
            if done.returncode:
                return _stop(out, n, f"does not apply: {_first_line(_decode(done.stderr))}")
            new = s.line("write-tree")
            problems, links, added = _tree_problems(s, tree, new, protected, allow_gitlinks, links)
            verdict.problems += problems
            blob_bytes += added
            if blob_bytes > MAX_SERIES_BLOB_BYTES >= blob_bytes - added:
                verdict.problems.append(f"brings the blobs the series adds or changes to {blob_bytes} "
                                        f"bytes, over the limit of {_mib(MAX_SERIES_BLOB_BYTES)} "
                                        "for all patches together")
            # The commit git am would make of this mail, of exactly the tree judged here.
            made = s.run("commit-tree", new, "-p", parent, env={**ident, **commit.author_env()},
                         stdin=commit.message)
            if made.returncode:
                return _stop(out, n, f"cannot be committed: {_first_line(_decode(made.stderr))}")
            tree, parent = new, _decode(made.stdout).strip()
            out.trees.append(tree)
            out.commits.append(parent)
    out.tree, out.commit = tree, parent
    return out


def _stop(out: Review, n: int, why: str) -> Review:
    """Patch n fails: the ones after it build on it and are not checked."""
    out.verdicts[n].problems.append(why)
    for later in out.verdicts[n + 1:]:
        later.problems.append(f"not checked: it builds on {out.verdicts[n].patch}, which does not apply")
    return out


def check(patches: Sequence[Patch], repo: str | Repo, protected: Sequence[str],
          allow_gitlinks: bool = False) -> list[Verdict]:
    """Whether each patch is well-formed, allowed, and applies in order to HEAD."""
    return review(patches, repo, protected, allow_gitlinks).verdicts


# --- apply -----------------------------------------------------------------------------------

def committer(user: Repo) -> dict[str, str]:
    """The user's committer identity as the user's own git sees it (GIT_COMMITTER_NAME/EMAIL,
    else user.name/user.email of their normal configuration, else git's fallbacks), for the
    commits made in the scratch repository, which reads no user config."""
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


@dataclass(frozen=True)
class Applied:
    """Where each applied patch went (under applied/), and why any stayed where it was."""

    moved: list[str]
    not_moved: list[str] = field(default_factory=list)


def apply(patches: Sequence[Patch], repo: str | Repo, patches_dir: str, protected: Sequence[str],
          allow_gitlinks: bool = False) -> Applied:
    """The commits review makes of the series, all or nothing, then the patches to applied/.
    A refused or failing series changes nothing; once the branch has moved, nothing fails: a
    patch that cannot be moved stays, and Applied.not_moved says why."""
    user = _as_repo(repo, patches_dir)
    if any(os.path.exists(os.path.join(user.git_dir, d)) for d in ("rebase-apply", "rebase-merge")):
        raise DevshellError(f"{_show(user.top)} has an am or rebase in progress", "finish or abort it first")
    # A file that was only touched or chowned is clean, but read-tree would find it not up to
    # date; status alone refreshes nothing on disk (--no-optional-locks).
    user.run("update-index", "-q", "--refresh")
    if user.out("--no-optional-locks", "status", "--porcelain", "--untracked-files=no").strip():
        raise DevshellError(f"{_show(user.top)} has uncommitted changes", "commit or stash them first")
    head = _head(user)
    done = user.run("symbolic-ref", "-q", "HEAD")
    branch = _decode(done.stdout).strip() if done.returncode == 0 else None
    ident = committer(user)
    with scratch(user) as s:
        reviewed = _review(patches, s, head, protected, allow_gitlinks, ident)
        bad = [f"{v.patch}: {why}" for v in reviewed.verdicts for why in v.problems]
        if bad or reviewed.commit is None:
            more = f" (+{len(bad) - 1} more; see devshell patches check)" if len(bad) > 1 else ""
            fix = ("rebase the work inside the devshell and format the patches again"
                   if reviewed.commit is None else
                   "review the patch; --allow-protected accepts protected paths (never .git or an "
                   "outward symlink), --allow-gitlinks accepts gitlinks")
            raise DevshellError(f"refusing {_show(bad[0])}{more}", fix)
        new = reviewed.commit
        changes = _changes(s, head, new)
        _check_work_tree(user, changes)
        made = _ready_to_archive(patches_dir, patches)
        try:
            # Only objects move into the user's repository: plumbing, no transport, no hooks.
            pack = s.out("pack-objects", "--revs", "--stdout", "-q", stdin=f"{new}\n^{head}\n".encode())
            user.out("unpack-objects", "-q", stdin=pack)
            _fast_forward(user, branch, head, new, ident, len(patches), changes)
        except DevshellError:
            if made:  # the empty applied/ made for this apply goes with it
                with suppress(OSError):
                    os.rmdir(os.path.join(patches_dir, APPLIED))
            raise
    return _archive(patches_dir, patches)


def _check_work_tree(user: Repo, changes: Sequence[Change]) -> None:
    """Refuse when the work tree holds something git would write through or over: a symlink or
    an untracked file as a leading component of a changed path, or anything where a path is
    added; or when a directory git must write in to change a path is not writable by you (git
    would stop halfway). lstat only: nothing is followed. (git apply follows an untracked
    symlinked directory.)"""
    gone = {c.path for c in changes if c.new_mode == ABSENT}
    writable: dict[str, bool] = {}
    for c in changes:
        parts = c.path.split("/")
        where = ""  # the deepest directory on the way that exists: git writes there
        for n in range(1, len(parts)):
            lead = "/".join(parts[:n])
            try:
                st = os.lstat(os.path.join(user.top, lead))
            except FileNotFoundError:
                break  # git makes the directories
            except OSError as e:
                raise _in_the_way(user, lead, c.path, f"unreadable ({e.strerror})") from None
            if stat.S_ISDIR(st.st_mode):
                where = lead
                continue
            if lead in gone:
                break  # a tracked file or link the series removes; git puts a directory there
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "an untracked file"
            raise _in_the_way(user, lead, c.path, what)
        else:
            if c.old_mode == ABSENT and os.path.lexists(os.path.join(user.top, c.path)):
                raise _in_the_way(user, c.path, c.path, "untracked")
        if where not in writable:
            writable[where] = os.access(os.path.join(user.top, where), os.W_OK | os.X_OK,
                                        effective_ids=os.access in os.supports_effective_ids)
        if not writable[where]:
            shown = _show(where or ".")
            raise DevshellError(f"refusing: you cannot write {shown} in {_show(user.top)}, where "
                                f"{_show(c.path)} changes; nothing applied",
                                f"make {shown} writable (chmod u+w) and apply again")


def _in_the_way(user: Repo, where: str, path: str, what: str) -> DevshellError:
    return DevshellError(f"refusing: {_show(where)} in {_show(user.top)} is {what}, in the way of "
                         f"{_show(path)}; nothing applied", f"move {_show(where)} away and apply again")


def _fast_forward(user: Repo, branch: str | None, head: str, new: str, ident: dict[str, str],
                  count: int, changes: Sequence[Change]) -> None:
    """Work tree and index from head to new (two-tree read-tree: it checks every path before it
    writes one and refuses to overwrite untracked files), then the branch, only if it still
    points at head; when either fails, the work tree and index go back."""
    made = _dirs_to_make(user, changes)
    done = user.run("read-tree", "-m", "-u", head, new)
    if done.returncode:
        why = _show(_first_line(_decode(done.stderr)))
        left = _restore(user, head, changes, made)
        if left:
            more = f" (+{len(left) - 1} more)" if len(left) > 1 else ""
            raise DevshellError(f"git read-tree failed partway ({why}): HEAD did not move, but "
                                f"{_show(left[0])}{more} in {_show(user.top)} could not be put back",
                                "git status shows what differs; git checkout HEAD -- PATH puts it back")
        raise DevshellError(f"git read-tree failed ({why}); the work tree is as it was, nothing applied",
                            "check the work tree")
    ref = ["HEAD", "--no-deref"] if branch is None else [branch]
    done = user.run("update-ref", "-m", f"devshell patches apply: {count} patch file(s)",
                    *ref[1:], ref[0], new, head, env=ident)
    if done.returncode:
        why = _show(_first_line(_decode(done.stderr)))
        back = user.run("read-tree", "-m", "-u", new, head)
        if back.returncode:
            # Not put back: say what still differs from HEAD (the index and work tree of new).
            differ = user.run("diff-index", "--name-only", "-z", head)
            paths = [_decode(p) for p in differ.stdout.split(b"\0") if p] if not differ.returncode else []
            what = (f"{_show(paths[0])}" + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
                    if paths else "the index and work tree")
            raise DevshellError(f"cannot move {ref[0]} to the new commits ({why}), and putting the work "
                                f"tree back failed too ({_show(_first_line(_decode(back.stderr)))}): "
                                f"{ref[0]} did not move, but {what} in {_show(user.top)} still "
                                "hold the new commits' version",
                                "git status shows what differs; git reset --hard HEAD puts it all back "
                                "(it discards those changes)")
        raise DevshellError(f"cannot move {ref[0]} to the new commits, nothing applied: {why}",
                            "check the repository")


def _dirs_to_make(user: Repo, changes: Sequence[Change]) -> list[str]:
    """The directories git creates to write the paths of changes (none is there now, or a file
    is, which the series removes), deepest first."""
    out: set[str] = set()
    for c in changes:
        if c.new_mode == ABSENT:
            continue
        parts = c.path.split("/")
        for n in range(1, len(parts)):
            lead = "/".join(parts[:n])
            if lead in out or not os.path.isdir(os.path.join(user.top, lead)) \
                    or os.path.islink(os.path.join(user.top, lead)):
                out.add(lead)
    return sorted(out, key=lambda d: (-d.count("/"), d))


def _restore(user: Repo, head: str, changes: Sequence[Change], made: Sequence[str]) -> list[str]:
    """After a read-tree that stopped partway: remove what it added (paths that were not there,
    checked before), then every tracked path back as head has it (the index is still head's:
    read-tree writes it only on success). The paths that still differ."""
    added = [c.path for c in changes if c.old_mode == ABSENT]
    for path in added:
        full = os.path.join(user.top, path)
        with suppress(OSError):
            if stat.S_ISDIR(os.lstat(full).st_mode):
                os.rmdir(full)  # an empty gitlink directory
            else:
                os.unlink(full)
    for d in made:
        with suppress(OSError):
            os.rmdir(os.path.join(user.top, d))
    user.run("read-tree", "--reset", "-u", head)
    done = user.run("diff-files", "--name-only", "-z")
    left = [_decode(p) for p in done.stdout.split(b"\0") if p]
    return left + [p for p in added if os.path.lexists(os.path.join(user.top, p))]


def _ready_to_archive(patches_dir: str, patches: Sequence[Patch]) -> bool:
    """Before the repository changes: the patches can move to applied/ afterwards. The patches
    dir is yours or dev's (drop_trust) and you can write it; applied/ is a directory there (made
    now if need be; a symlink is never followed) that you can write; each patch is still the
    regular file that was read (same inode). Whether applied/ was made now."""
    fix = "see devshell patches check; put the patches dir right and apply again"
    top = _open_dir(patches_dir)
    made = False
    try:
        _, problem = drop_trust(os.fstat(top))
        if problem:
            raise DevshellError(f"refusing to apply: the patches dir {_show(patches_dir)} {problem}; "
                                "nothing applied", fix)
        if not _may_write(top):
            raise DevshellError(f"refusing to apply: you cannot write the patches dir {_show(patches_dir)}, "
                                f"so the patches could not move to {APPLIED}/; nothing applied", fix)
        made = True
        try:
            os.mkdir(APPLIED, dir_fd=top)
        except FileExistsError:
            made = False
        try:
            applied = os.open(APPLIED, DIR_FLAGS,
                              dir_fd=top)
        except OSError:
            raise DevshellError(f"refusing to apply: {_show(patches_dir)}/{APPLIED} is not a directory "
                                "(a symlink is never followed); nothing applied",
                                f"remove {_show(patches_dir)}/{APPLIED} and apply again") from None
        try:
            if not _may_write(applied):
                raise DevshellError(f"refusing to apply: you cannot write {_show(patches_dir)}/{APPLIED}; "
                                    "nothing applied", fix)
        finally:
            os.close(applied)
        for patch in patches:
            if not _same_file(top, patch.name, patch.ident):
                raise DevshellError(f"refusing to apply: {_show(patch.name)} is no longer the file that was "
                                    "read; nothing applied", "look at the patches dir and apply again")
    except DevshellError:
        if made:
            with suppress(OSError):
                os.rmdir(APPLIED, dir_fd=top)
        raise
    finally:
        os.close(top)
    return made


def _may_write(fd: int) -> bool:
    """Whether you may create and remove entries in the directory fd."""
    return os.access(".", os.W_OK | os.X_OK, dir_fd=fd,
                     effective_ids=os.access in os.supports_effective_ids)


def _same_file(top: int, name: str, ident: tuple[int, int] | None) -> bool:
    """Whether name in the directory top is (still) the regular file ident (st_dev, st_ino)
    names, never following a link."""
    try:
        st = os.stat(name, dir_fd=top, follow_symlinks=False)
    except OSError:
        return False
    return ident is not None and stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == ident


class _Changed(OSError):
    """The patch file is not the one that was read (swapped or rewritten since)."""

    def __init__(self) -> None:
        super().__init__(errno.ESTALE, CHANGED)


CHANGED = "changed since it was read"


def _archive(patches_dir: str, patches: Sequence[Patch]) -> Applied:
    """Move each patch into applied/, never over an existing file, through directory fds opened
    with O_NOFOLLOW; only the file that was read (same inode, same bytes) moves. The repository
    has changed already, so nothing raises here: what cannot be moved stays, with the reason."""
    names = [p.name for p in patches]
    moved: list[str] = []
    not_moved: list[str] = []
    try:
        top = _open_dir(patches_dir)
    except DevshellError as e:
        return Applied([], [f"{_show(n)}: {e.message}" for n in names])
    try:
        try:
            applied = os.open(APPLIED, DIR_FLAGS,
                              dir_fd=top)
        except OSError as e:
            return Applied([], [f"{_show(n)}: {APPLIED}/ cannot be opened ({e.strerror})" for n in names])
        try:
            for patch in patches:
                try:
                    moved.append(f"{APPLIED}/{_move(top, applied, patch)}")
                except OSError as e:
                    not_moved.append(f"{_show(patch.name)}: {e.strerror or e}")
        finally:
            os.close(applied)
    finally:
        os.close(top)
    return Applied(moved, not_moved)


def _move(top: int, applied: int, patch: Patch) -> str:
    """The patch file into applied/ under a free name: a hard link, else (the kernel refuses to
    link a file you do not own, fs.protected_hardlinks) a copy, written and synced; then the
    original goes. Only the file that was read moves: the same inode, holding the same bytes
    (checked before, and on the new link after: a swap in between shows there). Its new name."""
    name = patch.name
    if not _same_file(top, name, patch.ident) or _content(top, name) != patch.data:
        raise _Changed
    copy = False
    for n in range(1000):
        target = name if n == 0 else f"{name}.{n}"
        try:
            if copy:
                _copy(top, applied, patch, target)
            else:
                os.link(name, target, src_dir_fd=top, dst_dir_fd=applied, follow_symlinks=False)
                if not _same_file(applied, target, patch.ident) or _content(applied, target) != patch.data:
                    with suppress(OSError):
                        os.unlink(target, dir_fd=applied)  # the link just made, of another file
                    raise _Changed
        except FileExistsError:
            continue
        except _Changed:
            raise
        except OSError as e:
            if copy or e.errno not in (errno.EPERM, errno.EACCES, errno.EXDEV, errno.EMLINK,
                                       errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            copy = True
            try:
                _copy(top, applied, patch, target)
            except FileExistsError:
                continue
        if _same_file(top, name, patch.ident):  # a file swapped in meanwhile stays
            os.unlink(name, dir_fd=top)
        return target
    raise OSError(errno.EEXIST, f"too many copies of it in {APPLIED}/")


def _content(top: int, name: str) -> bytes | None:
    """The bytes of the regular file name, read as every patch is (never through a link, within
    the size limit), or None."""
    read = _read_patch(top, name, MAX_TOTAL_BYTES)
    return read[0] if isinstance(read, tuple) else None


def _copy(top: int, applied: int, patch: Patch, target: str) -> None:
    """A copy of the patch file (the regular file that was read, never through a link, holding
    the bytes that were read) as the new file target, on disk before this returns."""
    src = os.open(patch.name, _FILE_FLAGS, dir_fd=top)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != patch.ident:
            raise _Changed
        data = _read_at_most(src, MAX_PATCH_BYTES)
        if data != patch.data:
            raise _Changed
    finally:
        os.close(src)
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                  dir_fd=applied)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
        os.fsync(dst)
    except BaseException:
        os.close(dst)
        with suppress(OSError):
            os.unlink(target, dir_fd=applied)
        raise
    os.close(dst)
    os.fsync(applied)


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
    try:
        cwd = os.getcwd()
    except OSError as e:  # the directory was removed under the shell
        raise DevshellError(f"the current directory is gone or unreadable ({e.strerror})",
                            "cd into your checkout again") from None
    if ns.patches_dir:
        patches_dir = os.path.normpath(os.path.join(cwd, ns.patches_dir))
    else:
        patches_dir = default_patches_out(os.path.realpath(cwd), os.path.expanduser("~"), os.environ)
    # The repository is settled first, so that nothing is read while a refused one is in play.
    try:
        repo: Repo | None = open_repo(ns.repo or cwd, patches_dir)
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
    if not patches and not skipped and (ns.action == "apply" or not found):
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
        return 0 if all(v.ok for v in verdicts) and not dangerous and not skipped else 1
    # A skipped *.patch leaves a series that is not the one the agent wrote: a gap in it would
    # apply what was meant to come with the missing part (or after it).
    if skipped:
        more = f" (+{len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise DevshellError(f"refusing to apply: skipped {_show(skipped[0])}{more}",
                            "look at the patches dir; remove or fix what was skipped, then apply again")
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
    done = apply(patches, repo, patches_dir, protected, ns.allow_gitlinks)
    if ns.json:
        print(json.dumps({"applied": [p.name for p in patches], "moved_to": done.moved,
                          "not_moved": done.not_moved}))
    elif done.not_moved:
        # The branch has moved: that is no failure, but the patches dir is not as it should be.
        more = f" (+{len(done.not_moved) - 1} more)" if len(done.not_moved) > 1 else ""
        _say(f"applied {len(patches)} patch(es) to {repo.top}; {len(done.not_moved)} patch(es) "
             f"not moved to {APPLIED}/: {done.not_moved[0]}{more}")
        _say(f"devshell: move them out of {patches_dir} by hand before the next apply", err=True)
    else:
        _say(f"applied {len(patches)} patch(es) to {repo.top}; moved to {APPLIED}/")
    return 0

