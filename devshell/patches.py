"""Patch intake on the host: list, check and apply what the agent left in the patches dir.

Everything in the patches dir was written from inside the container, so it is untrusted input:
- only regular files named ``*.patch`` at its top level are read, through O_NOFOLLOW, and git
  only ever sees private copies of those bytes: no symlink, and no swap after the check, can lead
  host-side code out of the patches dir;
- the policy is judged on what git would make of the patches, not on our reading of their
  text: each patch is applied (as ``git am --3way`` would) to a throwaway index on top of the
  ones before it, and the tree it produces is checked. A patch that touches a protected path or
  ``.git``, or leaves a new or changed symlink that resolves out of the repository or into
  ``.git`` (through other symlinks too), is refused, naming the patch and the path;
- apply is all or nothing, and runs only what was reviewed: ``git am --3way`` starts only when
  every patch applied in review, and the result must be the reviewed tree, else the repository
  is reset to where it was. Patches move to ``applied/`` only after success; nothing is deleted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import posixpath
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from .errors import DevshellError

# .devcontainer.json is the other place the dev container spec reads; its initializeCommand
# runs on the host.
DEFAULT_PROTECTED = (".github/workflows/**", ".gitmodules", ".gitattributes", ".devcontainer/**",
                     ".devcontainer.json")
APPLIED = "applied"
SYMLINK = "120000"
MAX_LINK_DEPTH = 40


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
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse(name: str, data: bytes, repo: str | None = None) -> Patch:
    """A patch file as `git am` will read it: split into mails and each mail into author,
    subject and diff by git itself (in repo, so its mailinfo settings apply), never by us."""
    commits = split(data, repo)
    files = insertions = deletions = 0
    for commit in commits:
        f, i, d = _numstat(commit.diff)
        files, insertions, deletions = files + f, insertions + i, deletions + d
    return Patch(name, data, commits, files, insertions, deletions)


def split(data: bytes, repo: str | None = None) -> tuple[Commit, ...]:
    with tempfile.TemporaryDirectory(prefix="devshell-mail-") as d:
        mbox, mails = os.path.join(d, "mbox"), os.path.join(d, "mails")
        os.mkdir(mails)
        with open(mbox, "wb") as f:
            f.write(data)
        git = _git_argv(repo) if repo else ["git"]
        # The same split as git am: -b takes a file without a 'From ' line as one mail.
        done = subprocess.run([*git, "mailsplit", "-b", f"-o{mails}", "--", mbox],
                              capture_output=True, cwd=d)
        if done.returncode:
            raise ValueError("not a mailbox git am can read")
        commits = []
        for mail in sorted(os.listdir(mails)):
            msg, diff = os.path.join(d, "msg"), os.path.join(d, "diff")
            with open(os.path.join(mails, mail), "rb") as f:
                info = subprocess.run([*git, "mailinfo", msg, diff], stdin=f,
                                      capture_output=True, cwd=d)
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


def _numstat(diff: bytes) -> tuple[int, int, int]:
    """git's own count: files changed (a rename is one), lines added and removed."""
    with tempfile.TemporaryDirectory(prefix="devshell-stat-") as outside_any_repo:
        done = subprocess.run(["git", "apply", "--numstat", "-z", "-"], input=diff,
                              capture_output=True, cwd=outside_any_repo)
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


# --- git -------------------------------------------------------------------------------------

def _git_argv(repo: str) -> list[str]:
    """git for one repository, hardened: the repository's hooks and fsmonitor never run (a
    .git the agent planted in a plain patches dir would be its code on the host).
    The launcher chowns the patches dir to dev; when that dir is the work tree of a host user
    whose uid dev does not share (root in CI), git would call the repository "dubious". When
    its .git is still this user's (read-only inside the devshell), it is trusted as it is."""
    argv = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
    top = _checkout_top(repo)
    if top and os.lstat(os.path.join(top, ".git")).st_uid == os.getuid():
        argv += ["-c", f"safe.directory={top}"]
    return [*argv, "-C", repo]


