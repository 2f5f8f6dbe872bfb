"""Class 5: the agent cannot replace what is bound, and a bind swapped on the host is caught.

Inside, every bound directory is a mount point: renaming, removing, replacing or unmounting one
fails, even for root (no CAP_SYS_ADMIN, and mount/umount are outside devshell's seccomp
allowlist). The control does the same on a plain directory, or (umount, remount) in a plain
container given CAP_SYS_ADMIN and no seccomp profile, where it works.

On the host, whoever can write the drop dir's parent can swap the directory between launches;
the engine binds by path at every `docker start`. The spec records each bound directory's
identity, and init refuses a session whose mounts are not those directories.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from devshell.plugin import DEV_GID, DEV_UID

CLASS = "5 races and binds"

# name -> (command as root inside, control: "dir" (the same on plain directories, in a plain
# container) or the `docker run` flags of a plain container where the mount exists and may be
# unmounted). {memory} is this checkout's memory mount, /cache/ai/memory/<repo>/<key>.
ATTEMPTS = {
    "mv /cache/ai/memory /cache/ai/m2": ("mv /cache/ai/memory /cache/ai/m2", "dir"),
    "rm -rf /cache/ai/memory; ln -s / /cache/ai/memory":
        ("rm -rf /cache/ai/memory; ln -s / /cache/ai/memory", "dir"),
    "mv <memory> <memory>.2": ("mv {memory} {memory}.2", "dir"),
    "rm -rf <memory>; ln -s / <memory>": ("rm -rf {memory}; ln -s / {memory}", "dir"),
    "mv /cache/ai /cache/ai2": ("mv /cache/ai /cache/ai2", "dir"),
    "mv /patches /patches2": ("mv /patches /patches2", "dir"),
    "umount <memory>": ("umount {memory}", ("--tmpfs", "{memory}")),
    "umount /cache/ai": ("umount /cache/ai", ("--tmpfs", "/cache/ai")),
    "umount -l /checkout": ("umount -l /checkout", ("--tmpfs", "/checkout")),
    "mount -o remount,rw /checkout": ("mount -o remount,rw /checkout", ("--tmpfs", "/checkout:ro")),
}


def identities(shell) -> dict[str, tuple[int, int] | None]:
    """Each bound host directory's device and inode, None where it is no longer a directory
    at its path (moved away, replaced by a symlink)."""
    out: dict[str, tuple[int, int] | None] = {}
    for m in shell.spec.mounts:
        if m.kind == "bind":
            st = os.lstat(m.source) if os.path.lexists(m.source) else None
            out[m.source] = (st.st_dev, st.st_ino) if st and stat.S_ISDIR(st.st_mode) else None
    return out


@pytest.fixture(scope="module")
def shells(devshell_factory, host_cache_dir, make_repo, tmp_path_factory):
    """shells(mode): a devshell with --ai-config-ro (the default) or --ai-config-rw, over a host
    cache whose ai/ the user gave to dev's uid (as --ai-config-rw needs), whose bound host
    directories are still the ones it was made with: one an attempt got through to is replaced,
    so that one attempt's success does not fail the next ones."""
    made: dict[str, tuple] = {}

    def get(mode: str):
        if mode in made and identities(made[mode][0]) == made[mode][1]:
            return made[mode][0]
        cache = host_cache_dir(f"cache-{mode}")
        (cache / "ai" / "skills").mkdir(parents=True)
        (cache / "ai" / "settings.json").write_text('{"model": "x"}\n')
        for p in (cache / "ai", cache / "ai" / "skills", cache / "ai" / "settings.json"):
            os.chown(p, DEV_UID, DEV_GID)
        checkout = make_repo(tmp_path_factory.mktemp(f"binds-{mode}") / "checkout")
        shell = devshell_factory.open(checkout=checkout, host_cache=cache, ai_config_rw=mode == "rw")
        made[mode] = shell, identities(shell)
        return shell

    return get


@pytest.mark.attack(CLASS, "replace a bound directory from inside, as root")
@pytest.mark.standard_profile  # root through sudo
@pytest.mark.parametrize("mode", ["ro", "rw"])
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_a_bound_directory_cannot_be_moved_replaced_or_unmounted(shells, attempt, mode, host_tree, agent,
                                                                 memory_mount):
    shell = shells(mode)
    memory, _ = memory_mount(shell)
    ids = identities(shell)
    config = host_tree(os.path.join(shell.opts.host_cache, "ai", "settings.json"))
    command = ATTEMPTS[attempt][0].format(memory=memory)
    result = agent(shell, f"sudo -n sh -c '{command}'")
    assert result.exit_code != 0, f"{command} (--ai-config-{mode}) succeeded"
    assert identities(shell) == ids  # every host directory is still the one that was bound
    assert host_tree(os.path.join(shell.opts.host_cache, "ai", "settings.json")) == config
    mounts = shell.run("cat /proc/self/mountinfo").stdout
    for target in (m.target for m in shell.spec.mounts):
        assert f" {target} " in mounts, f"{target} is no longer mounted"


