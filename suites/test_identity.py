"""The shell is dev, a non-root user with the host's (or the requested) uid/gid."""

import pytest

from devshell.options import HostFacts, parse


def test_dev_has_the_requested_uid_and_gid(devshell):
    result = devshell.run("id -u; id -g; id -un; id -gn")
    assert result.stdout.split() == [str(devshell.opts.uid), str(devshell.opts.gid), "dev", "dev"]


def test_shell_starts_in_the_workspace_with_dev_home(devshell):
    result = devshell.run('pwd; echo "$HOME"')
    assert result.stdout.split() == [devshell.spec.workspace, "/home/dev"]


def test_existing_user_at_the_uid_is_renamed_to_dev(devshell_factory):
    shell = devshell_factory.open("runner-1001", uid=1001, gid=1001)
    result = shell.run("getent passwd 1001 | cut -d: -f1,6; getent group 1001 | cut -d: -f1;"
                       " getent passwd runner || echo no-runner; awk -F: '$3==1001' /etc/passwd | wc -l")
    assert result.stdout.split() == ["dev:/home/dev", "dev", "no-runner", "1"]


def test_host_uid_0_does_not_make_dev_root(devshell_factory, tmp_path):
    opts = parse(["--checkout", str(tmp_path)],
                 HostFacts(cwd=str(tmp_path), home="/root", uid=0, gid=0))
    assert opts.uid != 0 and opts.gid != 0
    shell = devshell_factory.open(uid=opts.uid, gid=opts.gid)
    assert shell.run("id -u; id -g").stdout.split() == [str(opts.uid), str(opts.gid)]


@pytest.mark.standard_profile  # locked: no sudo rule (test_profiles.py)
def test_dev_has_passwordless_sudo(devshell):
    assert devshell.run("sudo -n id -u").stdout.strip() == "0"


@pytest.mark.standard_profile  # locked refuses --as-root
def test_as_root_is_the_only_way_to_a_root_shell(devshell, devshell_cli, tmp_path):
    script = tmp_path / "whoami.sh"
    script.write_text("#!/bin/sh\nid -un\n")
    as_dev = devshell_cli(devshell, "--script", str(script))
    as_root = devshell_cli(devshell, "--script", str(script), as_root=True)
    assert (as_dev.stdout, as_root.stdout) == ("dev\n", "root\n")