def _git(repo: str, *args: str, env: dict[str, str] | None = None,
         check: bool = False) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*_git_argv(repo), *args], capture_output=True, text=True,
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
    """git's reason: its first error: or fatal: line, else its first line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "fatal:"))]
    return (errors or lines or ["(no message)"])[0]


def _try_repo_root(path: str) -> str | None:
    try:
        return repo_root(path)
    except DevshellError:
        return None


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


def _git_out(repo: str, *args: str, env: dict[str, str] | None = None,
             stdin: bytes | None = None) -> bytes:
    """Raw output of a git command that must succeed (paths may be any bytes)."""
    done = subprocess.run([*_git_argv(repo), *args], capture_output=True, input=stdin,
                          env={**os.environ, **(env or {})})
    if done.returncode:
        raise DevshellError(f"git {' '.join(args[:2])} failed: "
                            f"{_first_line(done.stderr.decode(errors='replace'))}", "check the repository")
    return done.stdout


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def tree_problems(repo: str, old: str, new: str, protected: Sequence[str]) -> list[str]:
    """What is wrong with going from tree old to tree new: changed paths that are protected or
    in .git; symlinks placed where a protected directory is; and any symlink that leads out of
    the repository or into .git in new but did not in old (a new or changed link, or an
    unchanged one that a changed directory now sends elsewhere)."""
    changed = [_decode(p) for p in _git_out(repo, "diff-tree", "-r", "-z", "--no-renames",
                                            "--name-only", old, new).split(b"\0") if p]
    out = [why for path in changed for why in path_problems(path, protected)]
    before, after = _links(repo, old), _links(repo, new)
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


def _links(repo: str, tree: str) -> dict[str, str]:
    """Every symlink in tree: path -> target."""
    shas: dict[str, str] = {}
    for entry in _git_out(repo, "ls-tree", "-r", "-z", "--full-tree", tree).split(b"\0"):
        meta, _, name = entry.partition(b"\t")
        if meta.startswith(SYMLINK.encode()):
            shas[_decode(name)] = meta.split()[2].decode()
    return dict(zip(shas, _blobs(repo, list(shas.values())), strict=True))


def _blobs(repo: str, shas: list[str]) -> list[str]:
    """Contents of blobs (symlink targets), in order, from one git cat-file --batch."""
    if not shas:
        return []
    raw = _git_out(repo, "cat-file", "--batch", stdin="".join(f"{s}\n" for s in shas).encode())
    out, i = [], 0
    for _ in shas:
        header_end = raw.index(b"\n", i)
        size = int(raw[i:header_end].split()[2])
        out.append(_decode(raw[header_end + 1:header_end + 1 + size]))
        i = header_end + 1 + size + 1
    return out


def review(patches: Sequence[Patch], repo: str,
           protected: Sequence[str]) -> tuple[list[Verdict], str | None]:
    """Apply each mail of each patch, in order, on top of the ones before it, as `git am --3way`
    would (git splits the mails, with this repository's settings), to a throwaway index (the
    work tree, index and refs do not change), and judge the tree each one makes. Returns the
    verdicts and the final tree (None when a patch does not apply)."""
    verdicts = [Verdict(p.name) for p in patches]
    with tempfile.TemporaryDirectory(prefix="devshell-review-") as d:
        env = {"GIT_INDEX_FILE": os.path.join(d, "index")}
        diff_file = os.path.join(d, "diff")
        _git_out(repo, "read-tree", "HEAD", env=env)
        tree = _decode(_git_out(repo, "rev-parse", "HEAD^{tree}")).strip()
        for n, (verdict, patch) in enumerate(zip(verdicts, patches, strict=True)):
            try:
                commits = split(patch.data, repo)
            except ValueError as e:
                verdict.problems.append(f"git am cannot read it: {e}")
                commits = ()
            for commit in commits:
                with open(diff_file, "wb") as f:
                    f.write(commit.diff)
                done = _git(repo, "apply", "--cached", "--3way", diff_file, env=env)
                if done.returncode:
                    verdict.problems.append(f"does not apply: {_first_line(done.stderr)}")
                    break
                new = _decode(_git_out(repo, "write-tree", env=env)).strip()
                verdict.problems += tree_problems(repo, tree, new, protected)
                tree = new
            if not commits or (verdict.problems and verdict.problems[-1].startswith("does not apply")):
                for later in verdicts[n + 1:]:
                    later.problems.append(f"not checked: it builds on {verdict.patch}, which does not apply")
                return verdicts, None
    return verdicts, tree


def check(patches: Sequence[Patch], repo: str, protected: Sequence[str]) -> list[Verdict]:
    """Whether each patch is well-formed, allowed, and applies in order to HEAD."""
    return review(patches, repo, protected)[0]


def apply(patches: Sequence[Patch], repo: str, patches_dir: str,
          protected: Sequence[str]) -> list[str]:
    """git am --3way, all or nothing, of exactly what review() accepted; then move the patches
    to applied/. Returns their new names. A refused or failing series changes nothing."""
    git_dir = _git(repo, "rev-parse", "--absolute-git-dir", check=True).stdout.strip()
    if any(os.path.exists(os.path.join(git_dir, d)) for d in ("rebase-apply", "rebase-merge")):
        raise DevshellError(f"{repo} has an am or rebase in progress", "finish or abort it first")
    if _git(repo, "status", "--porcelain", "--untracked-files=no", check=True).stdout.strip():
        raise DevshellError(f"{repo} has uncommitted changes", "commit or stash them first")
    verdicts, reviewed = review(patches, repo, protected)
    bad = [f"{v.patch}: {why}" for v in verdicts for why in v.problems]
    if bad:
        more = f" (+{len(bad) - 1} more; see devshell patches check)" if len(bad) > 1 else ""
        fix = ("rebase the work inside the devshell and format the patches again"
               if reviewed is None else
               "review the patch; --allow-protected accepts protected paths (never .git or an "
               "outward symlink)")
        raise DevshellError(f"refusing {bad[0]}{more}", fix)
    head = _git(repo, "rev-parse", "HEAD", check=True).stdout.strip()
    with _copies(patches) as files:
        done = _git(repo, "am", "--3way", "--quiet", *files)
    if done.returncode:
        _git(repo, "am", "--abort")
        raise DevshellError(f"git am failed, nothing applied: {_first_line(done.stdout + done.stderr)}",
                            "rebase the work inside the devshell and format the patches again")
    if _git(repo, "rev-parse", "HEAD^{tree}", check=True).stdout.strip() != reviewed:
        _git(repo, "reset", "--hard", "--quiet", head, check=True)
        raise DevshellError("git am made a different tree than the one reviewed; reset to "
                            f"{head[:12]}", "apply the patches by hand after reading them")
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
                   help="accept patches that touch protected paths (.git and symlinks leading out "
                        "of the repository are always refused)")
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
        repo = _try_repo_root(ns.repo or os.getcwd())
        verdicts = check(patches, repo, protected) if repo and patches else [Verdict(p.name) for p in patches]
        rows = [{"patch": p.name, "subject": p.subject, "author": p.author,
                 "diffstat": p.diffstat(), "problems": v.problems}
                for p, v in zip(patches, verdicts, strict=True)]
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