@pytest.mark.control(CLASS, "replace a bound directory from inside, as root")
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_the_same_works_on_a_plain_directory_or_an_unguarded_mount(shells, attempt, plain_docker,
                                                                   memory_mount):
    shell = shells("rw")
    memory, _ = memory_mount(shell)
    command, control = ATTEMPTS[attempt]
    command = command.format(memory=memory)
    if control == "dir":
        # The same directories, plain ones, in a container of the same image.
        setup = f"mkdir -p {memory} /patches /checkout"
        done = plain_docker(shell, f"{setup} && {command}")
    else:
        # The guards absent: CAP_SYS_ADMIN and no seccomp profile, in a throwaway container
        # with no network, whose mount is a tmpfs (no host path is involved).
        done = plain_docker(shell, command, "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
                            *(flag.format(memory=memory) for flag in control))
    assert done.returncode == 0, done.stderr


# --- the bind-identity guard ------------------------------------------------------------------

def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=120)


@pytest.fixture(scope="module")
def swapped(devshell_factory, tmp_path_factory, host_tree):
    """For each way of swapping: a devshell that was entered and stopped, whose drop dir was
    then replaced on the host, and started again by the engine (which binds by path)."""
    cache = {}

    def get(kind):
        if kind in cache:
            return cache[kind]
        shell = devshell_factory.open(host_cache=False)
        assert shell.run("true").exit_code == 0
        docker("stop", "-t", "1", shell.name)
        drop = shell.opts.patches_out
        os.rename(drop, drop + ".old")
        # As an attacker with the host path would: another directory at the same path.
        if kind == "new directory":
            other = drop
            os.mkdir(other, 0o755)
        else:
            other = str(tmp_path_factory.mktemp("victim"))
            os.chmod(other, 0o700)
            os.symlink(other, drop)
        with open(os.path.join(other, "planted-by-attacker"), "w") as f:
            f.write("not the drop dir\n")
        before = host_tree(other)
        docker("start", shell.name)
        cache[kind] = shell, other, before
        return cache[kind]

    return get


KINDS = ["new directory", "symlink to another directory"]


@pytest.mark.attack(CLASS, "swap the drop dir on the host while the container is stopped")
@pytest.mark.parametrize("kind", KINDS)
def test_a_swapped_bind_fails_the_session_and_is_not_touched(swapped, kind, host_tree):
    shell, other, before = swapped(kind)
    if shell.gvisor:
        # gVisor serves binds over 9p with inode numbers of its own, so the identity init
        # compares cannot be read inside (a known limit, docs/trust-model.md). The session
        # may still fail here for another reason (a root-owned drop dir), which proves nothing.
        pytest.skip("gVisor: a bind's identity cannot be checked inside (binds are 9p)")
    result = shell.run("echo entered")
    assert result.exit_code != 0
    assert "entered" not in result.stdout
    assert "bind-identity" in result.stderr, result.stderr
    assert host_tree(other) == before  # nothing chowned, chmodded or written


@pytest.mark.control(CLASS, "swap the drop dir on the host while the container is stopped")
@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_does_mount_the_swapped_directory(swapped, kind):
    """Without init (a bare docker exec), the new directory IS what /patches shows: only the
    guard stopped the session."""
    shell, other, _ = swapped(kind)
    inside = docker("exec", shell.name, "cat", "/patches/planted-by-attacker").stdout
    assert inside == "not the drop dir\n"
    if shell.gvisor:
        return  # 9p has inode numbers of its own (and gVisor's statx refuses coreutils' stat)
    st = os.stat(other)
    assert docker("exec", shell.name, "stat", "-c", "%d:%i", "/patches").stdout.strip() == \
        f"{st.st_dev}:{st.st_ino}"


# --- mount points moved from inside ---------------------------------------------------------

MOVE_CACHE = "sudo -n sh -c 'mkdir -p /patches/sub && mv /cache /cache.real && ln -s /patches/sub /cache'"


@pytest.fixture
def moved(devshell_factory, devshell_cli, tmp_path):
    """A devshell in which root moved /cache (a plain directory holding the ai/ mounts) aside
    for a symlink into the drop dir, then stopped: at the next start the engine, which binds
    by path, mounts ai/ and memory below the symlink's target instead."""
    shell = devshell_factory.open()
    assert shell.run(MOVE_CACHE).exit_code == 0
    docker("stop", "-t", "1", shell.name)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho entered\n")
    return shell, script


@pytest.mark.attack(CLASS, "move /cache aside so the next start mounts the AI state elsewhere")
@pytest.mark.standard_profile  # root through sudo, in the root filesystem (read-only under locked)
def test_a_moved_mount_point_is_refused_at_the_next_launch(moved, devshell_cli):
    shell, script = moved
    done = devshell_cli(shell, "--script", str(script))
    assert done.exit_code == 2, done.stdout + done.stderr
    assert "entered" not in done.stdout
    assert "is not mounted where the spec put it" in done.stderr, done.stderr
    assert shell.engine.inspect(shell.name) is None  # removed: a new one is made next time


@pytest.mark.control(CLASS, "move /cache aside so the next start mounts the AI state elsewhere")
@pytest.mark.standard_profile  # the same move, made by the same fixture
def test_the_engine_does_mount_the_ai_state_below_the_symlink(moved):
    """Without the launcher's check (a bare docker start), the ai/ mounts land below the
    symlink's target, in the drop dir: only the check refused the launch."""
    shell, _ = moved
    docker("start", shell.name)
    mounts = docker("exec", shell.name, "cat", "/proc/self/mountinfo").stdout
    points = {line.split(" ")[4] for line in mounts.splitlines()}
    assert "/patches/sub/ai" in points and "/cache/ai" not in points
