"""devshell patches: parse, read_dir, the path and symlink policy, review/check, apply and main,
without Docker.

Every repository is a real git repository under tmp_path: the host repo, and an agent clone whose
commits `git format-patch` turns into the patches the host reviews. Only malicious patches that
git would never write (a diff into .git/, a traditional diff smuggled after a git one, an encoded
mail body) are written by hand. The machine's git configuration never leaks in: HOME is tmp_path,
global/system config are off, and the cwd is tmp_path, outside any repository.

The attacks of the trust model (a .git planted in the patches dir, the user's own config and
attributes, a symlink in the work tree, gitlinks, leftovers, huge files, terminal escapes) each
have a test that the attack fails, next to a control showing that it works without the guard.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import posixpath
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import devshell.patches as patches_module
from devshell.errors import DevshellError
from devshell.options import default_patches_out, drops_root
from devshell.patches import (
    APPLIED,
    DEFAULT_PROTECTED,
    MAX_PATCH_BYTES,
    Leftover,
    Patch,
    apply,
    check,
    git_env,
    leftovers,
    link_escapes,
    main,
    parse,
    path_problems,
    read_dir,
    review,
    tree_problems,
)

HOST = ("Host Person", "host@example.com")
AGENT = ("Agent Smith", "agent@example.com")
AGENT_FROM = "Agent Smith <agent@example.com>"

# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git config, no inherited repository, the host as default identity,
    and a cwd outside any repository (`list` without --repo looks for one there)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CEILING_DIRECTORIES", "GIT_AUTHOR_DATE",
                "GIT_COMMITTER_DATE", "GIT_CONFIG", "GIT_CONFIG_COUNT", "GIT_CONFIG_PARAMETERS"):
        monkeypatch.delenv(var, raising=False)
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", HOST[0])
        monkeypatch.setenv(f"GIT_{role}_EMAIL", HOST[1])


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def git_bytes(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


def write(repo: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def symlink(repo: Path, rel: str, target: str) -> None:
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def commit(repo: Path, message: str, files: dict[str, str | bytes] | None = None,
           who: tuple[str, str] = AGENT) -> None:
    write(repo, files or {})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message,
        env={"GIT_AUTHOR_NAME": who[0], "GIT_AUTHOR_EMAIL": who[1]})


def settle(repo: Path) -> None:
    """Backdate the work tree and refresh the index, so no later `git status` rewrites it."""
    old = time.time() - 3600
    for rel in git(repo, "ls-files", "-z").split("\0"):
        if rel:
            os.utime(repo / rel, (old, old), follow_symlinks=False)
    git(repo, "update-index", "-q", "--refresh")


def clone(tmp_path: Path, host: Path, name: str = "agent2") -> Path:
    """An agent clone made after the host gained more commits than the `agent` fixture saw."""
    repo = tmp_path / name
    git(tmp_path, "clone", "-q", str(host), str(repo))
    return repo


def format_patches(agent: Path, out: Path, *extra: str) -> list[str]:
    """The agent's commits since the clone, as the patch files it would leave for the host."""
    git(agent, "format-patch", "-q", "-o", str(out), *extra, "origin/main")
    return sorted(os.listdir(out))


def last_patch(agent: Path, *extra: str) -> Patch:
    return parse("0001-last.patch", git_bytes(agent, "format-patch", "--stdout", *extra, "-1"))


def tree_of(repo: Path) -> dict[str, str]:
    """Every path of the work tree (not .git) with its content hash or link target."""
    out = {}
    for root, dirs, files in os.walk(repo):
        if Path(root) == repo:
            dirs.remove(".git")
        for name in [*dirs, *files]:
            path = Path(root, name)
            rel = path.relative_to(repo).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def state(repo: Path) -> dict[str, object]:
    """What must not change: HEAD, refs, index entries, status, work tree."""
    return {
        "HEAD file": (repo / ".git" / "HEAD").read_bytes(),
        "HEAD": git(repo, "rev-parse", "HEAD"),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "index entries": git(repo, "ls-files", "--stage"),
        "status": git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=all"),
        "work tree": tree_of(repo),
    }


def index_bytes(repo: Path) -> str:
    return hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()


def dir_listing(path: Path) -> dict[str, str]:
    """Every file under path (recursively) with its content hash: what exists, nothing lost."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def mail(*diffs: str, subject: str = "[PATCH] Change things",
         author: str = "Mallory <mallory@example.com>", body: str = "Body.\n",
         headers: str = "") -> bytes:
    """A hand-written format-patch mail around the given diff sections."""
    return (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: {author}\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: {subject}\n{headers}\n"
            f"{body}---\n{''.join(diffs)}-- \n2.47.3\n\n").encode()


def add_file(path: str, line: str = "hello") -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..ce01362\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{line}\n")


def add_symlink(path: str, target: str) -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 120000\nindex 0000000..ce01362\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n")


def hand_patch(*diffs: str) -> Patch:
    return parse("0001-hand.patch", mail(*diffs))


def drop(patches_dir: Path, data: bytes, name: str = "0001-hand.patch") -> str:
    """Leave a hand-written patch in the patches dir, as the agent could."""
    (patches_dir / name).write_bytes(data)
    return name


def refused_by_apply(host: Path, patches_dir: Path, protected: list[str] | tuple[str, ...],
                     *named: str) -> DevshellError:
    """apply() refuses, naming each of `named`, and leaves the repository byte-identical (HEAD,
    refs, index entries and file, .git's entries, work tree) and the patches dir as it was."""
    before, index_before = state(host), index_bytes(host)
    git_entries, files_before = sorted(os.listdir(host / ".git")), dir_listing(patches_dir)
    with pytest.raises(DevshellError) as info:
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), protected)
    for needle in named:
        assert needle in info.value.message
    assert state(host) == before
    assert index_bytes(host) == index_before
    assert sorted(os.listdir(host / ".git")) == git_entries
    assert dir_listing(patches_dir) == files_before
    return info.value


@pytest.fixture
def host(tmp_path: Path) -> Path:
    repo = tmp_path / "host"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    commit(repo, "Initial", {"a.txt": "alpha\n", "b.txt": "beta\n", "gone.txt": "bye\n",
                             "src/old.py": "print('old')\nprint('more')\n",
                             "docs/readme.md": "# readme\n"}, who=HOST)
    settle(repo)
    return repo


@pytest.fixture
def agent(tmp_path: Path, host: Path) -> Path:
    return clone(tmp_path, host, "agent")


@pytest.fixture
def patches_dir(tmp_path: Path) -> Path:
    out = tmp_path / "patches"
    out.mkdir()
    return out


@pytest.fixture
def series(agent: Path, patches_dir: Path) -> list[str]:
    """Three patches, each building on the one before."""
    commit(agent, "Add a line to a", {"a.txt": "alpha\nsecond\n"})
    commit(agent, "Change b", {"b.txt": "BETA\n"})
    commit(agent, "Add another line to a", {"a.txt": "alpha\nsecond\nthird\n"})
    return format_patches(agent, patches_dir)


@pytest.fixture
def conflicting(host: Path, series: list[str]) -> list[str]:
    """The host changed b.txt meanwhile: the 2nd of the 3 patches conflicts, 3-way or not."""
    commit(host, "Host changes b", {"b.txt": "host's beta\n"}, who=HOST)
    settle(host)
    return series


# --- parse -----------------------------------------------------------------------------------


def test_parse_strips_patch_prefix_from_subject(agent: Path):
    commit(agent, "Fix the frobnicator", {"a.txt": "fixed\n"})
    data = git_bytes(agent, "format-patch", "--stdout", "-1")
    assert b"Subject: [PATCH] Fix the frobnicator" in data
    assert parse("0001.patch", data).subject == "Fix the frobnicator"


def test_parse_strips_numbered_patch_prefix_from_subject(series: list[str], patches_dir: Path):
    data = (patches_dir / series[1]).read_bytes()
    assert b"Subject: [PATCH 2/3] Change b" in data
    assert parse(series[1], data).subject == "Change b"


def test_parse_joins_a_folded_long_subject(agent: Path):
    words = " ".join(f"word{n}" for n in range(30))
    commit(agent, words, {"a.txt": "x\n"})
    data = git_bytes(agent, "format-patch", "--stdout", "-1")
    assert b"\n word" in data  # git folded the header
    assert parse("0001.patch", data).subject == words


def test_parse_reads_author_name_and_email(agent: Path):
    commit(agent, "Change a", {"a.txt": "x\n"})
    assert last_patch(agent).author == AGENT_FROM


def test_parse_keeps_patch_name_and_bytes(agent: Path):
    commit(agent, "Change a", {"a.txt": "x\n"})
    data = git_bytes(agent, "format-patch", "--stdout", "-1")
    patch = parse("0007-change-a.patch", data)
    assert (patch.name, patch.data) == ("0007-change-a.patch", data)


def test_parse_counts_modified_and_added_files(agent: Path):
    commit(agent, "Touch two", {"a.txt": "changed\n", "new/dir/file.txt": "new\n"})
    patch = last_patch(agent)
    assert (patch.files, patch.insertions, patch.deletions) == (2, 2, 1)


def test_parse_counts_a_pure_rename_as_one_file_without_lines(agent: Path):
    git(agent, "mv", "src/old.py", "src/new.py")
    commit(agent, "Rename old to new")
    patch = last_patch(agent, "-M")
    assert b"rename from src/old.py" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (1, 0, 0)


def test_parse_counts_a_rename_with_edits_as_one_file(agent: Path):
    git(agent, "mv", "src/old.py", "src/new.py")
    commit(agent, "Rename and edit", {"src/new.py": "print('old')\nprint('more')\nprint('x')\n"})
    patch = last_patch(agent, "-M")
    assert b"similarity index" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (1, 1, 0)


def test_parse_counts_a_rename_next_to_other_changes(agent: Path):
    git(agent, "mv", "src/old.py", "src/new.py")
    commit(agent, "Rename and more", {"a.txt": "A\n", "z.txt": "z\n"})
    patch = last_patch(agent, "-M")
    assert b"rename to src/new.py" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (3, 2, 1)


def test_parse_counts_a_deleted_file(agent: Path):
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "Delete gone")
    patch = last_patch(agent)
    assert (patch.files, patch.insertions, patch.deletions) == (1, 0, 1)


def test_parse_counts_a_c_quoted_name_with_a_tab(agent: Path):
    commit(agent, "Tabbed name", {"tab\there.txt": "t\n"})
    patch = last_patch(agent)
    assert b'"b/tab\\there.txt"' in patch.data  # git quoted it
    assert (patch.files, patch.insertions, patch.deletions) == (1, 1, 0)


def test_parse_counts_a_c_quoted_non_ascii_name(agent: Path):
    commit(agent, "Accented name", {"docs/café.md": "c\n", "docs/readme.md": "# README\n"})
    patch = last_patch(agent)
    assert b'"b/docs/caf\\303\\251.md"' in patch.data  # git quoted it
    assert (patch.files, patch.insertions, patch.deletions) == (2, 2, 1)


def test_parse_counts_a_rename_to_a_quoted_name_with_a_tab(agent: Path):
    git(agent, "mv", "src/old.py", "src/ünï\t.py")
    commit(agent, "Rename to an odd name", {"a.txt": "A\n"})
    patch = last_patch(agent, "-M")
    assert b'rename to "src/' in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (2, 1, 1)


def test_parse_counts_a_binary_patch_as_a_file_without_lines(agent: Path):
    commit(agent, "Add a blob", {"assets/blob.bin": bytes(range(256)) * 4, "a.txt": "A\n"})
    patch = last_patch(agent, "--binary")
    assert b"GIT binary patch" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (2, 1, 1)


def test_parse_counts_insertions_and_deletions_like_git(agent: Path):
    commit(agent, "Several", {"a.txt": "one\ntwo\nthree\n", "b.txt": "beta\nmore\n",
                              "src/old.py": "print('old')\n"})
    patch = last_patch(agent)
    numstat = git(agent, "diff", "--numstat", "HEAD~1", "HEAD").split("\n")
    added = sum(int(line.split()[0]) for line in numstat if line)
    removed = sum(int(line.split()[1]) for line in numstat if line)
    assert (patch.files, patch.insertions, patch.deletions) == (3, added, removed) == (3, 4, 2)


def test_parse_counts_a_new_symlink_as_one_line(agent: Path):
    symlink(agent, "links/to-a", "../a.txt")
    commit(agent, "Add a link")
    patch = last_patch(agent)
    assert b"new file mode 120000" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (1, 1, 0)


def test_parse_counts_every_change_of_a_multi_file_patch(agent: Path):
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "Many", {"a.txt": "A\n", "z/new.txt": "n\n"})
    assert last_patch(agent).files == 3


def test_parse_counts_a_traditional_diff_after_a_git_diff(host: Path):
    """What git apply and git am read, the count reads: not only `diff --git` sections."""
    smuggled = ("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-alpha\n+ALPHA\n"
                "--- /dev/null\n+++ b/.github/workflows/ci.yml\n@@ -0,0 +1 @@\n+on: push\n")
    patch = hand_patch(smuggled)
    assert (patch.files, patch.insertions, patch.deletions) == (2, 2, 1)


def test_diffstat_reads_like_gits(agent: Path):
    commit(agent, "Two files", {"a.txt": "one\ntwo\n", "b.txt": "b\n"})
    assert last_patch(agent).diffstat() == "2 files changed, 3 insertion(s)(+), 2 deletion(s)(-)"


def test_diffstat_counts_a_rename_as_one_file(agent: Path):
    git(agent, "mv", "src/old.py", "src/new.py")
    commit(agent, "Rename")
    assert " 1 file changed" in git(agent, "show", "-M", "--shortstat", "--format=", "HEAD")
    assert last_patch(agent, "-M").diffstat() == "1 file changed, 0 insertion(s)(+), 0 deletion(s)(-)"


def test_parse_rejects_a_file_that_is_not_a_mail():
    with pytest.raises(ValueError, match="not a git format-patch mail"):
        parse("notes.patch", b"just some notes\nnothing else\n")


def test_parse_rejects_a_plain_diff_without_mail_headers(agent: Path):
    write(agent, {"a.txt": "changed\n"})
    diff = git_bytes(agent, "diff")
    assert diff.startswith(b"diff --git")
    with pytest.raises(ValueError, match="not a git format-patch mail"):
        parse("plain.patch", diff)


def test_parse_rejects_a_mail_without_a_diff():
    data = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            b"From: Mallory <m@example.com>\nSubject: [PATCH] Nothing here\n\nJust words.\n")
    with pytest.raises(ValueError, match="carries no diff"):
        parse("empty.patch", data)


def test_parse_rejects_a_mail_whose_diff_git_cannot_read():
    with pytest.raises(ValueError, match="carries no diff"):
        parse("corrupt.patch", mail("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n"
                                    "@@ -1,5 +1,5 @@\n-alpha\n+ALPHA\n"))


def test_parse_decodes_non_ascii_subject(agent: Path):
    commit(agent, "Füße ändern", {"a.txt": "x\n"})
    patch = last_patch(agent)
    assert b"Subject: [PATCH] =?UTF-8?q?" in patch.data  # git encoded it
    assert patch.subject == "Füße ändern"


def test_parse_decodes_non_ascii_author(agent: Path):
    commit(agent, "Change a", {"a.txt": "x\n"}, who=("Jörg Ünïcode", "j@example.com"))
    patch = last_patch(agent)
    assert b"From: =?UTF-8?q?" in patch.data  # git encoded it
    assert patch.author == "Jörg Ünïcode <j@example.com>"


def test_parse_decodes_a_long_non_ascii_subject_folded_into_several_words(agent: Path):
    words = " ".join(f"größe{n}" for n in range(20))
    commit(agent, words, {"a.txt": "x\n"})
    patch = last_patch(agent)
    assert patch.data.count(b"=?UTF-8?q?") > 1
    assert patch.subject == words


