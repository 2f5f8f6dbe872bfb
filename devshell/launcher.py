"""Open a devshell: the sequence shared by the CLI and the pytest plugin.

Validate everything that can be validated before touching the engine, so bad input changes no
container, volume or file; then image -> volume -> container, and report what happened.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .cells import Cell
from .engine import Engine, ExecResult, Outcome, Progress, stderr_progress
from .errors import DevshellError, VerifyFailed
from .hostfs import config_problems, identity, may_write, open_dir
from .options import HostFacts, Options, check_binds
from .spec import (
    CACHE,
    CHECKOUT,
    INIT_PATH,
    LABEL_CELL,
    LABEL_HASH,
    PATCHES,
    ContainerSpec,
    container_name,
    plan,
    session,
)

MAX_SCRIPT_BYTES = 100 * 1024  # the script travels as one exec argument (Linux caps it at 128 KiB)
VERIFY_FAILED = 86  # init's exit code when the promised state does not hold


class Devshell(NamedTuple):
    """A running, not-yet-entered devshell and how it came to be."""

    spec: ContainerSpec
    opts: Options
    outcome: Outcome
    volume_created: bool
    engine: Engine

    @property
    def name(self) -> str:
        return self.spec.name

    def exec(self, argv: list[str], *, user: str = "0", workdir: str | None = None) -> ExecResult:
        return self.engine.exec(self.name, argv, user=user, workdir=workdir)

    def verify(self) -> ExecResult:
        return self.exec([INIT_PATH, "--verify"])

    def run(self, script: str) -> ExecResult:
        """Enter as the CLI does (init, verify, drop to dev) and run script, capturing output."""
        ex = session(self.spec, self.opts, script=script, tty=False)
        return self.engine.run_captured(ex)


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
    # checkout shares one drop dir.
    default = opts.patches_out == host.drop_dir(checkout)
    patches = host.drop_dir(real) if default else os.path.realpath(opts.patches_out)
    cache = None if opts.host_cache is None else os.path.realpath(opts.host_cache)
    # The same refusals as parse(), again after symlinks are resolved.
    check_binds(real, patches, cache, home)
    if os.path.lexists(patches):
        if not os.path.isdir(patches):
            raise DevshellError(f"patches dir {patches} is not a directory", "pass --patches-out DIR")
        if not may_write(os.stat(patches), opts.uid, opts.gid):
            raise DevshellError(f"dev ({opts.uid}:{opts.gid}) cannot write the patches dir {patches}, "
                                "and devshell never changes the owner or mode of a directory it did "
                                "not create", "omit --patches-out, or pass a directory that does not "
                                "exist yet")
    elif os.geteuid() != 0 and (opts.uid, opts.gid) != (os.getuid(), os.getgid()):
        raise DevshellError(f"only root can give a new patches dir to dev ({opts.uid}:{opts.gid})",
                            "drop --uid/--gid, or create the directory for that user first")
    if cache is not None:
        if os.path.lexists(cache) and not os.path.isdir(cache):
            raise DevshellError(f"host cache {cache} is not a directory", "pass --host-cache-dir DIR")
        ai = os.path.join(cache, "ai")
        for entry in (ai, os.path.join(ai, "memory")):
            if os.path.islink(entry) or (os.path.lexists(entry) and not os.path.isdir(entry)):
                raise DevshellError(f"{entry} is not a plain directory (a symlink is never followed)",
                                    f"replace {entry} with a directory")
        if opts.ai_config_ro and os.path.isdir(ai):
            problems = config_problems(ai, "memory")
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise DevshellError(f"the read-only AI config would not be: {problems[0]}{more}",
                                    "replace it with a plain copy of its content")
    return opts._replace(checkout=real, patches_out=patches, host_cache=cache)


def _dev_owner(opts: Options) -> tuple[int, int] | None:
    """Who gets the directories devshell creates: dev, where that needs root (a root host);
    else they are the host user's, who is dev."""
    mine = (os.getuid(), os.getgid())
    return None if (opts.uid, opts.gid) == mine or os.geteuid() != 0 else (opts.uid, opts.gid)


