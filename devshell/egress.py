"""Egress under `--network allow`: the policy, the proxy that enforces it, and its audit log.

Pure: a cell's `network.allow` list -> an EgressSpec (the proxy container, as a value) -> the
engine's create body; and the proxy's log -> entries. The engine (engine.ensure_egress) and
the launcher do the side effects; docs/design.md "Egress" says why the shape is this one.

The shape, in one paragraph: each devshell under `allow` gets an *internal* bridge network of
its own, with no address on the host's side of the bridge (so neither the outside nor the host
is routable from it), shared with one proxy container (Debian's squid, built offline from the
bookworm base). The proxy alone is also on the engine's default bridge, and forwards only what
the policy allows. The devshell finds it by a network alias, resolves nothing else (its DNS
upstream is its own loopback, where nothing answers), and has IPv6 off.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, NamedTuple

from . import labels
from .cells import Recipe

# Where a devshell under allow finds its proxy: an alias on its own egress network (each
# network has exactly one proxy, so the same alias is never ambiguous).
PROXY_ALIAS = "egress-proxy"
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_ALIAS}:{PROXY_PORT}"
# What init reads to know it is under allow (apt's proxy, the verify check); init.sh reads it
# by this name.
PROXY_ENV = "DEVSHELL_PROXY"
# The environment every tool reads a proxy from (curl reads only the lowercase http_proxy).
# Local names stay local: the devshell's own name, loopback.
PROXY_ENV_KEYS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", PROXY_ENV)
# A name with no port may be reached on these (HTTP, and HTTPS through CONNECT).
DEFAULT_PORTS = (80, 443)
# The request methods the proxy passes on (others are denied: squid_conf).
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT")
# The devshell's DNS upstream: its own loopback, where nothing listens. The engine's embedded
# DNS still answers the proxy's alias (a name on the network it owns), and forwards every
# other name there, inside the devshell's namespace: to nobody. Engines before 26 forward
# from internal networks through the host's namespace when the upstream is the host's
# loopback resolver (CVE-2024-29018); an upstream set explicitly is not that case.
DNS_NOWHERE = "127.0.0.1"
# ... and gives up in a second, not glibc's default twenty (a tool that looks a name up
# itself before it asks the proxy fails fast).
DNS_OPTIONS = ("timeout:1", "attempts:1")
# The driver option that leaves the host's side of an internal bridge without an address:
# without it a container on an `internal` network still reaches every service the host
# listens on (the gateway's address, and the host's own through it; suites/test_egress.py
# shows it with a control).
NO_HOST_ADDRESS = ("com.docker.network.bridge.inhibit_ipv4", "true")
# The proxy's own container: built from the bookworm base the shipped cell uses (so the base
# is built once per machine), with squid. Its error page is written at start (read-only root).
PROXY_CONF_DIR = "/tmp/egress"
ERROR_PAGE = "ERR_DEVSHELL_POLICY"
PROXY_RECIPE = Recipe(
    suite="bookworm", variant="minbase", include=("git", "sudo", "passwd", "ca-certificates"),
    run=("apt-get update && apt-get install -y --no-install-recommends squid && rm -rf /var/lib/apt/lists/*",
         f"ln -s {PROXY_CONF_DIR}/{ERROR_PAGE} /usr/share/squid/errors/templates/{ERROR_PAGE}"))
PROXY_REPO = "devshell/egress"
PROXY_LIMITS = {"pids": 256, "memory": 256 << 20}
# Where the log is inside the proxy; on the host it is the devshell's egress dir.
LOG_MOUNT = "/log"
LOG_FILE = "access.log"
MAX_LOG_BYTES = 16 << 20  # `net log` reads at most this much of the end of a log
ROLE_PROXY = "egress-proxy"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?({_LABEL}(?:\.{_LABEL})*)(?::([0-9]{{1,5}}))?$")


class Rule(NamedTuple):
    """One allowed destination: a host name, or every name below a suffix (`*.suffix`),
    on one port or (None) on DEFAULT_PORTS."""

    host: str
    wildcard: bool = False
    port: int | None = None

    def __str__(self) -> str:
        return ("*." if self.wildcard else "") + self.host + (f":{self.port}" if self.port else "")


def parse_rule(text: str) -> Rule:
    """A `network.allow` entry: name, *.suffix, either with :port. ValueError says why not."""
    found = _HOST.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if found is None or len(found.group(2)) > 253:
        raise ValueError(f"{text!r} is not a host name, *.suffix or either with :port")
    wildcard, host, port = bool(found.group(1)), found.group(2), found.group(3)
    numeric = all(re.fullmatch(r"0x[0-9a-f]*|[0-9]+", label) for label in host.split("."))
    if numeric or not re.search(r"[a-z]", host.rsplit(".", 1)[-1]):
        # 10.0.0.1, and the C library's other spellings of an address (0x7f000001, 0x7f.1)
        raise ValueError(f"{text!r} is an address: name the host (the proxy checks names)")
    if wildcard and "." not in host:
        raise ValueError(f"{text!r} would allow a whole top-level domain")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} has a port outside 1..65535")
    return Rule(host, wildcard, int(port) if port else None)


def proxy_name(devshell: str) -> str:
    """The proxy container's and the egress network's name for a devshell. Never a devshell's
    own name: those all begin with 'devshell-' (spec.container_name)."""
    return "devshell_egress" + devshell[len("devshell"):]


def proxy_env() -> dict[str, str]:
    local = "localhost,127.0.0.1,::1"
    return {"http_proxy": PROXY_URL, "https_proxy": PROXY_URL, "HTTP_PROXY": PROXY_URL,
            "HTTPS_PROXY": PROXY_URL, "no_proxy": local, "NO_PROXY": local,
            PROXY_ENV: f"{PROXY_ALIAS}:{PROXY_PORT}"}


def _regex(rule: Rule) -> str:
    return r"\." + re.escape(rule.host) + "$"


def squid_conf(rules: tuple[Rule, ...], client_subnet: str, *, learn: bool = False) -> str:
    """squid's configuration: from client_subnet (the devshell's egress network) only, the
    allowed names on their ports (learn: every name, on any port), everything else denied
    with the policy's page; one log line per request."""
    lines = [
        f"http_port {PROXY_PORT}",
        # As a plain user, on a read-only root: no pid file, no cache, log to the engine.
        "pid_filename none", "cache deny all", "cache_mem 0 MB", "cache_log stdio:/dev/stderr",
        "logfile_rotate 0", "coredump_dir none", "shutdown_lifetime 0 seconds", "pinger_enable off",
        "via off", "forwarded_for delete", "httpd_suppress_version_string on",
        # Nothing about the proxy or its host in answers: not its container id, not its cache.
        f"visible_hostname {PROXY_ALIAS}", "reply_header_access X-Cache deny all",
        "reply_header_access X-Cache-Lookup deny all",
        f"acl devshell src {client_subnet}",
        "http_access deny !devshell",
        # squid's cache manager (cache_object://) answers on any allowed name and tells who
        # its clients are and what it resolved: never.
        "http_access deny manager",
        # Methods a tool uses; anything else is refused (and logged as such) rather than
        # forwarded under a name the log cannot read back.
        f"acl std_methods method {' '.join(METHODS)}",
        "http_access deny !std_methods",
    ]
    if learn:
        # Every name, and nothing that is not one: no address (the host's bridge, another
        # container, a private network) is learned or reached while learning.
        lines += ["http_access deny to_localhost",
                  r"acl address dstdom_regex -n ^[0-9.]+$ ^\[?[0-9a-fA-F.]*:[0-9a-fA-F:.]*\]?$",
                  "acl private dst 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 169.254.0.0/16 100.64.0.0/10 "
                  "fc00::/7 fe80::/10",
                  "http_access deny address", "http_access deny private", "http_access allow devshell"]
    for n, rule in enumerate(rules):
        # -n: a destination given as an address is not looked up in reverse (its PTR record
        # would otherwise choose the verdict, and whoever owns the address writes that).
        if rule.wildcard:
            lines.append(f"acl name{n} dstdom_regex -n -i {_regex(rule)}")
        else:
            lines.append(f"acl name{n} dstdomain -n {rule.host}")
        ports = " ".join(str(p) for p in ((rule.port,) if rule.port else DEFAULT_PORTS))
        # The proxy's own loopback is no destination, whatever an allowed name resolves to.
        # Last in the rule: squid resolves a name to judge to_localhost, and a name it is
        # about to deny must never be looked up (the lookup alone would carry data out).
        lines += [f"acl port{n} port {ports}", f"http_access allow name{n} port{n} !to_localhost"]
    lines += [
        "acl policy src all",
        f"deny_info 403:{ERROR_PAGE} policy",
        "http_access deny policy",
        # Seconds.milliseconds, method, host, port, status sent, squid's verdict: one line,
        # space-separated; parse_log reads exactly this.
        "logformat devshell %ts.%03tu %rm %>rd %>rP %>Hs %Ss",
        f"access_log stdio:{LOG_MOUNT}/{LOG_FILE} devshell",
    ]
    return "\n".join(lines) + "\n"


