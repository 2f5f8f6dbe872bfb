"""Storage is inverted: the cell's volume holds the work, /patches is the only rendezvous,
/cache is opt-in, and nothing else of the host enters the container."""

import os

from devshell.seccomp import CAP_DROP
from devshell.spec import CACHE, CHECKOUT, PATCHES, memory_dir


def mounts_of(shell):
    info = shell.engine.inspect(shell.name)
    return {(m["Type"], m.get("Name") or m["Source"], m["Destination"], m["RW"])
            for m in info["Mounts"]}


def test_mounts_are_exactly_the_volume_patches_checkout_and_ai_state(devshell):
    opts, spec = devshell.opts, devshell.spec
    memory = memory_dir(opts.checkout)
    assert mounts_of(devshell) == {
        ("volume", spec.volume, spec.workspace, True),
        ("bind", opts.patches_out, PATCHES, True),
        ("bind", opts.checkout, CHECKOUT, False),  # the user's checkout, read-only
        # --ai-config-ro (the default): the agent's configuration read-only, this checkout's
        # memory writable; the host cache itself is not bound
        ("bind", f"{opts.host_cache}/ai", f"{CACHE}/ai", False),
        ("bind", f"{opts.host_cache}/ai/memory", f"{CACHE}/ai/memory", False),
        ("bind", f"{opts.host_cache}/ai/{memory}", f"{CACHE}/ai/{memory}", True),
    }


def test_every_bind_is_non_recursive(devshell):
    """A mount below a host directory never shows inside (nor stays writable under a
    read-only bind): the engine makes only the top of a recursive bind read-only."""
    mounts = devshell.engine.inspect(devshell.name)["HostConfig"]["Mounts"]
    binds = [m for m in mounts if m["Type"] == "bind"]
    assert binds and all(m.get("BindOptions", {}).get("NonRecursive") for m in binds)


def test_without_host_cache_nothing_is_bound_at_cache(devshell_factory):
    shell = devshell_factory.open(host_cache=False)
    assert {m[2] for m in mounts_of(shell)} == {shell.spec.workspace, PATCHES, CHECKOUT}
    assert shell.run("test ! -e /cache").exit_code == 0


def test_container_gets_no_privilege_devices_or_host_namespaces(devshell):
    host = devshell.engine.inspect(devshell.name)["HostConfig"]
    assert not host["Privileged"]
    assert not host.get("CapAdd")
    assert set(CAP_DROP) <= set(host["CapDrop"])
    assert any(opt.startswith("seccomp=") and len(opt) > 100 for opt in host["SecurityOpt"])
    assert not host.get("Devices")
    assert host["NetworkMode"] != "host" and host["PidMode"] != "host"


def test_platform_is_pinned_to_the_cells_arch(devshell):
    image = devshell.engine.client.images.get(devshell.spec.image)
    assert f"linux/{image.attrs['Architecture']}" == devshell.spec.platform


def test_file_written_in_patches_is_owned_by_dev_ids_on_the_host(devshell):
    result = devshell.run("echo patch > /patches/0001-x.patch")
    assert result.exit_code == 0, result.stderr
    st = os.stat(os.path.join(devshell.opts.patches_out, "0001-x.patch"))
    assert (st.st_uid, st.st_gid) == (devshell.opts.uid, devshell.opts.gid)


def test_workspace_and_its_dirs_belong_to_dev(devshell):
    cell_dirs = " ".join(dict(devshell.spec.env)[k] for k in ("DEVSHELL_SRC", "DEVSHELL_BUILD"))
    result = devshell.run(f'touch "$DEVSHELL_WORKSPACE/x" && for d in {cell_dirs}; do touch "$d/x"; done')
    assert result.exit_code == 0, result.stderr


def test_rm_removes_the_container_and_keeps_the_volumes_data(devshell_factory, devshell_cli):
    shell = devshell_factory.open()
    assert shell.run('echo kept > "$DEVSHELL_SRC/file"').exit_code == 0
    removed = devshell_cli(shell, "--rm")
    assert removed.exit_code == 0, removed.stderr
    assert shell.engine.inspect(shell.name) is None
    again = devshell_factory.open(checkout=shell.opts.checkout, patches_out=shell.opts.patches_out,
                                  host_cache=False,
                                  instance=shell.opts.instance)
    assert again.outcome.state == "fresh"
    assert again.run('cat "$DEVSHELL_SRC/file"').stdout == "kept\n"


def test_environment_contract_is_complete(devshell):
    result = devshell.run("env")
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    opts = devshell.opts
    assert env["HOME"] == env["DEVSHELL_DEV_HOME"] == "/home/dev"
    assert (env["DEVSHELL_DEV_UID"], env["DEVSHELL_DEV_GID"]) == (str(opts.uid), str(opts.gid))
    assert env["DEVSHELL_PATCHES_MOUNT"] == PATCHES
    assert env["DEVSHELL_CACHE_MOUNT"] == CACHE
    assert env["DEVSHELL_CELL"] == devshell.spec.cell
    assert env["DEVSHELL_SRC"].startswith(devshell.spec.workspace + "/")
    assert env["DEVSHELL_BUILD"].startswith(devshell.spec.workspace + "/")
    assert env["DEVSHELL_CHECKOUT_MOUNT"] == CHECKOUT
    assert env["DEVSHELL_AI_REPO"] == os.path.basename(opts.checkout)
    assert env["DEVSHELL_AI_REPO_ENCODED"] == opts.checkout.replace("/", "-")


def test_a_symlink_in_the_host_cache_ai_dirs_is_refused(devshell_cli, devshell_instance, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ai").symlink_to(tmp_path)
    (tmp_path / "project").mkdir()
    result = devshell_cli(None, "--checkout", str(tmp_path / "project"), "--host-cache-dir",
                          str(cache), "--instance", devshell_instance())
    assert result.exit_code == 2, result.stderr
    assert "symlink is never followed" in result.stderr and "Traceback" not in result.stderr


def test_a_symlinked_home_still_gets_its_default_drop_dir(devshell_cli, devshell_instance, tmp_path):
    """Homes and state dirs are often symlinks (/home -> var/home): the drop dir's parents are
    resolved like every other path; only what devshell walks below them must be plain."""
    (tmp_path / "real-home").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real-home")
    (tmp_path / "checkout").mkdir()
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ntouch /patches/made\n")
    result = devshell_cli(None, "--checkout", str(tmp_path / "checkout"), "--instance", devshell_instance(),
                          "--script", str(script), env={"HOME": str(tmp_path / "home"),
                                                        "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.stderr
    drops = tmp_path / "real-home" / ".local" / "state" / "devshell" / "patches"
    assert [p.name for p in drops.glob("*/made")] == ["made"]
