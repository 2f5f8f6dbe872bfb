"""The egress policy: under `--network allow` a devshell reaches the names its cell allows,
through its own proxy, and nothing else; it fails closed, and every request is logged on the host.

The policy here allows one name: the Debian mirror the cell's image names in its apt sources.
Besides that mirror and the Python package index (the one name denied), the tests reach only
listeners they start themselves on this host. Each attack has a control where its guard is
absent: an `open` devshell, a plain `--internal` network, an exec with the capability.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import pytest
import yaml

from devshell import cells, egress
from devshell.errors import DevshellError
from devshell.options import HostFacts

CLASS = "egress"
DENIED = "pypi.org"  # the Python package index: the name the policy leaves out


@pytest.fixture(scope="module")
def networked_runtime(devshell_engine, devshell_runtime):
    # gVisor registered without a network has no allow mode (the launch refuses it).
    return None if devshell_engine.runtime(devshell_runtime or "").network else "runc"


@pytest.fixture(scope="module")
def open_shell(devshell_factory, networked_runtime):
    return devshell_factory.open(network="open", runtime=networked_runtime)


@pytest.fixture(scope="module")
def mirror(open_shell):
    """The host the image's apt sources name (deb.debian.org for the shipped cells)."""
    sources = "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null"
    out = open_shell.exec(["sh", "-c", sources]).stdout
    hosts = re.findall(r"^(?:deb|URIs:)\s+(?:\[[^]]*\]\s+)?https?://([^/\s]+)", out, re.M)
    assert hosts, out
    return hosts[0]