def error_page(cell: str, source: str) -> str:
    """What a denied request gets back (squid puts the host in for %H)."""
    return (f"<html><body><p>devshell: the egress policy of cell {_html(cell)} does not allow %H.</p>"
            f"<p>To allow it, add it under network.allow in {_html(source)}; "
            f"<code>devshell net learn {_html(cell)}</code> lists the names a session uses.</p>"
            "</body></html>\n")


def _html(text: str) -> str:
    # squid expands %-codes in the page: a literal % is %%.
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%", "%%"))


class EgressSpec(NamedTuple):
    """The proxy of one devshell, as a value: what ensure_egress creates and compares."""

    name: str  # the proxy container's, and its network's
    cell: str
    image: str
    conf: str
    page: str
    log_dir: str  # on the host
    user: str  # uid:gid the proxy runs as (owns the log dir)
    labels: tuple[tuple[str, str], ...] = ()
    learn: bool = False  # net learn's: every name let through (the conf says so too)

    def hash(self) -> str:
        key = {"image": self.image, "conf": self.conf, "page": self.page, "log": self.log_dir,
               "user": self.user}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def all_labels(self) -> dict[str, str]:
        return {**dict(self.labels), labels.MANAGED: "1", labels.CELL: self.cell,
                labels.ROLE: ROLE_PROXY, labels.SPEC_HASH: self.hash(),
                **({labels.LEARNING: "1"} if self.learn else {})}

    def network_body(self) -> dict[str, Any]:
        return {"Name": self.name, "Driver": "bridge", "Internal": True, "EnableIPv6": False,
                "CheckDuplicate": True, "Options": dict([NO_HOST_ADDRESS]),
                "Labels": {**dict(self.labels), labels.MANAGED: "1", labels.CELL: self.cell,
                           labels.ROLE: ROLE_PROXY}}

    def api_create(self) -> dict[str, Any]:
        # Configuration through the environment, written to a tmpfs at start: the root is
        # read-only, and the engine copies nothing into a read-only container.
        write = (f"mkdir -p {PROXY_CONF_DIR} && printf '%s' \"$SQUID_CONF\" > {PROXY_CONF_DIR}/squid.conf"
                 f" && printf '%s' \"$ERROR_PAGE\" > {PROXY_CONF_DIR}/{ERROR_PAGE}"
                 f" && exec squid -N -f {PROXY_CONF_DIR}/squid.conf")
        return {
            "Image": self.image, "Cmd": ["/bin/sh", "-c", write], "User": self.user,
            "Labels": self.all_labels(),
            "Env": [f"SQUID_CONF={self.conf}", f"ERROR_PAGE={self.page}"],
            "HostConfig": {
                "NetworkMode": self.name,
                "Mounts": [{"Type": "bind", "Source": self.log_dir, "Target": LOG_MOUNT, "ReadOnly": False}],
                "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"], "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,mode=1777"},
                "PidsLimit": PROXY_LIMITS["pids"], "Memory": PROXY_LIMITS["memory"],
                "MemorySwap": PROXY_LIMITS["memory"],
                # It sits between two networks: it relays, it never routes.
                "Sysctls": {"net.ipv4.ip_forward": "0"},
            },
            "NetworkingConfig": {"EndpointsConfig": {self.name: {"Aliases": [PROXY_ALIAS]}}},
        }


