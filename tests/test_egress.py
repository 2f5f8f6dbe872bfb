"""The egress policy's pure parts: rules, squid's configuration, the proxy as a value, the log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devshell import cells, egress, labels
from devshell.egress import Entry, Rule, parse_rule
from devshell.spec import container_name

CELL = cells.parse({"platform": "linux/amd64", "image": {"ref": "x"}, "workspace": "/home/runner/w",
                    "network": {"mode": "allow", "allow": ["deb.debian.org", "*.pythonhosted.org",
                                                            "git.example.com:8443"]}},
                   source="cells/c.yaml", stem="c")


def test_a_rule_is_a_name_a_suffix_or_either_with_a_port():
    assert parse_rule("deb.debian.org") == Rule("deb.debian.org")
    assert parse_rule("0x0.st") == Rule("0x0.st")  # a name that begins like a hex number
    assert parse_rule("cdn.0xproject.com") == Rule("cdn.0xproject.com")
    assert parse_rule("*.debian.org") == Rule("debian.org", True)
    assert parse_rule("localhost:8080") == Rule("localhost", False, 8080)
    assert parse_rule("*.example.com:443") == Rule("example.com", True, 443)


@pytest.mark.parametrize("text", ["", "*", "*.", "a..b", "-a.b", "a b", "http://a.b", "a.b/c", "a.b:",
                                  "a.b:x", "1.2.3.4", "[::1]", "*.com", "a.b:0", "a.b:65536", "a_b.c",
                                  "*.*.a.b", "0x7f000001", "0x7f.1", "127.1", "10.0.0.1:80"])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        parse_rule(text)


def test_squid_allows_the_rules_on_their_ports_and_denies_the_rest_with_the_policy_page():
    conf = egress.squid_conf(CELL.allow, "172.30.0.0/16")
    lines = conf.splitlines()
    # only the devshell's own network may use it, before anything is allowed
    assert lines.index("acl devshell src 172.30.0.0/16") < lines.index("http_access deny !devshell")
    assert lines.index("http_access deny !devshell") < min(n for n, ln in enumerate(lines)
                                                           if ln.startswith("http_access allow"))
    assert "acl name0 dstdomain -n deb.debian.org" in lines and "acl port0 port 80 443" in lines
    assert r"acl name1 dstdom_regex -n -i \.pythonhosted\.org$" in lines and "acl port1 port 80 443" in lines
    assert "acl name2 dstdomain -n git.example.com" in lines and "acl port2 port 8443" in lines
    assert [ln for ln in lines if ln.startswith("http_access allow")] == [
        f"http_access allow name{n} port{n} !to_localhost" for n in range(3)]
    assert lines[-4:-2] == [f"deny_info 403:{egress.ERROR_PAGE} policy", "http_access deny policy"]
    assert "http_access allow devshell" not in lines


def test_learning_allows_every_name_from_the_devshell_only_and_never_an_address():
    lines = egress.squid_conf((), "10.0.0.0/24", learn=True).splitlines()
    allow = lines.index("http_access allow devshell")
    for deny in ("deny !devshell", "deny manager", "deny !std_methods", "deny to_localhost", "deny address",
                 "deny private"):  # (learning lets every name through: judging by address costs nothing)
        assert lines.index(f"http_access {deny}") < allow, deny
    [address] = [ln for ln in lines if ln.startswith("acl address ")]
    import re

    patterns = address.split()[4:]
    for literal in ("172.17.0.1", "10.0.0.1", "[::1]", "::1", "fe80::1"):
        assert any(re.search(p, literal) for p in patterns), literal
    for name in ("cafe.be", "deb.debian.org", "bad.cafe"):
        assert not any(re.search(p, name) for p in patterns), name


def test_under_any_policy_the_cache_manager_and_odd_methods_are_denied_first():
    lines = egress.squid_conf(CELL.allow, "172.30.0.0/16").splitlines()
    first_allow = min(n for n, ln in enumerate(lines) if ln.startswith("http_access allow"))
    for deny in ("deny manager", "deny !std_methods"):
        assert lines.index(f"http_access {deny}") < first_allow, deny


def test_a_name_about_to_be_denied_is_never_looked_up():
    # squid resolves a name to judge an address ACL (dst, to_localhost): before the policy's
    # deny, such an ACL may only follow an allowed name in the same rule, or the lookup of a
    # denied name would carry data out through DNS.
    lines = egress.squid_conf(CELL.allow, "172.30.0.0/16").splitlines()
    rules = lines[:lines.index("http_access deny policy")]
    by_address = {"to_localhost"} | {ln.split()[1] for ln in rules
                                     if ln.startswith("acl ") and ln.split()[2] == "dst"}
    for rule in (ln.split()[2:] for ln in rules if ln.startswith("http_access ")):
        for n, acl in enumerate(rule):
            if acl.lstrip("!") in by_address:
                assert rule[0].startswith("name") and n > 0, rule
    assert [ln for ln in rules if ln.startswith("http_access allow")] == [
        f"http_access allow name{n} port{n} !to_localhost" for n in range(3)]
    assert f"acl std_methods method {' '.join(egress.METHODS)}" in lines
    assert f"visible_hostname {egress.PROXY_ALIAS}" in lines


def test_the_error_page_names_the_policy_and_the_fix_and_escapes_what_squid_would_expand():
    page = egress.error_page("c<1>", "cells/100%.yaml")
    assert "%H" in page and "network.allow in cells/100%%.yaml" in page
    assert "devshell net learn c&lt;1&gt;" in page and "<1>" not in page


@given(st.from_regex(cells.NAME_PATTERN, fullmatch=True),
       st.none() | st.text("abcXYZ019._-", min_size=1, max_size=40))
def test_a_proxy_is_never_named_like_a_devshell(cell, instance):
    proxy = egress.proxy_name(container_name(cell, instance))
    assert not proxy.startswith("devshell-")  # every devshell's name does


def test_the_proxy_is_a_locked_down_container_on_its_internal_network_first():
    spec = egress.plan_egress("devshell-c", CELL, "172.30.0.0/16", "/state/egress/devshell-c", (1000, 1000),
                              labels={labels.TEST_RUN: "r1"})
    body = spec.api_create()
    host = body["HostConfig"]
    assert spec.name == "devshell_egress-c" and host["NetworkMode"] == spec.name
    assert body["NetworkingConfig"]["EndpointsConfig"][spec.name]["Aliases"] == [egress.PROXY_ALIAS]
    assert body["User"] == "1000:1000" and host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Mounts"] == [{"Type": "bind", "Source": "/state/egress/devshell-c", "Target": "/log",
                               "ReadOnly": False}]
    assert body["Labels"][labels.ROLE] == egress.ROLE_PROXY and body["Labels"][labels.TEST_RUN] == "r1"
    net = spec.network_body()
    assert net["Internal"] is True and net["EnableIPv6"] is False
    assert net["Options"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    assert net["Labels"][labels.TEST_RUN] == "r1"


def test_a_policy_change_changes_the_proxy_hash_and_nothing_else_does():
    def hashed(cell=CELL, subnet="172.30.0.0/16", learn=False, run="r1"):
        return egress.plan_egress("devshell-c", cell, subnet, "/l", (1, 1), labels={labels.TEST_RUN: run},
                                  learn=learn).hash()

    base = hashed()
    assert hashed(run="r2") == base
    assert hashed(learn=True) != base
    def proxy_labels(learn):
        return egress.plan_egress("devshell-c", CELL, "172.30.0.0/16", "/l", (1, 1), learn=learn).all_labels()

    assert proxy_labels(True)[labels.LEARNING] == "1" and labels.LEARNING not in proxy_labels(False)
    assert hashed(subnet="172.31.0.0/16") != base
    assert hashed(cell=CELL._replace(allow=CELL.allow[:1])) != base


LOG = b"""1796612927.467 - - - 0 NONE_NONE
1796612927.595 GET deb.debian.org 80 200 TCP_MISS
1796612933.849 CONNECT pypi.org 443 403 TCP_DENIED
1796612934.000 CONNECT Evil\x1b[2J.org 443 403 TCP_DENIED
1796612935.000 CONNECT git.example.com 8443 200 TCP_TUNNEL
garbage line
1796612936.000 GET deb.debian.org 80 200 TCP_MI"""


def test_the_log_reads_as_entries_and_reports_what_is_not_a_request():
    unreadable: list[str] = []
    assert egress.parse_log(LOG, unreadable) == [
        Entry(1796612927.595, "GET", "deb.debian.org", 80, 200, "allowed"),
        Entry(1796612933.849, "CONNECT", "pypi.org", 443, 403, "denied"),
        Entry(1796612935.0, "CONNECT", "git.example.com", 8443, 200, "allowed"),
    ]
    # the probe (no request) is no entry and nothing to report; the cut last line waits
    assert [line[:18] for line in unreadable] == ["1796612934.000 CON", "garbage line"]
    entry = egress.parse_log(LOG)[1]
    assert entry.as_dict("devshell-c") == {"time": "2026-12-07T03:08:53.849Z", "devshell": "devshell-c",
                                          "method": "CONNECT", "host": "pypi.org", "port": 443,
                                          "status": 403, "verdict": "denied"}
    assert entry.line("devshell-c") == ("2026-12-07T03:08:53.849Z  devshell-c  denied   "
                                        "CONNECT pypi.org:443 (403)")


def test_verdicts_are_denied_error_or_allowed():
    log = (b"1.000 GET deb.debian.org 80 0 TCP_MISS_ABORTED\n"
           b"2.000 GET - - 400 NONE_NONE\n"
           b"3.000 M-SEARCH deb.debian.org 80 403 TCP_DENIED_REPLY\n"
           b"4.000 GET x.org 80 503 NONE_NONE\n")
    assert [(e.method, e.status, e.verdict) for e in egress.parse_log(log)] == [
        ("GET", 0, "allowed"), ("GET", 400, "error"), ("M-SEARCH", 403, "denied"), ("GET", 503, "error")]


def test_learn_prints_a_block_that_loads_as_the_same_policy():
    import yaml

    block = egress.allow_block(egress.parse_log(LOG))
    # what was let through, by name: pypi.org was denied there, an address is never learned
    assert block == "network:\n  mode: allow\n  allow:\n    - deb.debian.org\n    - git.example.com:8443\n"
    learned = egress.parse_log(LOG.replace(b"403 TCP_DENIED", b"200 TCP_TUNNEL")
                               + b"9.000 GET 172.17.0.1 18777 200 TCP_MISS\n")
    block = egress.allow_block(learned)
    cell = cells.parse({**yaml.safe_load(block), "platform": "linux/amd64", "image": {"ref": "x"},
                        "workspace": "/home/runner/w"}, source="x", stem="x")
    assert [str(r) for r in cell.allow] == ["deb.debian.org", "git.example.com:8443", "pypi.org"]
    assert egress.allow_block([]) == "network:\n  mode: allow\n  allow: []\n"


def test_the_proxy_recipe_shares_the_bookworm_cells_base():
    bookworm = cells.load("cells/bookworm.yaml")
    assert egress.PROXY_RECIPE.base_key() == bookworm.recipe.base_key()