def test_parse_counts_a_removed_dash_space_line(agent: Path):
    commit(agent, "List", {"list.md": "- \nkeep\n"})
    commit(agent, "Fill the item", {"list.md": "- item\nkeep\n", "b.txt": "beta\nafter\n"})
    patch = last_patch(agent)
    assert b"\n-- \n+- item\n" in patch.data
    assert (patch.files, patch.insertions, patch.deletions) == (2, 2, 1)


def test_parse_author_and_subject_are_what_apply_commits(host: Path, patches_dir: Path):
    drop(patches_dir, mail(add_file("new.txt"), subject="[PATCH] Harmless", author="Mallory <m@example.com>",
                           body="From: Trusted Maintainer <boss@example.com>\nSubject: Reviewed\n\nBody.\n"))
    [patch] = read_dir(str(patches_dir))[0]
    apply([patch], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "log", "-1", "--format=%an <%ae>|%s").strip() == f"{patch.author}|{patch.subject}"


# --- read_dir --------------------------------------------------------------------------------


def test_read_dir_returns_patches_in_name_order(series: list[str], patches_dir: Path):
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series == sorted(series)
    assert [p.subject for p in patches] == ["Add a line to a", "Change b", "Add another line to a"]
    assert skipped == []


def test_read_dir_ignores_files_not_named_dot_patch(series: list[str], patches_dir: Path):
    original = (patches_dir / series[0]).read_bytes()
    for name in ("notes.txt", "0001.diff", "0009-x.patch.orig", "patch"):
        (patches_dir / name).write_bytes(original)
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == []


def test_read_dir_ignores_patches_in_subdirectories(series: list[str], patches_dir: Path):
    original = (patches_dir / series[0]).read_bytes()
    for sub in ("applied", "nested"):
        (patches_dir / sub).mkdir()
        (patches_dir / sub / "0000-hidden.patch").write_bytes(original)
    assert [p.name for p in read_dir(str(patches_dir))[0]] == series


def test_read_dir_skips_a_directory_named_dot_patch(series: list[str], patches_dir: Path):
    (patches_dir / "0000-dir.patch").mkdir()
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == ["0000-dir.patch: not a regular file (a symlink is never followed)"]


def test_read_dir_skips_a_symlinked_patch_pointing_outside(series: list[str], patches_dir: Path,
                                                           tmp_path: Path):
    outside = tmp_path / "outside.patch"
    outside.write_bytes((patches_dir / series[0]).read_bytes())
    (patches_dir / "0000-link.patch").symlink_to(outside)
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == ["0000-link.patch: not a regular file (a symlink is never followed)"]


def test_read_dir_skips_a_symlinked_patch_pointing_inside(series: list[str], patches_dir: Path):
    (patches_dir / "0000-link.patch").symlink_to(series[0])
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == ["0000-link.patch: not a regular file (a symlink is never followed)"]


def test_read_dir_skips_a_fifo_without_hanging(series: list[str], patches_dir: Path):
    os.mkfifo(patches_dir / "0000-y.patch")
    result: list[tuple[list[Patch], list[str]]] = []
    reader = threading.Thread(target=lambda: result.append(read_dir(str(patches_dir))), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader so the test process can end
        fd = os.open(patches_dir / "0000-y.patch", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("read_dir blocked on a FIFO")
    patches, skipped = result[0]
    assert [p.name for p in patches] == series
    assert skipped == ["0000-y.patch: not a regular file (a symlink is never followed)"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_read_dir_closes_every_file_it_opens(series: list[str], patches_dir: Path):
    (patches_dir / "0000-dir.patch").mkdir()
    os.mkfifo(patches_dir / "0000-fifo.patch")
    (patches_dir / "0000-junk.patch").write_bytes(b"junk\n")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        patches, skipped = read_dir(str(patches_dir))
    assert (len(patches), len(skipped)) == (3, 3)
    assert len(os.listdir("/proc/self/fd")) == before


def test_read_dir_skips_an_unparsable_patch_with_the_reason(series: list[str], patches_dir: Path):
    (patches_dir / "0000-junk.patch").write_bytes(b"junk\n")
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == ["0000-junk.patch: not a git format-patch mail (no From: or Subject: header)"]


def test_read_dir_of_a_missing_dir_raises_devshell_error(tmp_path: Path):
    with pytest.raises(DevshellError, match="cannot read patches dir"):
        read_dir(str(tmp_path / "nope"))


# --- path_problems ---------------------------------------------------------------------------


@pytest.mark.parametrize("protected", [DEFAULT_PROTECTED, []], ids=["default", "allow-protected"])
@pytest.mark.parametrize("path", [".git", ".git/hooks/post-checkout", ".git/config", ".GIT/config",
                                  ".Git/hooks/pre-commit", "sub/.git", "sub/.git/config",
                                  "a/b/.git/HEAD", ".git./config", ".git /config", "sub/.GiT. /x",
                                  "sub/.git/.gitattributes"])
def test_path_problems_refuses_dot_git_at_any_depth_and_case_even_unprotected(
        path: str, protected: tuple[str, ...]):
    assert path_problems(path, protected) == [f"touches {path} (inside .git)"]


@pytest.mark.parametrize("path", ["a.txt", ".gitignore", ".github/README.md", ".github/dependabot.yml",
                                  ".github/workflows-old/ci.yml", "x.git/config", "git/config",
                                  ".gitx/config", ".git-blame-ignore-revs", "sub/.gitkeep", "my.git",
                                  "docs/github.md", "workflows/ci.yml", ".devcontainers/x.json",
                                  "gitmodules", "my.gitignore", "docs/.github/workflows.md"])
def test_path_problems_allows_ordinary_and_lookalike_paths(path: str):
    assert path_problems(path, DEFAULT_PROTECTED) == []


@pytest.mark.parametrize(("path", "glob"), [
    (".github/workflows/ci.yml", ".github/workflows/**"),
    (".github/workflows/nested/deploy.yml", ".github/workflows/**"),
    (".github/workflows", ".github/workflows/**"),
    (".gitmodules", ".gitmodules"),
    (".gitattributes", ".gitattributes"),
    ("docs/.gitattributes", ".gitattributes"),
    ("vendor/lib/.gitmodules", ".gitmodules"),
    (".devcontainer/devcontainer.json", ".devcontainer/**"),
    (".devcontainer/python/devcontainer.json", ".devcontainer/**"),
    (".devcontainer", ".devcontainer/**"),
    (".husky/pre-commit", ".husky/**"),
    (".husky/_/husky.sh", ".husky/**"),
    (".lfsconfig", ".lfsconfig"),
    # without regard to case: a case-insensitive checkout reads these as the protected ones
    (".DEVCONTAINER/devcontainer.json", ".devcontainer/**"),
    (".GitAttributes", ".gitattributes"),
    ("docs/.GITATTRIBUTES", ".gitattributes"),
    (".GITMODULES", ".gitmodules"),
    (".GitHub/Workflows/ci.yml", ".github/workflows/**"),
    (".Devcontainer.JSON", ".devcontainer.json"),
    (".Husky/pre-push", ".husky/**"),
    (".LfsConfig", ".lfsconfig"),
])
def test_path_problems_refuses_default_protected_paths(path: str, glob: str):
    assert path_problems(path, DEFAULT_PROTECTED) == [f"touches protected path {path} (matches {glob})"]


def test_protected_globs_match_without_regard_to_case_where_fnmatchcase_does_not():
    """Control: a case-sensitive match (the guard absent) lets the case variants through."""
    import fnmatch
    assert not fnmatch.fnmatchcase(".GitAttributes", ".gitattributes")
    assert not fnmatch.fnmatchcase(".DEVCONTAINER/devcontainer.json", ".devcontainer/**")
    assert path_problems("Extra/Key.PEM", [*DEFAULT_PROTECTED, "extra/*.pem"]) == [
        "touches protected path Extra/Key.PEM (matches extra/*.pem)"]


def test_tree_problems_refuses_a_symlink_at_a_protected_dir_in_another_case(agent: Path):
    start = git(agent, "rev-parse", "HEAD^{tree}").strip()
    symlink(agent, ".GitHub", "docs")
    commit(agent, "A link where .github belongs")
    assert tree_problems(str(agent), start, git(agent, "rev-parse", "HEAD^{tree}").strip(),
                         DEFAULT_PROTECTED) == [
        "puts symlink .GitHub where protected directory .GitHub/ belongs"]


def test_path_problems_refuses_extra_globs():
    protected = [*DEFAULT_PROTECTED, "secrets/*", "Makefile"]
    assert path_problems("secrets/deep/key.pem", protected) == [
        "touches protected path secrets/deep/key.pem (matches secrets/*)"]
    assert path_problems("tools/Makefile", protected) == [
        "touches protected path tools/Makefile (matches Makefile)"]
    assert path_problems("ok.txt", protected) == []


def test_path_problems_with_no_globs_allows_protected_paths():
    for path in (".github/workflows/ci.yml", ".gitmodules", "docs/.gitattributes", ".devcontainer/x"):
        assert path_problems(path, []) == []


def test_path_problems_refuses_a_root_devcontainer_json():
    assert path_problems(".devcontainer.json", DEFAULT_PROTECTED) != []


# --- link_escapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("link", "target", "why"), [
    ("pw", "/etc/passwd", "an absolute path (/etc/passwd)"),
    ("pw", "//etc/passwd", "an absolute path (//etc/passwd)"),
    ("x", "../../x", "outside the repository"),
    ("up", "..", "outside the repository"),
    ("up", "../", "outside the repository"),
    ("l", "sub/../../x", "outside the repository"),
    ("sub/l", "../../x", "outside the repository"),
    ("sub/deeper/l", "../../../outside", "outside the repository"),
    ("sub/deeper/l", "./.././../.././x", "outside the repository"),
    ("hooks", ".git/hooks", "into .git"),
    ("g", ".git", "into .git"),
    ("g", "./.git/", "into .git"),
    ("sub/cfg", "../.git/config", "into .git"),
    ("HOOKS", ".GIT/hooks", "into .git"),
    ("g", ".Git./config", "into .git"),
    ("g", ".git /config", "into .git"),
    ("l", "sub/../.git/config", "into .git"),
])
def test_link_escapes_refuses_a_target_out_of_the_repository_or_into_dot_git(
        link: str, target: str, why: str):
    assert link_escapes(link, {link: target}) == why


@pytest.mark.parametrize(("link", "target"), [
    ("to-a", "a.txt"),
    ("sub/l", "../a.txt"),
    ("sub/deeper/l", "../../docs/readme.md"),
    ("here", "."),
    ("d", "./docs"),
    ("l", "sub/../a.txt"),
    ("l", "missing/../a.txt"),
    ("l", "a//b/./c/"),
    ("sub/gitish", "../.github/README"),
    ("l", ".gitignore"),
    ("l", "x.git/config"),
    ("l", ".github/workflows/ci.yml"),
])
def test_link_escapes_allows_a_target_inside_the_repository(link: str, target: str):
    assert link_escapes(link, {link: target}) is None


@pytest.mark.parametrize("sep", ["\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\n",
                                 "\x0b", "\x0c", "\\"])
def test_link_escapes_splits_a_target_only_on_slash(sep: str):
    # a directory named "x<sep>" is one component: x<sep>/../../etc leads to the repo's parent
    assert link_escapes("l", {"l": f"x{sep}/../../etc"}) == "outside the repository"
    assert link_escapes("l", {"l": f"x{sep}/../a.txt"}) is None
    assert link_escapes("l", {"l": f"..{sep}/a.txt"}) is None  # "..<sep>" is a name, not ".."


@pytest.mark.parametrize(("links", "why"), [
    ({"d": ".", "e": "d/../x"}, "outside the repository"),
    ({"sub/up": "..", "e": "sub/up/../x"}, "outside the repository"),
    ({"e": "a", "a": "b", "b": "c", "c": ".."}, "outside the repository"),
    ({"e": "a/x", "a": "b/y", "b": "sub/../.."}, "outside the repository"),
    ({"sub/d": ".", "e": "sub/d/../../x"}, "outside the repository"),
    ({"e": "abs/passwd", "abs": "/etc"}, "an absolute path (/etc)"),
    ({"e": "d/.git/hooks", "d": "sub/.."}, "into .git"),
    ({"e": "d/hooks", "d": "./.GIT"}, "into .git"),
    ({"e": "up/repo/a.txt", "up": ".."}, "outside the repository"),  # back in? not known: refused
])
def test_link_escapes_follows_other_symlinks_on_the_way(links: dict[str, str], why: str):
    assert link_escapes("e", links) == why


@pytest.mark.parametrize("links", [
    {"e": "d/../x", "d": "sub/deeper"},  # physically sub/deeper/.. is sub: stays inside
    {"e": "a", "a": "b", "b": "docs"},
    {"e": "d/readme.md", "d": "docs"},
    {"e": "d/../a.txt", "d": "sub"},
    {"e": "sub/f/x", "sub/f": "../d", "d": "sub/.."},
    {"e": "a.txt", "bad": "/etc", "worse": ".."},  # other, escaping links are not on the way
])
def test_link_escapes_allows_a_chain_that_stays_inside(links: dict[str, str]):
    assert link_escapes("e", links) is None


@pytest.mark.parametrize("links", [
    {"e": "e"},
    {"e": "e/x"},
    {"e": "./e/../e"},
    {"e": "a", "a": "e"},
    {"e": "a", "a": "b", "b": "a"},
    {"e": "sub/l", "sub/l": "../e/x"},
])
def test_link_escapes_refuses_a_loop(links: dict[str, str]):
    assert link_escapes("e", links) == "a symlink loop"


def test_link_escapes_follows_a_long_chain_and_refuses_an_endless_one():
    chain = {f"l{n}": f"l{n + 1}" for n in range(30)} | {"l30": "a.txt"}
    assert link_escapes("l0", chain) is None
    endless = {f"l{n}": f"l{n + 1}" for n in range(100)} | {"l100": "a.txt"}
    assert link_escapes("l0", endless) == "a symlink loop"


class _CountingLinks(dict):
    """A links dict that stops a resolver which does far more work than the kernel would."""

    budget = 100_000

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise RuntimeError("link_escapes looked up more than 100000 links")

    def __contains__(self, key: object) -> bool:
        self._spend()
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self._spend()
        return super().__getitem__(key)


def test_link_escapes_does_bounded_work_on_a_doubling_chain():
    links = _CountingLinks({"l0": "."} | {f"l{n}": f"l{n - 1}/l{n - 1}" for n in range(1, 41)})
    assert link_escapes("l40", links) in (None, "a symlink loop")


def test_link_escapes_refuses_a_nested_dot_git():
    assert link_escapes("l", {"l": "sub/.git/config"}) is not None


_LINK_PATHS = ["l", "m", "sub/l", "sub/deeper/l"]
_TARGETS = st.lists(st.sampled_from(["..", ".", "", "sub", "deeper", "l", "m", ".git", "a.txt", "x"]),
                    min_size=1, max_size=5).map("/".join).filter(bool)


@given(st.dictionaries(st.sampled_from(_LINK_PATHS), _TARGETS, min_size=1))
def test_link_escapes_passes_only_links_the_kernel_resolves_inside(links: dict[str, str]):
    """Whatever link_escapes lets through, realpath (which follows links as the kernel does)
    finds inside the repository and outside its .git."""
    with tempfile.TemporaryDirectory() as d:
        repo = os.path.join(os.path.realpath(d), "repo")
        os.makedirs(os.path.join(repo, "sub", "deeper"))
        os.makedirs(os.path.join(repo, ".git"))
        Path(repo, "a.txt").write_text("a\n")
        for link, target in links.items():
            os.symlink(target, os.path.join(repo, link))
        for link in links:
            if link_escapes(link, links) is None:
                real = os.path.realpath(os.path.join(repo, link))
                assert real == repo or real.startswith(repo + "/"), (link, real)
                rel = posixpath.relpath(real, repo)
                assert rel.split("/")[0] != ".git", (link, real)


# --- review and check ------------------------------------------------------------------------


def test_check_passes_a_series_where_patch_2_builds_on_patch_1(agent: Path, host: Path,
                                                               patches_dir: Path):
    commit(agent, "Create notes", {"notes.txt": "one\n"})
    commit(agent, "Extend notes", {"notes.txt": "one\ntwo\n"})
    format_patches(agent, patches_dir)
    patches, _ = read_dir(str(patches_dir))
    verdicts = check(patches, str(host), DEFAULT_PROTECTED)
    assert [(v.patch, v.ok, v.problems) for v in verdicts] == [(p.name, True, []) for p in patches]


def test_review_returns_the_tree_the_series_makes(series: list[str], agent: Path, host: Path,
                                                 patches_dir: Path):
    done = review(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert all(v.ok for v in done.verdicts)
    assert done.tree == git(agent, "rev-parse", "HEAD^{tree}").strip()
    assert done.trees == git(agent, "log", "--reverse", "--format=%T", "origin/main..HEAD").split()


def test_review_returns_no_tree_when_a_patch_does_not_apply(conflicting: list[str], host: Path,
                                                            patches_dir: Path):
    done = review(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert done.tree is None and done.commit is None
    assert [v.ok for v in done.verdicts] == [True, False, False]


def test_review_applies_a_patch_3_way_like_git_am(host: Path, tmp_path: Path, patches_dir: Path):
    lines = [f"line {n}\n" for n in range(1, 11)]
    commit(host, "A longer file", {"long.txt": "".join(lines)}, who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    commit(agent, "Edit line 9", {"long.txt": "".join([*lines[:8], "NINE\n", *lines[9:]])})
    format_patches(agent, patches_dir)
    commit(host, "Edit line 7", {"long.txt": "".join([*lines[:6], "SEVEN\n", *lines[7:]])}, who=HOST)
    settle(host)
    patches = read_dir(str(patches_dir))[0]
    plain = subprocess.run(["git", "-C", str(host), "apply", "--check", str(patches_dir / patches[0].name)],
                           capture_output=True, text=True, check=False)
    assert "patch does not apply" in plain.stderr  # the hunk's context changed: only 3-way applies it
    done = review(patches, str(host), DEFAULT_PROTECTED)
    assert [v.problems for v in done.verdicts] == [[]]
    apply(patches, str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert (host / "long.txt").read_text() == "".join([*lines[:6], "SEVEN\n", lines[7], "NINE\n", *lines[9:]])
    assert git(host, "rev-parse", "HEAD^{tree}").strip() == done.tree


def test_check_reports_a_patch_that_does_not_apply_with_the_reason(conflicting: list[str],
                                                                   host: Path, patches_dir: Path):
    patches, _ = read_dir(str(patches_dir))
    verdicts = check(patches, str(host), DEFAULT_PROTECTED)
    assert verdicts[0].ok
    assert verdicts[1].patch == conflicting[1]
    assert len(verdicts[1].problems) == 1
    assert verdicts[1].problems[0].startswith("does not apply: ")
    assert "b.txt" in verdicts[1].problems[0]


def test_check_does_not_report_patches_after_a_failure_as_ok(conflicting: list[str], host: Path,
                                                             patches_dir: Path):
    patches, _ = read_dir(str(patches_dir))
    verdicts = check(patches, str(host), DEFAULT_PROTECTED)
    assert not verdicts[2].ok
    assert verdicts[2].problems == [f"not checked: it builds on {conflicting[1]}, which does not apply"]


def test_check_marks_every_patch_after_a_failing_first_one_unchecked(series: list[str], host: Path,
                                                                     patches_dir: Path):
    commit(host, "Host changes a", {"a.txt": "host's alpha\n"}, who=HOST)
    settle(host)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdicts[0].problems[0].startswith("does not apply: ")
    # patch 2 (b.txt) would apply on its own, but it was not checked on top of patch 1: not ok
    assert [v.problems for v in verdicts[1:]] == [
        [f"not checked: it builds on {series[0]}, which does not apply"]] * 2


def test_check_reports_protected_paths(agent: Path, host: Path, patches_dir: Path):
    commit(agent, "CI", {".github/workflows/ci.yml": "on: push\n"})
    [name] = format_patches(agent, patches_dir)
    patches, _ = read_dir(str(patches_dir))
    [verdict] = check(patches, str(host), DEFAULT_PROTECTED)
    assert (verdict.patch, verdict.problems) == (name, [
        "touches protected path .github/workflows/ci.yml (matches .github/workflows/**)"])


def test_check_goes_on_after_a_refused_patch_that_applies(agent: Path, host: Path, patches_dir: Path):
    commit(agent, "Modules", {".gitmodules": "[submodule]\n"})
    commit(agent, "Ordinary", {"a.txt": "A\n"})
    commit(agent, "Attributes deep down", {"docs/.gitattributes": "* diff\n"})
    names = format_patches(agent, patches_dir)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert [(v.patch, v.problems) for v in verdicts] == [
        (names[0], ["touches protected path .gitmodules (matches .gitmodules)"]),
        (names[1], []),
        (names[2], ["touches protected path docs/.gitattributes (matches .gitattributes)"])]


def test_check_reports_deleting_and_renaming_a_protected_file(host: Path, tmp_path: Path,
                                                              patches_dir: Path):
    commit(host, "CI", {".github/workflows/ci.yml": "on: push\n", ".gitattributes": "* text\n"},
           who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    git(agent, "rm", "-q", ".gitattributes")
    git(agent, "mv", ".github/workflows/ci.yml", "ci.yml")
    commit(agent, "Move CI away")
    format_patches(agent, patches_dir, "-M")
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert sorted(verdict.problems) == [
        "touches protected path .gitattributes (matches .gitattributes)",
        "touches protected path .github/workflows/ci.yml (matches .github/workflows/**)"]


def test_tree_problems_judges_the_paths_and_symlinks_between_two_trees(agent: Path):
    commit(agent, "Before", {"keep.txt": "k\n"})
    symlink(agent, "odd\tname ü", "../../out")  # -z output: no quoting, no splitting on the tab
    symlink(agent, "in", "keep.txt")
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "After", {".gitmodules": "[submodule]\n", "a.txt": "A\n"})
    old, new = (git(agent, "rev-parse", f"{rev}^{{tree}}").strip() for rev in ("HEAD~1", "HEAD"))
    assert sorted(tree_problems(str(agent), old, new, DEFAULT_PROTECTED)) == [
        "creates symlink odd\tname ü -> ../../out, which leads outside the repository",
        "touches protected path .gitmodules (matches .gitmodules)"]
    assert tree_problems(str(agent), old, new, []) == [
        "creates symlink odd\tname ü -> ../../out, which leads outside the repository"]
    assert tree_problems(str(agent), new, new, DEFAULT_PROTECTED) == []


def test_check_leaves_the_repository_byte_identical(conflicting: list[str], host: Path,
                                                    patches_dir: Path):
    before, index_before = state(host), index_bytes(host)
    git_entries = sorted(os.listdir(host / ".git"))
    patches, _ = read_dir(str(patches_dir))
    check(patches[:1], str(host), DEFAULT_PROTECTED)  # applies in the throwaway index
    check(patches, str(host), DEFAULT_PROTECTED)  # fails on the 2nd
    assert state(host) == before
    assert index_bytes(host) == index_before
    assert sorted(os.listdir(host / ".git")) == git_entries


def test_check_leaves_the_patches_dir_untouched(series: list[str], host: Path, patches_dir: Path):
    before = dir_listing(patches_dir)
    check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert dir_listing(patches_dir) == before


def test_check_and_apply_refuse_a_protected_path_hidden_in_a_traditional_diff(host: Path,
                                                                              patches_dir: Path):
    smuggled = ("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-alpha\n+ALPHA\n"
                "--- /dev/null\n+++ b/.github/workflows/ci.yml\n@@ -0,0 +1 @@\n+on: push\n")
    name = drop(patches_dir, mail(smuggled), "0001-smuggle.patch")
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert (verdict.patch, verdict.problems) == (name, [
        "touches protected path .github/workflows/ci.yml (matches .github/workflows/**)"])
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name, ".github/workflows/ci.yml")


OUT_OF_BOUNDS = [".git/hooks/post-checkout", ".GIT/config", "sub/.git/config", ".git./config",
                 "../outside.txt", "sub/../../outside.txt", "/tmp/devshell-absolute.txt"]


@pytest.mark.parametrize("protected", [DEFAULT_PROTECTED, []], ids=["default", "allow-protected"])
@pytest.mark.parametrize("path", OUT_OF_BOUNDS)
def test_check_and_apply_refuse_a_path_into_dot_git_or_out_of_the_repo(
        path: str, protected: tuple[str, ...], host: Path, patches_dir: Path, tmp_path: Path):
    name = drop(patches_dir, mail(add_file("ok.txt"), add_file(path)))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), protected)
    assert verdict.patch == name
    assert verdict.problems and verdict.problems[0].startswith("does not apply: ")
    refused_by_apply(host, patches_dir, protected, f"refusing {name}: does not apply: ")
    assert not (tmp_path / "outside.txt").exists()
    assert not Path("/tmp/devshell-absolute.txt").exists()


@pytest.mark.parametrize("path", OUT_OF_BOUNDS)
def test_check_names_the_path_git_refuses(path: str, host: Path, patches_dir: Path):
    drop(patches_dir, mail(add_file("ok.txt"), add_file(path)))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert path in verdict.problems[0]


def test_check_refuses_a_rename_out_of_dot_git(host: Path, patches_dir: Path):
    diff = ("diff --git a/.git/config b/config\nsimilarity index 100%\n"
            "rename from .git/config\nrename to config\n")
    name = drop(patches_dir, mail(diff))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), [])
    assert verdict.problems and ".git/config" in verdict.problems[0]
    refused_by_apply(host, patches_dir, [], name, ".git/config")


