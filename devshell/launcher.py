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
from .options import Options, check_cache_dir, check_patches_dir
from .spec import INIT_PATH, LABEL_CELL, LABEL_HASH, ContainerSpec, container_name, plan, session

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
    """Resolve symlinks and refuse what cannot be a patches dir. Reads the filesystem only."""
    patches = opts.patches_out
    if not os.path.exists(patches):
        raise DevshellError(f"patches dir {patches} does not exist", "create it or pass --patches-out DIR")
    if not os.path.isdir(patches):
        raise DevshellError(f"patches dir {patches} is not a directory", "pass --patches-out DIR")
    # The same refusals as parse(), again after symlinks are resolved.
    home = os.path.realpath(os.path.expanduser("~"))
    real = os.path.realpath(patches)
    check_patches_dir(real, home)
    cache = opts.host_cache
    if cache is not None:
        if os.path.exists(cache) and not os.path.isdir(cache):
            raise DevshellError(f"host cache {cache} is not a directory", "pass --host-cache-dir DIR")
        cache = os.path.realpath(cache)
        check_cache_dir(cache, real, home)
        # ai/ and ai/memory are bound by path, and the engine would follow a symlink there on
        # the host: one planted from inside (with --ai-config-rw) must not lead anywhere.
        for part in ("ai", "ai/memory"):
            entry = os.path.join(cache, part)
            if os.path.islink(entry) or (os.path.lexists(entry) and not os.path.isdir(entry)):
                raise DevshellError(f"{entry} is not a plain directory (a symlink is never followed)",
                                    f"replace {entry} with a directory")
    # A checkout's .git is bound read-only; a symlink named .git (the agent can plant one in a
    # plain patches dir) would make the engine bind whatever it points to, so it is not bound.
    dot_git = os.path.join(real, ".git")
    is_git = os.path.lexists(dot_git) and not os.path.islink(dot_git)
    return opts._replace(patches_out=real, host_cache=cache, patches_git=dot_git if is_git else None)


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
    # Warm path: a running container made from this very spec implies its image and volume.
    spec = plan(opts, cell, labels=labels)
    info = engine.inspect(spec.name)
    if (info is not None and info["State"]["Running"]
            and (info["Config"].get("Labels") or {}).get(LABEL_HASH) == spec.hash()
            and (opts.host_cache is None or os.path.isdir(opts.host_cache))):
        return Devshell(spec, opts, Outcome("reused"), False, engine)
    image = engine.ensure_image(cell, opts.image, progress)
    spec = plan(opts, cell, image=image, labels=labels)
    if opts.host_cache is not None:  # only now: bad input must leave no trace
        for part in ("skills", "memory"):
            try:
                os.makedirs(os.path.join(opts.host_cache, "ai", part), exist_ok=True)
            except OSError as e:
                raise DevshellError(f"cannot create {opts.host_cache}/ai/{part} ({e.strerror})",
                                    "pass a writable --host-cache-dir") from None
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
