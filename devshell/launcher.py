"""Open a devshell: the sequence shared by the CLI and the pytest plugin.

Validate everything that can be validated before touching the engine, so bad input changes no
container, volume or file; then image -> volume -> container, and report what happened.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, NamedTuple

from .cells import PATCHES, Cell
from .egress import EgressSpec, plan_egress, proxy_name
from .engine import Engine, ExecResult, Outcome, Progress, launch_lock, stderr_progress
from .errors import DevshellError, VerifyFailed, for_terminal
from .hostfs import config_problems, identity, identity_of, may_write, open_dir, read_regular, strict_problem
from .labels import RUNTIME
from .options import HostFacts, Options, check_binds
from .spec import (
    INIT_PATH,
    LABEL_CELL,
    LABEL_HASH,
    ContainerSpec,
    ai_dir,
    container_name,
    host_binds,
    network_in_force,
    plan,
    profile_of,
    script_args,
    session,
)

if TYPE_CHECKING:
    from .seeding import Marker

MAX_SCRIPT_BYTES = 100 * 1024  # the script travels as one exec argument (spec.MAX_EXEC_ARG)
VERIFY_FAILED = 86  # init's exit code when the promised state does not hold


class Devshell(NamedTuple):
    """A running, not-yet-entered devshell and how it came to be."""

    spec: ContainerSpec
    opts: Options
    outcome: Outcome
    volume_created: bool
    engine: Engine
    # The runtime it runs under, as the launch that made it read the engine's configuration
    # (labels.RUNTIME): "runc", "runsc (gVisor, no network)".
    runtime: str = "default"
    cell: Cell | None = None
    # The volume's seed as the launch left it (cold path, a cell with a seed: only then is it read).
    seed: Marker | None = None

    @property
    def gvisor(self) -> bool:
        return "gVisor" in self.runtime

    @property
    def network(self) -> str:
        """The network in force: open or none (the spec's, or none under the runtime)."""
        return network_in_force(self.spec.network, self.runtime)

    @property
    def name(self) -> str:
        return self.spec.name

    def exec(self, argv: list[str], *, user: str = "0", workdir: str | None = None) -> ExecResult:
        return self.engine.exec(self.name, argv, user=user, workdir=workdir)

    def verify(self) -> ExecResult:
        return self.exec([INIT_PATH, "--verify"])

    def run(self, script: str) -> ExecResult:
        """Enter as the CLI does (init, verify, drop to dev) and run script, capturing output."""
        ex = session(self.spec, self.opts, script=script, tty=False, watch=self.gvisor)
        return self.engine.run_captured(ex)

    def enter(self) -> None:
        """Enter once, so that init and verify have run: a DevshellError if they did not hold."""
        entered = self.run("true")
        if entered.exit_code:
            raise DevshellError(f"entering {self.name} failed ({entered.exit_code}): "
                                f"{for_terminal(entered.stderr.strip())}",
                                f"devshell {self.spec.cell} --verify says what does not hold")


def check_host_paths(opts: Options) -> Options:
    """Resolve symlinks in the host paths and refuse what cannot be bound. Reads only: nothing
    is created until the launch is known to be valid (prepare_host_dirs)."""
    checkout = opts.checkout
    if not os.path.exists(checkout):
        raise DevshellError(f"checkout {checkout} does not exist", "cd into it or pass --checkout DIR")
    if not os.path.isdir(checkout):
        raise DevshellError(f"checkout {checkout} is not a directory", "pass --checkout DIR")
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(checkout)
    host = HostFacts.current()
    # The default drop dir is keyed by the checkout's real path, so every spelling of one
    # checkout shares one drop dir; its parent is resolved like every other path (a home or
    # state dir may well be a symlink), its own name never is.
    default = not opts.patches_out or opts.patches_out == host.drop_dir(checkout)
    if default:
        drop = host.drop_dir(real)
        patches = os.path.join(os.path.realpath(os.path.dirname(drop)), os.path.basename(drop))
    else:
        patches = os.path.realpath(opts.patches_out)
    cache = None if opts.host_cache is None else os.path.realpath(opts.host_cache)
    # The same refusals as parse(), again after symlinks are resolved.
    check_binds(real, patches, cache, home)
    opts = opts._replace(checkout=real, patches_out=patches, host_cache=cache)
    trusted = ((os.getuid(), opts.uid), (os.getgid(), opts.gid))
    if os.path.lexists(patches):
        fix = (f"look at what is in it, then remove {patches}: devshell makes a new one" if default
               else "omit --patches-out, or pass a directory that does not exist yet")
        if not os.path.isdir(patches) or os.path.islink(patches):
            raise DevshellError(f"patches dir {patches} is not a directory", fix)
        st = os.stat(patches)
        why = strict_problem(st, *trusted)
        if why:  # root inside can chown and chmod what it has bound read-write
            raise DevshellError(f"patches dir {patches} {why}", fix)
        if not may_write(st, opts.uid, opts.gid):
            raise DevshellError(f"dev ({opts.uid}:{opts.gid}) cannot write the patches dir {patches}, "
                                "and devshell never changes the owner or mode of a directory it did "
                                "not create", fix)
    elif _needs_root_to_give(opts):
        raise DevshellError(f"only root can give a new patches dir to dev ({opts.uid}:{opts.gid})",
                            "drop --uid/--gid, or create the directory for that user first")
    if cache is not None:
        if os.path.lexists(cache) and not os.path.isdir(cache):
            raise DevshellError(f"host cache {cache} is not a directory", "pass --host-cache-dir DIR")
        missing = [b.source for b in host_binds(opts)[2:] if not os.path.lexists(b.source)]
        if missing and _needs_root_to_give(opts):
            raise DevshellError(f"only root can give the new {missing[0]} to dev ({opts.uid}:{opts.gid})",
                                "drop --uid/--gid, or create it for that user first")
        ai = ai_dir(cache)
        for path in (os.path.join(ai, "skills"), *(b.source for b in host_binds(opts) if b.source != ai)):
            if path.startswith(cache + "/"):
                _check_cache_entry(path, cache, trusted)
        settings = os.path.join(ai, "settings.json")
        if os.path.lexists(settings):
            _check_cache_entry(settings, cache, trusted, directory=False)
        if opts.ai_config_ro and os.path.isdir(ai):
            problems = config_problems(ai, "memory")
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise DevshellError(f"the read-only AI config would not be: {problems[0]}{more}",
                                    "replace it with a plain copy of its content")
    return opts


def _check_cache_entry(path: str, cache: str, trusted: tuple[tuple[int, int], tuple[int, int]],
                       *, directory: bool = True) -> None:
    """Every existing directory from the host cache down to path is a plain directory (path
    itself a plain file if not directory) that only the user and dev can change: the agent
    writes in there, and a symlink or a mode another user can write would hand the next
    session's configuration to someone else."""
    rel = os.path.relpath(path, cache).split(os.sep)
    for n in range(1, len(rel) + 1):
        here = os.path.join(cache, *rel[:n])
        if not os.path.lexists(here):
            return
        st = os.lstat(here)
        plain = stat.S_ISDIR(st.st_mode) if (directory or n < len(rel)) else stat.S_ISREG(st.st_mode)
        if not plain:
            kind = "directory" if directory or n < len(rel) else "file"
            raise DevshellError(f"{here} is not a plain {kind} (a symlink is never followed)",
                                f"replace {here} with a plain one")
        why = strict_problem(st, *trusted)
        if why:
            raise DevshellError(f"{here} {why}", f"chown/chmod {here} back, or remove it")


def _needs_root_to_give(opts: Options) -> bool:
    """dev is not the host user, and only root could give it a directory devshell makes."""
    return os.geteuid() != 0 and (opts.uid, opts.gid) != (os.getuid(), os.getgid())


def _dev_owner(opts: Options) -> tuple[int, int] | None:
    """Who gets the directories devshell creates: dev, where that needs root (a root host);
    else they are the host user's, who is dev."""
    mine = (os.getuid(), os.getgid())
    return None if (opts.uid, opts.gid) == mine or os.geteuid() != 0 else (opts.uid, opts.gid)


def prepare_host_dirs(opts: Options) -> Options:
    """Create what devshell owns (the drop dir, the host cache's ai/ dirs down to this
    checkout's memory) and record the identity of every directory to bind. Walked without
    following links: a component swapped for a symlink since check_host_paths is an error
    here, and one swapped after this is caught when the container has started."""
    owner = _dev_owner(opts)
    if opts.host_cache is not None:
        # The host cache itself stays its maker's; what devshell makes inside it is dev's,
        # who must pass through ai/ to memory (and, with --ai-config-rw, write skills).
        with open_dir(opts.host_cache, create=0o700):
            pass
        for sub in cache_dirs(opts):
            with open_dir(sub, create=0o700, owner=owner):
                pass
    ids = []
    for bind in host_binds(opts):
        with open_dir(bind.source, create=None if bind.role == "checkout" else 0o700, owner=owner) as fd:
            ids.append((bind.role, identity(fd)))
    return opts._replace(bind_ids=tuple(ids))


def cache_dirs(opts: Options) -> list[str]:
    """The directories devshell makes in a host cache, outermost first: ai/, its skills/, and
    those down to (not including) this checkout's memory dir."""
    if opts.host_cache is None:
        return []
    ai = ai_dir(opts.host_cache)
    memory = next(b.source for b in host_binds(opts) if b.role == "memory")
    return [ai, f"{ai}/skills", *_parents(memory, ai)]


def _parents(path: str, top: str) -> list[str]:
    """The directories strictly between top and path, outermost first."""
    out = []
    while (path := os.path.dirname(path)) != top and path.startswith(top + "/"):
        out.append(path)
    return out[::-1]


def bind_ids(opts: Options) -> tuple[tuple[str, str], ...] | None:
    """The identities prepare_host_dirs would record, by plain stat (the warm path); None when a
    directory is missing, which only the cold path creates."""
    try:
        stats = [(bind.role, os.stat(bind.source)) for bind in host_binds(opts)]
    except OSError:
        return None
    return tuple((role, identity_of(st)) for role, st in stats)


def check_alive(engine: Engine, spec: ContainerSpec, outcome: Outcome) -> dict[str, Any]:
    """A container that died as it started (an image without what idling needs, a cell env
    the image cannot run with) would fail every entry with the engine's words. Say it once;
    one made just now goes again (nothing ran in it), an older one is kept for its files."""
    info = engine.inspect(spec.name)
    if info is not None and info["State"]["Running"]:
        return info
    code = (info or {}).get("State", {}).get("ExitCode", "?")
    fresh = outcome.state != "reused"
    if fresh:
        engine.remove_container(spec.name)
    raise DevshellError(f"{spec.name} stopped as it started (exit {code})"
                        + ("; it was removed, its volume kept" if fresh else ""),
                        "check the cell's env and image, then launch again" if fresh else
                        f"see docker logs {spec.name}; devshell {spec.cell} --rm makes the next launch "
                        "start a new one (the volume is kept)")


def check_mounts_from_host(engine: Engine, spec: ContainerSpec, opts: Options,
                           info: dict[str, Any] | None = None) -> None:
    """After a start, ask the host kernel what the container really binds: the engine binds
    by path at every start, and init inside can be an agent's once root inside has replaced
    it. Through /proc/PID/root (a local engine, and a host user allowed to look: root); where
    that cannot be read, init's own check is what remains."""
    info = info or engine.inspect(spec.name)
    pid = (info or {}).get("State", {}).get("Pid") or 0
    if not pid:
        return
    want = dict(opts.bind_ids)
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            points = {_unescape_mountinfo(line.split(b" ")[4]) for line in f.read(1 << 20).splitlines()}
    except (OSError, IndexError):
        return  # not ours to read (or not this machine's process): the check cannot speak
    if PATCHES not in points:
        return  # not this container's mounts (an engine in a VM: the pid is the VM's)
    for bind in host_binds(opts):
        # The mount point itself, not one reached through a symlink root inside put in its way
        # (a moved /cache): mountinfo never follows links. Checked first: through such a
        # symlink, /proc/PID/root/<target> would not even stay inside the container.
        if bind.target not in points:
            why = "is not mounted where the spec put it (something inside moved it)"
        else:
            try:
                st = os.stat(f"/proc/{pid}/root{bind.target}")
            except OSError:
                return  # the mounts are readable, the directories are not ours to look at
            if identity_of(st) == want.get(bind.role):
                continue
            why = f"is not the host directory {bind.source} that was checked (it changed meanwhile)"
        engine.remove_container(spec.name)
        raise DevshellError(f"{bind.target} in {spec.name} {why}; the container was removed, its "
                            "volume kept", "launch again: a new container is made")


def _unescape_mountinfo(field: bytes) -> str:
    """mountinfo writes ' ', tab, newline and '\\' in paths as octal escapes."""
    import re

    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)
    return raw.decode("utf-8", "surrogateescape")


