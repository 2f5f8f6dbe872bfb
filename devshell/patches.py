"""Patch intake on the host: list, check and apply what the agent left in the patches dir.

Everything in the patches dir was written from inside the container, so it is untrusted input:
- only regular files named ``*.patch`` at its top level are read, through O_NOFOLLOW, and git
  only ever sees private copies of those bytes: no symlink, and no swap after the check, can lead
  host-side code out of the patches dir;
- a patch that touches ``.git/``, a protected path, or creates a symlink pointing out of the
  repository is refused (unless ``--allow-protected``), naming the patch and the path;
- apply is all or nothing: ``git am --3way``, and on any failure ``git am --abort``, so the repo
  is exactly as it was. Patches move to ``applied/`` only after success; nothing is deleted.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import fnmatch
import json
import os
import posixpath
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from .errors import DevshellError

DEFAULT_PROTECTED = (".github/workflows/**", ".gitmodules", ".gitattributes", ".devcontainer/**")
APPLIED = "applied"
SYMLINK_MODE = "120000"


@dataclass(frozen=True)
class Change:
    """One file a patch touches: its old and new path (None for /dev/null) and, for a symlink
    it creates, where the link points."""

    old: str | None
    new: str | None
    symlink_to: str | None = None


@dataclass(frozen=True)
class Patch:
    name: str
    data: bytes
    subject: str
    author: str
    changes: tuple[Change, ...]
    insertions: int
    deletions: int

    def paths(self) -> list[str]:
        return sorted({p for c in self.changes for p in (c.old, c.new) if p is not None})

    def diffstat(self) -> str:
        n = len(self.paths())
        return (f"{n} file{'s' if n != 1 else ''} changed, {self.insertions} insertion(s)(+), "
                f"{self.deletions} deletion(s)(-)")


@dataclass
class Verdict:
    patch: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- reading ---------------------------------------------------------------------------------

def read_dir(patches_dir: str) -> tuple[list[Patch], list[str]]:
    """The *.patch files at the top of patches_dir, in name order, and what was skipped."""
    try:
        names = sorted(os.listdir(patches_dir))
    except OSError as e:
        raise DevshellError(f"cannot read patches dir {patches_dir} ({e.strerror})",
                            "pass --patches-dir DIR") from None
    patches, skipped = [], []
    for name in names:
        if not name.endswith(".patch"):
            continue
        data = _read_regular(os.path.join(patches_dir, name))
        if data is None:
            skipped.append(f"{name}: not a regular file (a symlink is never followed)")
            continue
        try:
            patches.append(parse(name, data))
        except ValueError as e:
            skipped.append(f"{name}: {e}")
    return patches, skipped


def _read_regular(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not _is_regular(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def parse(name: str, data: bytes) -> Patch:
    """A git format-patch mbox: headers, then one or more `diff --git` sections."""
    text = data.decode("utf-8", "surrogateescape")
    head = email.parser.Parser(policy=email.policy.compat32).parsestr(text, headersonly=True)
    subject, author = head.get("Subject"), head.get("From")
    if not subject or not author:
        raise ValueError("not a git format-patch mail (no From: or Subject: header)")
    changes, insertions, deletions = _changes(text.splitlines())
    if not changes:
        raise ValueError("carries no diff")
    subject = " ".join(str(subject).split())
    for prefix in ("[PATCH]",):
        subject = subject.removeprefix(prefix).strip()
    if subject.startswith("[PATCH ") and "]" in subject:
        subject = subject.split("]", 1)[1].strip()
    return Patch(name, data, subject, " ".join(str(author).split()), tuple(changes), insertions,
                 deletions)


def _changes(lines: list[str]) -> tuple[list[Change], int, int]:
    changes: list[Change] = []
    insertions = deletions = 0
    i = 0
    while i < len(lines):
        if not lines[i].startswith("diff --git "):
            i += 1
            continue
        old, new = _split_git_line(lines[i][len("diff --git "):])
        mode = None
        target_lines: list[str] = []
        i += 1
        in_hunk = False
        while i < len(lines) and not lines[i].startswith("diff --git "):
            line = lines[i]
            if line.startswith("-- ") and line.strip() == "--":  # mail signature
                break
            if in_hunk:
                if line.startswith("+"):
                    insertions += 1
                    target_lines.append(line[1:])
                elif line.startswith("-"):
                    deletions += 1
            elif line.startswith("@@"):
                in_hunk = True
            elif line.startswith("--- "):
                old = _path(line[4:], "a/")
            elif line.startswith("+++ "):
                new = _path(line[4:], "b/")
            elif line.startswith(("rename from ", "copy from ")):
                old = _unquote(line.split(" from ", 1)[1])
            elif line.startswith(("rename to ", "copy to ")):
                new = _unquote(line.split(" to ", 1)[1])
            elif line.startswith(("new file mode ", "new mode ")):
                mode = line.rsplit(" ", 1)[1]
            i += 1
        link = target_lines[0] if mode == SYMLINK_MODE and target_lines else None
        changes.append(Change(old, new, link))
    return changes, insertions, deletions


def _split_git_line(rest: str) -> tuple[str | None, str | None]:
    """`a/X b/Y`, maybe C-quoted. Unquoted names with spaces are ambiguous: assume X == Y."""
    if rest.startswith('"'):
        end = _quoted_end(rest)
        return _path(rest[:end], "a/"), _path(rest[end:].strip(), "b/")
    half = (len(rest) - 1) // 2
    if rest[half] == " " and rest[2:half] == rest[half + 3:]:
        return rest[2:half], rest[half + 3:]
    a, _, b = rest.partition(" b/")
    return a.removeprefix("a/"), b


def _quoted_end(s: str) -> int:
    i = 1
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == '"':
            return i + 1
        i += 1
    return len(s)


def _path(token: str, prefix: str) -> str | None:
    token = token.split("\t", 1)[0].strip()
    if token == "/dev/null":
        return None
    token = _unquote(token)
    return token.removeprefix(prefix)


def _unquote(s: str) -> str:
    """git's C-style quoting: "a\\tb\\303\\251" -> a<TAB>bé."""
    if not (len(s) >= 2 and s[0] == s[-1] == '"'):
        return s
    out = bytearray()
    body, i = s[1:-1], 0
    simple = {"n": 10, "t": 9, '"': 34, "\\": 92, "a": 7, "b": 8, "f": 12, "r": 13, "v": 11}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if body[i + 1:i + 4].isdigit():
                out.append(int(body[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


# --- policy ----------------------------------------------------------------------------------

def problems(patch: Patch, protected: Sequence[str]) -> list[str]:
    """Why patch may not be applied without --allow-protected: each names the path."""
    out = []
    for path in patch.paths():
        parts = path.split("/")
        if any(p.lower().rstrip(". ") == ".git" for p in parts) or ".." in parts or path.startswith("/"):
            out.append(f"touches {path} (inside .git/ or outside the repository)")
            continue
        for glob in protected:
            if _protected(path, glob):
                out.append(f"touches protected path {path} (matches {glob})")
                break
    for change in patch.changes:
        if change.symlink_to is not None and change.new is not None:
            where = posixpath.normpath(posixpath.join(posixpath.dirname(change.new), change.symlink_to))
            if change.symlink_to.startswith("/") or where == ".." or where.startswith("../") or \
                    where.split("/")[0].lower() == ".git":
                out.append(f"creates symlink {change.new} -> {change.symlink_to}, which points out "
                           "of the repository")
    return out


def _protected(path: str, glob: str) -> bool:
    """fnmatch, where '*' also crosses '/'; a glob without '/' matches a name at any depth
    (.gitattributes and .gitmodules act in every directory)."""
    if "/" not in glob:
        return fnmatch.fnmatchcase(posixpath.basename(path), glob)
    return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, glob.removesuffix("/**"))


# --- git -------------------------------------------------------------------------------------

def _git(repo: str, *args: str, env: dict[str, str] | None = None,
         check: bool = False) -> subprocess.CompletedProcess[str]:
    # The launcher chowns the patches dir to dev; when that dir is the work tree of a host user
    # whose uid dev does not share (root in CI), git would call the repository "dubious". Its
    # .git stayed the host user's and read-only inside, so this repository is trusted as it is.
    top = _checkout_top(repo)
    trust = ["-c", f"safe.directory={top}"] if top else []
    done = subprocess.run(["git", *trust, "-C", repo, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if check and done.returncode:
        raise DevshellError(f"git {' '.join(args[:2])} failed: {_first_line(done.stderr)}",
                            "check the repository")
    return done


def _checkout_top(path: str) -> str | None:
    path = os.path.abspath(path)
    while True:
        if os.path.lexists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def repo_root(path: str) -> str:
    done = _git(path, "rev-parse", "--show-toplevel")
    if done.returncode:
        raise DevshellError(f"{path} is not inside a git repository", "pass --repo DIR")
    return done.stdout.strip()


@contextmanager
def _copies(patches: Sequence[Patch]) -> Iterator[list[str]]:
    """Private copies of the bytes that were read and checked: git never opens the originals."""
    with tempfile.TemporaryDirectory(prefix="devshell-patches-") as d:
        paths = []
        for n, patch in enumerate(patches):
            path = os.path.join(d, f"{n:04d}.patch")
            with open(path, "wb") as f:
                f.write(patch.data)
            paths.append(path)
        yield paths


def check(patches: Sequence[Patch], repo: str, protected: Sequence[str]) -> list[Verdict]:
    """Each patch, in order, on top of the ones before it, against HEAD: in a throwaway index,
    so neither the work tree nor the repository's index or refs change."""
    verdicts = [Verdict(p.name, problems(p, protected)) for p in patches]
    with tempfile.TemporaryDirectory(prefix="devshell-check-") as d, _copies(patches) as files:
        env = {"GIT_INDEX_FILE": os.path.join(d, "index")}
        _git(repo, "read-tree", "HEAD", env=env, check=True)
        for verdict, path in zip(verdicts, files, strict=True):
            done = _git(repo, "apply", "--cached", path, env=env)
            if done.returncode:
                verdict.problems.append(f"does not apply cleanly: {_first_line(done.stderr)}")
                break  # later patches build on this one
    return verdicts


def apply(patches: Sequence[Patch], repo: str, patches_dir: str,
          protected: Sequence[str]) -> list[str]:
    """git am --3way, all or nothing; then move the patches to applied/. Returns new names."""
    refused = [f"{p.name}: {why}" for p in patches for why in problems(p, protected)]
    if refused:
        raise DevshellError(f"refusing {refused[0]}" + (f" (+{len(refused) - 1} more)" if len(refused) > 1
                                                         else ""),
                            "review the patch; pass --allow-protected if it is intended")
    git_dir = _git(repo, "rev-parse", "--absolute-git-dir", check=True).stdout.strip()
    if any(os.path.exists(os.path.join(git_dir, d)) for d in ("rebase-apply", "rebase-merge")):
        raise DevshellError(f"{repo} has an am or rebase in progress", "finish or abort it first")
    if _git(repo, "status", "--porcelain", "--untracked-files=no", check=True).stdout.strip():
        raise DevshellError(f"{repo} has uncommitted changes", "commit or stash them first")
    head = _git(repo, "rev-parse", "HEAD", check=True).stdout.strip()
    with _copies(patches) as files:
        done = _git(repo, "am", "--3way", "--quiet", *files)
        if done.returncode:
            _git(repo, "am", "--abort")
            now = _git(repo, "rev-parse", "HEAD").stdout.strip()
            restored = "left as it was" if now == head else f"HEAD is now {now}, was {head}"
            raise DevshellError(f"git am failed, nothing applied, repository {restored}: "
                                f"{_first_line(done.stdout + done.stderr)}",
                                "rebase the work inside the devshell and format the patches again")
    return [_archive(patches_dir, p.name) for p in patches]


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
            raise DevshellError(f"{patches_dir}/{APPLIED} is not a directory (a symlink is never "
                                "followed); the patches were applied but not moved",
                                f"remove {patches_dir}/{APPLIED} and move them by hand") from None
        try:
            for n in range(1000):
                target = name if n == 0 else f"{name}.{n}"
                try:
                    os.link(name, target, src_dir_fd=top, dst_dir_fd=applied, follow_symlinks=False)
                except FileExistsError:
                    continue
                os.unlink(name, dir_fd=top)
                return f"{APPLIED}/{target}"
            raise DevshellError(f"too many copies of {name} in {APPLIED}/", "tidy it up")
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
    p.add_argument("--patches-dir", metavar="DIR", default=".",
                   help="where the patches are (default: the current directory)")
    p.add_argument("--repo", metavar="DIR",
                   help="the repository to check or apply against (default: the one holding cwd)")
    p.add_argument("--protect", action="append", default=[], metavar="GLOB",
                   help=f"also refuse patches touching GLOB (default: {', '.join(DEFAULT_PROTECTED)})")
    p.add_argument("--allow-protected", action="store_true",
                   help="apply patches that touch protected paths or .git/, or add outward symlinks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str]) -> int:
    ns = parser().parse_args(list(argv))
    patches_dir = os.path.abspath(ns.patches_dir)
    patches, skipped = read_dir(patches_dir)
    for line in skipped:
        print(f"devshell: skipped {line}", file=sys.stderr)
    protected = [] if ns.allow_protected else [*DEFAULT_PROTECTED, *ns.protect]
    if ns.action == "list":
        rows = [{"patch": p.name, "subject": p.subject, "author": p.author,
                 "diffstat": p.diffstat(), "problems": problems(p, protected)} for p in patches]
        if ns.json:
            print(json.dumps(rows, indent=2))
        for r in [] if ns.json else rows:
            print(f"{r['patch']}\n    {r['subject']}\n    {r['author']} · {r['diffstat']}")
            for why in r["problems"]:
                print(f"    REFUSED: {why}")
        return 0
    if not patches:
        raise DevshellError(f"no patches in {patches_dir}",
                            "inside the devshell: git format-patch -o /patches <base>")
    repo = repo_root(ns.repo or os.getcwd())
    if ns.action == "check":
        verdicts = check(patches, repo, protected)
        if ns.json:
            print(json.dumps([{"patch": v.patch, "ok": v.ok, "problems": v.problems} for v in verdicts]))
        for v in [] if ns.json else verdicts:
            print(f"{'ok  ' if v.ok else 'FAIL'} {v.patch}" + "".join(f"\n     {w}" for w in v.problems))
        return 0 if all(v.ok for v in verdicts) else 1
    moved = apply(patches, repo, patches_dir, protected)
    if ns.json:
        print(json.dumps({"applied": [p.name for p in patches], "moved_to": moved}))
    else:
        print(f"applied {len(patches)} patch(es) to {repo}; moved to {APPLIED}/")
    return 0

