"""ContainerSpec: the whole storage model as one pure, hashable value.

Options + Cell -> ContainerSpec -> (docker run argv | docker SDK kwargs). Every promise about what
enters the container is an invariant of this value, so it is unit-tested and fuzzed without Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any, Literal, NamedTuple

from . import labels
from .cells import CACHE, CHECKOUT, DEFAULT_NETWORK, PATCHES, Cell
from .egress import DNS_NOWHERE, DNS_OPTIONS, PROXY_ENV_KEYS, proxy_env, proxy_name
from .errors import DevshellError
from .options import Options
from .seccomp import CAP_DROP
from .seccomp import profile as seccomp_profile

DEV_HOME = "/home/dev"
INIT_PATH = "/usr/local/libexec/devshell-init"
SETUP_PATH = "/usr/local/libexec/devshell-setup"
# init's own state inside the container (converged hash, logs, session records, last-session).
STATE_DIR = "/var/lib/devshell"
INIT_LOG = f"{STATE_DIR}/init.log"  # what init did at the last entry (init.sh: $STATE/init.log)
LABEL_CELL = labels.CELL
LABEL_HASH = labels.SPEC_HASH
LABEL_IDENTITY = labels.SPEC
# Idle under the engine's tiny init (--init), which reaps the session's orphans and passes
# SIGTERM on, so `docker stop` does not wait out its 10 s grace period. Through init, by its
# absolute path, because the engine looks a bare command up in the container's PATH, which a
# cell's env may have broken: the container would die at every start.
IDLE_COMMAND = (INIT_PATH, "--idle")
# Engine states of a container that is never reused, and why: one never started was left
# half-made by an interrupted launch (init may not be in it yet).
NEVER_REUSED = {"created": "half-made by an interrupted launch", "dead": "dead"}
WORKSPACE_ENV = "DEVSHELL_WORKSPACE"  # where a container's volume is mounted, for init and status
MAX_EXEC_ARG = 128 * 1024  # Linux's MAX_ARG_STRLEN: no one argument of an exec is longer
PROFILE_ENV = "DEVSHELL_PROFILE"  # standard or locked: what init converges and verifies
# Under locked the root filesystem is read-only; writable besides the volume and the binds:
# /tmp, and init's own state (session records, script copies), both tmpfs, so nothing an
# agent leaves there outlives the container.
# (exec: scripts run from there, builds from /tmp; the engine would add noexec.)
LOCKED_TMPFS = (("/tmp", "rw,exec,nosuid,nodev,mode=1777"), (STATE_DIR, "rw,exec,nosuid,nodev,mode=0755"))
# ... and dev's home, which lives in the volume: /home/dev is a link baked into the locked
# image, to this directory below the workspace (init makes it, as dev).
HOME_IN_VOLUME = ".devshell-home"
HOME_IN_VOLUME_ENV = "DEVSHELL_HOME_IN_VOLUME"
# The image a locked devshell runs: the cell's image with accounts, sudoers, git's trust and
# the cell's setup converged once, by init --bake, in a writable container (a read-only root
# cannot take them). Tagged by what went in, so it is baked once per image, uid and init.
BAKED_REPO = "devshell/locked"
BAKE_COMMAND = (INIT_PATH, "--bake")


# Under allow, IPv6 is off in the devshell's namespace (the internal network has none, and a
# link-local address would reach the bridge's); a namespaced sysctl root inside cannot change.
NO_IPV6 = (("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1"))

# Where a devshell without a network finds its own hostname (the engine writes no address for
# it then): Debian's address for the host's own name, so sudo and the like can resolve it.
NO_NETWORK_SELF = "127.0.1.1"


class Mount(NamedTuple):
    kind: Literal["volume", "bind"]
    source: str
    target: str
    read_only: bool = False

    @property
    def non_recursive(self) -> bool:
        """Every bind is: what is mounted below its source on the host stays out (see sdk)."""
        return self.kind == "bind"

    def cli(self) -> str:
        import csv
        import io

        fields = [f"type={self.kind}", f"source={self.source}", f"target={self.target}"]
        if self.read_only:
            fields.append("readonly")
        if self.non_recursive:
            fields.append("bind-nonrecursive")
        buf = io.StringIO()  # --mount is CSV: quote a source holding ',', '"' or a line break
        csv.writer(buf, lineterminator="\r\n").writerow(fields)
        return buf.getvalue().removesuffix("\r\n")

    def sdk(self) -> dict[str, Any]:
        mount = {"Type": self.kind, "Source": self.source, "Target": self.target,
                 "ReadOnly": self.read_only}
        if self.non_recursive:
            # A bind is one host directory, never what is mounted below it on the host: the
            # engine makes only the top of a recursive bind read-only (Docker 20.10), so a
            # mount under the checkout would stay writable inside.
            mount["BindOptions"] = {"NonRecursive": True}
        return mount


class Bind(NamedTuple):
    """A host directory a devshell binds, and the role init checks its identity under."""

    role: str
    source: str
    target: str
    read_only: bool


def host_binds(opts: Options) -> list[Bind]:
    """Every host directory the container gets: the drop dir, the checkout (read-only) and,
    with a host cache, its ai/ and this checkout's memory dir. Not the host cache itself: what
    is bound read-write, root inside can chown and chmod, so only what the agent must write
    is. Each path down to memory is a mount point inside, so nothing inside can rename or
    replace one (a swapped dir would be bound by path at the next launch), and memory is a
    mount of its own in both modes, so no hard link can join a memory file to the
    configuration (link(2) does not cross mounts)."""
    binds = [Bind("patches", opts.patches_out, PATCHES, False),
             Bind("checkout", opts.checkout, CHECKOUT, True)]
    if opts.host_cache is not None:
        memory = memory_dir(opts.checkout)
        # memories (every project's, read-only) is a mount of its own even where ai/ is
        # writable (--ai-config-rw), so it cannot be renamed or replaced from inside either.
        ai = ai_dir(opts.host_cache)
        binds += [Bind("ai", ai, f"{CACHE}/ai", opts.ai_config_ro),
                  Bind("memories", f"{ai}/memory", f"{CACHE}/ai/memory", True),
                  Bind("memory", f"{ai}/{memory}", f"{CACHE}/ai/{memory}", False)]
    return binds


def ai_dir(host_cache: str) -> str:
    """The host cache's ai/, the one spelling for every use. Joined, not concatenated: a host
    cache of / (refused for entering, but planned for --rm) would otherwise be //ai."""
    return posixpath.join(host_cache, "ai")