def read_script(path: str) -> str:
    """The script's bytes, as text that encodes back to exactly them (surrogateescape): bytes
    that are not UTF-8 travel unchanged. Only a regular file is a script: a FIFO, a device or a
    directory is refused at once (hostfs.read_regular)."""
    fix = "pass the path of a readable regular file"
    try:
        data = read_regular(path, MAX_SCRIPT_BYTES)
    except OSError as e:
        raise DevshellError(f"--script {path}: {e.strerror}", fix) from None
    if data is None:
        raise DevshellError(f"--script {path} is not a regular file", fix)
    if len(data) > MAX_SCRIPT_BYTES or b"\0" in data:
        raise DevshellError(f"--script {path} is binary or larger than {MAX_SCRIPT_BYTES // 1024} KiB",
                            "put large programs in the workspace and call them from a small script")
    if b"\r\n" in data:
        # The kernel would look for an interpreter named '/bin/sh\r' ('setpriv: … No such
        # file'), and the shell would run every line with a trailing \r.
        raise DevshellError(f"--script {path} has Windows (CRLF) line endings",
                            f"convert it: dos2unix {path}")
    text = data.decode("utf-8", "surrogateescape")
    script_args(text)  # too long to travel (base64 grows it): refused before anything is made
    return text


def open_devshell(opts: Options, cell: Cell, engine: Engine, *, labels: dict[str, str] | None = None,
                  progress: Progress = stderr_progress, learn: bool = False) -> Devshell:
    """Image, volume and container for opts (already checked by check_host_paths); under
    --network allow its network and proxy too (learn: a proxy that lets everything through
    and logs it, for `devshell net learn`)."""
    check_seed_flags(opts, cell)
    # Warm path: a running container made from this very spec implies its image and volume,
    # and (the spec holds their identities) that it binds these very directories.
    ids = bind_ids(opts)
    if ids is not None and not opts.reseed and not _seed_unfinished(cell, opts):
        spec = plan(opts._replace(bind_ids=ids), cell, labels=labels)
        info = engine.inspect(spec.name)
        if (info is not None and info["State"]["Running"] and not info["State"]["Paused"]
                and (info["Config"].get("Labels") or {}).get(LABEL_HASH) == spec.hash()
                and (spec.network != "allow" or egress_holds(engine, spec, info, opts, cell, labels, learn))):
            return Devshell(spec, opts._replace(bind_ids=ids), Outcome("reused"), False, engine,
                            (info["Config"].get("Labels") or {}).get(RUNTIME, "default"), cell)
    name = container_name(cell.name, opts.instance)
    allow = (opts.network or cell.network) == "allow"
    profile = profile_of(opts, cell)  # --as-root under a locked cell: refused before anything is made
    engine.refuse_foreign(name, cell.name)
    runtime = engine.runtime(opts.runtime or "")
    if runtime.kind == "gvisor" and profile != "locked":
        # gVisor leaves docker exec unfiltered; init installs devshell's filter itself, which
        # needs no-new-privileges, and sudo cannot live with that (seccomp_bpf.py).
        raise DevshellError(f"runtime {runtime} runs devshells only under --profile locked: it does not "
                            "apply the seccomp profile to sessions, and the filter devshell installs "
                            "itself needs no-new-privileges, which rules out sudo",
                            "add --profile locked, or pick another --runtime")
    if allow and not runtime.network:
        raise DevshellError(f"--network allow needs a network, and runtime {runtime} has none",
                            "pass --network none, or another --runtime")
    # A new volume's seed (or --reseed's) is fetched and checked before anything is made: a
    # bad checksum, source or manifest leaves no volume, and an old one as it was.
    fetched = None
    if cell.seed is not None and (opts.reseed or engine.volume_own(name, cell.name) is None):
        from .seeding import fetch  # (for a cell with a seed only: the warm path stays light)

        fetched = fetch(cell, progress)
    image = engine.ensure_image(cell, opts.image, progress)
    proxy_image = engine.ensure_proxy_image(progress) if allow else None
    # The lock first: a lock that cannot be taken (an unwritable cache dir) leaves no trace.
    with launch_lock(name):
        opts = prepare_host_dirs(opts)  # only now: bad input must leave no trace
        spec = plan(opts, cell, image=image, labels=labels)
        baked = engine.ensure_baked(spec, progress) if spec.locked else None
        if proxy_image is not None:
            # Before the devshell's container, which is made on the network this makes: a proxy
            # that cannot start stops the launch here, never a devshell with more network.
            ensure_egress(engine, spec, opts, cell, labels, learn)
        if fetched is not None or _seed_unfinished(cell, opts):
            # A seed is written only into a container no session runs in: a new one (an agent in
            # an old one could swap a tree for a link while the engine writes into it).
            found = engine.inspect_own(spec.name, cell.name)
            if found is not None:
                engine.remove_container(found["Id"])
        if fetched is not None:
            from .seeding import begin

            begin(engine, spec.volume, cell)
        created = engine.ensure_volume(spec.volume, {**dict(spec.labels), LABEL_CELL: cell.name})
        try:
            outcome = engine.ensure_container(spec, image=baked, runtime=runtime)
            info = None
            if outcome.started:  # the engine binds by path at every start
                info = check_alive(engine, spec, outcome)
                check_mounts_from_host(engine, spec, opts, info)
            if allow:
                check_attached(engine, spec, info or engine.inspect(spec.name) or {})
        except DevshellError:
            if created:  # an error leaves nothing behind that this run made
                engine.remove_volume(spec.volume)
            raise
        seed = None
        if cell.seed is not None:
            from .seeding import ensure

            # After the checks above, and outside their cleanup: a seed that fails halfway
            # leaves its marker partial, and the next launch does it again.
            seed = ensure(engine, container=spec.name, volume=spec.volume, cell=cell, uid=opts.uid,
                          gid=opts.gid, locked=spec.locked, fetched=fetched, created=created,
                          # (a stopped container that was started again runs no session either)
                          fresh=outcome.state != "reused" or outcome.why == "started",
                          reseed=opts.reseed, clean=opts.clean, progress=progress)
    described = str(runtime)
    if outcome.state == "reused":
        # Kept from an earlier launch, it runs under the runtime as registered then (a changed
        # daemon.json does not reach a running sandbox): its label says how.
        info = info or engine.inspect(spec.name) or {}
        described = (info.get("Config", {}).get("Labels") or {}).get(RUNTIME, "default")
    return Devshell(spec, opts, outcome, created, engine, described, cell, seed)


