"""Classes 3 and 7: what the agent leaves in the drop dir is hostile input for the host's
`devshell patches`.

3. A patch that adds a gitlink (mode 160000: a submodule commit git may later fetch and check
   out) is refused unless --allow-gitlinks; leftovers (a nested .git, a symlink leading out, an
   executable, a setuid file, a FIFO) are reported by list and check.
7. Reads are bounded (a sparse 64 GiB patch under a 1 GiB address space is reported, not read)
   and nothing the agent wrote reaches the terminal raw (ANSI escapes, bidi overrides).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

GITLINKS = "3 gitlinks and leftovers"
READS = "7 bounded host reads"

AGENT_PATCH = """
set -e
rm -rf /tmp/w && git clone -q /checkout /tmp/w && cd /tmp/w
git config user.name Agent && git config user.email agent@devshell.invalid
echo "a change" >> README && git commit -qam "Change README"
git format-patch -q -o /patches -1
"""

GITLINK_PATCH = """
set -e
rm -rf /tmp/g && git clone -q /checkout /tmp/g && cd /tmp/g
git config user.name Agent && git config user.email agent@devshell.invalid
git update-index --add --cacheinfo "160000,$(git rev-parse HEAD),vendor/lib"
git commit -qm "Vendor lib"
git format-patch -q -o /patches -1
"""


@pytest.fixture(scope="module")
def world(devshell_factory, make_repo, tmp_path_factory):
    base = tmp_path_factory.mktemp("intake")
    base.chmod(0o755)
    checkout = make_repo(base / "checkout")
    shell = devshell_factory.open(checkout=checkout, host_cache=False)
    return shell, checkout, shell.opts.patches_out


class Agent:
    """The devshell, whose every run starts from an empty drop dir: root empties it (what the
    host left there, applied/ among it, is not dev's to remove) through a plain exec of the
    harness's, not a session's sudo, which the locked profile does not have."""

    def __init__(self, shell):
        self.shell = shell

    def run(self, script):
        emptied = self.shell.exec(["find", "/patches", "-mindepth", "1", "-delete"])
        assert emptied.exit_code == 0, emptied.stderr
        return self.shell.run(script)


@pytest.fixture
def drop(world):
    shell, checkout, drop = world
    return Agent(shell), checkout, drop


def patches(devshell_patches, checkout, drop, *args):
    return devshell_patches(*args, "--patches-dir", drop, cwd=checkout)


# --- 3: gitlinks ---------------------------------------------------------------------------------

@pytest.mark.attack(GITLINKS, "a patch adding a gitlink")
@pytest.mark.parametrize("action", ["check", "apply"])
def test_a_gitlink_patch_is_refused_without_allow_gitlinks(drop, action, devshell_patches, host_tree):
    agent, checkout, d = drop
    assert agent.run(GITLINK_PATCH).exit_code == 0
    before = host_tree(checkout)
    done = patches(devshell_patches, checkout, d, action)
    assert done.returncode != 0, done.stdout
    out = done.stdout + done.stderr
    assert "gitlink" in out and "vendor/lib" in out, out
    assert host_tree(checkout) == before  # apply changed nothing


@pytest.mark.control(GITLINKS, "a patch adding a gitlink")
def test_plain_git_am_takes_the_gitlink(drop, tmp_path, host_git):
    """The guard absent: plain git am in a clone of the checkout adds the 160000 entry."""
    agent, checkout, d = drop
    assert agent.run(GITLINK_PATCH).exit_code == 0
    clone = tmp_path / "clone"
    host_git(tmp_path, "clone", "-q", checkout, clone)
    [patch] = [os.path.join(d, p) for p in os.listdir(d) if p.endswith(".patch")]
    host_git(clone, "am", "-q", patch)
    assert host_git(clone, "ls-tree", "HEAD", "vendor/lib").stdout.startswith("160000 commit ")


@pytest.mark.control(GITLINKS, "a gitlink patch with --allow-gitlinks")
def test_allow_gitlinks_accepts_the_gitlink(drop, devshell_patches):
    agent, checkout, d = drop
    assert agent.run(GITLINK_PATCH).exit_code == 0
    done = patches(devshell_patches, checkout, d, "check", "--allow-gitlinks")
    assert done.returncode == 0, done.stdout + done.stderr


# --- 3: one reading of the patches -------------------------------------------------------------

# git am guesses a file's format on its own: line 1 'Content-Transfer-Encoding: ...', line 2
# empty, line 3 'From:' is StGit to it, copied raw; a mail reader decodes the quoted-printable
# body, where the soft line break 'Xjunk=' glues the binary patch's header to junk. So the review
# sees only the harmless diff, git am also a workflow in the first commit (gone in the second:
# the final tree is the reviewed one).
STGIT_LOOKALIKE = r"""
set -e
rm -rf /tmp/s && git clone -q /checkout /tmp/s && cd /tmp/s
git config user.name Agent && git config user.email agent@devshell.invalid
echo '*.yml binary' > .git/info/attributes
mkdir -p .github/workflows && printf 'on: push\njobs: {x: {steps: [{run: evil}]}}\n' > .github/workflows/x.yml
git add -A && git commit -qm w && git diff --binary HEAD~1 HEAD > /tmp/add.diff
git rm -q -r .github && git commit -qm d && git diff --binary HEAD~1 HEAD > /tmp/rm.diff
mail() {
  { printf 'Content-Transfer-Encoding: quoted-printable\n\nFrom: Agent <agent@devshell.invalid>\n'
    printf 'Subject: tweak %s\n\nharmless change\n---\n' "$2"
    printf 'diff --git a/%s b/%s\n--- a/%s\n+++ b/%s\n@@ -1 +1 @@\n-%s\n+%s 2\n' "$2" "$2" "$2" "$2" "$3" "$3"
    printf 'Xjunk=\n'; cat "$4"; } > "/patches/$1"
}
mail 0001-tweak.patch README hello /tmp/add.diff
mail 0002-tweak.patch src/main.c 'int main(void) { return 0; }' /tmp/rm.diff
"""
ONE_READING = "a series whose intermediate commit hides a workflow from the review"


@pytest.mark.attack(GITLINKS, ONE_READING)
def test_apply_commits_only_what_the_review_read(drop, tmp_path, devshell_patches, host_git):
    agent, checkout, d = drop
    assert agent.run(STGIT_LOOKALIKE).exit_code == 0
    mine = tmp_path / "mine"  # a clone: the module's checkout stays as the other tests expect
    host_git(tmp_path, "clone", "-q", checkout, mine)
    start = host_git(mine, "rev-parse", "HEAD").stdout.strip()
    done = devshell_patches("apply", "--patches-dir", d, "--repo", mine, cwd=mine)
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    if done.returncode == 0:  # applied: then with no workflow in any commit
        assert host_git(mine, "rev-list", "--count", f"{start}..HEAD").stdout.strip() == "2", out
    else:
        assert host_git(mine, "rev-parse", "HEAD").stdout.strip() == start, out
    assert host_git(mine, "log", "--all", "--format=%H", "--", ".github").stdout == "", out


@pytest.mark.control(GITLINKS, ONE_READING)
def test_plain_git_am_commits_the_hidden_workflow(drop, tmp_path, host_git):
    agent, checkout, d = drop
    assert agent.run(STGIT_LOOKALIKE).exit_code == 0
    clone = tmp_path / "clone"
    host_git(tmp_path, "clone", "-q", checkout, clone)
    host_git(clone, "am", "-q", "--3way", *sorted(os.path.join(d, p) for p in os.listdir(d)))
    assert ".github/workflows/x.yml" in host_git(clone, "ls-tree", "-r", "--name-only", "HEAD~1").stdout
    assert not (clone / ".github").exists()


# --- 3: the drop dir itself ------------------------------------------------------------------------

OPEN_DROP = "a drop dir the agent made writable by every user"


@pytest.fixture
def open_drop(drop):
    agent, checkout, d = drop
    # dev's own chmod: the drop dir is dev's (devshell made it), so no profile needs root for it.
    assert agent.run(f"{AGENT_PATCH}\nchmod 0777 /patches").exit_code == 0
    yield agent, checkout, d
    os.chmod(d, 0o700)  # as devshell made it, for the tests after this one


@pytest.mark.attack(GITLINKS, OPEN_DROP)
def test_apply_refuses_a_drop_dir_anyone_can_write(open_drop, devshell_patches, host_tree):
    _, checkout, d = open_drop
    before, listing = host_tree(checkout), sorted(os.listdir(d))
    done = patches(devshell_patches, checkout, d, "apply", "--ignore-leftovers")
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("LEFTOVER ")]
    assert len(errors) == 1 and "writable by every user; nothing applied" in errors[0], done.stderr
    assert host_tree(checkout) == before and sorted(os.listdir(d)) == listing


@pytest.mark.control(GITLINKS, OPEN_DROP)
def test_another_host_user_can_write_the_open_drop_dir(open_drop):
    """The guard absent: any user of the host can now swap what the next apply moves."""
    _, _, d = open_drop
    planted = os.path.join(d, "planted")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # past pytest's 0700 parents, as a neighbour's
    try:                                           # process in a shared parent would get there
        done = subprocess.run(["touch", f"/proc/self/fd/{fd}/planted"], user=65534, group=65534,
                              extra_groups=[], pass_fds=[fd], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert os.stat(planted).st_uid == 65534
    finally:
        os.close(fd)
        if os.path.lexists(planted):
            os.unlink(planted)


# --- 3: leftovers --------------------------------------------------------------------------------

# name -> (made by the agent inside, made on the host afterwards, path reported, dangerous).
# The container cannot make a setuid file or a FIFO (class 4): the host makes those, standing in
# for a container whose guard failed, so the host-side report is tested on its own.
LEFTOVERS = {
    "nested .git": ("git init -q /patches/sub", None, "sub/.git", True),
    "symlink leading out": ("ln -s /etc/shadow /patches/shadow", None, "shadow", True),
    "symlink dir leading up": ("mkdir /patches/d && ln -s ../../.. /patches/d/up", None, "d/up", True),
    "executable": ("printf '#!/bin/sh\\necho hi\\n' > /patches/run.sh && chmod +x /patches/run.sh",
                   None, "run.sh", False),
    "setuid file": ("cp /bin/true /patches/suid", lambda p: os.chmod(p / "suid", 0o4755), "suid", True),
    "FIFO": ("true", lambda p: os.mkfifo(p / "fifo"), "fifo", True),
}


@pytest.fixture
def leftover(drop, request):
    agent, checkout, d = drop
    inside, on_host, path, dangerous = LEFTOVERS[request.param]
    assert agent.run(f"{AGENT_PATCH}\n{inside}").exit_code == 0
    if on_host:
        on_host(Path(d))
    yield checkout, d, path, dangerous
    if on_host:  # no setuid file or FIFO outlives the test in pytest's retained tmp dirs
        os.unlink(os.path.join(d, path))


@pytest.mark.attack(GITLINKS, "leave something beside the patches, unreported by list")
@pytest.mark.parametrize("leftover", list(LEFTOVERS), indirect=True)
def test_patches_list_reports_each_leftover(leftover, devshell_patches):
    checkout, d, path, _ = leftover
    done = patches(devshell_patches, checkout, d, "list")
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("LEFTOVER")]
    assert any(line.startswith(f"LEFTOVER {path}:") for line in lines), done.stdout + done.stderr
    assert "Change README" in done.stdout  # and the patch is still listed


@pytest.mark.attack(GITLINKS, "leave something beside the patches, unreported by check --json")
@pytest.mark.parametrize("leftover", list(LEFTOVERS), indirect=True)
def test_patches_check_json_reports_each_leftover_and_fails_on_a_dangerous_one(leftover, devshell_patches):
    checkout, d, path, dangerous = leftover
    done = patches(devshell_patches, checkout, d, "check", "--json")
    report = json.loads(done.stdout)
    found = {lo["path"]: lo for lo in report["leftovers"]}
    assert path in found, report
    assert found[path]["dangerous"] == dangerous
    assert done.returncode == (1 if dangerous else 0), done.stderr


@pytest.mark.control(GITLINKS, "leave something beside the patches")
@pytest.mark.parametrize("leftover", list(LEFTOVERS), indirect=True)
def test_the_leftover_is_really_there_and_plain_git_am_says_nothing(leftover, tmp_path, host_git):
    """The guard absent: the leftover exists on the host as made, and the user's own tools
    (git am of the patch) apply the patch without a word about it."""
    checkout, d, path, _ = leftover
    st = os.lstat(os.path.join(d, path))
    assert {"sub/.git": stat.S_ISDIR, "shadow": stat.S_ISLNK, "d/up": stat.S_ISLNK,
            "run.sh": lambda m: m & 0o111, "suid": lambda m: m & stat.S_ISUID,
            "fifo": stat.S_ISFIFO}[path](st.st_mode)
    clone = tmp_path / "clone"
    host_git(tmp_path, "clone", "-q", checkout, clone)
    patch = [os.path.join(d, p) for p in os.listdir(d) if p.endswith(".patch")]
    done = host_git(clone, "am", "-q", *patch)
    assert path not in done.stdout + done.stderr


# --- 7: bounded reads, escaped output ----------------------------------------------------------

AS_LIMIT = 1 << 30  # 1 GiB of address space


@pytest.mark.attack(READS, "a sparse 64 GiB x.patch under a 1 GiB address space")
def test_a_huge_patch_is_reported_too_large_not_read(drop, devshell_patches):
    agent, checkout, d = drop
    assert agent.run(AGENT_PATCH).exit_code == 0
    huge = os.path.join(d, "x.patch")
    with open(huge, "wb") as f:
        f.truncate(64 << 30)  # sparse: no disk space, 64 GiB to whoever reads it
    try:
        done = devshell_patches("list", "--patches-dir", d, cwd=checkout,
                                prefix=("prlimit", f"--as={AS_LIMIT}", "--"))
    finally:
        os.unlink(huge)
    out = done.stdout + done.stderr
    assert done.returncode in (0, 1), out
    assert "MemoryError" not in out and "Traceback" not in out, out
    assert re.search(r"x\.patch.*(too large|over the limit|larger than)", out), out
    assert "Change README" in done.stdout  # the real patch is still listed


@pytest.mark.control(READS, "a sparse 64 GiB x.patch under a 1 GiB address space")
def test_a_naive_read_of_the_huge_patch_runs_out_of_memory(tmp_path):
    big = tmp_path / "x.patch"
    with open(big, "wb") as f:
        f.truncate(64 << 30)
    try:
        done = subprocess.run(["prlimit", f"--as={AS_LIMIT}", "--", sys.executable, "-c",
                               f"open({str(big)!r}, 'rb').read()"], capture_output=True, text=True,
                              timeout=60)
    finally:
        big.unlink()
    assert done.returncode != 0 and "MemoryError" in done.stderr, done.stderr


# ESC[2J clears the screen, ESC]0;...BEL sets the terminal title, U+202E reverses the text after it.
HOSTILE_SUBJECT = "Fix \x1b[2J\x1b]0;owned\x07 typo \u202eexe.txt"


@pytest.fixture
def hostile_patch(drop, tmp_path, host_git):
    """A patch whose Subject holds terminal escapes and a bidi override, made as git would."""
    agent, checkout, d = drop
    assert agent.run("true").exit_code == 0  # an empty drop dir
    work = tmp_path / "work"
    host_git(tmp_path, "clone", "-q", checkout, work)
    (work / "README").write_text("hello\nagain\n")
    host_git(work, "commit", "-qam", HOSTILE_SUBJECT)
    host_git(work, "format-patch", "-q", "-o", d, "-1")
    [patch] = [os.path.join(d, p) for p in os.listdir(d) if p.endswith(".patch")]
    return checkout, d, patch


@pytest.mark.attack(READS, "ANSI escapes and a bidi override in a Subject")
@pytest.mark.parametrize("action", ["list", "check"])
def test_patch_text_reaches_the_terminal_escaped(hostile_patch, action, devshell_patches):
    checkout, d, _ = hostile_patch
    done = devshell_patches(action, "--patches-dir", d, cwd=checkout)
    out = done.stdout + done.stderr
    assert done.returncode in (0, 1), out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, repr(out)
    if action == "list":
        assert "typo" in done.stdout  # the subject is shown, escaped


@pytest.mark.control(READS, "ANSI escapes and a bidi override in a Subject")
def test_plain_git_mailinfo_hands_the_raw_escapes_on(hostile_patch, host_git):
    checkout, _, patch = hostile_patch
    with open(patch, "rb") as f:
        done = subprocess.run(["git", "mailinfo", "/dev/null", "/dev/null"], stdin=f,
                              capture_output=True, cwd=checkout, check=True)
    subject = done.stdout.decode()
    assert "\x1b[2J" in subject and "\u202e" in subject, repr(subject)


# A decompression bomb: a binary hunk ('GIT binary patch', 'literal N') is N bytes to git, a few
# hundred KiB in the file. (git apply allocates N while it parses the diff, and read-tree would
# write the N-byte file into the work tree.)
BOMB_BYTES = 400_000_000
BOMB_AS = 256 << 20  # address space for devshell (and every git it runs)


def bomb_patch(n):
    import base64
    import hashlib
    import zlib

    z = zlib.compressobj(9)
    deflated = b"".join(z.compress(bytes(min(1 << 20, n - i))) for i in range(0, n, 1 << 20)) + z.flush()
    lines = []
    for i in range(0, len(deflated), 52):
        chunk = deflated[i:i + 52]
        lines.append(bytes([ord("A") + len(chunk) - 1 if len(chunk) <= 26 else ord("a") + len(chunk) - 27])
                     + base64.b85encode(chunk, pad=True))
    sha = hashlib.sha1(b"blob %d\0" % n)
    for i in range(0, n, 1 << 20):
        sha.update(bytes(min(1 << 20, n - i)))
    return (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            b"From: Agent <agent@devshell.invalid>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
            b"Subject: [PATCH] Add data\n\n---\ndiff --git a/big.bin b/big.bin\nnew file mode 100644\n"
            b"index 0000000000000000000000000000000000000000..%s\nGIT binary patch\nliteral %d\n"
            % (sha.hexdigest().encode(), n) + b"\n".join(lines)
            + b"\n\nliteral 0\nHcmV?d00001\n\n-- \n2.47.3\n\n")


@pytest.fixture(scope="module")
def bomb():
    return bomb_patch(BOMB_BYTES)


@pytest.mark.attack(READS, "a 0.5 MB patch whose binary hunk git inflates to 400 MB")
@pytest.mark.parametrize("action", ["list", "check", "apply"])
def test_a_decompression_bomb_is_refused_before_git_inflates_it(drop, bomb, action, devshell_patches,
                                                                 host_tree):
    agent, checkout, d = drop
    assert agent.run("true").exit_code == 0  # an empty drop dir
    with open(os.path.join(d, "0001-bomb.patch"), "wb") as f:
        f.write(bomb)
    before = host_tree(checkout)
    done = devshell_patches(action, "--patches-dir", d, cwd=checkout,
                            prefix=("prlimit", f"--as={BOMB_AS}", "--"))
    out = done.stdout + done.stderr
    assert done.returncode == {"list": 0, "check": 1, "apply": 2}[action], out
    assert "MemoryError" not in out and "Traceback" not in out and "out of memory" not in out, out
    assert "0001-bomb.patch: a binary hunk git would inflate to 400000000 bytes, over the limit of " \
           "64 MiB per blob" in out, out
    assert host_tree(checkout) == before
    assert not os.path.exists(os.path.join(checkout, "big.bin"))


@pytest.mark.control(READS, "a 0.5 MB patch whose binary hunk git inflates to 400 MB")
def test_plain_git_apply_runs_out_of_memory_on_the_bomb(bomb, tmp_path):
    diff = bomb.split(b"\n---\n", 1)[1]
    done = subprocess.run(["prlimit", f"--as={BOMB_AS}", "--", "git", "apply", "--numstat", "-"],
                          input=diff, capture_output=True, cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and b"out of memory" in done.stderr.lower(), done.stderr
    done = subprocess.run(["git", "apply", "-"], input=diff, capture_output=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "big.bin").stat().st_size == BOMB_BYTES