def proxy_image() -> str:
    """The proxy image's tag: changes iff its recipe does."""
    return f"{PROXY_REPO}:{PROXY_RECIPE.hash()[:16]}"


def plan_egress(devshell: str, cell: Any, subnet: str, log_dir: str, user: tuple[int, int], *,
                labels: dict[str, str] | None = None, learn: bool = False) -> EgressSpec:
    """The proxy of devshell (a cells.Cell's policy) for its network's subnet. Pure."""
    return EgressSpec(name=proxy_name(devshell), cell=cell.name, image=proxy_image(),
                      conf=squid_conf(cell.allow, subnet, learn=learn),
                      page=error_page(cell.name, cell.source), log_dir=log_dir, user=f"{user[0]}:{user[1]}",
                      labels=tuple(sorted((labels or {}).items())), learn=learn)


# --- the audit log ----------------------------------------------------------------------------


class Entry(NamedTuple):
    """One request the proxy answered."""

    time: float  # seconds since the epoch
    method: str
    host: str
    port: int | None
    status: int
    verdict: str  # allowed or denied

    def as_dict(self, devshell: str) -> dict[str, Any]:
        import datetime

        when = datetime.datetime.fromtimestamp(self.time, datetime.timezone.utc)
        return {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "devshell": devshell, "method": self.method, "host": self.host, "port": self.port,
                "status": self.status, "verdict": self.verdict}

    def line(self, devshell: str) -> str:
        d = self.as_dict(devshell)
        where = self.host + (f":{self.port}" if self.port else "")
        return f"{d['time']}  {devshell}  {self.verdict:<7}  {self.method} {where} ({self.status})"