def check_seed_flags(opts: Options, cell: Cell) -> None:
    """--reseed needs a seed to take: refused before anything, the engine included, is asked."""
    if opts.reseed and cell.seed is None:
        raise DevshellError(f"--reseed: cell {cell.name} declares no seed",
                            f"add seed: {{from: DIR-or-URL, key: KEY, manifest_sha256: SHA}} to "
                            f"{cell.source}")


def _seed_unfinished(cell: Cell, opts: Options) -> bool:
    """A cell with a seed whose last seeding a killed launch left half done: never reused warm."""
    if cell.seed is None:
        return False
    from .seeding import unfinished

    return unfinished(cell, container_name(cell.name, opts.instance))


# --- egress (--network allow) -----------------------------------------------------------------


def _proxy_user(opts: Options, log_dir: str) -> tuple[int, int]:
    """Who the proxy runs as: whoever owns its log dir (an earlier launch with other --uid may
    have made it), else whom devshell gives the one it makes. Never root: squid as root would
    change to its own user, who could not write the log."""
    try:
        st = os.stat(log_dir)
    except OSError:
        st = None
    if st is not None and st.st_uid != 0:
        return st.st_uid, st.st_gid
    return _dev_owner(opts) or (os.getuid(), os.getgid())


def _egress_spec(spec: ContainerSpec, opts: Options, cell: Cell, network: dict[str, Any],
                 labels: dict[str, str] | None, learn: bool) -> EgressSpec:
    subnet = network["IPAM"]["Config"][0]["Subnet"]
    log_dir = HostFacts.current().egress_dir(spec.name)
    return plan_egress(spec.name, cell, subnet, log_dir, _proxy_user(opts, log_dir), labels=labels,
                       learn=learn)