def test_check_allows_ordinary_changes(agent: Path, host: Path, patches_dir: Path):
    git(agent, "mv", "src/old.py", "src/new.py")
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "Ordinary", {"a.txt": "A\n", "docs/github.md": "about .github\n",
                               "workflows/ci.yml": "not the protected one\n", "my.gitignore": "x\n",
                               ".github/dependabot.yml": "version: 2\n"})
    format_patches(agent, patches_dir, "-M")
    assert [v.problems for v in check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)] == [[]]


# git am reads a mail as mailsplit and mailinfo do (mbox From lines, transfer encodings); git apply
# on the raw bytes does not. Written so that git apply sees only the change to a.txt.
QP_SMUGGLED = mail(
    "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-alpha\n+ALPHA\n"
    "=64iff --git a/.github/workflows/ci.yml b/.github/workflows/ci.yml\nnew file mode 100644\n"
    "=2D-- /dev/null\n+++ b/.github/workflows/ci.yml\n=40@ -0,0 +1 @@\n+on: push\n",
    headers="MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
            "Content-Transfer-Encoding: quoted-printable\n")
MBOX_SPLIT = mail(add_file("ok.txt"), body="Body.\n\nFrom 0000000000000000000000000000000000000000 "
                                           "Mon Sep 17 00:00:00 2001\nmore\n")


def test_check_judges_the_patch_git_am_reads_not_the_raw_mail(host: Path, patches_dir: Path):
    """A quoted-printable body hides a workflow file from a reader of the raw text; git am
    decodes it, and so does the review."""
    drop(patches_dir, QP_SMUGGLED)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert any(".github/workflows/ci.yml" in why for why in verdict.problems)


def test_apply_refuses_what_git_am_would_decode_and_changes_nothing(host: Path, patches_dir: Path):
    drop(patches_dir, QP_SMUGGLED)
    before, files_before = state(host), dir_listing(patches_dir)
    with pytest.raises(DevshellError, match=r"refusing .*\.github/workflows/ci\.yml"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert state(host) == before
    assert not (host / ".github").exists()
    assert not (host / ".git" / "rebase-apply").exists()
    assert dir_listing(patches_dir) == files_before


def test_a_body_from_line_splits_the_mail_as_git_am_would_and_is_skipped(patches_dir: Path):
    """git am sees two mails, the first without a diff (it would stop there): not a patch."""
    drop(patches_dir, MBOX_SPLIT)
    patches, skipped = read_dir(str(patches_dir))
    assert patches == []
    assert len(skipped) == 1 and "carries no diff" in skipped[0]


# One reading of the patches: git am guesses each file's format on its own (a first line
# 'Content-Transfer-Encoding: ...', an empty second and a third 'From:' is StGit to it, which it
# copies raw), while the review decodes the mail. A quoted-printable soft line break ('Xjunk=')
# then glues a diff header to junk for the review only, so the binary patch behind it is no diff
# to the review but a real one to git am: an intermediate commit adds a workflow, the next one
# removes it, and the final tree is what was reviewed.
def stgit_lookalike(host: Path, tmp_path: Path, patches_dir: Path) -> list[str]:
    gen = clone(tmp_path, host, "gen")
    (gen / ".git" / "info" / "attributes").write_text("*.yml binary\n")  # a GIT binary patch
    commit(gen, "Workflow", {".github/workflows/x.yml": "on: push\njobs: {x: {steps: [{run: evil}]}}\n"})
    add = git(gen, "diff", "--binary", "HEAD~1", "HEAD")
    git(gen, "rm", "-q", "-r", ".github")
    commit(gen, "No workflow")
    remove = git(gen, "diff", "--binary", "HEAD~1", "HEAD")
    assert "GIT binary patch" in add and "GIT binary patch" in remove
    names = []
    for n, (path, old, hidden) in enumerate((("a.txt", "alpha", add), ("b.txt", "beta", remove)), 1):
        plain = f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}\n+{old} 2\n"
        names.append(drop(patches_dir, ("Content-Transfer-Encoding: quoted-printable\n\n"
                                        f"From: Agent <agent@example.com>\nSubject: tweak {path}\n\n"
                                        f"harmless change\n---\n{plain}Xjunk=\n{hidden}").encode(),
                          f"000{n}-tweak.patch"))
    return names


def test_apply_commits_exactly_the_tree_review_judged_for_every_mail(host: Path, tmp_path: Path,
                                                                     patches_dir: Path):
    names = stgit_lookalike(host, tmp_path, patches_dir)
    start = git(host, "rev-parse", "HEAD").strip()
    patches = read_dir(str(patches_dir))[0]
    reviewed = review(patches, str(host), DEFAULT_PROTECTED)
    if not all(v.ok for v in reviewed.verdicts):  # refusing the series is as good
        refused_by_apply(host, patches_dir, DEFAULT_PROTECTED)
        return
    apply(patches, str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "log", "--reverse", "--format=%T", f"{start}..HEAD").split() == reviewed.trees
    assert git(host, "log", "--format=%H", "--all", "--", ".github") == ""
    assert git(host, "log", "--reverse", "--format=%s|%an", f"{start}..HEAD").splitlines() == [
        "tweak a.txt|Agent", "tweak b.txt|Agent"]
    assert sorted(os.listdir(patches_dir / APPLIED)) == names


def test_plain_git_am_commits_the_workflow_hidden_from_the_review(host: Path, tmp_path: Path,
                                                                   patches_dir: Path):
    """The guard absent: git am of the same files commits a workflow that the final tree, the
    only one an apply that runs git am could compare, does not show."""
    names = stgit_lookalike(host, tmp_path, patches_dir)
    victim = clone(tmp_path, host, "victim")
    start = git(victim, "rev-parse", "HEAD").strip()
    git(victim, "am", "-q", "--3way", *[str(patches_dir / n) for n in names])
    assert ".github/workflows/x.yml" in git(victim, "ls-tree", "-r", "--name-only", "HEAD~1").split()
    assert not (victim / ".github").exists()  # gone again in the final tree
    assert git(victim, "log", "--format=%H", f"{start}..HEAD", "--", ".github").split()


