"""Class 4: no file the agent leaves on the host gives anyone more.

The agent writes into /patches and its memory (/cache/ai/memory/<repo>/<key>), which are host
directories. A setuid or
setgid file, a device node, a FIFO or a file with capabilities left there could let another host
user become root, or hang a host tool. Every way to make one is tried in both places, as dev and
as root through sudo: the devshell's dropped capabilities (devshell.seccomp.CAP_DROP) and its
seccomp allowlist (devshell.seccomp.profile) must stop each, and the host path must show none
of it. The control runs the same commands as root in a plain `docker run` of the same image,
which has neither guard, where each works.

The image has no Python; raw syscalls go through perl's syscall(), which is what Python's ctypes
would do (x86_64 numbers: mknod 133, setxattr 188, getxattr 191, mknodat 259, io_uring_setup
425, fchmodat2 452).
"""

from __future__ import annotations

import errno
import os
import platform
import shlex
import stat

import pytest

CLASS = "4 no privileged files"
# Root through sudo exists under the standard profile only (locked has no sudo).
USERS = ["dev", pytest.param("root", marks=pytest.mark.standard_profile)]

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")

# A valid VFS_CAP_REVISION_2 blob: magic 0x02000000 | effective, permitted CAP_NET_BIND_SERVICE.
CAP_BLOB = 'pack("V5", 0x02000001, 1 << 10, 0, 0, 0)'


def perl(code: str) -> str:
    return f"perl -e {shlex.quote(code)}"


# name -> (command making @F@, shell test that holds when it worked, extra `docker run` flags
# the control needs). @F@ is a path of its own for each test; a test of None means: the
# command's own exit status says whether it worked.
ATTEMPTS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "chmod u+s": ("touch @F@ && chmod u+s @F@", "test -u @F@", ()),
    "chmod g+s (file)": ("touch @F@ && chmod g+s @F@", "test -g @F@", ()),
    "chmod g+s (dir)": ("mkdir @F@ && chmod g+s @F@", "test -g @F@", ()),
    "mkdir -m 2755": ("mkdir -m 2755 @F@", "test -g @F@", ()),
    "install -m 4755": ("install -m 4755 /bin/true @F@", "test -u @F@", ()),
    "open(O_CREAT, 04755)": (perl('use Fcntl; sysopen(my $h, "@F@", O_CREAT|O_WRONLY, 04755) or die "$!\\n"'),
                             "test -u @F@", ()),
    "cp -a /usr/bin/sudo": ("cp -a /usr/bin/sudo @F@", "test -u @F@", ()),
    "cp --preserve=mode /usr/bin/sudo": ("cp --preserve=mode /usr/bin/sudo @F@", "test -u @F@", ()),
    "tar -xp of a setuid member": (
        't=$(mktemp -d) && cp /bin/true "$t/m" && tar --mode=4755 -cf "$t.tar" -C "$t" m '
        '&& mkdir @F@ && tar -xpf "$t.tar" -C @F@', "test -u @F@/m", ()),
    "mknod c 1 3": ("mknod @F@ c 1 3", "test -c @F@", ()),
    "mknod(2) char device 1,3": (perl('my $p = "@F@"; syscall(133, $p, 0020644, 259) == 0 or die "$!\\n"'),
                                 "test -c @F@", ()),
    "mkfifo": ("mkfifo @F@", "test -p @F@", ()),
    "mknodat(2) FIFO (os.mkfifo)": (
        perl('my $p = "@F@"; syscall(259, -100, $p, 0010644, 0) == 0 or die "$!\\n"'), "test -p @F@", ()),
    "setxattr security.capability": (
        "touch @F@ && " + perl(f'my ($p, $n, $v) = ("@F@", "security.capability", {CAP_BLOB}); '
                               'syscall(188, $p, $n, $v, length($v), 0) == 0 or die "$!\\n"'),
        perl('my ($p, $n, $b) = ("@F@", "security.capability", "\\0" x 64); '
             'exit(syscall(191, $p, $n, $b, 64) > 0 ? 0 : 1)'), ()),
    # Docker 20.10's own profile predates fchmodat2 (Linux 6.6) and refuses it: the control runs
    # unconfined to show the syscall itself sets the bit.
    "fchmodat2(AT_FDCWD, 04755)": (
        "touch @F@ && " + perl('my $p = "@F@"; syscall(452, -100, $p, 04755, 0) == 0 or die "$!\\n"'),
        "test -u @F@", ("--security-opt", "seccomp=unconfined")),
    "io_uring_setup": (perl('my $b = "\\0" x 120; my $fd = syscall(425, 1, $b); '
                            'print "io_uring_setup: $fd $!\\n"; exit($fd >= 0 ? 0 : 1)'), None, ()),
}