def egress_holds(engine: Engine, spec: ContainerSpec, info: dict[str, Any], opts: Options, cell: Cell,
                 labels: dict[str, str] | None, learn: bool) -> bool:
    """The warm path's check of allow: the devshell is on its egress network alone, and that
    network's proxy runs with this policy. False sends the launch down the cold path, which
    starts or remakes what is missing (or refuses)."""
    name = proxy_name(spec.name)
    if set((info.get("NetworkSettings") or {}).get("Networks") or {}) != {name}:
        return False
    network = engine.egress_network(name, cell.name)
    if network is None:
        return False
    proxy = engine.inspect(name)
    return (proxy is not None and proxy["State"]["Running"] and not proxy["State"]["Paused"]
            and (proxy["Config"].get("Labels") or {}).get(LABEL_HASH)
            == _egress_spec(spec, opts, cell, network, labels, learn).hash())


def ensure_egress(engine: Engine, spec: ContainerSpec, opts: Options, cell: Cell,
                  labels: dict[str, str] | None, learn: bool) -> str:
    """The devshell's egress network, log dir and running proxy (under the launch lock)."""
    name = proxy_name(spec.name)
    log_dir = HostFacts.current().egress_dir(spec.name)
    parent = os.path.realpath(os.path.dirname(log_dir))
    with open_dir(os.path.join(parent, os.path.basename(log_dir)), create=0o700, owner=_dev_owner(opts)):
        pass
    probe = plan_egress(spec.name, cell, "0.0.0.0/0", log_dir, _proxy_user(opts, log_dir), labels=labels)
    network = engine.ensure_egress_network(name, probe.network_body())
    return engine.ensure_proxy(_egress_spec(spec, opts, cell, network, labels, learn))