def memory_dir(checkout: str) -> str:
    """This checkout's memory, relative to the cache's ai/: memory/<basename>/<encoded path>."""
    return f"memory/{ai_repo(checkout)}/{ai_key(checkout)}"


class ContainerSpec(NamedTuple):
    name: str
    volume: str
    cell: str
    image: str
    platform: str
    workspace: str
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]
    # Files copied in before the container starts: (path in container, content).
    files: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = IDLE_COMMAND
    # Containment that holds against root inside: no device nodes, no file capabilities, and
    # a seccomp allowlist that refuses setuid/setgid bits and FIFOs (devshell/seccomp.py).
    cap_drop: tuple[str, ...] = CAP_DROP
    seccomp: str = ""
    profile: str = "standard"
    # An engine runtime by its daemon.json name; "" is the engine's default.
    runtime: str = ""
    pids_limit: int = 0
    memory_limit: int = 0
    # open: the engine's default network; allow: its own internal network, shared only with
    # its egress proxy (egress.py); none: loopback only (the engine's "none" network).
    network: str = DEFAULT_NETWORK

    @property
    def locked(self) -> bool:
        return self.profile == "locked"

    @property
    def security_opt(self) -> list[str]:
        # no-new-privileges: no setuid binary (sudo, su, one an agent finds) raises privilege.
        return [f"seccomp={self.seccomp}"] + (["no-new-privileges"] if self.locked else [])

    @property
    def tmpfs(self) -> dict[str, str]:
        return dict(LOCKED_TMPFS) if self.locked else {}

    def bake_env(self) -> dict[str, str]:
        """The environment init --bake runs in: what the image's converged state depends on,
        and nothing that differs per checkout (one baked image serves all of them). Every key
        here is also in the container's own env, so none the commit leaves in the image's
        config ever reaches a container with another value."""
        keep = ("HOME", "DEVSHELL_CELL", "DEVSHELL_DEV_UID", "DEVSHELL_DEV_GID", "DEVSHELL_DEV_HOME",
                "DEVSHELL_PATCHES_MOUNT", "DEVSHELL_CHECKOUT_MOUNT", "DEVSHELL_STATE_DIR",
                WORKSPACE_ENV, PROFILE_ENV, HOME_IN_VOLUME_ENV)
        env = dict(self.env)
        # (not the proxy's: a bake runs where the network is, and allow's proxy is not there)
        cell_keys = [k for k in env
                     if not k.startswith("DEVSHELL_") and k != "HOME" and k not in PROXY_ENV_KEYS]
        return {k: env[k] for k in (*keep, *cell_keys) if k in env}

    def baked_image(self, base_id: str) -> str:
        """The locked image's tag for the base image with this id: changes with anything
        init --bake reads (its env, init itself, the cell's setup)."""
        key = {"base": base_id, "env": self.bake_env(),
               "files": {p: hashlib.sha256(c.encode()).hexdigest() for p, c in self.files},
               # ... and the seccomp profile, which is baked in as BPF (seccomp_bpf.py)
               "seccomp": hashlib.sha256(self.seccomp.encode()).hexdigest()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return f"{BAKED_REPO}:{digest[:32]}"

    def identity(self) -> dict[str, Any]:
        """What decides reuse: a container whose identity differs is recreated."""
        return {
            "image": self.image,
            "platform": self.platform,
            # All that the engine is told of a mount: a container bound otherwise is recreated.
            "mounts": sorted([m.kind, m.source, m.target, m.read_only, m.non_recursive]
                             for m in self.mounts),
            "env": dict(self.env),
            "files": {p: hashlib.sha256(c.encode()).hexdigest()[:16] for p, c in self.files},
            "command": list(self.command),
            "cap_drop": sorted(self.cap_drop),
            "seccomp": hashlib.sha256(self.seccomp.encode()).hexdigest()[:16],
            "profile": self.profile,
            # What the profile means to the engine, so that a change of its meaning recreates.
            "read_only": self.locked, "tmpfs": self.tmpfs, "security_opt": self.security_opt[1:],
            "runtime": self.runtime,
            "limits": {"pids": self.pids_limit, "memory": self.memory_limit},
            "network": self.network,
        }

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def all_labels(self) -> dict[str, str]:
        return {**dict(self.labels), LABEL_CELL: self.cell, LABEL_HASH: self.hash(),
                LABEL_IDENTITY: json.dumps(self.identity(), sort_keys=True)}

    def run_argv(self) -> list[str]:
        """The equivalent `docker run`, for people and for fuzzing (the engine posts api_create())."""
        argv = ["docker", "run", "--detach", "--name", self.name, "--hostname", self.name,
                "--init", "--platform", self.platform, "--user", "0", "--workdir", self.workspace]
        for k, v in sorted(self.all_labels().items()):
            argv += ["--label", f"{k}={v}"]
        for m in self.mounts:
            argv += ["--mount", m.cli()]
        for k, v in self.env:
            argv += ["--env", f"{k}={v}"]
        for cap in self.cap_drop:
            argv += ["--cap-drop", cap]
        # The CLI reads the profile from a file; this rendering names it by content hash.
        argv += ["--security-opt", f"seccomp={self.seccomp_file()}"]
        if self.locked:
            argv += ["--security-opt", "no-new-privileges", "--read-only"]
            for path, options in self.tmpfs.items():
                argv += ["--tmpfs", f"{path}:{options}"]
        argv += [f"--pids-limit={self.pids_limit}", f"--memory={self.memory_limit}",
                 f"--memory-swap={self.memory_limit}"]
        if self.runtime:
            argv.append(f"--runtime={self.runtime}")
        if self.network == "none":
            argv += ["--network=none", "--add-host", f"{self.name}:{NO_NETWORK_SELF}"]
        elif self.network == "allow":
            argv += [f"--network={proxy_name(self.name)}", "--dns", DNS_NOWHERE,
                     *(f"--dns-option={o}" for o in DNS_OPTIONS),
                     *(f"--sysctl={k}={v}" for k, v in NO_IPV6)]
        # Under locked the container runs the baked image (baked_image), made from this one.
        return [*argv, self.image, *self.command]

    def seccomp_file(self) -> str:
        return f"devshell-seccomp-{hashlib.sha256(self.seccomp.encode()).hexdigest()[:16]}.json"

    def api_create(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The Engine API's POST /containers/create (query, body), translated from sdk_kwargs()
        as the docker SDK would: the engine speaks this directly, without importing the SDK."""
        k = self.sdk_kwargs()
        body = {
            "Image": k["image"], "Cmd": k["command"], "Hostname": k["hostname"], "User": k["user"],
            "WorkingDir": k["working_dir"], "Labels": k["labels"],
            "Env": [f"{name}={value}" for name, value in k["environment"].items()],
            "HostConfig": {"Init": k["init"], "Mounts": k["mounts"], "CapDrop": k["cap_drop"],
                           "SecurityOpt": k["security_opt"], "ReadonlyRootfs": k["read_only"],
                           "Tmpfs": k["tmpfs"], "PidsLimit": k["pids_limit"],
                           "Memory": k["mem_limit"], "MemorySwap": k["memswap_limit"]},
        }
        if k.get("runtime"):
            body["HostConfig"]["Runtime"] = k["runtime"]
        if k.get("network_mode"):
            body["HostConfig"]["NetworkMode"] = k["network_mode"]
        if k.get("extra_hosts"):
            body["HostConfig"]["ExtraHosts"] = [f"{h}:{a}" for h, a in k["extra_hosts"].items()]
        if k.get("dns"):
            body["HostConfig"].update(Dns=k["dns"], DnsOptions=k["dns_opt"], Sysctls=k["sysctls"])
        return {"name": k["name"], "platform": k["platform"]}, body

    def sdk_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for docker SDK ``containers.create``."""
        return {
            "image": self.image,
            "command": list(self.command),
            "name": self.name,
            "hostname": self.name,
            "platform": self.platform,
            "user": "0",
            "init": True,
            "working_dir": self.workspace,
            "labels": self.all_labels(),
            "mounts": [m.sdk() for m in self.mounts],
            "environment": dict(self.env),
            "cap_drop": list(self.cap_drop),
            "security_opt": self.security_opt,
            "read_only": self.locked,
            "tmpfs": self.tmpfs,
            "pids_limit": self.pids_limit,
            # Swap as large as memory: no swap on top, so a hog meets the limit, not the disk.
            "mem_limit": self.memory_limit,
            "memswap_limit": self.memory_limit,
            **({"runtime": self.runtime} if self.runtime else {}),
            **({"network_mode": "none", "extra_hosts": {self.name: NO_NETWORK_SELF}}
               if self.network == "none" else {}),
            **({"network_mode": proxy_name(self.name), "dns": [DNS_NOWHERE], "dns_opt": list(DNS_OPTIONS),
                "sysctls": dict(NO_IPV6)} if self.network == "allow" else {}),
            "detach": True,
        }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Name what changed between two identities, for the 'recreated because …' line."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"{key} ({', '.join(changed)})")
        elif key == "mounts" and isinstance(a, list) and isinstance(b, list):
            targets = sorted({m[2] for m in a if m not in b} | {m[2] for m in b if m not in a})
            out.append(f"mounts ({', '.join(targets)})")
        else:
            out.append(key)
    return out


def ai_repo(host_path: str) -> str:
    """Basename of the host checkout, for Windows and POSIX paths alike: one path component,
    never '.' or '..' (a POSIX name such as 'x\\..' ends in one), since it names a directory
    below the host cache's memory/."""
    parts = [p for p in host_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return parts[-1] if parts else "-"


_AI_KEY = {ord("/"): "-", ord("\\"): "-", ord(":"): "-"}


MAX_KEY_BYTES = 200  # a file name may hold 255 bytes; room for a suffix such as ".<digest>"


def ai_key(host_path: str) -> str:
    """The host path as one path component: '/', '\\' and ':' become '-' (Claude's encoding).
    A path too long for one file name keeps its first MAX_KEY_BYTES bytes and a digest of
    the whole, so a deep checkout still gets a drop dir and a memory dir of its own."""
    key = host_path.translate(_AI_KEY)
    raw = key.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return f"{raw[:MAX_KEY_BYTES - 9].decode('utf-8', 'ignore')}.{digest}"


def init_script() -> str:
    with open(os.path.join(os.path.dirname(__file__), "init.sh"), encoding="utf-8") as f:
        return f.read()


def container_name(cell: str, instance: str | None) -> str:
    return f"devshell-{cell}" + (f"-{instance}" if instance else "")


# How a runtime registered without a network reads in its label (engine.Runtime.__str__).
RUNTIME_WITHOUT_NETWORK = "no network"


def network_in_force(network: str, runtime: str) -> str:
    """What a devshell's network is: its spec's, but none under a runtime (as its label reads,
    labels.RUNTIME) registered without one, whatever the spec asked."""
    return "none" if RUNTIME_WITHOUT_NETWORK in runtime else network


def profile_of(opts: Options, cell: Cell) -> str:
    """The trust profile in force: the flag's, else the cell's. DevshellError for --as-root
    under a locked cell (the flag itself is refused with --profile locked at parse time)."""
    profile = opts.profile or cell.profile
    if profile == "locked" and opts.as_root:
        raise DevshellError(f"--as-root is refused: cell {cell.name} runs under the locked profile",
                            "drop --as-root, or pass --profile standard")
    return profile


def plan(opts: Options, cell: Cell, *, image: str | None = None,
         labels: dict[str, str] | None = None, init: str | None = None) -> ContainerSpec:
    """The container for these options and this cell. Pure: no Docker, no filesystem."""
    name = container_name(cell.name, opts.instance)
    profile = profile_of(opts, cell)
    mounts = [Mount("volume", name, cell.workspace),
              *(Mount("bind", b.source, b.target, b.read_only) for b in host_binds(opts))]
    env = {
        # ccache hashes paths below the workspace relative to it, as a seed's were (seeding.py):
        # the same everywhere, so a cell's env may not change it (cells.build).
        "CCACHE_BASEDIR": cell.workspace,
        "HOME": DEV_HOME,
        "DEVSHELL_CELL": cell.name,
        "DEVSHELL_DEV_UID": str(opts.uid),
        "DEVSHELL_DEV_GID": str(opts.gid),
        "DEVSHELL_DEV_HOME": DEV_HOME,
        "DEVSHELL_PATCHES_MOUNT": PATCHES,
        "DEVSHELL_CHECKOUT_MOUNT": CHECKOUT,
        "DEVSHELL_STATE_DIR": STATE_DIR,
        WORKSPACE_ENV: cell.workspace,
        "DEVSHELL_SRC": cell.src,
        "DEVSHELL_BUILD": cell.build,
        "DEVSHELL_CCACHE": cell.ccache,
        "DEVSHELL_INSTALL": cell.install,
        "DEVSHELL_AI_REPO": ai_repo(opts.checkout),
        "DEVSHELL_AI_REPO_ENCODED": ai_key(opts.checkout),
        PROFILE_ENV: profile,
    }
    if profile == "locked":
        env[HOME_IN_VOLUME_ENV] = posixpath.join(cell.workspace, HOME_IN_VOLUME)
    if opts.host_cache is not None:
        env["DEVSHELL_CACHE_MOUNT"] = CACHE
        env["DEVSHELL_AI_CONFIG"] = "ro" if opts.ai_config_ro else "rw"
    network = opts.network or cell.network
    if network == "allow":
        env.update(proxy_env())
    if opts.bind_ids:
        env["DEVSHELL_BIND_IDS"] = " ".join(f"{role}={ident}" for role, ident in opts.bind_ids)
    files = [(INIT_PATH, init if init is not None else init_script())]
    if cell.setup:
        files.append((SETUP_PATH, cell.setup))
    return ContainerSpec(
        name=name,
        volume=name,
        cell=cell.name,
        image=opts.image or image or cell.image,
        platform=cell.platform,
        workspace=cell.workspace,
        mounts=tuple(mounts),
        env=tuple(sorted({**dict(cell.env), **env}.items())),
        files=tuple(files),
        labels=tuple(sorted((labels or {}).items())),
        seccomp=seccomp_profile(),
        profile=profile,
        runtime=opts.runtime or "",
        network=network,
        pids_limit=cell.pids_limit,
        memory_limit=cell.memory_limit,
    )


class ExecSpec(NamedTuple):
    """One `docker exec` into a devshell; the session runs init, verify and the shell in one."""

    container: str
    argv: tuple[str, ...]
    workdir: str
    tty: bool = False
    # Names the entry (init records its pid under it), so that `init --stop` can end it.
    session_id: str = ""
    # Watch the container while the exec runs and end the CLI if it stops: under gVisor a
    # sandbox killed at its memory or pids limit leaves `docker exec` waiting forever.
    watch: bool = False

    def cli(self) -> list[str]:
        flags = ["--interactive"] + (["--tty"] if self.tty else [])
        return ["docker", "exec", *flags, "--user", "0", "--workdir", self.workdir,
                self.container, *self.argv]

    def stop_argv(self, signal_name: str) -> list[str]:
        """What stops this session's processes inside: signal_name, then KILL after a grace."""
        return [INIT_PATH, "--stop", self.session_id, signal_name]


def session(spec: ContainerSpec, opts: Options, *, script: str | None, tty: bool,
            session_id: str = "", watch: bool = False) -> ExecSpec:
    """Enter: init (skipped when the recorded hash matches and verify passes), verify, then
    drop to dev (or stay root with --as-root) and run the script or a login shell. session_id
    (hex) names the entry for `init --stop`."""
    argv = [INIT_PATH, "--session", spec.hash()]
    if session_id:
        argv += ["--session-id", session_id]
    if opts.as_root:
        argv.append("--as-root")
    if script is not None:
        argv += script_args(script)
    return ExecSpec(spec.name, tuple(argv), spec.workspace, tty=tty and script is None,
                    session_id=session_id, watch=watch)


def script_args(script: str) -> list[str]:
    """init's arguments for a script (text as read_script decodes it): the content and its
    hash. Bytes that are not UTF-8 (surrogates here) would not survive the docker CLI, which
    sends arguments as JSON (U+FFFD instead): such a script travels in base64. DevshellError
    when the argument would be longer than one exec argument may be."""
    raw = script.encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(raw).hexdigest()[:32]
    if script.isascii() or not any("\udc80" <= ch <= "\udcff" for ch in script):
        flag, content = "--script", script
    else:
        import base64

        flag, content = "--script-base64", base64.b64encode(raw).decode()
    if len(content.encode("utf-8", "surrogateescape")) >= MAX_EXEC_ARG:
        how = " (in base64, for its bytes that are not UTF-8)" if flag == "--script-base64" else ""
        raise DevshellError(f"the script{how} is longer than the {MAX_EXEC_ARG // 1024} KiB one exec "
                            "argument may be", "put large programs in the workspace and call them "
                            "from a small script")
    return [flag, content, "--script-id", digest]
