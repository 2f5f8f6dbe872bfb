"""Entering: init and verify at every entry, scripts' exit codes, reuse and recreation."""

import os

import pytest

from devshell.options import to_argv
from devshell.spec import INIT_PATH


def test_verify_passes_after_entry(devshell):
    result = devshell.verify()
    assert (result.exit_code, result.stdout) == (0, "")


def test_init_is_idempotent(devshell_factory):
    # A devshell of its own: under xdist the fixture's is shared, and another worker's session
    # there would change what this compares.
    devshell = devshell_factory.open()
    assert devshell.run("true").exit_code == 0
    before = devshell.exec(["sh", "-c", "cat /etc/passwd /etc/group; ls -la /home/dev"]).stdout
    for _ in range(2):
        assert devshell.exec([INIT_PATH]).exit_code == 0
    assert devshell.exec(["sh", "-c", "cat /etc/passwd /etc/group; ls -la /home/dev"]).stdout == before
    assert devshell.verify().exit_code == 0


def test_script_exit_code_zero_is_returned(devshell, devshell_cli, tmp_path):
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\nid\n")
    result = devshell_cli(devshell, "--script", str(script))
    assert result.exit_code == 0, result.stderr
    assert f"uid={devshell.opts.uid}(dev) gid={devshell.opts.gid}(dev)" in result.stdout


def test_script_nonzero_exit_code_is_returned(devshell, devshell_cli, tmp_path):
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\nexit 7\n")
    assert devshell_cli(devshell, "--script", str(script)).exit_code == 7


def test_reentry_reuses_the_container(devshell, devshell_factory):
    first = devshell.engine.inspect(devshell.name)["Id"]
    again = devshell_factory.open(checkout=devshell.opts.checkout, patches_out=devshell.opts.patches_out,
                                  host_cache=devshell.opts.host_cache, instance=devshell.opts.instance)
    assert again.outcome.state == "reused"
    assert devshell.engine.inspect(devshell.name)["Id"] == first


def test_different_patches_dir_recreates_the_container(devshell_factory, tmp_path):
    shell = devshell_factory.open()
    again = devshell_factory.open(checkout=shell.opts.checkout, patches_out=tmp_path / "other",
                                  host_cache=shell.opts.host_cache, instance=shell.opts.instance)
    assert again.outcome.state == "recreated"
    assert "/patches" in again.outcome.why
    assert again.run("true").exit_code == 0


def test_a_patches_dir_replaced_on_the_host_recreates_the_container(devshell_factory):
    """The spec holds each bound directory's identity: the same path with another directory
    behind it is not the container's any more."""
    shell = devshell_factory.open()
    os.rename(shell.opts.patches_out, shell.opts.patches_out + ".old")
    again = devshell_factory.open(checkout=shell.opts.checkout, patches_out=shell.opts.patches_out,
                                  host_cache=shell.opts.host_cache, instance=shell.opts.instance)
    assert again.outcome.state == "recreated"
    assert "DEVSHELL_BIND_IDS" in again.outcome.why
    assert again.run("touch /patches/new").exit_code == 0
    assert os.path.exists(os.path.join(shell.opts.patches_out, "new"))


def test_stopped_container_is_started_and_reused(devshell_factory):
    shell = devshell_factory.open()
    shell.engine.client.api.stop(shell.name, timeout=5)
    again = devshell_factory.open(checkout=shell.opts.checkout, patches_out=shell.opts.patches_out,
                                  host_cache=shell.opts.host_cache,
                                  instance=shell.opts.instance)
    assert (again.outcome.state, again.outcome.why) == ("reused", "started")
    assert again.run("true").exit_code == 0


# A package gone from the image: only where the root filesystem is writable (and where sudo,
# the package, is verified at all).
@pytest.mark.standard_profile
def test_state_init_cannot_repair_fails_the_session_loudly(devshell_factory, devshell_cli, tmp_path):
    shell = devshell_factory.open()
    assert shell.exec(["rm", "/usr/bin/sudo"]).exit_code == 0  # init installs no packages
    script = tmp_path / "never.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    result = devshell_cli(shell, "--script", str(script))
    assert result.exit_code == 3
    assert "sudoers" in result.stderr and "Traceback" not in result.stderr
    assert "ran" not in result.stdout
    assert shell.engine.inspect(shell.name)["State"]["Running"], "left for inspection"


def test_json_summary_is_the_one_thing_on_stderr_and_stdout_stays_the_scripts(
        devshell, devshell_cli, tmp_path):
    import json

    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho from-the-script\n")
    # On a root host, without --uid/--gid, the launch has a note to make (uid 0 -> 1000, the
    # fixture's ids too, so this is the same devshell).
    argv = to_argv(devshell.opts)
    if os.getuid() == 0:
        argv = [a for a in argv if not a.startswith(("--uid=", "--gid="))]
    done = devshell_cli(None, *argv, "--script", str(script), "--json")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "from-the-script\n"
    (line,) = done.stderr.splitlines()
    summary = json.loads(line)
    assert summary["container"] == devshell.name
    if os.getuid() == 0:
        assert any("host runs as root" in note for note in summary["notes"])