def restore_policy(shell: Devshell) -> None:
    """After net learn's session: the proxy goes back to the cell's policy."""
    assert shell.cell is not None
    with launch_lock(shell.name):
        ensure_egress(shell.engine, shell.spec, shell.opts, shell.cell, dict(shell.spec.labels), False)


def check_attached(engine: Engine, spec: ContainerSpec, info: dict[str, Any]) -> None:
    """Fail closed: a devshell under allow attached to any network besides its egress network
    (someone ran docker network connect) has a way out that bypasses the proxy."""
    attached = sorted((info.get("NetworkSettings") or {}).get("Networks") or {})
    if attached != [proxy_name(spec.name)]:
        engine.remove_container(spec.name)
        raise DevshellError(f"{spec.name} is on networks {', '.join(attached) or 'none'}, not its egress "
                            f"network alone; the container was removed, its volume kept",
                            "launch again: a new container is made on its egress network only")


def enter(shell: Devshell, *, script: str | None, tty: bool) -> int:
    """Run init/verify and then the shell or script, in one exec. Returns its exit code."""
    code = shell.engine.session(session(shell.spec, shell.opts, script=script, tty=tty,
                                        session_id=os.urandom(8).hex(), watch=shell.gvisor))
    if code not in (0, VERIFY_FAILED):
        # A container stopped, paused or removed under the session: the docker CLI says so in
        # its own words with a program's exit code (1, 126, 137). Say it plainly, and that the
        # next launch recovers. (One inspect, on failures only.)
        info = shell.engine.inspect(shell.name)
        if code == 137 and info is not None and info["State"]["Running"]:
            info = settled(shell)  # a killed container's exec ends before the engine says so
        state = ("removed" if info is None else "paused" if info["State"]["Paused"]
                 else "running" if info["State"]["Running"] else "stopped")
        if state != "running":
            if info is not None and info["State"].get("OOMKilled"):
                state += f" at its memory limit ({shell.spec.memory_limit >> 20} MiB)"
            raise DevshellError(f"{shell.name} was {state} during the session (it ended with exit {code})",
                                "launch again: devshell starts or re-creates it; the volume is kept")
    if code == VERIFY_FAILED:
        status = shell.exec([INIT_PATH, "--status"])
        if status.exit_code:
            first = status.stdout.strip().splitlines()[:1] or ["see the log"]
            raise VerifyFailed(
                f"{shell.name} does not hold the promised state: {first[0]}",
                f"inspect it with docker exec -it {shell.name} {INIT_PATH} --verify",
            )
    return code


def settled(shell: Devshell, bound: float = 2.0) -> dict[str, Any] | None:
    """The container's inspect once it has stopped running, or (still running) after bound
    seconds. The suites wait on a sandbox killed at a limit with it too."""
    import time

    deadline = time.monotonic() + bound
    while True:
        info = shell.engine.inspect(shell.name)
        if info is None or not info["State"]["Running"] or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def remove(engine: Engine, cell: Cell, instance: str | None) -> bool:
    """--rm: the container goes; the volume (sources, build, ccache) and host cache stay."""
    name = container_name(cell.name, instance)
    info = engine.inspect_own(name, cell.name)  # never another cell's, nor one devshell did not make
    # By id: what goes is the container just checked, even if the name was taken again meanwhile.
    return info is not None and engine.remove_container(info["Id"])