_LOG_LINE = re.compile(r"^([0-9]{1,12}\.[0-9]{3}) ([A-Z_-]{1,32}) ([A-Za-z0-9._:\[\]%-]{1,255}) "
                       r"([0-9]{1,5}|-) ([0-9]{1,3}) ([A-Z_]{1,40})$")
# What squid logs for a connection that sent no request (verify's "does it answer" probe).
_PROBE = re.compile(r"^[0-9.]+ - - - 0 NONE_NONE$")


def parse_log(data: bytes, unreadable: list[str] | None = None) -> list[Entry]:
    """The requests in a proxy log. The proxy writes what the agent asked for, so every line
    is checked against the one shape squid_conf logs. A line that does not fit (cut by a full
    disk, say) is not a request: it goes to unreadable, for the caller to report, and a
    connection that sent no request is left out. Only whole lines: the last one may be one
    squid is still writing. Verdicts: denied (by the policy), error (squid could not read the
    request, or it failed before reaching anyone), allowed (passed on)."""
    out = []
    for raw in data.split(b"\n")[:-1]:
        text = raw.decode("ascii", "replace")
        if _PROBE.fullmatch(text):
            continue
        found = _LOG_LINE.fullmatch(text)
        if found is None:
            if unreadable is not None and text.strip():
                unreadable.append(text)
            continue
        stamp, method, host, port, status, tag = found.groups()
        verdict = ("denied" if tag.startswith("TCP_DENIED") else
                   "error" if tag.startswith("NONE") or host == "-" or method == "-" else "allowed")
        out.append(Entry(float(stamp), method, host.lower(), None if port == "-" else int(port),
                         int(status), verdict))
    return out


def allow_block(entries: list[Entry]) -> str:
    """The `network:` block that allows what entries were let through for (net learn), names
    sorted; a port other than DEFAULT_PORTS is written with the name."""
    names = set()
    for e in entries:  # (net learn says how many it left out: learned_names)
        name = e.host + ("" if e.port in (None, *DEFAULT_PORTS) else f":{e.port}")
        try:
            parse_rule(name)  # only what a cell would take: names, never addresses
        except ValueError:
            continue
        if e.verdict == "allowed":
            names.add(name)
    lines = ["network:", "  mode: allow", "  allow:" + ("" if names else " []")]
    return "\n".join(lines + [f"    - {n}" for n in sorted(names)]) + "\n"