PLACES = ("patches", "memory")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def probe(command: str, test: str | None, *, wrap=lambda c: c, look=lambda c: c) -> str:
    """A script that runs the attempt (through wrap: as dev, or root via sudo), then checks
    whether it worked (through look: as root, so that nothing hides the result). It prints
    RC=<the attempt's exit status> and EFFECT=yes|no."""
    check = look(test) if test else '[ "$rc" = 0 ]'
    return (f"{wrap(command)}\nrc=$?\necho RC=$rc\n"
            f"if {check}; then echo EFFECT=yes; else echo EFFECT=no; fi\n")


def entries(path: str):
    """path and, if it is a directory, everything below it; no link is followed."""
    if not os.path.lexists(path):
        return
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for dirpath, dirnames, filenames in os.walk(path):
            yield from (os.path.join(dirpath, name) for name in dirnames + filenames)


def privileged(path: str) -> list[str]:
    """What at or under path could give anyone more: setuid/setgid bits, a device node, a FIFO,
    a socket, a security.capability xattr."""
    found = []
    for p in entries(path):
        mode = os.lstat(p).st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{p}: mode {mode:o}")
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            found.append(f"{p}: not a file or directory ({mode:o})")
        try:
            os.getxattr(p, "security.capability", follow_symlinks=False)
            found.append(f"{p}: security.capability")
        except OSError as e:
            assert e.errno in (errno.ENODATA, errno.ENOTSUP), e
    return found


@pytest.fixture(scope="module")
def world(devshell_factory, host_cache_dir, memory_mount):
    """A devshell with a host cache, and each place the agent writes: (inside, on the host)."""
    shell = devshell_factory.open(host_cache=host_cache_dir())
    return shell, {"patches": ("/patches", shell.opts.patches_out), "memory": memory_mount(shell)}


@pytest.mark.attack(CLASS, "leave a privileged file")
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_no_attempt_leaves_a_privileged_file_on_the_host(world, attempt, place, user, as_user, agent_users):
    shell, places = world
    command, test, _ = ATTEMPTS[attempt]
    name = f"{slug(attempt)}-{user}"
    inside = f"{places[place][0]}/{name}"
    # Looked at as root where sudo is (nothing hides the result from root); under locked as
    # dev, who owns both places and so sees every mode bit, file type and xattr there. (Through
    # a sudo that is not there, every look would say "no effect".)
    looker = "root" if "root" in agent_users else "dev"
    result = shell.run(probe(command.replace("@F@", inside), test and test.replace("@F@", inside),
                             wrap=lambda c: as_user(c, user), look=lambda c: as_user(c, looker)))
    print(result.stdout, result.stderr)  # how it failed, shown when the test does not
    assert "EFFECT=no" in result.stdout, f"{attempt} in {place} as {user} worked"
    assert privileged(os.path.join(places[place][1], name)) == []


@pytest.mark.attack(CLASS, "all attempts, then walk the host drop dir and memory dir")
def test_the_host_drop_dir_and_memory_hold_nothing_privileged_after_all_attempts(devshell_factory,
                                                                                  host_cache_dir,
                                                                                  memory_mount, as_user,
                                                                                  agent_users):
    """Every attempt, everywhere, as dev and (standard) as root, in one devshell of its own
    (xdist spreads the single attempts over workers, so this test cannot rely on them), then
    the host walk."""
    shell = devshell_factory.open(host_cache=host_cache_dir())
    places = {"patches": ("/patches", shell.opts.patches_out), "memory": memory_mount(shell)}
    script = "".join(
        probe(command.replace("@F@", f"{places[place][0]}/{slug(attempt)}-{user}"), None,
              wrap=lambda c, user=user: as_user(c, user))
        for attempt, (command, _, _) in ATTEMPTS.items() for place in PLACES for user in agent_users)
    shell.run(script)
    assert os.listdir(places["patches"][1]), "the attempts left nothing at all: were they run?"
    assert privileged(places["patches"][1]) == []
    assert privileged(os.path.join(shell.opts.host_cache, "ai")) == []  # memory and the rest of ai/


@pytest.fixture(scope="module")
def controls(world, plain_docker):
    """Every attempt, as root in a plain `docker run` of the devshell's image (without devshell's
    --cap-drop and seccomp profile), each in a fresh directory: name -> probe output. One
    container per set of extra flags, not one per attempt."""
    out: dict[str, str] = {}
    for flags in sorted({extra for _, _, extra in ATTEMPTS.values()}):
        script = ""
        for name, (command, test, extra) in ATTEMPTS.items():
            if extra == flags:
                f = f"/x/{slug(name)}/f"
                script += (f"echo '## {name}'\nmkdir -p /x/{slug(name)}\n"
                           + probe(command.replace("@F@", f), test and test.replace("@F@", f)))
        done = plain_docker(world[0], script, *flags)
        for chunk in done.stdout.split("## ")[1:]:
            name, _, body = chunk.partition("\n")
            out[name] = body + (done.stderr if "EFFECT=no" in body else "")
    return out


@pytest.mark.control(CLASS, "leave a privileged file")
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_each_attempt_works_in_a_plain_container(controls, attempt):
    assert "EFFECT=yes" in controls[attempt], controls.get(attempt)