@pytest.fixture(scope="module")
def egress_cell(devshell_cell, mirror, tmp_path_factory):
    """The --cell cell as a file of its own (the CLI re-enters by name) whose policy allows the
    mirror alone."""
    if not os.path.isfile(devshell_cell.source):
        pytest.skip(f"cell {devshell_cell.name} has no file to derive the egress cell from")
    name = f"{devshell_cell.name}-egress"
    with open(devshell_cell.source) as f:
        data = yaml.safe_load(f)
    data.pop("name", None)
    data["network"] = {"mode": "allow", "allow": [mirror]}
    if "workspace" in data:
        data["workspace"] = data["workspace"].rstrip("/") + "-egress"
    found = tmp_path_factory.mktemp("egress-cells")
    (found / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return cells.load(str(found / f"{name}.yaml"))


@pytest.fixture(scope="module")
def allow_shell(devshell_factory, egress_cell, networked_runtime):
    return devshell_factory.open(egress_cell, runtime=networked_runtime)


def cli(devshell_cli, shell, *args, **options):
    cells_dir = os.path.dirname(shell.cell.source)
    return devshell_cli(shell, *args, cells_dirs=(cells_dir, *shell.opts.cells_dirs), **options)


def net_log(devshell_cli, shell) -> list[dict]:
    done = devshell_cli(None, "net", "log", shell.spec.cell, f"--instance={shell.opts.instance}", "--json")
    assert done.exit_code == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def as_user(shell, script: str, user: str = "dev"):
    """A raw exec, as the container's dev or root: the claim is the container's, whatever runs."""
    uid = "0" if user == "root" else str(shell.opts.uid)
    return shell.exec(["timeout", "-s", "KILL", "60", "bash", "-c", script], user=uid)


def via_proxy(request_line: str) -> str:
    """bash speaking HTTP to the proxy itself: the first line of its answer, and the policy
    page's words if it sent them."""
    return (f"exec 3<>/dev/tcp/{egress.PROXY_ALIAS}/{egress.PROXY_PORT} && "
            f"printf '{request_line}\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && "
            "timeout 10 cat <&3 | tr -d '\\r' | grep -E '^HTTP/|egress policy' | sed 's/<[^>]*>//g'")


def resolve(shell, name: str) -> str:
    """An address of name, as the open devshell's resolver gives it."""
    out = shell.exec(["getent", "ahostsv4", name]).stdout.split()
    assert out, f"{name} does not resolve even in an open devshell"
    return out[0]


# --- what the policy allows, through the proxy ----------------------------------------------


@pytest.mark.standard_profile
def test_apt_installs_a_package_through_the_proxy(allow_shell, mirror, devshell_cli):
    result = allow_shell.run("sudo apt-get update -q && "
                             "sudo apt-get install -y -q --no-install-recommends iproute2 && ip -V")
    assert result.exit_code == 0 and "iproute2" in result.stdout, result
    allowed = [e for e in net_log(devshell_cli, allow_shell) if e["verdict"] == "allowed"]
    assert {e["host"] for e in allowed} == {mirror}, allowed
    assert all(e["devshell"] == allow_shell.name and e["time"].endswith("Z") for e in allowed)


def test_the_proxy_answers_the_policy_page_and_names_the_fix(allow_shell):
    out = as_user(allow_shell, via_proxy(f"GET http://{DENIED}/simple/ HTTP/1.1")).stdout
    assert out.startswith("HTTP/1.1 403"), out
    assert f"the egress policy of cell {allow_shell.spec.cell} does not allow {DENIED}" in out, out
    assert f"network.allow in {allow_shell.cell.source}" in out, out
    assert f"devshell net learn {allow_shell.spec.cell}" in out, out


def test_the_proxy_tells_nothing_about_itself(allow_shell, mirror):
    # squid's cache manager answers on any allowed name: who its clients are, what it resolved.
    out = as_user(allow_shell, via_proxy(f"GET cache_object://{mirror}/client_list HTTP/1.1")).stdout
    assert out.startswith("HTTP/1.1 403"), out


@pytest.mark.attack(CLASS, "reach a name outside the policy (the Python package index)")
def test_the_package_index_is_denied_and_logged(allow_shell, devshell_cli):
    out = as_user(allow_shell, via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1")).stdout
    assert out.startswith("HTTP/1.1 403"), out
    denied = [e for e in net_log(devshell_cli, allow_shell) if e["host"] == DENIED]
    assert denied and denied[-1]["verdict"] == "denied" and denied[-1]["method"] == "CONNECT", denied
    assert denied[-1]["port"] == 443 and denied[-1]["status"] == 403


@pytest.mark.control(CLASS, "reach a name outside the policy (the Python package index)")
def test_control_an_open_devshell_reaches_the_package_index(open_shell):
    result = as_user(open_shell, f"exec 3<>/dev/tcp/{DENIED}/443 && echo connected")
    assert result.stdout == "connected\n", result


# --- what does not get out: direct connections, DNS, the network's configuration ------------


def gateways(shell) -> list[str]:
    networks = shell.engine.inspect(shell.name)["NetworkSettings"]["Networks"]
    return [n["Gateway"] for n in networks.values() if n.get("Gateway")]


@pytest.mark.attack(CLASS, "connect directly to a listener on the host")
@pytest.mark.parametrize("user", ["dev", "root"])
def test_direct_tcp_to_the_host_fails(allow_shell, open_shell, host_listener, user):
    # The egress network's own gateway (no address on the host), and the default bridge's
    # (the host, as an open devshell reaches it).
    targets = [*gateways(allow_shell), *gateways(open_shell)]
    assert targets
    for address in targets:
        result = as_user(allow_shell, f"exec 3<>/dev/tcp/{address}/{host_listener.port} && read -r l <&3 && "
                                      "echo \"got: $l\"", user)
        assert result.exit_code != 0 and "got:" not in result.stdout, (address, result)
    assert host_listener.peers == []


@pytest.mark.control(CLASS, "connect directly to a listener on the host")
def test_control_a_plain_internal_network_reaches_the_host(allow_shell, host_listener, devshell_engine,
                                                           devshell_run_labels):
    # Docker's `internal` alone: the host's side of the bridge keeps an address, and every
    # service the host listens on is reached through it. devshell's egress network has none.
    client = devshell_engine.client
    net = client.networks.create(f"{allow_shell.name}-plain", driver="bridge", internal=True,
                                 labels=devshell_run_labels)
    try:
        gateway = client.networks.get(net.id).attrs["IPAM"]["Config"][0]["Gateway"]
        out = client.containers.run(allow_shell.spec.image, ["bash", "-c",
                                    f"exec 3<>/dev/tcp/{gateway}/{host_listener.port} && read -r l <&3 && "
                                    "echo \"got: $l\""], network=net.name, remove=True,
                                    labels=devshell_run_labels)
    finally:
        net.remove()
    assert out == b"got: hello from the host\n"
    assert len(host_listener.peers) == 1


@pytest.mark.attack(CLASS, "connect directly to an allowed name, without the proxy")
@pytest.mark.parametrize("user", ["dev", "root"])
def test_emptying_the_proxy_variables_gets_nowhere(allow_shell, open_shell, mirror, user):
    address = resolve(open_shell, mirror)
    script = (f"export http_proxy= https_proxy= HTTP_PROXY= HTTPS_PROXY=; "
              f"exec 3<>/dev/tcp/{address}/80 && echo connected")
    result = as_user(allow_shell, script, user)
    assert result.exit_code != 0 and "connected" not in result.stdout, result


@pytest.mark.control(CLASS, "connect directly to an allowed name, without the proxy")
def test_control_an_open_devshell_connects_directly(open_shell, mirror):
    address = resolve(open_shell, mirror)
    assert as_user(open_shell, f"exec 3<>/dev/tcp/{address}/80 && echo connected").stdout == "connected\n"


@pytest.mark.attack(CLASS, "resolve a name outside the devshell")
@pytest.mark.parametrize("user", ["dev", "root"])
def test_no_name_resolves_but_the_proxys(allow_shell, open_shell, mirror, user):
    # Not the denied name, not even the allowed one (the proxy resolves, the devshell never
    # needs to), and not by asking the host's resolver itself: root points resolv.conf at it.
    assert as_user(allow_shell, f"getent hosts {egress.PROXY_ALIAS}", user).exit_code == 0
    for name in (DENIED, mirror):
        assert as_user(allow_shell, f"getent hosts {name}", user).exit_code != 0, name
    upstream = re.findall(r"^nameserver\s+(\S+)", open_shell.exec(["cat", "/etc/resolv.conf"]).stdout, re.M)
    if user == "root" and upstream:
        script = (f"cp /etc/resolv.conf /tmp/r && echo 'nameserver {upstream[0]}' > /etc/resolv.conf; "
                  f"getent hosts {DENIED}; code=$?; cat /tmp/r > /etc/resolv.conf; exit $code")
        result = as_user(allow_shell, script, user)
        assert result.exit_code != 0 and DENIED not in result.stdout, result


@pytest.mark.control(CLASS, "resolve a name outside the devshell")
def test_control_an_open_devshell_resolves_names(open_shell):
    assert open_shell.exec(["getent", "hosts", DENIED]).exit_code == 0


NETWORK_CHANGES = [
    ("a default route through the proxy", "ip route replace default via {proxy}"),
    ("a raw socket",
     "perl -MSocket -e 'socket(my $s, PF_INET, SOCK_RAW, 1) or die \"$!\\n\"; print \"raw\\n\"'"),
]


def proxy_address(shell) -> str:
    return as_user(shell, f"getent ahostsv4 {egress.PROXY_ALIAS}").stdout.split()[0]


@pytest.mark.standard_profile
@pytest.mark.attack(CLASS, "root changes the devshell's network")
@pytest.mark.parametrize("what, command", NETWORK_CHANGES, ids=[c[0] for c in NETWORK_CHANGES])
def test_root_cannot_change_the_network(allow_shell, what, command):
    if "ip route" in command and as_user(allow_shell, "command -v ip").exit_code:
        allow_shell.run("sudo apt-get install -y -q --no-install-recommends iproute2")
    script = command.format(proxy=proxy_address(allow_shell))
    result = allow_shell.run(f"sudo bash -c {shlex.quote(script)}")
    assert result.exit_code != 0 and "raw" not in result.stdout, (what, result)
    assert as_user(allow_shell, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6").stdout == "1\n"


@pytest.mark.control(CLASS, "root changes the devshell's network")
def test_control_with_the_capabilities_root_changes_it(allow_shell, devshell_run_labels):
    # The same changes in a container of the same image that the engine grants the network
    # capabilities (only the host's docker user can make one): they take, so what stops root
    # above is the capability the devshell withholds, not a missing tool.
    script = ("apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 >/dev/null "
              "&& ip route add 192.0.2.0/24 dev eth0 && echo route; "
              "perl -MSocket -e 'socket(my $s, PF_INET, SOCK_RAW, 1) or die \"$!\\n\"; print \"raw\\n\"'")
    out = allow_shell.engine.client.containers.run(allow_shell.spec.image, ["bash", "-c", script],
                                                   cap_add=["NET_ADMIN", "NET_RAW"], remove=True,
                                                   labels=devshell_run_labels)
    assert out == b"route\nraw\n", out


# --- failing closed ---------------------------------------------------------------------------


@pytest.mark.fault("the egress proxy stops mid-session")
def test_a_stopped_proxy_lets_nothing_out_and_the_next_launch_restarts_it(devshell_factory, egress_cell,
                                                                           networked_runtime, devshell_cli,
                                                                           open_shell, mirror):
    shell = devshell_factory.open(egress_cell, runtime=networked_runtime)
    proxy = egress.proxy_name(shell.name)
    shell.engine.client.api.stop(proxy, timeout=1)
    out = as_user(shell, via_proxy(f"GET http://{mirror}/ HTTP/1.1"))
    assert out.exit_code != 0 and "HTTP/" not in out.stdout, out
    direct = as_user(shell, f"exec 3<>/dev/tcp/{resolve(open_shell, mirror)}/80 && echo connected")
    assert "connected" not in direct.stdout
    verify = shell.verify()  # a session starting now would refuse: verify names the proxy
    assert verify.exit_code != 0 and "FAIL egress-proxy" in verify.stdout, verify
    again = cli(devshell_cli, shell, "--script", _script(shell, "true"))
    assert again.exit_code == 0, again.stderr
    assert shell.engine.inspect(proxy)["State"]["Running"]
    assert as_user(shell, via_proxy(f"GET http://{mirror}/ HTTP/1.1")).stdout.startswith("HTTP/1.1")


def _script(shell, text: str) -> str:
    path = os.path.join(shell.opts.checkout, "..", "s.sh")
    with open(path, "w") as f:
        f.write(f"#!/bin/bash\n{text}\n")
    return os.path.realpath(path)


@pytest.mark.fault("the egress proxy cannot start")
def test_a_proxy_that_cannot_start_stops_the_launch_in_one_line(devshell_factory, egress_cell,
                                                                networked_runtime, devshell_cli):
    shell = devshell_factory.open(egress_cell, runtime=networked_runtime)
    log_dir = HostFacts.current().egress_dir(shell.name)
    shell.engine.remove_container(egress.proxy_name(shell.name))
    log = os.path.join(log_dir, egress.LOG_FILE)
    for path, mode in ((log, 0o400), (log_dir, 0o500)):  # squid cannot open its log: it exits at once
        if os.path.exists(path):
            os.chmod(path, mode)
    try:
        refused = cli(devshell_cli, shell, "--script", _script(shell, "echo the session ran"))
    finally:
        for path, mode in ((log_dir, 0o700), (log, 0o640)):
            if os.path.exists(path):
                os.chmod(path, mode)
    assert refused.exit_code == 2 and "the session ran" not in refused.stdout, refused
    [line] = refused.stderr.splitlines()
    assert "stopped as it started" in line and "Cannot open" in line and "no session starts" in line, line
    again = cli(devshell_cli, shell, "--script", _script(shell, "echo the session ran"))
    assert again.exit_code == 0 and again.stdout == "the session ran\n", again.stderr


def test_a_devshell_put_on_another_network_is_refused_and_removed(devshell_factory, egress_cell,
                                                                 networked_runtime):
    shell = devshell_factory.open(egress_cell, runtime=networked_runtime)
    shell.engine.client.api.connect_container_to_network(shell.name, "bridge")
    o = shell.opts
    with pytest.raises(DevshellError, match="not its egress network alone"):
        devshell_factory.open(egress_cell, instance=o.instance, checkout=o.checkout,
                              patches_out=o.patches_out, host_cache=o.host_cache or False,
                              runtime=networked_runtime)
    assert shell.engine.inspect(shell.name) is None


def test_a_runtime_without_a_network_refuses_allow(devshell_engine, devshell_factory, egress_cell):
    # Registered with --network=none (gVisor here), a runtime has no way to the proxy: the
    # launch refuses rather than start a devshell whose policy cannot be what was asked.
    none = [name for name in (devshell_engine.system_info().get("Runtimes") or {})
            if not devshell_engine.runtime(name).network]
    if not none:
        pytest.skip("no runtime without a network is registered on this engine")
    with pytest.raises(DevshellError, match="--network allow needs a network"):
        devshell_factory.open(egress_cell, runtime=none[0], profile="locked")


# --- the audit log and the policy's life ------------------------------------------------------


def test_the_log_survives_rm_and_shows_both_verdicts(devshell_factory, egress_cell, networked_runtime, mirror,
                                                      devshell_cli):
    # A devshell of its own: --rm takes its container away, and the module's is shared.
    allow_shell = devshell_factory.open(egress_cell, runtime=networked_runtime)
    as_user(allow_shell, via_proxy(f"GET http://{mirror}/debian/ HTTP/1.1"))
    as_user(allow_shell, via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1"))
    before = net_log(devshell_cli, allow_shell)
    removed = cli(devshell_cli, allow_shell, "--rm")
    assert removed.exit_code == 0 and allow_shell.engine.inspect(allow_shell.name) is None, removed.stderr
    after = net_log(devshell_cli, allow_shell)
    assert after == before
    assert {"allowed", "denied"} <= {e["verdict"] for e in after}
    text = devshell_cli(None, "net", "log", allow_shell.spec.cell, f"--instance={allow_shell.opts.instance}")
    assert f"  {allow_shell.name}  denied   CONNECT {DENIED}:443 (403)" in text.stdout, text.stdout
    path = os.path.join(HostFacts.current().egress_dir(allow_shell.name), egress.LOG_FILE)
    assert os.stat(path).st_uid == allow_shell.opts.uid  # the proxy writes as dev's uid, never root


def test_net_log_follow_prints_requests_as_they_come(allow_shell):
    import random
    import select
    import signal
    import subprocess
    import sys
    import time

    port = random.randrange(20000, 30000)  # names this request's line; denied, it reaches nothing
    follow = subprocess.Popen([sys.executable, "-m", "devshell", "net", "log", allow_shell.spec.cell,
                               f"--instance={allow_shell.opts.instance}", "--json", "--follow"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1)  # it has printed what was there, and follows
        as_user(allow_shell, via_proxy(f"CONNECT {DENIED}:{port} HTTP/1.1"))
        # Raw reads: a buffered readline would keep lines select cannot see.
        seen, pending, deadline = [], b"", time.monotonic() + 60
        fd = follow.stdout.fileno()
        while time.monotonic() < deadline and not any(e["port"] == port for e in seen):
            if select.select([fd], [], [], 1)[0]:
                pending += os.read(fd, 1 << 16)
                *lines, pending = pending.split(b"\n")
                seen += [json.loads(line) for line in lines]
        assert any(e["port"] == port and e["verdict"] == "denied" for e in seen), seen
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=10) == 0, follow.stderr.read().decode()


def test_a_non_root_user_gets_the_policy_and_a_log_of_its_own(tester, tester_python, tester_base, egress_cell,
                                                              devshell_instance, mirror, networked_runtime):
    """The real CLI, run by an ordinary host user in the docker group: the proxy runs as that
    user, the log is in its own state dir, and the policy is the same."""
    from hostuser import as_tester

    cells_dir, checkout = os.path.join(tester_base, "cells"), os.path.join(tester_base, "checkout")
    for d in (cells_dir, checkout):
        os.mkdir(d, 0o755)
        os.chown(d, tester.pw_uid, tester.pw_gid)
    with open(egress_cell.source) as src, open(os.path.join(cells_dir, os.path.basename(egress_cell.source)),
                                               "w") as dst:
        dst.write(src.read())
    script = os.path.join(tester_base, "s.sh")
    with open(script, "w") as f:
        f.write("#!/bin/bash\n" + via_proxy(f"GET http://{mirror}/debian/ HTTP/1.1") + "\n"
                + via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1") + "\n")
    python, env = tester_python
    instance = devshell_instance()
    common = [f"--cells-dir={cells_dir}", f"--instance={instance}"]
    runtime = [f"--runtime={networked_runtime}"] if networked_runtime else []
    log_dir = os.path.join(tester.pw_dir, ".local/state/devshell/egress",
                           f"devshell-{egress_cell.name}-{instance}")
    try:
        done = as_tester(tester, python, "-m", "devshell", egress_cell.name, "--script", script, *common,
                         *runtime, cwd=checkout, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].startswith("HTTP/1.1 200") and "HTTP/1.1 403" in done.stdout, done
        logged = as_tester(tester, python, "-m", "devshell", "net", "log", egress_cell.name,
                           f"--instance={instance}", "--json", cwd=checkout, env=env)
        assert logged.returncode == 0, logged.stderr
        verdicts = {(e["host"], e["verdict"]) for e in map(json.loads, logged.stdout.splitlines())}
        assert {(mirror, "allowed"), (DENIED, "denied")} <= verdicts, verdicts
        assert os.stat(os.path.join(log_dir, egress.LOG_FILE)).st_uid == tester.pw_uid
    finally:
        as_tester(tester, python, "-m", "devshell", "down", egress_cell.name, f"--instance={instance}",
                  "--volume", "--yes", cwd=checkout, env=env)
        shutil.rmtree(log_dir, ignore_errors=True)


def test_a_policy_change_recreates_the_proxy_and_keeps_the_devshell(devshell_factory, egress_cell,
                                                                    networked_runtime, devshell_engine):
    first = devshell_factory.open(egress_cell, runtime=networked_runtime)
    proxy = egress.proxy_name(first.name)
    before = devshell_engine.inspect(proxy)["Id"]
    o = first.opts
    wider = egress_cell._replace(allow=(*egress_cell.allow, egress.parse_rule(DENIED)))
    again = devshell_factory.open(wider, instance=o.instance, checkout=o.checkout, patches_out=o.patches_out,
                                  host_cache=o.host_cache or False, runtime=networked_runtime)
    assert again.outcome.state == "reused", again.outcome
    assert devshell_engine.inspect(proxy)["Id"] != before
    out = as_user(again, via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1")).stdout
    assert out.startswith("HTTP/1.1 200"), out


def test_the_session_line_and_list_state_allow_and_the_proxy(allow_shell, devshell_cli):
    done = cli(devshell_cli, allow_shell, "--script", _script(allow_shell, "true"))
    assert done.exit_code == 0, done.stderr
    assert " · network allow · " in done.stderr, done.stderr
    listed = devshell_cli(None, "--list", "--json", f"--instance={allow_shell.opts.instance}",
                          f"--cells-dir={os.path.dirname(allow_shell.cell.source)}")
    [row] = [r for r in json.loads(listed.stdout)["cells"] if r["cell"] == allow_shell.spec.cell]
    assert (row["network"], row["proxy"]) == ("allow", "running"), row
    # status lists devshells; the proxy is its devshell's, shown by --list
    every = {r["name"] for r in json.loads(devshell_cli(None, "status", "--json").stdout)["devshells"]}
    assert allow_shell.name in every and egress.proxy_name(allow_shell.name) not in every, every


def test_net_learn_prints_what_a_session_asked_for_then_restores_the_policy(allow_shell, open_shell,
                                                                             devshell_cli):
    # ... and an address (the engine's bridge gateway: this host), which learning never lets through
    gateway = gateways(open_shell)[0]
    script = _script(allow_shell, via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1") + "\n"
                     + via_proxy(f"GET http://{gateway}:9/ HTTP/1.1"))
    argv = ["net", "learn", allow_shell.spec.cell, f"--instance={allow_shell.opts.instance}",
            f"--checkout={allow_shell.opts.checkout}", f"--patches-out={allow_shell.opts.patches_out}",
            f"--uid={allow_shell.opts.uid}", f"--gid={allow_shell.opts.gid}",
            f"--cells-dir={os.path.dirname(allow_shell.cell.source)}", "--script", script]
    if allow_shell.opts.host_cache:
        argv.append(f"--host-cache-dir={allow_shell.opts.host_cache}")
    if allow_shell.opts.runtime:
        argv.append(f"--runtime={allow_shell.opts.runtime}")
    if allow_shell.opts.profile:
        argv.append(f"--profile={allow_shell.opts.profile}")
    learned = devshell_cli(None, *argv)
    assert learned.exit_code == 0, learned.stderr
    assert "HTTP/1.1 200" in learned.stdout, learned.stdout  # let through while learning
    block = yaml.safe_load(learned.stdout[learned.stdout.index("network:"):])
    assert block["network"]["mode"] == "allow" and block["network"]["allow"] == [DENIED], learned.stdout
    assert "HTTP/1.1 403" in learned.stdout, learned.stdout  # the address, denied while learning
    # ... and afterwards the cell's policy again
    out = as_user(allow_shell, via_proxy(f"CONNECT {DENIED}:443 HTTP/1.1")).stdout
    assert out.startswith("HTTP/1.1 403"), out


def test_an_open_devshell_has_no_proxy_and_the_engines_network(open_shell):
    assert not set(egress.PROXY_ENV_KEYS) & set(dict(open_shell.spec.env))
    assert set(open_shell.engine.inspect(open_shell.name)["NetworkSettings"]["Networks"]) == {"bridge"}