def test_apply_makes_the_commits_git_am_makes(agent: Path, host: Path, tmp_path: Path,
                                              patches_dir: Path):
    """Same author, date, message and tree as git am, from mails with a folded subject, a body
    with trailing blanks and runs of empty lines, non-ASCII names, a time zone, a rename."""
    env = {"GIT_AUTHOR_DATE": "2021-02-03T04:05:06+0530"}
    write(agent, {"a.txt": "alpha\nsecond\n"})
    message = ("A rather long subject line that format-patch will fold over two header lines, "
               "surely\n\n\nBody  \n\n\n\nwith  trailing blanks\t\n\n")
    msg_file = tmp_path / "msg"
    msg_file.write_text(message)
    git(agent, "commit", "-qa", "-F", str(msg_file),
        env={**env, "GIT_AUTHOR_NAME": "Zoë Ångström", "GIT_AUTHOR_EMAIL": "zoe@example.com"})
    git(agent, "mv", "b.txt", "beta.txt")
    commit(agent, "[tag] Rename b\n\nSigned-off-by: A <a@example.com>")
    format_patches(agent, patches_dir)
    victim = clone(tmp_path, host, "victim")
    git(victim, "am", "-q", *[str(patches_dir / n) for n in sorted(os.listdir(patches_dir))])
    start = git(host, "rev-parse", "HEAD").strip()
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    fmt = "--format=%an|%ae|%ad|%T|%B%x00"
    assert git(host, "log", fmt, "--date=raw", f"{start}..HEAD") == \
        git(victim, "log", fmt, "--date=raw", f"{start}..HEAD")
    assert "Zoë Ångström|zoe@example.com|1612305306 +0530|" in git(host, "log", fmt, "--date=raw", "-2")


@given(st.binary(max_size=200))
def test_stripspace_cleans_a_message_as_git_does(text: bytes):
    expected = subprocess.run(["git", "stripspace"], input=text, capture_output=True, check=True).stdout
    assert patches_module.stripspace(text) == expected


def test_check_reports_a_mail_git_cannot_commit_and_apply_changes_nothing(host: Path,
                                                                          patches_dir: Path):
    drop(patches_dir, mail(add_file("new.txt")).replace(b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
                                                        b"Date: 99999999999999999999 +0000"))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert len(verdict.problems) == 1 and verdict.problems[0].startswith("cannot be committed: ")
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, "0001-hand.patch: cannot be committed")


# --- symlinks, end to end --------------------------------------------------------------------


@pytest.mark.parametrize("protected", [DEFAULT_PROTECTED, []], ids=["default", "allow-protected"])
@pytest.mark.parametrize(("link", "target", "why"), [
    ("pw", "/etc/passwd", "an absolute path (/etc/passwd)"),
    ("sub/up", "../../x", "outside the repository"),
    ("hooks", ".git/hooks", "into .git"),
    ("sub/cfg", "../.GIT/config", "into .git"),
])
def test_check_and_apply_refuse_a_new_symlink_leading_out(link: str, target: str, why: str,
                                                          protected: tuple[str, ...], agent: Path,
                                                          host: Path, patches_dir: Path):
    commit(agent, "Harmless", {"a.txt": "A\n"})
    symlink(agent, link, target)
    commit(agent, "Add a link")
    names = format_patches(agent, patches_dir)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), protected)
    assert [(v.patch, v.problems) for v in verdicts] == [
        (names[0], []), (names[1], [f"creates symlink {link} -> {target}, which leads {why}"])]
    refused_by_apply(host, patches_dir, protected, names[1], link)


def test_apply_commits_a_symlink_inside_the_repository(agent: Path, host: Path, patches_dir: Path):
    symlink(agent, "links/to-a", "../a.txt")
    symlink(agent, "d", "docs")
    symlink(agent, "readme", "d/readme.md")
    commit(agent, "Add links")
    format_patches(agent, patches_dir)
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert os.readlink(host / "links" / "to-a") == "../a.txt"
    assert (host / "readme").read_text() == "# readme\n"
    assert git(host, "status", "--porcelain") == ""


def test_check_and_apply_refuse_retargeting_an_existing_symlink_out(host: Path, tmp_path: Path,
                                                                    patches_dir: Path):
    symlink(host, "link", "a.txt")
    commit(host, "Add an in-repo link", who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    symlink(agent, "link", "/etc/passwd")
    commit(agent, "Retarget the link")
    [name] = format_patches(agent, patches_dir)
    data = (patches_dir / name).read_bytes()
    assert b"index " in data and b" 120000\n" in data
    assert b"new file mode" not in data
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink link -> /etc/passwd, which leads an absolute path "
                                "(/etc/passwd)"]
    refused_by_apply(host, patches_dir, [], name, "link")


def test_check_and_apply_refuse_turning_a_file_into_a_symlink_out(agent: Path, host: Path,
                                                                  patches_dir: Path):
    (agent / "a.txt").unlink()
    symlink(agent, "a.txt", "../../outside")
    commit(agent, "A file becomes a link")
    [name] = format_patches(agent, patches_dir)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink a.txt -> ../../outside, which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name, "a.txt")


@pytest.mark.parametrize("sep", ["\x1c", "\x85", "\u2028"])
def test_check_and_apply_refuse_a_symlink_out_whose_target_holds_a_separator_char(
        sep: str, agent: Path, host: Path, patches_dir: Path):
    target = f"x{sep}/../../etc"  # with a directory named "x<sep>" this resolves outside the repo
    (agent / f"x{sep}").mkdir()
    (agent / f"x{sep}" / "f").write_text("f\n")
    symlink(agent, "l", target)
    commit(agent, "Add a link")
    assert not os.path.realpath(agent / "l").startswith(str(agent) + os.sep)
    [name] = format_patches(agent, patches_dir)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == [f"creates symlink l -> {target}, which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name)


def test_check_and_apply_refuse_a_symlink_out_through_another_new_symlink(agent: Path, host: Path,
                                                                          patches_dir: Path):
    symlink(agent, "d", ".")
    symlink(agent, "e", "d/../x")
    commit(agent, "Add two links")
    assert not os.path.realpath(agent / "e").startswith(str(agent) + os.sep)
    [name] = format_patches(agent, patches_dir)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink e -> d/../x, which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name, "e -> d/../x")


def test_check_refuses_a_symlink_out_through_a_symlink_of_an_earlier_patch(agent: Path, host: Path,
                                                                           patches_dir: Path):
    symlink(agent, "d", ".")
    commit(agent, "An innocent link")
    symlink(agent, "e", "d/../x")
    commit(agent, "A link through it")
    names = format_patches(agent, patches_dir)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert [(v.patch, v.problems) for v in verdicts] == [
        (names[0], []), (names[1], ["creates symlink e -> d/../x, which leads outside the repository"])]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, names[1], "e")


def test_check_refuses_a_symlink_out_through_a_symlink_the_host_has(host: Path, tmp_path: Path,
                                                                    patches_dir: Path):
    symlink(host, "sub/d", "..")
    commit(host, "An in-repo link", who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    symlink(agent, "e", "sub/d/../x")
    commit(agent, "A link through the host's")
    [name] = format_patches(agent, patches_dir)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink e -> sub/d/../x, which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name, "e")


def test_check_and_apply_refuse_renaming_a_symlink_so_that_it_points_out(host: Path, tmp_path: Path,
                                                                         patches_dir: Path):
    symlink(host, "sub/l", "../a.txt")
    commit(host, "An in-repo link", who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    git(agent, "mv", "sub/l", "l")
    commit(agent, "Move the link up")
    [name] = format_patches(agent, patches_dir, "-M")
    assert b"rename to l\n" in (patches_dir / name).read_bytes()
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink l -> ../a.txt, which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, name, "l -> ../a.txt")


def test_check_lets_a_patch_delete_or_retarget_inward_a_symlink(host: Path, tmp_path: Path,
                                                                patches_dir: Path):
    symlink(host, "l", "a.txt")
    symlink(host, "m", "b.txt")
    commit(host, "Two links", who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    git(agent, "rm", "-q", "l")
    symlink(agent, "m", "docs/readme.md")
    commit(agent, "Drop one link, retarget the other")
    format_patches(agent, patches_dir)
    assert [v.problems for v in check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)] == [[]]


def test_check_does_not_blame_a_patch_for_the_hosts_own_outward_symlink(host: Path, tmp_path: Path,
                                                                        patches_dir: Path):
    symlink(host, "etc", "/etc")
    commit(host, "The host's own choice", who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    commit(agent, "Unrelated", {"a.txt": "A\n"})
    format_patches(agent, patches_dir)
    assert [v.problems for v in check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)] == [[]]


def test_check_refuses_a_change_that_makes_an_unchanged_symlink_lead_out(host: Path, tmp_path: Path,
                                                                         patches_dir: Path):
    symlink(host, "l", "sub/../a.txt")
    commit(host, "A link through a directory", {"sub/f": "f\n"}, who=HOST)
    settle(host)
    agent = clone(tmp_path, host)
    git(agent, "rm", "-q", "sub/f")
    symlink(agent, "sub", ".")
    commit(agent, "The directory becomes a link")
    assert not os.path.realpath(agent / "l").startswith(str(agent) + os.sep)
    format_patches(agent, patches_dir)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert not verdict.ok


def test_apply_refuses_a_symlinked_parent_of_a_protected_dir(agent: Path, host: Path,
                                                             patches_dir: Path):
    commit(agent, "Workflows elsewhere", {"ci/workflows/ci.yml": "on: push\n"})
    symlink(agent, ".github", "ci")
    commit(agent, "Link them in")
    format_patches(agent, patches_dir)
    with pytest.raises(DevshellError):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert not (host / ".github" / "workflows" / "ci.yml").exists()


# --- apply -----------------------------------------------------------------------------------


def test_apply_commits_the_series_in_order(series: list[str], agent: Path, host: Path,
                                           patches_dir: Path):
    start = git(host, "rev-parse", "HEAD").strip()
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "log", "--format=%s", f"{start}..HEAD").splitlines() == [
        "Add another line to a", "Change b", "Add a line to a"]
    assert (host / "a.txt").read_text() == "alpha\nsecond\nthird\n"
    assert git(host, "status", "--porcelain") == ""
    assert git(host, "rev-parse", "HEAD^{tree}") == git(agent, "rev-parse", "HEAD^{tree}")


def test_apply_keeps_the_patch_author_and_makes_the_host_the_committer(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Reviewing Human")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "human@example.com")
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "log", "-3", "--format=%an|%ae|%cn|%ce").splitlines() == [
        "Agent Smith|agent@example.com|Reviewing Human|human@example.com"] * 3


def test_apply_moves_patches_to_applied_and_deletes_nothing(series: list[str], host: Path,
                                                            patches_dir: Path):
    (patches_dir / "notes.txt").write_text("keep me\n")
    before = dir_listing(patches_dir)
    done = apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert done.moved == [f"{APPLIED}/{name}" for name in series] and done.not_moved == []
    after = dir_listing(patches_dir)
    assert len(after) == len(before) == 4
    assert after == {("notes.txt" if name == "notes.txt" else f"{APPLIED}/{name}"): digest
                     for name, digest in before.items()}


def test_apply_keeps_both_files_on_a_name_collision_in_applied(series: list[str], host: Path,
                                                               patches_dir: Path):
    (patches_dir / APPLIED).mkdir()
    (patches_dir / APPLIED / series[0]).write_bytes(b"an older patch of the same name\n")
    original = (patches_dir / series[0]).read_bytes()
    done = apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert done.moved[0] == f"{APPLIED}/{series[0]}.1"
    assert (patches_dir / APPLIED / series[0]).read_bytes() == b"an older patch of the same name\n"
    assert (patches_dir / APPLIED / f"{series[0]}.1").read_bytes() == original


def test_apply_leaves_the_repository_as_it_was_when_patch_2_of_3_conflicts(
        conflicting: list[str], host: Path, patches_dir: Path):
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED,
                             f"refusing {conflicting[1]}: does not apply: ", "b.txt")
    assert "(+1 more; see devshell patches check)" in error.message
    assert error.fix == "rebase the work inside the devshell and format the patches again"
    assert not (host / ".git" / "rebase-apply").exists()


def test_apply_moves_and_loses_no_patch_when_one_conflicts(conflicting: list[str], host: Path,
                                                           patches_dir: Path):
    before = dir_listing(patches_dir)
    with pytest.raises(DevshellError):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert dir_listing(patches_dir) == before
    assert not (patches_dir / APPLIED).exists()


def test_apply_leaves_the_index_file_byte_identical_when_one_conflicts(
        conflicting: list[str], host: Path, patches_dir: Path):
    before = index_bytes(host)
    with pytest.raises(DevshellError):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert index_bytes(host) == before


def test_apply_refuses_a_dirty_tracked_file_and_changes_nothing(series: list[str], host: Path,
                                                                patches_dir: Path):
    (host / "docs" / "readme.md").write_text("# work in progress\n")
    before, index_before, files_before = state(host), index_bytes(host), dir_listing(patches_dir)
    with pytest.raises(DevshellError, match="has uncommitted changes"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert state(host) == before
    assert index_bytes(host) == index_before
    assert dir_listing(patches_dir) == files_before


def test_apply_refuses_a_staged_change(series: list[str], host: Path, patches_dir: Path):
    write(host, {"docs/readme.md": "# staged\n"})
    git(host, "add", "docs/readme.md")
    with pytest.raises(DevshellError, match="has uncommitted changes"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)


def test_apply_ignores_untracked_files(series: list[str], host: Path, patches_dir: Path):
    (host / "scratch.txt").write_text("mine\n")
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert (host / "scratch.txt").read_text() == "mine\n"
    assert len(git(host, "log", "--format=%H").splitlines()) == 4


@pytest.mark.parametrize("busy", ["rebase-apply", "rebase-merge"])
def test_apply_refuses_while_an_am_or_rebase_is_in_progress(busy: str, series: list[str], host: Path,
                                                            patches_dir: Path):
    (host / ".git" / busy).mkdir()
    head = git(host, "rev-parse", "HEAD")
    with pytest.raises(DevshellError, match="has an am or rebase in progress"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "rev-parse", "HEAD") == head


def test_apply_refuses_a_protected_path_naming_patch_and_path(agent: Path, host: Path,
                                                              patches_dir: Path):
    commit(agent, "Harmless", {"a.txt": "A\n"})
    commit(agent, "Sneaky", {".github/workflows/ci.yml": "on: push\n"})
    names = format_patches(agent, patches_dir)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, names[1], ".github/workflows/ci.yml")
    assert error.message == (f"refusing {names[1]}: touches protected path .github/workflows/ci.yml "
                             "(matches .github/workflows/**)")
    assert "--allow-protected" in (error.fix or "")


def test_apply_with_no_protected_globs_applies_a_protected_path(agent: Path, host: Path,
                                                                patches_dir: Path):
    commit(agent, "CI", {".github/workflows/ci.yml": "on: push\n", ".gitattributes": "* text\n"})
    format_patches(agent, patches_dir)
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), [])
    assert (host / ".github" / "workflows" / "ci.yml").read_text() == "on: push\n"
    assert (host / ".gitattributes").read_text() == "* text\n"


def test_apply_refuses_a_series_with_several_problems_naming_the_first(agent: Path, host: Path,
                                                                      patches_dir: Path):
    commit(agent, "Modules", {".gitmodules": "[submodule]\n"})
    symlink(agent, "pw", "/etc/passwd")
    commit(agent, "A link out")
    names = format_patches(agent, patches_dir)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, names[0], ".gitmodules")
    assert error.message.endswith("(+1 more; see devshell patches check)")
    # with --allow-protected the link is still refused, and the message says so
    error = refused_by_apply(host, patches_dir, [], names[1], "pw -> /etc/passwd")
    assert "never .git or an outward symlink" in (error.fix or "")


def test_apply_writes_nothing_through_a_symlinked_applied_dir(series: list[str], host: Path,
                                                              patches_dir: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (patches_dir / APPLIED).symlink_to(outside)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, f"{APPLIED} is not a directory")
    assert error.message.endswith("nothing applied")  # found before the repository changed
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in patches_dir.iterdir() if p.name.endswith(".patch")) == series


# The patches dir is the agent's: root inside can chown and chmod it and what is in it.