def prepare_host_dirs(opts: Options) -> Options:
    """Create what devshell owns (the drop dir, the host cache's ai/ dirs) and record the
    identity of every directory to bind. Walked without following links: a component swapped
    for a symlink since check_host_paths is an error here, and one swapped after this is
    caught inside, where init refuses a mount that is not the recorded directory."""
    owner = _dev_owner(opts)
    ids = []
    with open_dir(opts.checkout) as fd:
        ids.append((CHECKOUT, identity(fd)))
    with open_dir(opts.patches_out, create=0o700, owner=owner) as fd:
        ids.append((PATCHES, identity(fd)))
    if opts.host_cache is not None:
        # dev writes memory, and with --ai-config-rw ai/ and skills: those it gets if devshell
        # makes them. The host cache itself stays its maker's, searchable so dev gets through.
        for sub, target, mode, who in (("", CACHE, 0o711, None), ("/ai", f"{CACHE}/ai", 0o700, owner),
                                       ("/ai/skills", "", 0o700, owner),
                                       ("/ai/memory", f"{CACHE}/ai/memory", 0o700, owner)):
            with open_dir(opts.host_cache + sub, create=mode, owner=who) as fd:
                if target:
                    ids.append((target, identity(fd)))
    return opts._replace(bind_ids=tuple(sorted(ids)))


def bind_ids(opts: Options) -> tuple[tuple[str, str], ...] | None:
    """The identities prepare_host_dirs would record, by plain stat (the warm path); None when a
    directory is missing, which only the cold path creates."""
    targets = [(CHECKOUT, opts.checkout), (PATCHES, opts.patches_out)]
    if opts.host_cache is not None:
        targets += [(CACHE, opts.host_cache), (f"{CACHE}/ai", f"{opts.host_cache}/ai"),
                    (f"{CACHE}/ai/memory", f"{opts.host_cache}/ai/memory")]
    try:
        stats = [(target, os.stat(path)) for target, path in targets]
    except OSError:
        return None
    return tuple(sorted((target, f"{st.st_dev}:{st.st_ino}") for target, st in stats))


def read_script(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as e:
        raise DevshellError(f"--script {path}: {e.strerror}", "pass the path of a readable file") from None
    if len(data) > MAX_SCRIPT_BYTES or b"\0" in data:
        raise DevshellError(f"--script {path} is binary or larger than {MAX_SCRIPT_BYTES // 1024} KiB",
                            "put large programs in the workspace and call them from a small script")
    return data.decode("utf-8", "surrogateescape")


def open_devshell(opts: Options, cell: Cell, engine: Engine, *, labels: dict[str, str] | None = None,
                  progress: Progress = stderr_progress) -> Devshell:
    """Image, volume and container for opts (already checked by check_host_paths)."""
    # Warm path: a running container made from this very spec implies its image and volume,
    # and (the spec holds their identities) that it binds these very directories.
    ids = bind_ids(opts)
    if ids is not None:
        spec = plan(opts._replace(bind_ids=ids), cell, labels=labels)
        info = engine.inspect(spec.name)
        if (info is not None and info["State"]["Running"]
                and (info["Config"].get("Labels") or {}).get(LABEL_HASH) == spec.hash()):
            return Devshell(spec, opts._replace(bind_ids=ids), Outcome("reused"), False, engine)
    image = engine.ensure_image(cell, opts.image, progress)
    opts = prepare_host_dirs(opts)  # only now: bad input must leave no trace
    spec = plan(opts, cell, image=image, labels=labels)
    created = engine.ensure_volume(spec.volume, {**dict(spec.labels), LABEL_CELL: cell.name})
    try:
        outcome = engine.ensure_container(spec)
    except DevshellError:
        if created:  # an error leaves nothing behind that this run made
            engine.remove_volume(spec.volume)
        raise
    return Devshell(spec, opts, outcome, created, engine)


def enter(shell: Devshell, *, script: str | None, tty: bool) -> int:
    """Run init/verify and then the shell or script, in one exec. Returns its exit code."""
    code = shell.engine.session(session(shell.spec, shell.opts, script=script, tty=tty))
    if code == VERIFY_FAILED:
        status = shell.exec([INIT_PATH, "--status"])
        if status.exit_code:
            first = status.stdout.strip().splitlines()[:1] or ["see the log"]
            raise VerifyFailed(
                f"{shell.name} does not hold the promised state: {first[0]}",
                f"inspect it with docker exec -it {shell.name} {INIT_PATH} --verify",
            )
    return code


def remove(engine: Engine, cell: Cell, instance: str | None) -> bool:
    """--rm: the container goes; the volume (sources, build, ccache) and host cache stay."""
    name = container_name(cell.name, instance)
    engine.inspect_own(name)
    return engine.remove_container(name)
