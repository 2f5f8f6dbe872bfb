"""The network mode: `--network none` (or a cell's `network: {mode: none}`) leaves a devshell
loopback only, for dev and for root inside alike; `open`, the default, is the engine's network.

The attack connects to a listener the test starts on this host, at the gateway of the engine's
bridge (never an address outside this machine), and reads the interfaces the kernel gives the
container; the control makes the same connection from an `open` devshell, where it arrives.
"""

from __future__ import annotations

import json

import pytest

CLASS = "network"
ATTEMPT = "connect to a listener on the host"


@pytest.fixture(scope="module")
def networked_runtime(devshell_engine, devshell_runtime):
    """The run's runtime, or runc where the run's has no network of its own (gVisor
    registered with --network=none: there every mode is none, test_profiles.py proves it)."""
    return None if devshell_engine.runtime(devshell_runtime or "").network else "runc"


@pytest.fixture(scope="module")
def open_shell(devshell_factory, networked_runtime):
    """A devshell on the engine's network: where the listener is reached, and on whose bridge
    it listens."""
    return devshell_factory.open(network="open", runtime=networked_runtime)


@pytest.fixture(scope="module")
def none_shell(devshell_factory, devshell_cell):
    """A devshell whose cell says network none (the flag's own path is in the CLI tests)."""
    return devshell_factory.open(devshell_cell._replace(network="none"))


def interfaces(shell) -> list[str]:
    return sorted(shell.exec(["ls", "/sys/class/net"]).stdout.split())


@pytest.mark.attack(CLASS, ATTEMPT)
@pytest.mark.parametrize("user", ["dev", "root"])
def test_network_none_reaches_nothing(none_shell, open_shell, bridge_listener, connect, user):
    # Root too (a raw exec, as a hostile init would be): nothing to route through, and no
    # CAP_NET_ADMIN to make an interface.
    listener = bridge_listener(open_shell)
    result = connect(none_shell, listener, user="0" if user == "root" else None)
    assert result.exit_code != 0 and "got:" not in result.stdout, result
    assert listener.peers == []
    assert set(interfaces(none_shell)) <= {"lo"}, interfaces(none_shell)  # gVisor lists none
    assert none_shell.engine.inspect(none_shell.name)["HostConfig"]["NetworkMode"] == "none"


@pytest.mark.control(CLASS, ATTEMPT)
def test_control_network_open_reaches_the_host(open_shell, bridge_listener, connect):
    listener = bridge_listener(open_shell)
    result = connect(open_shell, listener)
    assert result.stdout == "got: hello from the host\n", result
    assert len(listener.peers) == 1
    assert "lo" in interfaces(open_shell) and len(interfaces(open_shell)) > 1


# A listener on loopback (perl-base has IO::Socket; it gives up after 60 s, so that a broken
# connect cannot hang the session), and bash connecting to it once it is up.
LOOPBACK = r"""#!/bin/bash
perl -MIO::Socket::INET -e '
    alarm 60;
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:7777", Listen => 1, ReuseAddr => 1) or die "$!\n";
    my $c = $s->accept; print $c "hello over lo\n";' &
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/7777 && read -r line <&3 && echo "got: $line") 2>/dev/null && break
    sleep 0.1
done
wait
getent hosts localhost >/dev/null && echo resolved
"""


def test_loopback_still_works_under_network_none(none_shell):
    # Builds and test servers talk to themselves over lo: none is not "no sockets", and
    # localhost resolves (from /etc/hosts).
    out = none_shell.run(LOOPBACK).stdout
    assert out == "got: hello over lo\nresolved\n", out


def test_own_hostname_resolves_under_network_none(none_shell):
    # The engine writes no address for it without a network; sudo and others look it up.
    out = none_shell.run("getent hosts \"$(hostname)\"").stdout.split()
    assert out == ["127.0.1.1", none_shell.name], out


@pytest.mark.parametrize("mode", ["none", "open"])
def test_the_session_line_and_list_state_the_network(mode, devshell_factory, devshell_cli, networked_runtime,
                                                     tmp_path):
    shell = devshell_factory.open(network=mode, runtime=networked_runtime)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    done = devshell_cli(shell, "--script", str(script))
    assert done.exit_code == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith(f"devshell: {shell.name} ")]
    assert f" · network {mode} · " in line, line
    summary = json.loads(devshell_cli(shell, "--script", str(script), json=True).stderr.splitlines()[0])
    assert summary["network"] == mode
    dirs = [f"--cells-dir={d}" for d in shell.opts.cells_dirs]
    listed = devshell_cli(None, "--list", "--json", f"--instance={shell.opts.instance}", *dirs)
    [row] = [r for r in json.loads(listed.stdout)["cells"] if r["cell"] == shell.spec.cell]
    assert row["network"] == mode, row


def test_changing_the_network_recreates_the_container(devshell_factory):
    first = devshell_factory.open(network="open")
    o = first.opts
    again = devshell_factory.open(instance=o.instance, checkout=o.checkout, patches_out=o.patches_out,
                                  host_cache=o.host_cache or False, network="none")
    assert (again.outcome.state, again.network) == ("recreated", "none"), again.outcome
    assert "network" in again.outcome.why