def test_apply_refuses_a_patches_dir_that_is_not_yours_before_changing_anything(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Root inside chowned the drop dir (here: you are someone else than its owner): its owner
    could change it under the walk and the move, and you may not be able to write it. Refused
    with one line, nothing changed (not: applied, then [Errno 13] on applied/)."""
    owner = os.stat(patches_dir).st_uid
    monkeypatch.setattr(patches_module.os, "getuid", lambda: owner + 4242)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED,
                             f"the patches dir {patches_dir} belongs to uid {owner}, not to you")
    assert error.message.endswith("nothing applied") and "\n" not in error.message
    assert not (patches_dir / APPLIED).exists()
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    assert main(["check", *argv]) == 1  # reported as a dangerous leftover
    with pytest.raises(DevshellError, match=r"refusing to apply: the patches dir holds \.: the patches dir"):
        main(["apply", *argv])
    monkeypatch.undo()  # control: yours, the same series applies
    assert main(["apply", *argv]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_leftovers_trust_only_you_and_dev_not_whoever_owns_the_patches_dir(
        series: list[str], patches_dir: Path):
    (patches_dir / "theirs").write_text("x\n")
    os.chown(patches_dir / "theirs", 4242, 4242)
    os.chown(patches_dir, 4242, 4242)
    patches_dir.chmod(0o700)
    # dev's dir as devshell makes it (not root's, 0700): dev's files are expected
    assert [lo for lo in leftovers(str(patches_dir)) if lo.path in (".", "theirs")] == []
    patches_dir.chmod(0o777)  # control: trusting whoever owns the dir would still trust uid 4242
    assert os.stat(patches_dir).st_uid == os.stat(patches_dir / "theirs").st_uid == 4242
    found = {lo.path: lo for lo in leftovers(str(patches_dir))}
    assert found["."] == Leftover(".", ("the patches dir itself belongs to uid 4242 and is writable "
                                        "by every user",), True)
    assert found["theirs"] == Leftover("theirs", ("owned by uid 4242",), True)
    os.chown(patches_dir, 0, 0)
    patches_dir.chmod(0o755)  # root's own dir: dev unknown, so dev's files are reported
    assert {lo.path for lo in leftovers(str(patches_dir))} == {"theirs"}


def test_apply_refuses_when_the_patches_dir_cannot_be_written(series: list[str], host: Path,
                                                              patches_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(patches_module, "_may_write", lambda fd: False)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED,
                             f"you cannot write the patches dir {patches_dir}")
    assert error.message.endswith("nothing applied")


def test_apply_archives_by_copy_when_the_kernel_refuses_the_hard_link(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """fs.protected_hardlinks: you may not link a file you do not own (root inside made it)."""
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    before = dir_listing(patches_dir)
    monkeypatch.setattr(patches_module.os, "link", refused)
    with pytest.raises(PermissionError):  # control: the link really is refused
        os.link(patches_dir / series[0], patches_dir / "x")
    done = apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert done == patches_module.Applied([f"{APPLIED}/{name}" for name in series], [])
    assert dir_listing(patches_dir) == {f"{APPLIED}/{name}": digest for name, digest in before.items()}


def test_apply_that_moved_the_branch_never_says_failed_when_a_patch_cannot_be_moved(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(patches_module.os, "link", refused)
    monkeypatch.setattr(patches_module, "_copy", refused)
    start = git(host, "rev-parse", "HEAD").strip()
    assert main(["apply", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    out = capsys.readouterr()
    assert out.out == (f"applied 3 patch(es) to {host}; 3 patch(es) not moved to {APPLIED}/: "
                       f"{series[0]}: Operation not permitted (+2 more)\n")
    assert "move them out of" in out.err and "failed" not in out.out + out.err
    assert len(git(host, "log", "--format=%H", f"{start}..HEAD").split()) == 3
    assert sorted(p.name for p in patches_dir.iterdir() if p.name.endswith(".patch")) == series


# --- the user's work tree ----------------------------------------------------------------------


def test_apply_refuses_a_directory_you_cannot_write_before_touching_anything(
        series: list[str], agent: Path, host: Path, patches_dir: Path,
        monkeypatch: pytest.MonkeyPatch):
    commit(agent, "Change old.py", {"src/old.py": "print('new')\n"})
    format_patches(agent, patches_dir)
    real_access = os.access
    src = str(host / "src")

    def no_write_in_src(path: object, mode: int, **kwargs: object) -> bool:
        if os.fspath(path) in (src, src + "/") and mode & os.W_OK:  # as src/ 0555 to a non-root user
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(patches_module.os, "access", no_write_in_src)
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED,
                             f"you cannot write src in {host}, where src/old.py changes")
    assert error.message.endswith("nothing applied")


def run_as_another_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """argv as uid 65534 when root (for whom every directory is writable), else as you."""
    user = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HOME": str(cwd)}, **user)


def test_plain_read_tree_stops_halfway_in_a_directory_it_cannot_write():
    """The guard absent: git read-tree -m -u writes a.txt, then cannot write in src/ (0555 to
    a user who is not root) and fails, the work tree half changed."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        repo = Path(d) / "repo"
        git(Path(d), "init", "-q", "-b", "main", str(repo))
        commit(repo, "Initial", {"a.txt": "alpha\n", "src/old.py": "old\n"}, who=HOST)
        commit(repo, "Both", {"a.txt": "ALPHA\n", "src/old.py": "new\n"}, who=HOST)
        git(repo, "reset", "-q", "--hard", "HEAD~1")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
        (repo / "src").chmod(0o555)
        safe = ["git", "-c", "safe.directory=*"]
        run_as_another_user([*safe, "update-index", "-q", "--refresh"], repo)
        done = run_as_another_user([*safe, "read-tree", "-m", "-u", "HEAD", "main@{1}"], repo)
        (repo / "src").chmod(0o755)
        assert done.returncode != 0, done.stderr
        assert (repo / "a.txt").read_text() == "ALPHA\n"  # changed, while src/old.py was not
        assert (repo / "src" / "old.py").read_text() == "old\n"


def test_apply_puts_the_work_tree_back_when_read_tree_fails_halfway(
        agent: Path, host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """As above, through apply: read-tree writes some paths, then fails. Everything goes back
    (and the message says so); HEAD never moved."""
    commit(agent, "Change, add and remove", {"a.txt": "A\n", "new/dir/file.txt": "new\n"})
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "Remove gone")
    format_patches(agent, patches_dir)
    before, real_run = state(host), patches_module.Repo.run
    reset_fails = False

    def halfway(self: patches_module.Repo, *args: str,
                **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        if args[:3] == ("read-tree", "-m", "-u") and self.top == str(host):
            write(host, {"a.txt": "A\n", "new/dir/file.txt": "new\n"})
            (host / "gone.txt").unlink()
            return subprocess.CompletedProcess(args, 128, b"", b"error: unable to create file "
                                               b"src/x: Permission denied\n")
        if args[:2] == ("read-tree", "--reset") and reset_fails:
            return subprocess.CompletedProcess(args, 128, b"", b"error: no\n")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(patches_module.Repo, "run", halfway)
    files_before = dir_listing(patches_dir)
    with pytest.raises(DevshellError) as info:
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert info.value.message == ("git read-tree failed (error: unable to create file src/x: "
                                  "Permission denied); the work tree is as it was, nothing applied")
    assert state(host) == before  # the index file has new stat data: its entries are the same
    assert not (host / "new").exists()
    assert dir_listing(patches_dir) == files_before and not (patches_dir / APPLIED).exists()
    # control: when the work tree cannot be put back, apply says which path, not "nothing applied"
    reset_fails = True
    with pytest.raises(DevshellError) as info:
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert info.value.message.startswith("git read-tree failed partway (error: unable to create "
                                         "file src/x: Permission denied): HEAD did not move, but ")
    assert "nothing applied" not in info.value.message
    assert git(host, "rev-parse", "HEAD") == before["HEAD"]


def test_apply_takes_a_file_that_was_only_touched_as_clean(series: list[str], host: Path,
                                                           patches_dir: Path, tmp_path: Path):
    """A touched (or chowned) tracked file is clean, but its index entry's stat data is old:
    read-tree finds it 'not uptodate' unless the index is refreshed first."""
    os.utime(host / "a.txt")
    copy = tmp_path / "copy"  # control: the same in a copy, without the refresh
    shutil.copytree(host, copy, symlinks=True)
    os.utime(copy / "a.txt")
    blob = subprocess.run(["git", "-C", str(copy), "hash-object", "-w", "--stdin"], input="x\n",
                          capture_output=True, text=True, check=True).stdout.strip()
    entries = git(copy, "ls-tree", "HEAD").replace(git(copy, "rev-parse", "HEAD:a.txt").strip(), blob)
    tree = subprocess.run(["git", "-C", str(copy), "mktree"], input=entries, capture_output=True,
                          text=True, check=True).stdout.strip()
    done = subprocess.run(["git", "-C", str(copy), "read-tree", "-m", "-u", "HEAD", tree],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "not uptodate" in done.stderr
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert (host / "a.txt").read_text() == "alpha\nsecond\nthird\n"


# --- what was skipped, and how much work a patches dir can ask for -----------------------------


def test_a_skipped_patch_fails_check_and_refuses_apply(series: list[str], host: Path,
                                                       patches_dir: Path):
    """A *.patch that cannot be read leaves a series that is not the agent's: apply refuses."""
    os.mkfifo(patches_dir / "0002a-in-between.patch")
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    assert main(["check", *argv]) == 1
    before = state(host)
    with pytest.raises(DevshellError, match="refusing to apply: skipped 0002a-in-between.patch: "
                                            r"not a regular file"):
        main(["apply", *argv, "--ignore-leftovers"])
    assert state(host) == before
    (patches_dir / "0002a-in-between.patch").unlink()  # control: without it, the series applies
    assert main(["check", *argv]) == 0
    assert main(["apply", *argv]) == 0


def test_read_dir_bounds_the_mails_of_all_files_together(series: list[str], patches_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    real_loose = patches_module._loose

    def counting(d: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(args[0])
        return real_loose(d, *args, **kwargs)

    monkeypatch.setattr(patches_module, "_loose", counting)
    monkeypatch.setattr(patches_module, "MAX_MAILS", 2)
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series[:2]
    assert skipped == [f"{series[2]}: may hold 1 mails, over the limit of 2 mails for all patches together"]
    assert calls.count("apply") == 2  # one numstat per file, not per mail
    # a file that may hold more mails than are left is not even split
    calls.clear()
    monkeypatch.setattr(patches_module, "MAX_MAILS", 1000)
    (patches_dir / "0000-many.patch").write_bytes(mail(add_file("x.txt")) * 1001)
    patches, skipped = read_dir(str(patches_dir))
    assert skipped == ["0000-many.patch: may hold 1001 mails, over the limit of 1000 mails for all "
                       "patches together"]
    assert calls.count("mailsplit") == 3 and [p.name for p in patches] == series


# --- main ------------------------------------------------------------------------------------


def test_main_list_prints_subject_author_and_diffstat(series: list[str], host: Path, patches_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    assert main(["list", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        series[0], "    Add a line to a",
        f"    {AGENT_FROM} \N{MIDDLE DOT} 1 file changed, 1 insertion(s)(+), 0 deletion(s)(-)",
        series[1], "    Change b",
        f"    {AGENT_FROM} \N{MIDDLE DOT} 1 file changed, 1 insertion(s)(+), 1 deletion(s)(-)",
        series[2], "    Add another line to a",
        f"    {AGENT_FROM} \N{MIDDLE DOT} 1 file changed, 1 insertion(s)(+), 0 deletion(s)(-)"]


def test_main_list_outside_a_repository_still_lists(series: list[str], patches_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    assert main(["list", "--patches-dir", str(patches_dir)]) == 0  # cwd is tmp_path, not a repo
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if not line.startswith(" ")] == series


def test_main_list_uses_the_repository_holding_the_cwd(series: list[str], host: Path,
                                                       patches_dir: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch):
    commit(host, "Host changes b", {"b.txt": "host's beta\n"}, who=HOST)
    monkeypatch.chdir(host / "docs")
    assert main(["list", "--patches-dir", str(patches_dir)]) == 0
    assert f"    REFUSED: not checked: it builds on {series[1]}, which does not apply" in \
        capsys.readouterr().out


def test_main_list_marks_refused_patches(agent: Path, host: Path, patches_dir: Path,
                                         capsys: pytest.CaptureFixture[str]):
    commit(agent, "CI", {".gitmodules": "[submodule]\n"})
    format_patches(agent, patches_dir)
    assert main(["list", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    assert "    REFUSED: touches protected path .gitmodules (matches .gitmodules)" in \
        capsys.readouterr().out


def test_main_list_json_parses(series: list[str], host: Path, patches_dir: Path,
                               capsys: pytest.CaptureFixture[str]):
    assert main(["list", "--patches-dir", str(patches_dir), "--repo", str(host), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["leftovers"], doc["skipped"]) == ([], [])
    rows = doc["patches"]
    assert [(r["patch"], r["subject"], r["author"], r["problems"]) for r in rows] == [
        (name, subject, AGENT_FROM, []) for name, subject in
        zip(series, ["Add a line to a", "Change b", "Add another line to a"], strict=True)]
    assert rows[1]["diffstat"] == "1 file changed, 1 insertion(s)(+), 1 deletion(s)(-)"


def test_main_check_exits_0_when_every_patch_applies(series: list[str], host: Path,
                                                     patches_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok   {name}" for name in series]


def test_main_check_exits_1_when_a_patch_does_not_apply(conflicting: list[str], host: Path,
                                                        patches_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ok   {conflicting[0]}"
    assert lines[1] == f"FAIL {conflicting[1]}"
    assert lines[2].startswith("     does not apply: ")
    assert lines[3:] == [f"FAIL {conflicting[2]}",
                         f"     not checked: it builds on {conflicting[1]}, which does not apply"]


def test_main_check_exits_1_on_a_protected_path(agent: Path, host: Path, patches_dir: Path):
    commit(agent, "Attrs", {"docs/.gitattributes": "* diff=evil\n"})
    format_patches(agent, patches_dir)
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 1
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host),
                 "--allow-protected"]) == 0


def test_main_check_honours_extra_protect_globs(agent: Path, host: Path, patches_dir: Path,
                                                capsys: pytest.CaptureFixture[str]):
    commit(agent, "Build", {"tools/Makefile": "all:\n"})
    [name] = format_patches(agent, patches_dir)
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host),
                 "--protect", "Makefile"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"FAIL {name}", "     touches protected path tools/Makefile (matches Makefile)"]


def test_main_allow_protected_still_refuses_an_outward_symlink(agent: Path, host: Path,
                                                               patches_dir: Path):
    symlink(agent, "pw", "/etc/passwd")
    commit(agent, "A link out")
    format_patches(agent, patches_dir)
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host), "--allow-protected"]
    assert main(["check", *argv]) == 1
    head = git(host, "rev-parse", "HEAD")
    with pytest.raises(DevshellError, match=r"pw -> /etc/passwd"):
        main(["apply", *argv])
    assert git(host, "rev-parse", "HEAD") == head


def test_main_check_json_parses(conflicting: list[str], host: Path, patches_dir: Path,
                                capsys: pytest.CaptureFixture[str]):
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["leftovers"], doc["skipped"]) == ([], [])
    rows = doc["patches"]
    assert [(r["patch"], r["ok"]) for r in rows] == [
        (conflicting[0], True), (conflicting[1], False), (conflicting[2], False)]


def test_main_apply_json_parses(series: list[str], host: Path, patches_dir: Path,
                                capsys: pytest.CaptureFixture[str]):
    assert main(["apply", "--patches-dir", str(patches_dir), "--repo", str(host), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "applied": series, "moved_to": [f"{APPLIED}/{name}" for name in series], "not_moved": []}


def test_main_apply_without_patches_raises_devshell_error(host: Path, patches_dir: Path):
    with pytest.raises(DevshellError, match="no patches in"):
        main(["apply", "--patches-dir", str(patches_dir), "--repo", str(host)])


def test_main_reports_skipped_files_on_stderr(series: list[str], patches_dir: Path,
                                              capsys: pytest.CaptureFixture[str]):
    (patches_dir / "0000-junk.patch").write_bytes(b"junk\n")
    main(["list", "--patches-dir", str(patches_dir)])
    assert "devshell: skipped 0000-junk.patch: not a git format-patch mail" in capsys.readouterr().err


def test_apply_never_runs_the_repositorys_hooks(series: list[str], host: Path, patches_dir: Path,
                                                tmp_path: Path):
    """Even the user's own hooks do not run: devshell's git calls run no hooks (and no
    fsmonitor), in the user's repository as in the scratch one."""
    ran = tmp_path / "hook-ran"
    for hook in ("applypatch-msg", "pre-applypatch", "post-applypatch", "post-rewrite"):
        path = host / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {ran}\n")
        path.chmod(0o755)
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert len(git(host, "log", "--format=%s").splitlines()) > 1
    assert not ran.exists()


# --- the trust model: attacks, and controls that show each one works without the guard -------


def evil_script(tmp_path: Path) -> tuple[Path, Path]:
    """A command that notes each run in a marker file (and passes content through as a filter)."""
    marker, script = tmp_path / "ran", tmp_path / "evil.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {marker}\ncase "$1" in clean|smudge) exec cat;; esac\n'
                      'exit 0\n')
    script.chmod(0o755)
    return script, marker


def plant_config(git_dir: Path, script: Path, merge_only: bool = False) -> None:
    """What a hostile .git holds: config, attributes and hooks that run script."""
    with open(git_dir / "config", "a", encoding="utf-8") as f:
        f.write(f'[merge "evil"]\n\tdriver = {script} merge %A\n')
        if not merge_only:
            f.write(f"[core]\n\tfsmonitor = {script}\n\thooksPath = {git_dir}/hooks\n"
                    f'[filter "evil"]\n\tclean = {script} clean\n\tsmudge = {script} smudge\n')
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "attributes").write_text("* merge=evil\n" if merge_only else
                                                 "* filter=evil merge=evil\n")
    (git_dir / "hooks").mkdir(exist_ok=True)
    for hook in ("applypatch-msg", "pre-applypatch", "post-applypatch", "post-checkout",
                 "reference-transaction"):
        (git_dir / "hooks" / hook).write_text(f"#!/bin/sh\nexec {script} {hook}\n")
        (git_dir / "hooks" / hook).chmod(0o755)


def plant_repo(where: Path, script: Path) -> None:
    """The agent makes the patches dir a repository of its own, with a commit and evil config."""
    git(where, "init", "-q", "-b", "main")
    commit(where, "Agent's own", {"README": "hi\n"})
    plant_config(where / ".git", script)


@pytest.mark.parametrize("action", ["list", "check", "apply"])
def test_a_git_planted_in_the_patches_dir_never_runs_from_its_cwd(
        action: str, series: list[str], patches_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    script, marker = evil_script(tmp_path)
    plant_repo(patches_dir, script)
    monkeypatch.chdir(patches_dir)
    for argv in (["--patches-dir", "."], ["--patches-dir", ".", "--repo", str(patches_dir)],
                 ["--patches-dir", str(patches_dir), "--repo", str(patches_dir / "sub")]):
        with pytest.raises(DevshellError, match="refusing to look for a repository in") as info:
            main([action, *argv])
        assert "\n" not in str(info.value) and "--repo DIR" in (info.value.fix or "")
    assert not marker.exists()
    # control: the user's plain git there runs the agent's hooks, fsmonitor and filters
    subprocess.run(["git", "am", "--3way", series[0]], cwd=patches_dir, capture_output=True, check=False)
    assert marker.exists()


def test_a_git_planted_in_the_patches_dir_is_a_leftover_and_never_runs(
        series: list[str], host: Path, patches_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    script, marker = evil_script(tmp_path)
    plant_repo(patches_dir, script)
    monkeypatch.chdir(host)
    argv = ["--patches-dir", str(patches_dir)]
    assert main(["list", *argv]) == 0
    assert main(["check", *argv]) == 1  # every patch is fine; the leftover is not
    out = capsys.readouterr().out
    assert f"ok   {series[0]}" in out
    assert "LEFTOVER .git: a nested .git" in out
    with pytest.raises(DevshellError, match=r"refusing to apply: the patches dir holds \.git: a nested"):
        main(["apply", *argv])
    assert main(["apply", *argv, "--ignore-leftovers"]) == 0
    assert len(git(host, "log", "--format=%H").splitlines()) == 4
    assert not marker.exists()


def test_a_repository_whose_git_dir_lies_in_the_patches_dir_is_refused(host: Path, patches_dir: Path,
                                                                        tmp_path: Path):
    fake = tmp_path / "fake"
    fake.mkdir()
    git(patches_dir, "init", "-q", "--separate-git-dir", str(patches_dir / "gitdir"), str(fake))
    assert (fake / ".git").read_text().startswith("gitdir: ")
    with pytest.raises(DevshellError, match=r"refusing repository .*lies in the patches dir"):
        main(["check", "--patches-dir", str(patches_dir), "--repo", str(fake)])


def test_a_repository_in_the_drop_dir_root_is_refused(tmp_path: Path, patches_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    other = Path(drops_root(os.path.expanduser("~"), os.environ)) / "-some-other-checkout"
    other.mkdir(parents=True)
    git(other, "init", "-q")
    for argv in (["--repo", str(other)], ["--repo", str(other / "sub")]):
        with pytest.raises(DevshellError, match="devshell's drop-dir root"):
            main(["check", "--patches-dir", str(patches_dir), *argv])


def test_the_default_patches_dir_is_the_drop_dir_of_the_cwd(series: list[str], host: Path,
                                                            patches_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    drop_dir = Path(default_patches_out(os.path.realpath(host), os.path.expanduser("~"), os.environ))
    drop_dir.parent.mkdir(parents=True)
    patches_dir.rename(drop_dir)
    monkeypatch.chdir(host)
    assert main(["check"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok   {name}" for name in series]


def test_git_runs_under_devshells_configuration(monkeypatch: pytest.MonkeyPatch):
    for var, value in (("GIT_CONFIG_PARAMETERS", "'core.hookspath'='/tmp/evil'"), ("GIT_CONFIG_COUNT", "1"),
                       ("GIT_CONFIG_KEY_0", "core.fsmonitor"), ("GIT_CONFIG_VALUE_0", "/tmp/evil"),
                       ("GIT_DIR", "/tmp/elsewhere"), ("GIT_EXEC_PATH", "/tmp/evil"),
                       ("GIT_CONFIG_GLOBAL", "/tmp/evil.config")):
        monkeypatch.setenv(var, value)
    env = git_env()
    assert {k: v for k, v in env.items() if k.startswith("GIT_")} == {
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ATTR_NOSYSTEM": "1",
        "GIT_NO_REPLACE_OBJECTS": "1", "GIT_TERMINAL_PROMPT": "0"}


def three_way_patch(host: Path, tmp_path: Path, patches_dir: Path) -> list[Patch]:
    """A patch that only a 3-way merge applies: git's merge machinery (and drivers) run."""
    lines = [f"line {n}\n" for n in range(1, 11)]
    commit(host, "A longer file", {"long.txt": "".join(lines)}, who=HOST)
    agent = clone(tmp_path, host)
    commit(agent, "Edit line 9", {"long.txt": "".join([*lines[:8], "NINE\n", *lines[9:]])})
    format_patches(agent, patches_dir)
    commit(host, "Edit line 7", {"long.txt": "".join([*lines[:6], "SEVEN\n", *lines[7:]])}, who=HOST)
    settle(host)
    return read_dir(str(patches_dir))[0]


def test_review_runs_none_of_the_repositorys_config_attributes_or_drivers(
        host: Path, tmp_path: Path, patches_dir: Path):
    script, marker = evil_script(tmp_path)
    patches = three_way_patch(host, tmp_path, patches_dir)
    plant_config(host / ".git", script)
    assert [v.problems for v in check(patches, str(host), DEFAULT_PROTECTED)] == [[]]
    assert not marker.exists()
    # control: git apply --3way in the repository itself runs its merge driver
    subprocess.run(["git", "-C", str(host), "apply", "--cached", "--3way",
                    str(patches_dir / patches[0].name)], capture_output=True, check=False)
    assert "merge" in marker.read_text().split()


def test_apply_merges_without_the_repositorys_merge_driver(host: Path, tmp_path: Path,
                                                           patches_dir: Path):
    script, marker = evil_script(tmp_path)
    patches = three_way_patch(host, tmp_path, patches_dir)
    plant_config(host / ".git", script, merge_only=True)
    apply(patches, str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert "NINE\n" in (host / "long.txt").read_text()
    assert not marker.exists()


def test_review_ignores_global_config_and_attributes(host: Path, tmp_path: Path, patches_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    script, marker = evil_script(tmp_path)
    patches = three_way_patch(host, tmp_path, patches_dir)
    (tmp_path / "attributes").write_text("* merge=evil\n")
    (tmp_path / "global.config").write_text(f'[core]\n\tattributesFile = {tmp_path / "attributes"}\n'
                                            f'[merge "evil"]\n\tdriver = {script} merge %A\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "global.config"))
    assert [v.problems for v in check(patches, str(host), DEFAULT_PROTECTED)] == [[]]
    assert not marker.exists()
    subprocess.run(["git", "-C", str(host), "apply", "--cached", "--3way",
                    str(patches_dir / patches[0].name)], capture_output=True, check=False)
    assert marker.exists()  # control: the user's own git reads that global config


@pytest.fixture
def tools_patch(agent: Path, patches_dir: Path) -> list[str]:
    commit(agent, "Add a tool", {"tools/run.sh": "echo hi\n"})
    return format_patches(agent, patches_dir)


def test_apply_never_writes_through_a_symlink_in_the_work_tree(tools_patch: list[str], host: Path,
                                                                patches_dir: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (host / "tools").symlink_to(outside)  # untracked: git status --untracked-files=no is clean
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, "tools")
    assert error.message.startswith(f"refusing: tools in {host} is a symlink, in the way of tools/run.sh")
    assert list(outside.iterdir()) == []
    # control: plain git am writes through the link, out of the repository
    git(host, "am", "--3way", str(patches_dir / tools_patch[0]))
    assert (outside / "run.sh").read_text() == "echo hi\n"


@pytest.mark.parametrize(("planted", "where", "what"), [
    ("tools", "tools", "an untracked file"),
    ("tools/run.sh", "tools/run.sh", "untracked"),
])
def test_apply_refuses_an_untracked_file_in_the_way(planted: str, where: str, what: str,
                                                    tools_patch: list[str], host: Path,
                                                    patches_dir: Path):
    write(host, {planted: "mine\n"})
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED)
    assert error.message.startswith(f"refusing: {where} in {host} is {what}, in the way of tools/run.sh")
    assert (host / planted).read_text() == "mine\n"


def test_apply_replaces_a_tracked_file_by_a_directory(host: Path, tmp_path: Path, patches_dir: Path):
    agent = clone(tmp_path, host)
    git(agent, "rm", "-q", "gone.txt")
    commit(agent, "A directory where a file was", {"gone.txt/inside.txt": "in\n"})
    format_patches(agent, patches_dir)
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert (host / "gone.txt" / "inside.txt").read_text() == "in\n"


def test_apply_puts_everything_back_when_the_branch_cannot_move(series: list[str], host: Path,
                                                                patches_dir: Path):
    lock = host / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("held by someone else\n")
    before = state(host)
    with pytest.raises(DevshellError, match="cannot move refs/heads/main to the new commits"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert state(host) == before
    assert sorted(os.listdir(patches_dir)) == series
    lock.unlink()  # control: the same series applies once the lock is gone
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert (host / "a.txt").read_text() == "alpha\nsecond\nthird\n"


def test_apply_on_a_detached_head_moves_only_head(series: list[str], host: Path, patches_dir: Path):
    start = git(host, "rev-parse", "HEAD").strip()
    git(host, "checkout", "-q", "--detach")
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "rev-parse", "main").strip() == start
    assert len(git(host, "log", "--format=%H").splitlines()) == 4


def test_apply_takes_the_committer_from_the_users_repository_config(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GIT_COMMITTER_NAME")
    monkeypatch.delenv("GIT_COMMITTER_EMAIL")
    git(host, "config", "user.name", "Config Person")
    git(host, "config", "user.email", "config@example.com")
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert git(host, "log", "-3", "--format=%an|%cn|%ce").splitlines() == [
        "Agent Smith|Config Person|config@example.com"] * 3


def test_apply_without_a_committer_identity_changes_nothing(series: list[str], host: Path,
                                                           patches_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    for var in ("GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    before = state(host)
    with pytest.raises(DevshellError, match="git knows no committer identity"):
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert state(host) == before


@pytest.fixture
def gitlink_patch(agent: Path, patches_dir: Path) -> list[str]:
    git(agent, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    git(agent, "commit", "-q", "-m", "Add a submodule entry")
    return format_patches(agent, patches_dir)


def test_check_and_apply_refuse_a_gitlink_unless_allowed(gitlink_patch: list[str], host: Path,
                                                         patches_dir: Path):
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["adds gitlink vendor/lib (a submodule commit); --allow-gitlinks accepts it"]
    error = refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, gitlink_patch[0], "vendor/lib")
    assert "--allow-gitlinks" in (error.fix or "")
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    assert main(["check", *argv]) == 1
    assert main(["check", *argv, "--allow-gitlinks"]) == 0
    # control: allowed, it is an ordinary patch that git applies
    assert main(["apply", *argv, "--allow-gitlinks"]) == 0
    assert git(host, "ls-files", "-s", "vendor/lib").startswith(f"160000 {'1' * 40} ")


def test_leftovers_reports_what_is_not_a_patch(series: list[str], patches_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(patches_dir)  # short relative names (a socket path has a length limit)
    expected: dict[str, tuple[tuple[str, ...], bool]] = {}
    (patches_dir / "deep" / "er").mkdir(parents=True)
    git(patches_dir / "deep" / "er", "init", "-q")
    expected["deep/er/.git"] = (("a nested .git (git run there would use its config, hooks and "
                                 "attributes)",), True)
    os.symlink("/etc", "out")
    expected["out"] = (("symlink -> /etc, leading out of the patches dir",), True)
    os.symlink("deep/../../x", "up")
    expected["up"] = (("symlink -> deep/../../x, leading out of the patches dir",), True)
    os.symlink("deep", "in")
    expected["in"] = (("symlink -> deep",), False)
    for name, mode, what in (("tool.sh", 0o755, ("executable",)), ("suid", 0o4755, ("setuid", "executable")),
                             ("sgid", 0o2644, ("setgid",))):
        Path(name).write_text("#!/bin/sh\n")
        os.chmod(name, mode)
        if os.stat(name).st_mode & 0o7777 == mode:  # setgid sticks only for a member of the group
            expected[name] = (what, what != ("executable",))
    os.mkfifo("fifo")
    expected["fifo"] = (("a FIFO",), True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock")
    sock.close()
    expected["sock"] = (("a socket",), True)
    with_privilege = []
    try:
        os.mknod("dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["dev"] = (("a device node",), True)
        with_privilege.append("dev")
    except PermissionError:
        pass
    Path("capable").write_text("x\n")
    try:  # VFS_CAP_REVISION_2, effective, CAP_NET_BIND_SERVICE permitted
        os.setxattr("capable", "security.capability", struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))
        expected["capable"] = (("file capabilities",), True)
        assert os.getxattr("capable", "security.capability")  # control: it is really there
        with_privilege.append("capable")
    except OSError:
        pass
    Path("theirs").write_text("x\n")
    try:
        os.chown("theirs", 4242, 4242)
        expected["theirs"] = (("owned by uid 4242",), True)
        with_privilege.append("theirs")
    except PermissionError:
        pass
    (patches_dir / APPLIED).mkdir()
    (patches_dir / APPLIED / series[0]).write_bytes(b"an applied patch\n")
    Path("notes.txt").write_text("plain files are not reported\n")
    found = {lo.path: (lo.what, lo.dangerous) for lo in leftovers(str(patches_dir))}
    assert found == expected
    # controls: each one is what it claims to be
    assert subprocess.run(["git", "rev-parse", "--git-dir"], cwd=patches_dir / "deep" / "er",
                          capture_output=True, text=True, check=True).stdout.strip() == ".git"
    assert not os.path.realpath("up").startswith(str(patches_dir))
    assert stat.S_ISFIFO(os.lstat("fifo").st_mode) and stat.S_ISSOCK(os.lstat("sock").st_mode)
    print("made with privileges:", with_privilege)


def test_leftovers_in_list_check_and_apply(series: list[str], host: Path, patches_dir: Path,
                                           capsys: pytest.CaptureFixture[str]):
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    (patches_dir / "tool.sh").write_text("#!/bin/sh\n")
    (patches_dir / "tool.sh").chmod(0o755)
    assert main(["check", *argv]) == 0  # an executable is worth a line, not a failure
    assert capsys.readouterr().out.splitlines()[-1] == "LEFTOVER tool.sh: executable"
    os.mkfifo(patches_dir / "fifo")
    assert main(["check", *argv]) == 1
    assert "LEFTOVER fifo: a FIFO (dangerous)" in capsys.readouterr().out.splitlines()
    assert main(["list", *argv, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["leftovers"]
    assert sorted(found, key=lambda lo: lo["path"]) == [
        {"path": "fifo", "what": ["a FIFO"], "dangerous": True},
        {"path": "tool.sh", "what": ["executable"], "dangerous": False}]
    assert main(["check", *argv, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert sorted(lo["path"] for lo in doc["leftovers"]) == ["fifo", "tool.sh"]
    assert all(p["ok"] for p in doc["patches"])
    head = git(host, "rev-parse", "HEAD")
    with pytest.raises(DevshellError, match="refusing to apply: the patches dir holds fifo: a FIFO"):
        main(["apply", *argv])
    assert git(host, "rev-parse", "HEAD") == head
    assert main(["apply", *argv, "--ignore-leftovers"]) == 0
    assert "LEFTOVER fifo: a FIFO (dangerous)" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(patches_dir / "fifo").st_mode)  # reported, never touched


def test_leftovers_walk_is_bounded(patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    deep = patches_dir.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    os.mkfifo(deep / "fifo")
    assert len(Path(os.path.relpath(deep, patches_dir)).parts) == 40  # control: it is that deep
    [cut] = leftovers(str(patches_dir))
    assert cut == Leftover("/".join(["d"] * 32), ("deeper than 32 levels; not walked further",), True)
    monkeypatch.setattr(patches_module, "MAX_WALK_ENTRIES", 20)
    for n in range(30):
        (patches_dir / f"f{n}").write_text("x\n")
    cut = leftovers(str(patches_dir))[-1]
    assert cut.what == ("the walk stopped after 20 entries; the rest is unchecked",) and cut.dangerous


def test_leftovers_judge_a_long_chain_of_links_without_resolving_it(
        series: list[str], host: Path, patches_dir: Path, capsys: pytest.CaptureFixture[str]):
    """3000 links, each to the next, the last one out: no realpath (it recursed per link), no
    resolving at all; the one that leads out is named, the output stays short."""
    n = 3000
    for i in range(n - 1):
        os.symlink(f"l{i + 1}", patches_dir / f"l{i}")
    os.symlink("/etc", patches_dir / f"l{n - 1}")
    with pytest.raises(OSError):  # control: the kernel gives up on the chain after 40 links
        os.stat(patches_dir / "l0")
    if sys.version_info < (3, 13):  # control: where os.path.realpath follows links recursively
        with pytest.raises(RecursionError):
            os.path.realpath(patches_dir / "l0")
    found = leftovers(str(patches_dir))
    assert len(found) == patches_module.MAX_LEFTOVERS + 1
    summary = found[-1]
    assert summary.path == "." and summary.what[0].startswith(f"{n - patches_module.MAX_LEFTOVERS} more")
    bad = [lo for lo in found[:-1] if lo.dangerous]
    assert bad in ([], [Leftover(f"l{n - 1}", ("symlink -> /etc, leading out of the patches dir",), True)])
    assert summary.dangerous == (not bad)
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    assert main(["check", *argv]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 3 + patches_module.MAX_LEFTOVERS + 1


def test_leftovers_take_bounded_time_and_output_for_many_long_targets(
        series: list[str], host: Path, patches_dir: Path, capsys: pytest.CaptureFixture[str]):
    """9000 links whose targets have 2040 components each: judged in seconds, printed in
    kilobytes (it took 46 s and printed 36 MB)."""
    names_only = "a/" * 2039 + "b"
    climbing = "a/.." + "/a" * 2038
    assert len(names_only.split("/")) == len(climbing.split("/")) == 2040
    for i in range(9000):
        os.symlink(climbing if i % 2 else names_only, patches_dir / f"l{i}")
    assert os.readlink(patches_dir / "l0") == names_only  # control: all of it is there to print
    start = time.monotonic()
    assert main(["check", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 1
    assert time.monotonic() - start < 20
    out = capsys.readouterr().out
    assert len(out) < 100_000
    assert all(len(line) < 2 * patches_module.SHOW_CHARS + 200 for line in out.splitlines())
    assert f"... ({len(names_only)} chars)" in out
    assert "which may lead out of the patches dir ('..' after a name that may be a link) (dangerous)" in out


@pytest.mark.parametrize(("target", "out"), [
    ("x", None), ("d/x", None), ("./d/./x", None), ("../x", "leading out of the patches dir"),
    ("/etc", "leading out of the patches dir"), ("d/../../x", "leading out of the patches dir"),
    ("d/../x", "which may lead out of the patches dir ('..' after a name that may be a link)"),
])
def test_leftovers_judge_a_link_at_the_top_by_its_text(target: str, out: str | None, patches_dir: Path):
    os.symlink(target, patches_dir / "l")
    [found] = leftovers(str(patches_dir))
    assert found == Leftover("l", (f"symlink -> {target}" + (f", {out}" if out else ""),), out is not None)


def test_leftovers_let_leading_dotdot_climb_only_real_directories(patches_dir: Path):
    (patches_dir / "d" / "e").mkdir(parents=True)
    os.symlink("../../x", patches_dir / "d" / "e" / "up2")
    os.symlink("../../../x", patches_dir / "d" / "e" / "up3")
    found = {lo.path: lo.dangerous for lo in leftovers(str(patches_dir))}
    assert found == {"d/e/up2": False, "d/e/up3": True}


def test_read_dir_skips_a_huge_sparse_patch_without_reading_it(series: list[str], patches_dir: Path,
                                                               tmp_path: Path):
    huge = patches_dir / "0000-huge.patch"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB of holes: a plain read would try to hold all of it
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == [f"0000-huge.patch: {1 << 40} bytes, over the limit of 8 MiB per patch file"]
    # control: a plain read takes all a sparse file claims (here just past the limit)
    control = tmp_path / "control"
    with open(control, "wb") as f:
        f.truncate(MAX_PATCH_BYTES + 4096)
    assert len(control.read_bytes()) == MAX_PATCH_BYTES + 4096


def test_read_dir_refuses_a_patch_that_grows_while_it_is_read(series: list[str], patches_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    grown = patches_dir / "0000-grown.patch"
    with open(grown, "wb") as f:
        f.truncate(MAX_PATCH_BYTES + 4096)
    real_fstat = os.fstat

    def small_at_check(fd: int) -> os.stat_result:  # what fstat said before the file grew
        st = real_fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size > MAX_PATCH_BYTES:
            return os.stat_result((*tuple(st)[:6], 100, *tuple(st)[7:10]))
        return st

    monkeypatch.setattr(patches_module.os, "fstat", small_at_check)
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series
    assert skipped == ["0000-grown.patch: grew while it was read, past the limit of 8 MiB"]


def test_read_dir_bounds_the_total_and_the_count(series: list[str], patches_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    sizes = [(patches_dir / name).stat().st_size for name in series]
    monkeypatch.setattr(patches_module, "MAX_TOTAL_BYTES", sizes[0] + sizes[1])
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == series[:2]
    assert skipped == [f"{series[2]}: {sizes[2]} bytes, over the limit of {sizes[0] + sizes[1]} bytes "
                       "for all patches together"]
    monkeypatch.setattr(patches_module, "MAX_PATCHES", 2)
    with pytest.raises(DevshellError, match=r"more than 2 \*\.patch files in"):
        read_dir(str(patches_dir))


def encoded(text: str) -> str:
    return f"=?UTF-8?b?{base64.b64encode(text.encode()).decode()}?="


ESCAPES = "\x1b[2J\x1b]0;owned\x07\u202egnp.exe\x9b31m\u2066"


@pytest.fixture
def hostile_names(patches_dir: Path) -> tuple[bytes, Patch]:
    """A patch whose file name, subject and author carry terminal escapes, bidi overrides and a
    byte that is not UTF-8."""
    name = b"0001-\x1b[31m\xff\xe2\x80\xae.patch"
    data = mail(add_file("new.txt"), subject=f"[PATCH] {encoded('Fix' + ESCAPES)}",
                author=f"{encoded('Mal' + ESCAPES)} <m@example.com>")
    with open(os.path.join(os.fsencode(patches_dir), name), "wb") as f:
        f.write(data)
    [patch] = read_dir(str(patches_dir))[0]
    return name, patch


def test_list_escapes_control_and_bidi_characters_in_text(hostile_names: tuple[bytes, Patch],
                                                          host: Path, patches_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    _, patch = hostile_names
    assert patch.subject == "Fix" + ESCAPES  # control: the raw fields would drive the terminal
    assert main(["list", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07\x9b\u202e\u2066\udcff")
    assert out.splitlines() == [
        "0001-\\x1b[31m\\xff\\u202e.patch",
        "    Fix\\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe\\x9b31m\\u2066",
        "    Mal\\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe\\x9b31m\\u2066 <m@example.com> "
        "\N{MIDDLE DOT} 1 file changed, 1 insertion(s)(+), 0 deletion(s)(-)"]


def test_list_json_keeps_names_exact(hostile_names: tuple[bytes, Patch], patches_dir: Path,
                                     capsys: pytest.CaptureFixture[str]):
    name, _ = hostile_names
    assert main(["list", "--patches-dir", str(patches_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii()
    [row] = json.loads(out)["patches"]
    assert os.fsencode(row["patch"]) == name
    assert row["subject"] == "Fix" + ESCAPES


def test_list_on_an_ascii_terminal_prints_escapes_not_a_traceback(hostile_names: tuple[bytes, Patch],
                                                                  patches_dir: Path, tmp_path: Path):
    (patches_dir / "0002-junk\u00e9.patch").write_bytes(b"junk\n")
    done = subprocess.run([sys.executable, "-m", "devshell", "patches", "list", "--patches-dir",
                           str(patches_dir)], capture_output=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.isascii() and done.stderr.isascii()
    assert b"\\xb7 1 file changed" in done.stdout
    assert b"devshell: skipped 0002-junk\\xe9.patch" in done.stderr


# --- what git makes of a patch: decompression bombs ----------------------------------------------


def b85_lines(data: bytes) -> bytes:
    """data as git writes a binary hunk: lines of a length character and base85 (git's alphabet
    is Python's b85)."""
    out = []
    for i in range(0, len(data), 52):
        chunk = data[i:i + 52]
        n = len(chunk)
        out.append(bytes([ord("A") + n - 1 if n <= 26 else ord("a") + n - 27])
                   + base64.b85encode(chunk, pad=True))
    return b"\n".join(out) + b"\n"


def zeros_deflated(n: int) -> bytes:
    """zlib of n zero bytes, made in pieces (never n bytes at once in this process)."""
    z = __import__("zlib").compressobj(9)
    out = [z.compress(bytes(min(1 << 20, n - i))) for i in range(0, n, 1 << 20)]
    return b"".join(out) + z.flush()


def literal_bomb(path: str, n: int) -> bytes:
    """The reviewer's bomb: a new file whose binary hunk inflates to n zero bytes."""
    sha = hashlib.sha1(b"blob %d\0" % n)
    for i in range(0, n, 1 << 20):
        sha.update(bytes(min(1 << 20, n - i)))
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
            f"index 0000000000000000000000000000000000000000..{sha.hexdigest()}\n"
            f"GIT binary patch\nliteral {n}\n").encode() + b85_lines(zeros_deflated(n)) \
        + b"\nliteral 0\nHcmV?d00001\n\n"


def bomb_mail(diff: bytes) -> bytes:
    return mail("").replace(b"---\n-- \n", b"---\n" + diff + b"-- \n")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def delta_bomb(path: str, source: bytes, copies: int) -> tuple[bytes, int]:
    """A binary delta on the file `source` whose result is `copies` copies of its first 64 KiB:
    one byte (0x80: copy 0x10000 bytes from offset 0) per 64 KiB. The hunk, and the result size."""
    size = copies << 16
    delta = varint(len(source)) + varint(size) + b"\x80" * copies
    sha = hashlib.sha1(b"blob %d\0" % size)
    for _ in range(copies):
        sha.update(source[:1 << 16])
    old = hashlib.sha1(b"blob %d\0" % len(source) + source).hexdigest()
    hunk = (f"diff --git a/{path} b/{path}\nindex {old}..{sha.hexdigest()} 100644\n"
            f"GIT binary patch\ndelta {len(delta)}\n").encode() \
        + b85_lines(__import__("zlib").compress(delta, 9)) + b"\n"
    return hunk, size


def git_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every git command devshell runs from now on (its arguments after the hardening)."""
    seen: list[list[str]] = []
    real = patches_module.subprocess.run

    def spy(argv: list[str], *args: object, **kwargs: object) -> object:
        seen.append([a for a in argv if not a.startswith(("core.", "gc.", "maintenance.", "-c"))])
        return real(argv, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(patches_module.subprocess, "run", spy)
    return seen


def child_peak_kib(argv: list[str], cwd: Path, stdin: bytes) -> int:
    """The peak RSS of a command, measured in a fresh process of its own."""
    probe = ("import resource, subprocess, sys\n"
             "subprocess.run(sys.argv[1:], stdin=sys.stdin, stdout=subprocess.DEVNULL, "
             "stderr=subprocess.DEVNULL)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=cwd, input=stdin,
                          capture_output=True, check=True)
    return int(done.stdout)


def test_a_literal_bomb_is_refused_by_list_check_and_apply_before_git_reads_it(
        host: Path, patches_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    n = patches_module.MAX_BLOB_BYTES + 1
    data = bomb_mail(literal_bomb("big.bin", n))
    assert len(data) < n // 500  # a few hundred KiB that git inflates to 64 MiB
    drop(patches_dir, data, "0001-bomb.patch")
    runs = git_runs(monkeypatch)
    before = state(host)
    argv = ["--patches-dir", str(patches_dir), "--repo", str(host)]
    assert main(["list", *argv]) == 0
    assert main(["check", *argv]) == 1
    with pytest.raises(DevshellError, match="refusing to apply: skipped 0001-bomb.patch: a binary "
                                            f"hunk git would inflate to {n} bytes, over the limit "
                                            "of 64 MiB per blob"):
        main(["apply", *argv])
    err = capsys.readouterr().err
    assert f"skipped 0001-bomb.patch: a binary hunk git would inflate to {n} bytes" in err
    assert runs and not [argv for argv in runs if "apply" in argv]  # mailinfo read it; no apply did
    assert state(host) == before and not (host / "big.bin").exists()


def test_control_plain_git_apply_inflates_the_literal_bomb(tmp_path: Path):
    n = 50 << 20
    diff = literal_bomb("big.bin", n)
    where = tmp_path / "plain"
    where.mkdir()
    assert child_peak_kib(["git", "apply", "--numstat", "-"], where, diff) > n >> 10
    subprocess.run(["git", "apply", "-"], cwd=where, input=diff, check=True, capture_output=True)
    assert (where / "big.bin").stat().st_size == n
    # devshell would pass this one (it is under the limit), and counts it as git does
    assert patches_module.binary_sizes(diff) == [n, 0]


def test_a_delta_bomb_is_refused_by_the_result_size_in_its_header(
        host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    source = os.urandom(1 << 16)
    commit(host, "A binary file", {"blob.bin": source}, who=HOST)
    settle(host)
    hunk, size = delta_bomb("blob.bin", source, 1 << 15)  # 2 GiB from a few hundred bytes
    assert size == 2 << 30 and len(hunk) < 1000
    drop(patches_dir, bomb_mail(hunk))
    runs = git_runs(monkeypatch)
    patches, skipped = read_dir(str(patches_dir))
    assert patches == [] and skipped == [f"0001-hand.patch: a binary hunk git would inflate to {size} "
                                         "bytes, over the limit of 64 MiB per blob"]
    assert not [argv for argv in runs if "apply" in argv]


def test_control_git_applies_a_delta_to_its_header_size(host: Path, tmp_path: Path):
    source = os.urandom(1 << 16)
    commit(host, "A binary file", {"blob.bin": source}, who=HOST)
    hunk, size = delta_bomb("blob.bin", source, 800)  # 50 MiB
    assert patches_module.binary_sizes(hunk) == [size]
    where = clone(tmp_path, host)
    subprocess.run(["git", "apply", "-"], cwd=where, input=hunk, check=True, capture_output=True)
    assert (where / "blob.bin").stat().st_size == size


def test_binary_sizes_reads_what_git_format_patch_writes(agent: Path):
    old = os.urandom(200_000)
    commit(agent, "Add", {"f.bin": old})
    new = old[:100_000] + b"changed" + old[100_000:]
    commit(agent, "Change", {"f.bin": new})
    patch = last_patch(agent, "--binary")
    assert b"\ndelta " in patch.data  # git chose deltas, forward and reverse
    assert patches_module.binary_sizes(patch.data) == [len(new), len(old)]
    assert patch.blob_bytes == len(new) + len(old)


@pytest.mark.parametrize(("hunk", "why"), [
    (b"delta 10\nzgarbage\n\n", "a binary delta hunk git cannot read"),
    (b"delta 10\nA" + base64.b85encode(b"x\0\0\0") + b"\n\n", "a binary delta hunk git cannot read"),
    (b"delta 3\n" + b85_lines(__import__("zlib").compress(b"\x80\x80\x80")) + b"\n",
     "a binary delta hunk git cannot read"),  # the header ends before the result size
    (b"literal -5\nA00000\n\n", "a binary hunk of negative size"),
])
def test_an_unreadable_binary_hunk_is_refused(hunk: bytes, why: str):
    with pytest.raises(ValueError, match=why):
        patches_module.binary_sizes(b"diff --git a/x b/x\nGIT binary patch\n" + hunk)


def test_binary_sizes_reads_sizes_as_strtoul_does():
    head = b"diff --git a/x b/x\nGIT binary patch\n"
    assert patches_module.binary_sizes(head + b"literal  \t+70000000junk\nA00000\n\n") == [70_000_000]
    assert patches_module.binary_sizes(head + b"literal 1\nA00000\n\nliteral 9\nA00000\n\n") == [1, 9]
    assert patches_module.binary_sizes(b"literal 99999999999\n") == []  # not after the marker


def test_read_dir_bounds_the_binary_hunks_of_all_patches_together(
        agent: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    for n in range(3):  # a NUL makes it binary to git: random bytes alone lack one 2% of the time
        commit(agent, f"Blob {n}", {f"b{n}.bin": b"\0" + os.urandom(999)})
    names = format_patches(agent, patches_dir, "--binary")
    patches, skipped = read_dir(str(patches_dir))  # control: under the default limit
    assert [p.blob_bytes for p in patches] == [1000, 1000, 1000] and skipped == []
    monkeypatch.setattr(patches_module, "MAX_SERIES_BLOB_BYTES", 2500)
    patches, skipped = read_dir(str(patches_dir))
    assert [p.name for p in patches] == names[:2]
    assert skipped == [f"{names[2]}: binary hunks git would inflate to 1000 bytes, over the limit "
                       "of 2500 bytes for all patches together"]


def test_review_refuses_a_tree_with_a_blob_over_the_limit(agent: Path, host: Path, patches_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Belt and braces: the blobs each reviewed tree adds, text patches too, before any commit
    reaches the user's repository."""
    commit(agent, "Small", {"small.txt": "s\n" * 10})
    commit(agent, "Big", {"big.txt": "b\n" * 100})
    commit(agent, "Big too", {"big2.txt": "c\n" * 100})
    names = format_patches(agent, patches_dir)
    assert all(v.ok for v in check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED))
    monkeypatch.setattr(patches_module, "MAX_BLOB_BYTES", 150)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert [v.problems for v in verdicts] == [
        [], ["makes big.txt a blob of 200 bytes, over the limit of 150 bytes per blob"],
        ["makes big2.txt a blob of 200 bytes, over the limit of 150 bytes per blob"]]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, names[1], "150 bytes per blob")
    monkeypatch.setattr(patches_module, "MAX_BLOB_BYTES", 1000)
    monkeypatch.setattr(patches_module, "MAX_SERIES_BLOB_BYTES", 300)
    verdicts = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert [v.problems for v in verdicts] == [[], [], [
        "brings the blobs the series adds or changes to 420 bytes, over the limit of 300 bytes "
        "for all patches together"]]


# --- symlink targets no file system accepts ---------------------------------------------------


def link_blob_patch(host: Path, tmp_path: Path, target: bytes, name: str = "linker") -> bytes:
    """A patch adding symlink x whose blob is target (any bytes, any length), as format-patch
    --binary writes it."""
    repo = clone(tmp_path, host, name)
    sha = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=target,
                         capture_output=True, check=True).stdout.decode().strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"120000,{sha},x")
    git(repo, "commit", "-q", "-m", "Add x", env={"GIT_AUTHOR_NAME": AGENT[0], "GIT_AUTHOR_EMAIL": AGENT[1]})
    return git_bytes(repo, "format-patch", "--binary", "--stdout", "-1")


def test_check_refuses_a_symlink_whose_nul_cuts_its_target_to_dotdot(host: Path, tmp_path: Path,
                                                                     patches_dir: Path):
    data = link_blob_patch(host, tmp_path, b"..\0/inside")
    drop(patches_dir, data)
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink x -> ..\0/inside, which leads nowhere a file system "
                                "accepts (a target with a NUL byte, which ends it early)"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, "NUL byte")
    # control: git's checkout makes the link the kernel reads up to the NUL, out of the repository
    where = clone(tmp_path, host, "plain")
    subprocess.run(["git", "am", "-q"], cwd=where, input=data, check=True, capture_output=True)
    assert os.readlink(where / "x") == ".."


def test_check_refuses_a_huge_symlink_target_without_reading_or_printing_it(
        host: Path, tmp_path: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    target = b"a/" * 40_000  # 80 KB: no file system takes it
    drop(patches_dir, link_blob_patch(host, tmp_path, target))
    patches = read_dir(str(patches_dir))[0]
    read: list[bytes] = []
    real = patches_module._read_blobs

    def spy(repo: patches_module.Repo, shas: list[str]) -> list[str]:
        out = real(repo, shas)
        read.extend(t.encode("utf-8", "surrogateescape") for t in out)
        return out

    monkeypatch.setattr(patches_module, "_read_blobs", spy)
    [verdict] = check(patches, str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink x -> (80000 bytes, not read), which leads nowhere a "
                                "file system accepts (a target over 4096 bytes)"]
    assert target not in read
    # control: a target the limit lets through is read, and is cut when printed
    long_out = "../" * 1000 + "x"
    assert patches_module.link_escapes("x", {"x": long_out}) == "outside the repository"
    drop(patches_dir, link_blob_patch(host, tmp_path, long_out.encode(), "linker2"))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == [f"creates symlink x -> {long_out[:200]}... (3001 chars), which leads "
                                "outside the repository"]
    assert long_out.encode() in read


# --- case-insensitive file systems --------------------------------------------------------------


def test_link_escapes_follows_a_link_named_in_another_case():
    """On a case-insensitive file system d/UP is the link d/up: d/x -> UP/.. is d/up/.., outside."""
    assert link_escapes("d/x", {"d/up": "..", "d/x": "UP/.."}) == "outside the repository"
    assert link_escapes("d/x", {"d/up": "..", "d/x": "ÜP/../../x".replace("Ü", "U")}) is not None
    assert link_escapes("x", {"Straße": "..", "x": "STRASSE/y"}) == "outside the repository"
    assert link_escapes("x", {"e\u0301": "..", "x": "\u00c9/y"}) == "outside the repository"  # NFD/NFC
    # control: the same target in the link's own case escapes on any file system
    assert link_escapes("d/x", {"d/up": "..", "d/x": "up/.."}) == "outside the repository"
    # and a name that folds onto no link is a directory
    assert link_escapes("d/x", {"d/up": "..", "d/x": "down/.."}) is None


def test_link_escapes_still_treats_a_differently_cased_name_as_a_directory_where_case_counts():
    """Folding alone would take the directory up/ for the link UP (-> a/b) and let
    up/../../evil pass; on a case-sensitive file system it leads out."""
    assert link_escapes("x", {"UP": "a/b", "x": "up/../../evil"}, ["up/f", "a/b/f"]) \
        == "outside the repository"


def test_link_escapes_refuses_a_way_through_names_that_clash_on_a_case_insensitive_fs():
    """d is a link and D/ a directory: which one a case-insensitive checkout makes is not known."""
    links = {"d": "a/b/c", "x": "d/../../evil"}
    assert link_escapes("x", links, ["D/f", "a/b/c/f"]).startswith(
        "nowhere known on a case-insensitive file system (through d,")
    assert link_escapes("x", links, ["a/b/c/f"]) is None  # control: without D/, d/.. is a/b
    assert link_escapes("x", {"d": "a", "D": "b", "x": "d/f"}).startswith("nowhere known")


def test_check_and_apply_refuse_the_reviewers_case_folded_link(host: Path, patches_dir: Path):
    drop(patches_dir, mail(add_symlink("d/up", ".."), add_symlink("d/x", "UP/..")))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink d/x -> UP/.., which leads outside the repository"]
    refused_by_apply(host, patches_dir, DEFAULT_PROTECTED, "d/x -> UP/..")
    (patches_dir / "0001-hand.patch").unlink()
    drop(patches_dir, mail(add_symlink("d/UP", "."), add_symlink("d/x", "up/../../x")))
    [verdict] = check(read_dir(str(patches_dir))[0], str(host), DEFAULT_PROTECTED)
    assert verdict.problems == ["creates symlink d/x -> up/../../x, which leads outside the repository"]


@pytest.mark.parametrize("path", [".gitmodule\u017f", ".GITATTRIBUTE\u017f", "\u017fub/.gitmodule\u017f"])
def test_protected_paths_match_by_case_folding_not_just_lower_case(path: str):
    """\u017f (long s) folds to s, as a case-insensitive file system may take it; lower() keeps it."""
    assert path.lower().removeprefix("\u017fub/") not in (".gitmodules", ".gitattributes")  # control
    assert path_problems(path, DEFAULT_PROTECTED) != []


def test_is_git_folds_case():
    assert path_problems("sub/.GIT/config", []) == ["touches sub/.GIT/config (inside .git)"]
    assert patches_module._is_git(".gİt") is False  # İ folds to i + a combining dot, not to i


# --- applied/ holds the bytes that were applied ---------------------------------------------------


@pytest.mark.parametrize("swap", ["symlink", "other file", "rewritten"])
def test_apply_moves_only_the_file_it_read_to_applied(swap: str, series: list[str], host: Path,
                                                      patches_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]):
    secret = tmp_path / "secret"
    secret.write_text("not a patch\n")
    real = patches_module._fast_forward
    first = patches_dir / series[0]

    def then_swap(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # type: ignore[arg-type]
        if swap == "symlink":
            first.unlink()
            first.symlink_to(secret)
        elif swap == "other file":
            (patches_dir / "other").write_bytes(first.read_bytes())  # same bytes, not the file read
            os.replace(patches_dir / "other", first)
        else:
            with open(first, "r+b") as f:
                f.write(b"X")

    monkeypatch.setattr(patches_module, "_fast_forward", then_swap)
    start = git(host, "rev-parse", "HEAD").strip()
    assert main(["apply", "--patches-dir", str(patches_dir), "--repo", str(host)]) == 0
    out = capsys.readouterr()
    assert out.out == (f"applied 3 patch(es) to {host}; 1 patch(es) not moved to {APPLIED}/: "
                       f"{series[0]}: changed since it was read\n")
    assert "failed" not in out.out + out.err
    assert len(git(host, "log", "--format=%H", f"{start}..HEAD").split()) == 3
    assert sorted(os.listdir(patches_dir / APPLIED)) == series[1:]
    assert os.path.lexists(first)  # left where it is, never deleted


def test_apply_catches_a_swap_between_its_check_and_the_link(series: list[str], host: Path,
                                                             patches_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    secret = tmp_path / "secret"
    secret.write_text("not a patch\n")
    real_link = os.link
    first = patches_dir / series[0]

    def swap_then_link(src: str, dst: str, **kwargs: object) -> None:
        if src == series[0] and not first.is_symlink():
            first.unlink()
            first.symlink_to(secret)
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(patches_module.os, "link", swap_then_link)
    done = apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert done.not_moved == [f"{series[0]}: changed since it was read"]
    assert sorted(os.listdir(patches_dir / APPLIED)) == series[1:]  # the link made was taken back
    # control: linking without the check puts the swapped-in symlink into applied/
    real_link(series[0], "control", src_dir_fd=os.open(patches_dir, os.O_RDONLY),
              dst_dir_fd=os.open(patches_dir / APPLIED, os.O_RDONLY), follow_symlinks=False)
    assert (patches_dir / APPLIED / "control").is_symlink()


def test_apply_refuses_before_changing_anything_when_a_patch_was_swapped_after_reading(
        series: list[str], host: Path, patches_dir: Path):
    patches = read_dir(str(patches_dir))[0]
    first = patches_dir / series[0]
    data = first.read_bytes()
    (patches_dir / "copy").write_bytes(data)
    os.replace(patches_dir / "copy", first)  # the same bytes, another file: not the one read
    before = state(host)
    with pytest.raises(DevshellError, match=f"{series[0]} is no longer the file that was read"):
        apply(patches, str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert state(host) == before
    apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)  # control


# --- a rollback that fails says so --------------------------------------------------------------


def test_apply_says_what_stayed_when_the_rollback_after_update_ref_fails(
        series: list[str], host: Path, patches_dir: Path, monkeypatch: pytest.MonkeyPatch):
    real_run = patches_module.Repo.run

    def failing(self: patches_module.Repo, *args: str,
                **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        if self.top == str(host) and args[0] == "update-ref":
            return subprocess.CompletedProcess(args, 128, b"", b"fatal: ref locked\n")
        if self.top == str(host) and args[:3] == ("read-tree", "-m", "-u") and args[4] != args[3] \
                and git(host, "rev-parse", "HEAD").strip() == args[4]:
            return subprocess.CompletedProcess(args, 128, b"", b"error: cannot write a.txt\n")
        return real_run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(patches_module.Repo, "run", failing)
    with pytest.raises(DevshellError) as info:
        apply(read_dir(str(patches_dir))[0], str(host), str(patches_dir), DEFAULT_PROTECTED)
    assert info.value.message == (
        "cannot move refs/heads/main to the new commits (fatal: ref locked), and putting the work "
        "tree back failed too (error: cannot write a.txt): refs/heads/main did not move, but a.txt "
        f"(+1 more) in {host} still hold the new commits' version")
    assert "nothing applied" not in info.value.message
