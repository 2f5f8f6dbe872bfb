"""Trust profiles, limits and runtimes, proven with real containers.

`--profile locked` promises that nothing in the devshell is ever root for the agent: no sudo, no
setuid binary that raises privilege (no-new-privileges), sessions without capabilities, a
read-only root filesystem where only dev's home (kept in the workspace volume), /tmp, the
workspace, /patches and the memory part of /cache take writes, and no --as-root. Both profiles
get a pids limit and a memory limit, so a fork bomb or a memory hog stops at the container's
edge with the host and the other devshells untouched; under gVisor (`--runtime runsc`,
registered with --network=none) a devshell has no network. `--list` and the session line name
the profile and runtime in force.

Locked devshells are opened with profile="locked" and the controls with profile="standard",
whatever the run's --profile, so this module proves locked under every run; each opens under
the run's --runtime, so it also proves it under gVisor. Every attack has a control that makes
the same attempt where the guard is absent and shows that it works there (the markers of
suites/security/conftest.py). No assertion depends on timing: the bounds below only keep a
broken guard from hanging the run.

The image has no Python: processes are counted with perl's fork (perl-base is in every Debian
image), and coreutils' stat is avoided (gVisor refuses its statx).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
import yaml

from devshell.errors import DevshellError
from devshell.launcher import settled
from devshell.spec import HOME_IN_VOLUME, INIT_PATH

PROFILES = ("locked", "standard")
PIDS_LIMIT = 256  # small, so that a bomb meets it at once; above cells.MIN_PIDS_LIMIT
MEMORY_LIMIT = 256 << 20
MORE_PROCESSES = 400  # than PIDS_LIMIT: started where there is no limit, never under it
HOG_BYTES = 500_000_000  # nearly twice MEMORY_LIMIT, held in one bash variable
SESSION_BOUND = 180  # seconds: a session that has not returned by then hangs (a failure)
SETTLE_BOUND = 30  # seconds the engine may take to see a sandbox that died as stopped

# Where each setuid-root binary of the image is asked to run, as dev: with stdin a pipe that
# never delivers, one that asks for a password (su, passwd, chfn, …) waits there, so its
# credentials can be read while it runs. Waited on until it is asleep under its own name
# (exec done, credentials committed) or gone; its Uid line is real, effective, saved, fs.
SETUID_PROBE = r"""
exec 3< <(exec sleep 300)
feeder=$!
for bin in {bins}; do
    "$bin" <&3 >/dev/null 2>&1 &
    pid=$!
    name=${{bin##*/}}
    name=${{name:0:15}}
    for _ in $(seq 200); do
        state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
        comm=$(cat "/proc/$pid/comm" 2>/dev/null)
        case $state in '' | Z) break ;; S | D) [ "$comm" = "$name" ] && break ;; esac
        sleep 0.05
    done
    uids=$(sed -n 's/^Uid:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
    echo "$bin ${{uids:-gone}}"
    {{ kill -KILL "$pid"; wait "$pid"; }} 2>/dev/null
done
kill "$feeder"
"""

# A bash fork bomb, ended after 8 s by timeout, which kills its whole process group (the bomb
# never leaves it: no job control in a script). The session itself must outlive it.
FORK_BOMB = """timeout -s KILL 8 bash -c 'bomb() { bomb | bomb & }; bomb; sleep 60' 2>/dev/null
echo "bomb ended: $?"
"""

# Start MORE_PROCESSES sleepers, stopping at the first fork the kernel refuses (perl does not
# retry, unlike bash's `&`), print how many started, then end them.
COUNT_PROCESSES = f"""perl -e '
    for (1..{MORE_PROCESSES}) {{
        my $pid = fork;
        last unless defined $pid;
        if ($pid == 0) {{ sleep 300; exit 0 }}
        push @kids, $pid;
    }}
    print scalar(@kids), "\\n";
    kill "KILL", @kids;
    waitpid($_, 0) for @kids;'
"""

# HOG_BYTES in one bash variable: no Python in the image, and bash keeps what $(…) read.
MEMORY_HOG = f"""hog=$(head -c {HOG_BYTES} /dev/zero | tr '\\0' x)
echo "allocated ${{#hog}}"
"""


# --- helpers --------------------------------------------------------------------------------

ENTERED = "--- session entered ---"


def session(shell, script: str):
    """script as dev through init, as the CLI runs it, after proving that the session itself
    started (init and verify passed): an attempt that fails must fail on its own. Output
    without that proof."""
    result = bounded(shell, lambda: shell.run(f"#!/bin/bash\necho '{ENTERED}'\n{script}"))
    assert result.stdout.startswith(f"{ENTERED}\n"), \
        f"the session did not start ({result.exit_code}): {result.stderr.strip()}"
    return result._replace(stdout=result.stdout[len(ENTERED) + 1:])


def bounded(shell, call: Callable[[], Any], bound: float = SESSION_BOUND) -> Any:
    """call() (a session into shell), failing the test if it has not returned within bound:
    the launcher watches a gVisor sandbox, so that one killed at a limit ends the session
    instead of leaving docker exec waiting. A hung one is released by removing the container."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    try:
        return future.result(timeout=bound)
    except FutureTimeout:
        shell.engine.remove_container(shell.name)  # ends the exec, so the thread can go
        pytest.fail(f"the session into {shell.name} had not returned after {bound} s")
    finally:
        pool.shutdown(wait=False)


def open_entered(devshell_factory, *, profile: str, runtime: str | None, cell=None, **options):
    """A devshell under profile and runtime (new unless options name an existing one's
    instance and dirs), entered once (init converged)."""
    shell = devshell_factory.open(cell, profile=profile, runtime=runtime, **options)
    session(shell, "true")
    return shell


def status_fields(text: str) -> dict[str, str]:
    """`Name:\tvalue` lines (/proc/PID/status) and `name: value` ones (setpriv --dump)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def setuid_root_binaries(shell) -> list[str]:
    """Every setuid-root file of the root filesystem, found by root inside."""
    found = shell.exec(["find", "/", "-xdev", "-perm", "-4000", "-user", "root", "-type", "f"])
    return sorted(found.stdout.split())


def effective_uids(shell, binaries: list[str]) -> dict[str, str]:
    """binary -> its effective uid while it ran as dev, or 'gone' (it ended before it could be
    read). An effective uid of 0 is a setuid binary that made dev root."""
    probe = SETUID_PROBE.format(bins=" ".join(shlex.quote(b) for b in binaries))
    out = session(shell, probe).stdout
    seen = {}
    for line in out.splitlines():
        binary, _, uids = line.partition(" ")
        seen[binary] = uids.split()[1] if len(uids.split()) == 4 else uids
    assert sorted(seen) == binaries, out
    return seen


class Cgroup:
    """The host's view of a container's cgroup (v1 or v2), found from its init's pid: what the
    kernel counts and refuses, read from outside, where nothing inside can fake it."""

    def __init__(self, shell) -> None:
        info = shell.engine.inspect(shell.name)
        pid = info["State"]["Pid"]
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            pytest.skip("the engine's processes are not on this machine: its cgroups cannot be read")
        self.v1 = {ctl: path for _, ctls, path in (line.split(":", 2) for line in lines)
                   for ctl in ctls.split(",") if ctl}
        self.v2 = next((line[3:] for line in lines if line.startswith("0::")), "/")

    def path(self, controller: str, name: str) -> Path:
        if controller in self.v1:
            return Path("/sys/fs/cgroup", controller, self.v1[controller].lstrip("/"), name)
        return Path("/sys/fs/cgroup", self.v2.lstrip("/"), name)

    def read(self, controller: str, name: str) -> str:
        return self.path(controller, name).read_text()

    def counter(self, controller: str, name: str, key: str) -> int:
        """N of a `key N` line of a cgroup file (pids.events' max, memory's oom_kill)."""
        for line in self.read(controller, name).splitlines():
            found, _, value = line.partition(" ")
            if found == key:
                return int(value)
        return 0


class OomKills:
    """Whether the kernel killed a process of a container at its memory cgroup's limit since
    this was made. The engine's OOMKilled is the first witness, but it rests on an OOM event
    containerd can lose when the container exits with it (containerd#8893; seen here with
    gVisor under load, about one run in six, while the kernel had logged the kill). The kernel's
    log of it, `oom_memcg=<the container's cgroup>` (in its oom-kill line), is not lost; those
    already logged for this container (a container started again keeps its id) are counted
    first. Reading the log needs root (kernel.dmesg_restrict), as CI has."""

    def __init__(self, shell) -> None:
        self.id = shell.engine.inspect(shell.name)["Id"]
        self.before = self.logged()

    def logged(self) -> int | None:
        """Kills logged in this container's memory cgroup; None: the log cannot be read."""
        try:
            log = subprocess.run(["dmesg"], capture_output=True, text=True)
        except OSError:
            return None
        # The cgroup's path ends in the full id (/docker/ID, or .../docker-ID.scope).
        in_memcg = re.compile(rf"oom_memcg=[^,\s]*{self.id}")
        return None if log.returncode else sum(1 for line in log.stdout.splitlines() if in_memcg.search(line))

    def since(self, info: dict[str, Any]) -> bool | None:
        """True: killed (the engine or the kernel says so); None: the engine says not, and the
        kernel's log cannot be read."""
        if info["State"]["OOMKilled"]:
            return True
        now = self.logged()
        return None if now is None or self.before is None else now > self.before


@contextlib.contextmanager
def meanwhile(step: Callable[[], Any], every: float = 0.2) -> Iterator[list[Any]]:
    """Run step() again and again in a thread while the block runs (and once after it);
    yields the list its results go to."""
    results: list[Any] = []
    over = threading.Event()

    def loop() -> None:
        while True:
            results.append(step())
            if over.wait(every):
                results.append(step())
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        over.set()
        thread.join(timeout=SESSION_BOUND)


def host_probe(bystander) -> Callable[[], tuple[bool, bool]]:
    """A step that says whether the host still runs a program, and the engine an exec into
    another devshell, each within a generous bound (no timing is asserted beyond it)."""

    def probe() -> tuple[bool, bool]:
        def ok(argv: list[str]) -> bool:
            try:
                return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        return ok(["true"]), ok(["docker", "exec", bystander.name, "true"])

    return probe


def plain_docker(image: str, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """The devshell's image in a plain `docker run --rm --network=none`, as dev's uid, without
    devshell's limits (the engine's defaults, plus flags): where a limit's guard is absent.
    Under the engine's default runtime: what a limit changes does not depend on it, and a
    gVisor run of the hog alone takes most of a minute."""
    return subprocess.run(["docker", "run", "--rm", "--network=none", "--user", "1000:1000", *flags,
                           image, "bash", "-c", script],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=SESSION_BOUND)


def registered_runtime(engine, kind: str) -> str | None:
    """The name of a runtime of that kind (gvisor, runc) the engine has registered, or None."""
    for name in sorted(engine.system_info().get("Runtimes") or {}):
        with contextlib.suppress(DevshellError):
            if engine.runtime(name).kind == kind:
                return name
    return None


def runc_runtime(engine) -> str:
    name = registered_runtime(engine, "runc")
    assert name, "the engine has no runc runtime registered"
    return name


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime_for(devshell_engine, devshell_runtime):
    """profile -> the runtime a devshell of that profile opens under in this run: the run's
    --runtime, except standard under gVisor, which the launcher refuses (gVisor sets
    no-new-privileges on every process of a sandbox, and sudo cannot live with it): runc."""
    run_is_gvisor = devshell_engine.runtime(devshell_runtime or "").kind == "gvisor"

    def pick(profile: str) -> str | None:
        return runc_runtime(devshell_engine) if profile == "standard" and run_is_gvisor else devshell_runtime

    return pick


@pytest.fixture(scope="module")
def locked(devshell_factory, runtime_for):
    """A locked devshell under the run's runtime, entered once."""
    return open_entered(devshell_factory, profile="locked", runtime=runtime_for("locked"))


@pytest.fixture(scope="module")
def standard(devshell_factory, runtime_for):
    """A standard devshell, entered once: where the guards of locked are absent."""
    return open_entered(devshell_factory, profile="standard", runtime=runtime_for("standard"))


@pytest.fixture(scope="module")
def bystander(devshell_factory, runtime_for):
    """Another devshell on the same engine, under the run's runtime, that the limit tests
    watch: a bomb or a hog next door must leave it running and its files as they were."""
    return open_entered(devshell_factory, profile="locked", runtime=runtime_for("locked"))


@pytest.fixture
def bystander_intact(bystander):
    """Puts a file in the bystander's workspace; returns the check that it is still there,
    unchanged, in a container still running."""
    content = os.urandom(8).hex()
    path = f"{bystander.spec.workspace}/bystander-{content}"
    assert bystander.exec(["sh", "-c", f"echo {content} > {path}"]).exit_code == 0

    def check() -> None:
        info = bystander.engine.inspect(bystander.name)
        assert info is not None and info["State"]["Running"], f"{bystander.name} is no longer running"
        assert bystander.exec(["cat", path]).stdout.strip() == content

    return check


def limited(devshell_factory, devshell_cell, runtime_for, profile: str, **limits):
    """A devshell of the --cell cell with other limits, under profile."""
    return open_entered(devshell_factory, cell=devshell_cell._replace(**limits), profile=profile,
                        runtime=runtime_for(profile))


# --- 1. no root under locked: sudo, su, setuid binaries, capabilities ----------------------


@pytest.mark.attack("privilege", "sudo -n id -u")
def test_locked_sudo_gives_no_root(locked):
    result = session(locked, "sudo -n id -u; echo \"sudo: $?\"")
    assert "sudo: 0" not in result.stdout and "\n0\n" not in f"\n{result.stdout}"
    # no rule for dev, and the kernel flag that would stop sudo even with one
    assert "no new privileges" in result.stderr, result.stderr


# su asks for root's password, which Debian's root does not have: so that su's refusal under
# locked is no-new-privileges' and not the missing password's, root's password is emptied
# (PAM's nullok then lets su through without one) by the cell's setup, which under locked runs
# in the bake, before the root filesystem is read-only.
SU_TO_ROOT = "su -c 'id -u' root; echo \"su: $?\""  # stdin is /dev/null: no prompt hangs


@pytest.fixture(scope="module")
def passwordless_root(devshell_cell):
    """The --cell cell with root's password emptied by its setup."""
    setup = "\n".join(filter(None, [devshell_cell.setup, "passwd -d root >/dev/null"]))
    return devshell_cell._replace(setup=setup)


@pytest.mark.attack("privilege", "su -c 'id -u' root, root without a password")
def test_locked_su_gives_no_root(devshell_factory, passwordless_root, runtime_for):
    shell = open_entered(devshell_factory, cell=passwordless_root, profile="locked",
                         runtime=runtime_for("locked"))
    assert shell.exec(["passwd", "-S", "root"]).stdout.split()[1] == "NP"  # the premise: no password
    result = session(shell, SU_TO_ROOT)
    assert "su: 0" not in result.stdout and "\n0\n" not in f"\n{result.stdout}", result.stdout


@pytest.mark.control("privilege", "su -c 'id -u' root, root without a password")
def test_control_standard_su_gives_root_without_a_password(devshell_factory, passwordless_root, runtime_for):
    shell = open_entered(devshell_factory, cell=passwordless_root, profile="standard",
                         runtime=runtime_for("standard"))
    assert session(shell, SU_TO_ROOT).stdout == "0\nsu: 0\n"


@pytest.mark.control("privilege", "sudo -n id -u")
def test_control_standard_sudo_gives_root(standard):
    assert session(standard, "sudo -n id -u").stdout == "0\n"


@pytest.mark.attack("privilege", "setuid-root binaries")
def test_locked_setuid_binaries_run_without_root(locked):
    binaries = setuid_root_binaries(locked)
    assert binaries, "the image has no setuid-root binary (sudo and su are setuid-root in Debian)"
    uids = effective_uids(locked, binaries)
    assert not [b for b, euid in uids.items() if euid == "0"], uids
    # Proof that the probe saw them run: those that wait for a password were read, as dev.
    assert [b for b, euid in uids.items() if euid != "gone"], uids


@pytest.mark.control("privilege", "setuid-root binaries")
def test_control_standard_setuid_binaries_run_as_root(standard):
    uids = effective_uids(standard, setuid_root_binaries(standard))
    assert [b for b, euid in uids.items() if euid == "0"], uids


def test_locked_session_has_no_capabilities_and_no_new_privileges(locked):
    result = session(locked, "cat /proc/self/status; setpriv --dump 2>/dev/null")
    fields = status_fields(result.stdout)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    # gVisor's status has no NoNewPrivs line; prctl (setpriv) says it there
    assert fields.get("NoNewPrivs", fields.get("no_new_privs")) == "1", result.stdout


def test_standard_session_keeps_its_bounding_set(standard):
    # The same reading where the profile does not clear it: the zeros above are the profile's.
    fields = status_fields(session(standard, "cat /proc/self/status").stdout)
    assert int(fields["CapBnd"], 16) != 0 and int(fields["CapEff"], 16) == 0, fields


def test_locked_verify_is_clean(locked):
    # sudoers, no-new-privileges, read-only-root and dev-home all hold, with nothing to report.
    result = locked.verify()
    assert (result.exit_code, result.stdout) == (0, ""), result.stdout


def test_locked_session_runs_under_devshells_filter(locked):
    # Under runc the engine installs it; under gVisor, init does (the runtime leaves docker
    # exec unfiltered there), before anything of the session runs.
    assert status_fields(session(locked, "cat /proc/self/status").stdout).get("Seccomp") == "2"


def test_gvisor_verify_fails_closed_without_the_filter(locked):
    """Where init could not install the filter (here: told it already tried), verify names
    the missing filter and fails: a gVisor session never runs unfiltered in silence."""
    if not locked.gvisor:
        pytest.skip("runc filters every docker exec itself: there is no unfiltered session to refuse")
    unfiltered = locked.exec(["env", "DEVSHELL_FILTER_TRIED=1", INIT_PATH, "--verify"])
    assert unfiltered.exit_code != 0 and "FAIL seccomp:" in unfiltered.stdout, unfiltered
    assert locked.verify().exit_code == 0  # the same verify, where init installed it


# --- 2. --as-root is refused under locked -----------------------------------------------


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devshell: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


def write_script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/bash\n{body}\n")
    return str(path)


def container_state(engine, name: str) -> tuple[Any, ...]:
    info = engine.inspect(name)
    return (info and info["Id"], info and info["State"]["StartedAt"], engine.volume_present(name))


@pytest.mark.attack("privilege", "--as-root")
def test_as_root_is_refused_with_profile_locked(locked, devshell_cli, devshell_engine, tmp_path):
    marker = f"/patches/as-root-{os.urandom(4).hex()}"
    script = write_script(tmp_path / "root.sh", f"id -u > {marker}")
    before = container_state(devshell_engine, locked.name)
    result = devshell_cli(locked, "--script", script, as_root=True, profile="locked")
    one_line_error(result, "--as-root", "locked")
    assert container_state(devshell_engine, locked.name) == before
    assert not os.path.lexists(os.path.join(locked.opts.patches_out, os.path.basename(marker)))


@pytest.mark.control("privilege", "--as-root")
def test_control_as_root_works_with_profile_standard(standard, devshell_cli, tmp_path):
    script = write_script(tmp_path / "root.sh", "id -u")
    result = devshell_cli(standard, "--script", script, as_root=True, profile="standard")
    assert (result.exit_code, result.stdout) == (0, "0\n"), result.stderr


# --- a cell's own profile and limits ------------------------------------------------------


class OwnCell:
    """A cell file like the --cell cell's, with `profile: locked` and limits of its own, on the
    image already here; launched through the CLI with new host dirs, under the run's runtime."""

    PIDS, MEMORY = 512, 384 << 20

    def __init__(self, devshell_cell, image: str, devshell_cli, devshell_instance, runtime_for, tmp_path):
        data = yaml.safe_load(Path(devshell_cell.source).read_text())
        self.name = f"{devshell_cell.name[:40]}-own-profile"
        data.update(name=self.name, profile="locked", image={"ref": image},
                    limits={"pids": self.PIDS, "memory": f"{self.MEMORY >> 20}m"})
        self.cells_dir = tmp_path / "cells"
        self.cells_dir.mkdir()
        (self.cells_dir / f"{self.name}.yaml").write_text(yaml.safe_dump(data))
        self.instance = devshell_instance()
        self.container = f"devshell-{self.name}-{self.instance}"
        self.checkout, self.patches = tmp_path / "checkout", tmp_path / "patches"
        self.checkout.mkdir(mode=0o755)
        self.cli, self.runtime_for, self.tmp_path = devshell_cli, runtime_for, tmp_path

    def launch(self, script: str, *flags: str):
        runtime = self.runtime_for("standard" if "--profile=standard" in flags else "locked")
        path = write_script(self.tmp_path / "s.sh", script)
        return self.cli(None, self.name, f"--cells-dir={self.cells_dir}", f"--instance={self.instance}",
                        f"--checkout={self.checkout}", f"--patches-out={self.patches}", "--uid=1000",
                        "--gid=1000", *([f"--runtime={runtime}"] if runtime else []),
                        "--script", path, *flags)


@pytest.fixture
def own_cell(devshell_cell, locked, devshell_cli, devshell_instance, runtime_for, tmp_path):
    return OwnCell(devshell_cell, locked.spec.image, devshell_cli, devshell_instance, runtime_for, tmp_path)


def test_a_cell_sets_its_default_profile_and_limits(own_cell, devshell_engine):
    result = own_cell.launch("grep -E '^CapBnd:' /proc/self/status")
    assert "profile locked · runtime " in result.stderr, result.stderr
    assert f"limits {OwnCell.PIDS} pids, {OwnCell.MEMORY >> 20} MiB" in result.stderr, result.stderr
    assert result.stdout == "CapBnd:\t0000000000000000\n", (result.stdout, result.stderr)
    host = devshell_engine.inspect(own_cell.container)["HostConfig"]
    assert (host["ReadonlyRootfs"], host["PidsLimit"], host["Memory"], host["MemorySwap"]) == \
        (True, OwnCell.PIDS, OwnCell.MEMORY, OwnCell.MEMORY)


@pytest.mark.attack("privilege", "--as-root under a locked cell")
def test_as_root_is_refused_under_a_locked_cell(own_cell, devshell_engine):
    result = own_cell.launch("id -u", "--as-root")
    one_line_error(result, "--as-root", own_cell.name)
    # refused before anything was made
    assert container_state(devshell_engine, own_cell.container) == (None, None, False)
    assert not own_cell.patches.exists()


@pytest.mark.control("privilege", "--as-root under a locked cell")
def test_control_as_root_under_a_locked_cell_with_profile_standard(own_cell):
    result = own_cell.launch("id -u", "--as-root", "--profile=standard")
    assert (result.exit_code, result.stdout) == (0, "0\n"), result.stderr


# --- 3. writes: the read-only root, and the places that take them -------------------------

ROOT_FS_DIRS = ("/", "/etc", "/usr", "/var", "/opt", "/home")


def write_anyhow(target: str) -> str:
    """dev's ways to write target: directly, else as root through sudo (standard's way)."""
    return (f": > {target} 2>/dev/null || sudo -n sh -c ': > {target}' 2>/dev/null; "
            f"test -e {target} && echo written || echo refused")


@pytest.mark.attack("write", "dev writes the root filesystem (directly or through sudo)")
@pytest.mark.parametrize("directory", ROOT_FS_DIRS)
def test_locked_dev_cannot_write_the_root_filesystem(locked, directory):
    target = f"{directory.rstrip('/')}/devshell-probe-{os.urandom(4).hex()}"
    assert session(locked, write_anyhow(target)).stdout == "refused\n"
    assert locked.exec(["test", "-e", target]).exit_code == 1


@pytest.mark.control("write", "dev writes the root filesystem (directly or through sudo)")
@pytest.mark.parametrize("directory", ROOT_FS_DIRS)
def test_control_standard_dev_writes_the_root_filesystem(standard, directory):
    target = f"{directory.rstrip('/')}/devshell-probe-{os.urandom(4).hex()}"
    assert session(standard, write_anyhow(target)).stdout == "written\n"
    assert standard.exec(["rm", target]).exit_code == 0


@pytest.mark.attack("write", "root writes the root filesystem")
@pytest.mark.parametrize("directory", ROOT_FS_DIRS)
def test_locked_root_gets_read_only_file_system(locked, directory):
    # root inside (a raw exec, as a hostile init would be) has no mount to write through:
    # the engine made the root filesystem read-only, not dev's permissions.
    target = f"{directory.rstrip('/')}/devshell-probe-{os.urandom(4).hex()}"
    result = locked.exec(["touch", target])
    assert result.exit_code != 0 and "Read-only file system" in result.stderr, result


@pytest.mark.control("write", "root writes the root filesystem")
@pytest.mark.parametrize("directory", ROOT_FS_DIRS)
def test_control_standard_root_writes_the_root_filesystem(standard, directory):
    target = f"{directory.rstrip('/')}/devshell-probe-{os.urandom(4).hex()}"
    assert standard.exec(["touch", target]).exit_code == 0
    assert standard.exec(["rm", target]).exit_code == 0


def test_locked_dev_writes_the_writable_places(locked, memory_mount):
    """The writable places of locked take dev's writes, each a real write that the volume or
    the host keeps: dev's home, /tmp, the workspace, /patches and the memory dir."""
    token = os.urandom(4).hex()
    inside_memory, host_memory = memory_mount(locked)
    places = {"home": "~", "tmp": "/tmp", "workspace": locked.spec.workspace, "patches": "/patches",
              "memory": inside_memory}
    script = "".join(f'echo {token} > {where}/{label}-{token} && echo "{label} ok"\n'
                     for label, where in places.items())
    result = session(locked, script + "realpath ~")
    assert [line for line in result.stdout.splitlines() if line.endswith(" ok")] == \
        [f"{label} ok" for label in places], result
    # ~ is in the workspace volume, not the read-only root
    home = result.stdout.splitlines()[-1]
    assert home == f"{locked.spec.workspace}/{HOME_IN_VOLUME}", home
    # /patches and the memory dir are the host's
    assert Path(locked.opts.patches_out, f"patches-{token}").read_text() == f"{token}\n"
    assert Path(host_memory, f"memory-{token}").read_text() == f"{token}\n"


# The container's own IPC mounts: private to it, gone with it, and what programs expect
# (POSIX semaphores and shared memory live in /dev/shm).
PRIVATE_IPC = ("/dev/shm", "/dev/mqueue")


def writable_elsewhere(shell, *places: str) -> list[str]:
    """Every file and directory dev may write (access(2), which also says EROFS), found by a
    walk of everything dev can reach, minus the places given and what is not storage:
    /proc, /sys, devices and symlinks (whose targets the walk reaches on its own). /tmp is
    walked but not below: it must be found, or the walk proved nothing."""
    pruned = " -o ".join(f"-path {shlex.quote(p)}" for p in ("/proc", "/sys", "/tmp/*", *places))
    walk = f"find / \\( {pruned} \\) -prune -o -writable ! -type c ! -type l -print 2>/dev/null; true"
    found = sorted(session(shell, walk).stdout.split())
    assert "/tmp" in found, f"the walk did not find /tmp, which dev writes: {found}"
    return [path for path in found if path != "/tmp"]


@pytest.mark.attack("write", "dev writes anywhere outside the writable places")
def test_locked_dev_can_write_nothing_else(locked, memory_mount):
    inside_memory, _ = memory_mount(locked)
    places = (locked.spec.workspace, "/patches", inside_memory, *PRIVATE_IPC)
    assert writable_elsewhere(locked, *places) == []


@pytest.mark.control("write", "dev writes anywhere outside the writable places")
def test_control_standard_dev_can_write_its_home_on_the_root_filesystem(standard, memory_mount):
    inside_memory, _ = memory_mount(standard)
    places = (standard.spec.workspace, "/patches", inside_memory, *PRIVATE_IPC)
    found = writable_elsewhere(standard, *places)
    assert "/home/dev" in found, found


def test_locked_home_outlives_the_container_and_tmp_does_not(devshell_factory, runtime_for):
    first = open_entered(devshell_factory, profile="locked", runtime=runtime_for("locked"))
    token = os.urandom(4).hex()
    session(first, f"echo {token} > ~/kept && echo {token} > /tmp/gone")
    first.engine.remove_container(first.name)
    o = first.opts
    again = open_entered(devshell_factory, instance=o.instance, checkout=o.checkout,
                         patches_out=o.patches_out, host_cache=o.host_cache or False,
                         profile="locked", runtime=runtime_for("locked"))
    assert again.outcome.state == "fresh"  # a new container, on the same volume
    result = session(again, "cat ~/kept; test -e /tmp/gone && echo tmp-kept || echo tmp-gone")
    assert result.stdout.split() == [token, "tmp-gone"], result


# --- 4. the pids limit: a fork bomb, and more processes than the limit ---------------------


@pytest.mark.attack("limits", "fork bomb")
@pytest.mark.parametrize("profile", PROFILES)
def test_fork_bomb_stops_at_the_pids_limit(profile, devshell_factory, devshell_cell, runtime_for, bystander,
                                           bystander_intact):
    shell = limited(devshell_factory, devshell_cell, runtime_for, profile, pids_limit=PIDS_LIMIT)
    cgroup, oom_kills = Cgroup(shell), OomKills(shell)
    assert int(cgroup.read("pids", "pids.max")) == PIDS_LIMIT
    refused_before = cgroup.counter("pids", "pids.events", "max")
    with meanwhile(host_probe(bystander), every=0.5) as probes:
        result = bounded(shell, lambda: shell.run(f"#!/bin/bash\n{FORK_BOMB}"))
    # the host and the engine kept answering throughout (each probe within its bound)
    assert probes and all(host and engine for host, engine in probes), probes
    bystander_intact()
    if shell.gvisor:
        # gVisor's sentry meets the limit with its own threads: the sandbox dies as a whole (not
        # at the memory limit), and the session returned rather than waiting on it. Its cgroup
        # goes with it, so the kernel's count of refused forks cannot be read afterwards.
        info = settled(shell, SETTLE_BOUND)
        assert info is not None and not info["State"]["Running"], "the sandbox outlived the bomb"
        assert oom_kills.since(info) is not True, info["State"]
        return
    # runc: the kernel refused forks at the limit, the bomb ended, and the session outlived it
    assert cgroup.counter("pids", "pids.events", "max") > refused_before
    assert "bomb ended: 137" in result.stdout, result
    assert shell.engine.inspect(shell.name)["State"]["Running"]
    assert session(shell, "echo alive").stdout == "alive\n"


@pytest.mark.attack("limits", "more processes than the pids limit")
@pytest.mark.parametrize("profile", PROFILES)
def test_pids_limit_stops_more_processes(profile, devshell_factory, devshell_cell, runtime_for,
                                         bystander_intact):
    shell = limited(devshell_factory, devshell_cell, runtime_for, profile, pids_limit=PIDS_LIMIT)
    oom_kills = OomKills(shell)
    result = bounded(shell, lambda: shell.run(f"#!/bin/bash\n{COUNT_PROCESSES}"))
    bystander_intact()
    if shell.gvisor:
        info = settled(shell, SETTLE_BOUND)
        assert info is not None and not info["State"]["Running"], result
        assert oom_kills.since(info) is not True, info["State"]
        return
    assert result.exit_code == 0, result
    started = int(result.stdout)
    # blocked: fewer than asked for, and (with init and the session's own) within the limit
    assert 0 < started < min(MORE_PROCESSES, PIDS_LIMIT), started
    assert shell.engine.inspect(shell.name)["State"]["Running"]


@pytest.mark.control("limits", "more processes than the pids limit")
@pytest.mark.control("limits", "fork bomb")
def test_control_without_a_pids_limit_more_processes_start(standard):
    # The fork bomb's control is its premise: without a limit, processes beyond it start. (A
    # real bomb without a limit would take down the host this test runs on.)
    result = plain_docker(standard.spec.image, COUNT_PROCESSES)
    assert (result.returncode, result.stdout) == (0, f"{MORE_PROCESSES}\n"), result.stderr


# --- 5. the memory limit: a hog is killed, nothing else is -------------------------------


@pytest.mark.attack("limits", "memory hog")
@pytest.mark.parametrize("profile", PROFILES)
def test_memory_hog_is_killed_at_the_limit(profile, devshell_factory, devshell_cell, runtime_for,
                                           bystander_intact):
    shell = limited(devshell_factory, devshell_cell, runtime_for, profile, memory_limit=MEMORY_LIMIT)
    cgroup, oom_kills = Cgroup(shell), OomKills(shell)
    oom_file = "memory.oom_control" if "memory" in cgroup.v1 else "memory.events"
    kills_before = cgroup.counter("memory", oom_file, "oom_kill")
    result = bounded(shell, lambda: shell.run(f"#!/bin/bash\n{MEMORY_HOG}"))
    assert "allocated" not in result.stdout, result
    bystander_intact()
    if shell.gvisor:
        # gVisor: the sandbox is killed at the limit as a whole; the session returned.
        info = settled(shell, SETTLE_BOUND)
        assert info is not None and not info["State"]["Running"], "the sandbox outlived the hog"
        killed = oom_kills.since(info)
        assert killed is not None, "the engine saw no OOM kill, and only root can read the kernel's log"
        assert killed, info["State"]
        return
    # runc: the kernel killed the hog (the session's bash) at the cgroup's limit, nothing else
    assert result.exit_code == 137, result
    assert cgroup.counter("memory", oom_file, "oom_kill") > kills_before
    assert shell.engine.inspect(shell.name)["State"]["Running"]
    assert session(shell, "echo alive").stdout == "alive\n"


@pytest.mark.control("limits", "memory hog")
def test_control_without_a_memory_limit_the_hog_allocates(standard):
    result = plain_docker(standard.spec.image, MEMORY_HOG)
    assert (result.returncode, result.stdout) == (0, f"allocated {HOG_BYTES}\n"), result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_limits_reach_the_engine(profile, devshell_factory, devshell_cell, runtime_for, request):
    """Both profiles get the cell's limits (defaults unless it overrides them), swap no larger
    than memory; a cell's override replaces them."""
    shell = request.getfixturevalue(profile)
    host = shell.engine.inspect(shell.name)["HostConfig"]
    assert (host["PidsLimit"], host["Memory"], host["MemorySwap"]) == \
        (devshell_cell.pids_limit, devshell_cell.memory_limit, devshell_cell.memory_limit)
    assert devshell_cell.pids_limit > 0 and devshell_cell.memory_limit > 0
    small = devshell_factory.open(devshell_cell._replace(pids_limit=PIDS_LIMIT, memory_limit=MEMORY_LIMIT),
                                  profile=profile, runtime=runtime_for(profile))
    host = small.engine.inspect(small.name)["HostConfig"]
    assert (host["PidsLimit"], host["Memory"], host["MemorySwap"]) == (PIDS_LIMIT, MEMORY_LIMIT, MEMORY_LIMIT)


# --- 6. --list and the session line name the profile and runtime ---------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_session_line_states_profile_and_runtime(profile, request, devshell_cli, tmp_path):
    shell = request.getfixturevalue(profile)
    script = write_script(tmp_path / "s.sh", "true")
    result = devshell_cli(shell, "--script", script)
    [line] = [line for line in result.stderr.splitlines() if line.startswith(f"devshell: {shell.name} ")]
    assert f" · profile {profile} · runtime {shell.runtime} · " in line, line
    summary = json.loads(devshell_cli(shell, "--script", script, json=True).stderr.splitlines()[0])
    assert (summary["profile"], summary["runtime"]) == (profile, shell.runtime), summary


@pytest.mark.parametrize("profile", PROFILES)
def test_list_states_profile_and_runtime(profile, request, devshell_cli):
    # --list --json rows carry the container's devshell.profile and devshell.runtime labels
    shell = request.getfixturevalue(profile)
    dirs = [f"--cells-dir={d}" for d in shell.opts.cells_dirs]
    listed = devshell_cli(None, "--list", "--json", f"--instance={shell.opts.instance}", *dirs)
    assert listed.exit_code == 0, listed.stderr
    [row] = [r for r in json.loads(listed.stdout)["cells"] if r["cell"] == shell.spec.cell]
    assert (row["container"], row.get("profile"), row.get("runtime")) == \
        ("running", profile, shell.runtime), row
    text = devshell_cli(None, "--list", f"--instance={shell.opts.instance}", *dirs)
    header, *rows = text.stdout.splitlines()
    assert "profile" in header.split() and "runtime" in header.split(), header
    [mine] = [r for r in rows if r.split()[0] == shell.spec.cell]
    assert f"  {profile}  " in mine and shell.runtime in mine, mine


# --- 7. gVisor: no network ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gvisor(devshell_engine):
    """The name the engine registers gVisor under (its binary is runsc)."""
    name = registered_runtime(devshell_engine, "gvisor")
    if name is None:
        pytest.skip("the engine has no gVisor runtime registered (runsc); CI registers one")
    return name


@pytest.fixture(scope="module")
def runc_locked(devshell_factory, devshell_engine):
    """A locked devshell under runc, whatever the run's runtime: the network's control."""
    return devshell_factory.open(profile="locked", runtime=runc_runtime(devshell_engine))


@pytest.mark.attack("network", "connect to the host from a gVisor devshell")
def test_gvisor_devshell_has_no_network(gvisor, devshell_factory, bridge_listener, connect, runc_locked):
    shell = devshell_factory.open(profile="locked", runtime=gvisor)
    assert shell.gvisor and "no network" in shell.runtime and shell.network == "none", shell.runtime
    listener = bridge_listener(runc_locked)
    result = connect(shell, listener)
    assert result.exit_code != 0 and "got:" not in result.stdout, result
    assert listener.peers == []
    # and the kernel that answers inside is gVisor's, not the engine's (which runc shows)
    engine_kernel = runc_locked.exec(["cat", "/proc/version"]).stdout
    assert engine_kernel and shell.exec(["cat", "/proc/version"]).stdout != engine_kernel


def test_gvisor_refuses_the_standard_profile(gvisor, devshell_cli, devshell_cell, devshell_cells_path,
                                            devshell_instance, devshell_engine, tmp_path):
    # standard's promise is sudo, which cannot work in a gVisor sandbox (no-new-privileges on
    # every process): refused at launch, in one line, with nothing made.
    instance = devshell_instance()
    (tmp_path / "checkout").mkdir(mode=0o755)
    script = write_script(tmp_path / "s.sh", "true")
    result = devshell_cli(None, devshell_cell.name, f"--runtime={gvisor}", "--profile=standard",
                          f"--instance={instance}", f"--checkout={tmp_path / 'checkout'}",
                          f"--patches-out={tmp_path / 'patches'}", "--uid=1000", "--gid=1000",
                          *(f"--cells-dir={d}" for d in devshell_cells_path[:-1]), "--script", script)
    one_line_error(result, "--profile locked")
    name = f"devshell-{devshell_cell.name}-{instance}"
    assert container_state(devshell_engine, name) == (None, None, False)
    assert not (tmp_path / "patches").exists()


@pytest.mark.control("network", "connect to the host from a gVisor devshell")
def test_control_runc_devshell_reaches_the_host(runc_locked, bridge_listener, connect):
    listener = bridge_listener(runc_locked)
    result = connect(runc_locked, listener)
    assert result.stdout == "got: hello from the host\n", result
    assert len(listener.peers) == 1
