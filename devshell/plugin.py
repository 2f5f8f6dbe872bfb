"""pytest plugin: ``--cell`` and fixtures that open real devshells through the launcher's own code.

Registered through the ``pytest11`` entry point, so any repository that installs devshell gets
these fixtures with nothing but ``pytest --cell=NAME``. Public API: see docs/fixtures.md.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import subprocess
import sys
import warnings
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import cells, labels
from .cells import Cell
from .egress import proxy_name
from .engine import Engine, ExecResult, pid_alive
from .errors import DevshellError, for_terminal
from .hostfs import empty_dir
from .launcher import Devshell, cache_dirs, check_host_paths, open_devshell
from .options import Options, dev_ids, state_dir, to_argv
from .spec import INIT_LOG, INIT_PATH, container_name, host_binds

if TYPE_CHECKING:
    from .container import DevshellContainer

LABEL_RUN = labels.TEST_RUN
LABEL_PID = labels.TEST_PID
# dev's uid/gid in the fixtures' devshells unless a test passes its own: the user running
# pytest (root's becomes 1000), so what a devshell writes is theirs to read and remove.
DEV_UID, DEV_GID = dev_ids(os.getuid(), os.getgid())


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("devshell", "devshell: hermetic development containers")
    group.addoption("--cell", default=None, metavar="NAME",
                    help=f"cell the devshell fixtures open (default: {cells.DEFAULT_CELL})")
    group.addoption("--cells-dir", action="append", default=[], metavar="DIR", dest="devshell_cells_dirs",
                    help="also look for cells in DIR (repeatable)")
    group.addoption("--profile", default=None, choices=cells.PROFILES, dest="devshell_profile",
                    help="trust profile the devshell fixtures open (default: the cell's)")
    group.addoption("--runtime", default=None, metavar="NAME", dest="devshell_runtime",
                    help="engine runtime the devshell fixtures open under, e.g. runsc")
    group.addoption("--devshell-reuse", action="store_true", dest="devshell_reuse",
                    help="let the devshells the fixtures open survive the run, and re-enter them in "
                         "the next (keyed by everything but per-run paths; /patches and the host "
                         "cache are emptied at the start of each run, the workspace is kept)")
    group.addoption("--devshell-keep-failed", action="store_true", dest="devshell_keep_failed",
                    help="keep the devshells of failed tests (their names and how to enter them are "
                         "printed) instead of removing them at the end of the run")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("devshell_reuse") and not config.pluginmanager.has_plugin("cacheprovider"):
        raise pytest.UsageError("--devshell-reuse keeps its devshells' paths in pytest's cache dir: "
                                "drop -p no:cacheprovider")
    # --cell asks for real containers: with no engine, stop the run with one line rather than
    # letting it end as a green run of nothing.
    if config.getoption("--cell") is not None:
        try:
            Engine.connect()
        except DevshellError as e:
            raise pytest.UsageError(f"--cell={config.getoption('--cell')}: {e}") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # testcontainers' reaper (Ryuk) cannot be pulled offline. A run that uses these fixtures
    # sweeps by label instead (docs/fixtures.md says how to label your own containers so they
    # are swept too), so only such a run turns the reaper off, before any container starts
    # (testcontainers reads the variable when it starts its first); merely installing devshell
    # changes nothing.
    if any(name.startswith("devshell") for item in items for name in getattr(item, "fixturenames", ())):
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        config_module = sys.modules.get("testcontainers.core.config")
        if config_module is not None and os.environ["TESTCONTAINERS_RYUK_DISABLED"] == "true":
            # A test module that imported testcontainers has its configuration made already.
            config_module.testcontainers_config.ryuk_disabled = True


def pytest_report_header(config: pytest.Config) -> str:
    cell = config.getoption("--cell") or cells.DEFAULT_CELL
    profile = config.getoption("devshell_profile") or "the cell's"
    runtime = config.getoption("devshell_runtime") or "the engine's default"
    return f"devshell: --cell={cell}, profile {profile}, runtime {runtime}, test run {_run_id(config)}"


_RUN = pytest.StashKey[str]()


def _run_id(config: pytest.Config) -> str:
    """This run's id, labelled on everything it creates. An xdist worker extends the
    controller's id with its own number, so workers never share a container name."""
    if _RUN not in config.stash:
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and "devshell_run" in workerinput:
            run = f"{workerinput['devshell_run']}w{workerinput['workerid'].removeprefix('gw')}"
        else:
            run = secrets.token_hex(4)
        config.stash[_RUN] = run
    return config.stash[_RUN]


def _readable_dirs(*paths: Path) -> None:
    """Directories made (if missing) readable by dev, whatever the umask, as a user's checkout
    usually is; one that exists is left as it is."""
    for path in paths:
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            continue
        path.chmod(0o755)


def _stable_paths(base: Path, host_cache: bool | str | Path) -> tuple[Path, Path, Path | bool]:
    """A shared or reused devshell's checkout, drop dir and host cache (or none): the same
    paths for every worker and run that asks for it, so its spec, and its container, is too."""
    _readable_dirs(base, base / "checkout")
    return base / "checkout", base / "patches", base / "host-cache" if host_cache else False


def _shared_run_id(config: pytest.Config) -> str:
    """The run's id as the controller and all its xdist workers know it."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["devshell_run"]) if workerinput and "devshell_run" in workerinput \
        else _run_id(config)


def _reuse_dir(config: pytest.Config) -> Path | None:
    """--devshell-reuse: the project's own place for reused devshells' paths (pytest's cache dir)."""
    if not config.getoption("devshell_reuse", False) or config.cache is None:  # checked at configure
        return None
    return Path(config.cache.mkdir("devshell-reuse"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's run id and owner to each worker."""
    node.workerinput["devshell_run"] = _run_id(node.config)
    node.workerinput["devshell_owner"] = f"{os.uname().nodename}:{os.getpid()}"


def _controller_labels(config: pytest.Config) -> dict[str, str] | None:
    """An xdist worker's labels for what the controller owns (None outside xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or "devshell_owner" not in workerinput:
        return None
    return {LABEL_RUN: str(workerinput["devshell_run"]), LABEL_PID: str(workerinput["devshell_owner"])}


def _shared_marker(run: str) -> str:
    """Made by a worker that opened a shared devshell: the controller then sweeps its run."""
    return _state("tests-shared", run)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if getattr(config, "workerinput", None) is not None or _RUN not in config.stash:
        return
    marker = _shared_marker(_run_id(config))
    if os.path.isdir(marker):  # the workers are all done: the devshells they shared go now
        try:
            _remove_run(Engine.connect(), _run_id(config))
        except DevshellError as e:
            warnings.warn(f"devshell: the devshells this run's workers shared are left: {e}",
                          LeftoverWarning, stacklevel=1)
        os.rmdir(marker)


@pytest.fixture(scope="session")
def devshell_cells_path(pytestconfig: pytest.Config) -> list[str]:
    """Where cells are looked up: --cells-dir, then DEVSHELL_CELLS_PATH, then the shipped ones."""
    dirs = [os.path.abspath(d) for d in pytestconfig.getoption("devshell_cells_dirs")]
    return cells.search_path(dirs)


@pytest.fixture(scope="session")
def devshell_cell(pytestconfig: pytest.Config, devshell_cells_path: list[str]) -> Cell:
    """The Cell named by --cell."""
    name = pytestconfig.getoption("--cell") or cells.DEFAULT_CELL
    try:
        return cells.find(name, devshell_cells_path)
    except DevshellError as e:
        pytest.fail(f"--cell={name}: {e}", pytrace=False)


@pytest.fixture(scope="session")
def devshell_engine() -> Engine:
    """The Docker engine. No engine fails the tests that need it, loudly: never a green zero."""
    try:
        return Engine.connect()
    except DevshellError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def devshell_run_labels(pytestconfig: pytest.Config, devshell_engine: Engine) -> Iterator[dict[str, str]]:
    """Labels on everything this run creates; swept at the end, and at the next run's start if
    this process was killed."""
    _sweep_orphans(devshell_engine)
    run = _run_id(pytestconfig)
    labels = {LABEL_RUN: run, LABEL_PID: f"{os.uname().nodename}:{os.getpid()}"}
    yield labels
    kept = pytestconfig.stash.get(_KEPT, set())
    if kept:  # recorded first: a sweep of a later run must leave them too
        _record_kept(kept)
    _remove_run(devshell_engine, run, keep=kept)


def _remove_run(engine: Engine, run: str, keep: Collection[str] = ()) -> None:
    # By name first: devshells the CLI (re)created carry no run label, and a volume they still
    # use could not be removed by label.
    keep = {*keep, *_kept_by_earlier_runs()}
    left = engine.remove_all({"name": instance_prefix(run)}, keep)
    left += engine.remove_all({"label": f"{LABEL_RUN}={run}"}, keep)
    if left:
        # Not an error (the engine is still at them), but said, as a warning (pytest shows it
        # in its summary, from xdist workers too): one without the run label is found by no
        # later sweep, only by `devshell doctor` or by name.
        warnings.warn(f"devshell: test run {run}: the engine is still removing or using "
                      f"{', '.join(sorted(set(left)))}; left for now (docker rm -f / docker volume rm)",
                      LeftoverWarning, stacklevel=2)


# --devshell-keep-failed: what a run kept is recorded on the host, one empty file per name, so
# that no later run's sweep removes it; `devshell down` (or docker rm) does, when you are done.
_KEPT = pytest.StashKey[set[str]]()


def _state(*parts: str) -> str:
    """A path in devshell's state dir (XDG_STATE_HOME/devshell) of the user running pytest."""
    return os.path.join(state_dir(os.path.expanduser("~"), os.environ), *parts)


def _kept_dir() -> str:
    return _state("tests-kept")


def _record_kept(names: Collection[str]) -> None:
    os.makedirs(_kept_dir(), mode=0o700, exist_ok=True)
    for name in names:
        open(os.path.join(_kept_dir(), name), "w").close()


def _kept_by_earlier_runs() -> list[str]:
    try:
        return os.listdir(_kept_dir())
    except OSError:
        return []


class LeftoverWarning(UserWarning):
    """A test run's container or volume the engine would not remove yet."""


def instance_prefix(run: str) -> str:
    return f"-t{run}-"


def _sweep_orphans(engine: Engine) -> None:
    here = os.uname().nodename
    for found in engine.labelled(LABEL_RUN):
        host, _, pid = found.get(LABEL_PID, "").partition(":")
        if host == here and pid.isdigit() and not pid_alive(int(pid)):
            _remove_run(engine, found[LABEL_RUN])


@pytest.fixture(scope="session")
def devshell_instance(devshell_run_labels: dict[str, str]) -> Callable[[], str]:
    """New --instance names for this run; whatever carries one is removed at the end."""
    counter = itertools.count(1)
    run = devshell_run_labels[LABEL_RUN]
    return lambda: f"t{run}-{next(counter)}"


@pytest.fixture(scope="session")
def devshell_profile(pytestconfig: pytest.Config, devshell_cell: Cell) -> str:
    """The trust profile the fixtures open devshells under: --profile, else the cell's."""
    return str(pytestconfig.getoption("devshell_profile") or devshell_cell.profile)


@pytest.fixture(scope="session")
def devshell_runtime(pytestconfig: pytest.Config) -> str | None:
    """The engine runtime the fixtures open devshells under (--runtime); None: the default."""
    value = pytestconfig.getoption("devshell_runtime")
    return str(value) if value else None


class DevshellFactory:
    """Opens devshells for one test run; the `devshell_factory` fixture is one. Each `open()` is
    a new container and volume named for the run (or an earlier one's `instance`), removed at
    the run's end, like the paths it makes below pytest's temporary directory; but for
    open(shared=True) under xdist (one for all workers, removed by the controller) and, with
    --devshell-reuse, one that outlives the run (docs/fixtures.md)."""

    def __init__(self, *, cell: Cell, cells_path: list[str], engine: Engine, run_labels: dict[str, str],
                 new_instance: Callable[[], str], tmp_path_factory: pytest.TempPathFactory,
                 profile: str | None = None, runtime: str | None = None,
                 progress: Callable[[str], None] | None = None, reuse_dir: Path | None = None,
                 run: str = "", shared_labels: dict[str, str] | None = None) -> None:
        self.cell = cell
        self.cells_path = cells_path
        self.engine = engine
        self.run_labels = run_labels
        self.new_instance = new_instance
        self.tmp_path_factory = tmp_path_factory
        self.profile = profile
        self.runtime = runtime
        self.progress = progress or _stderr_progress
        # Every devshell opened, in order: a failed test's report describes those it opened.
        self.opened: list[Devshell] = []
        # --devshell-reuse: where reused devshells keep their paths (below pytest's cache dir),
        # and this run's id as every xdist worker shares it (the controller's).
        self.reuse_dir = reuse_dir
        self.run = run
        # Under xdist: the controller's labels, for the devshell the workers share (open(shared=True)).
        self.shared_labels = shared_labels

    def open(self, cell: str | Cell | None = None, *, uid: int = DEV_UID, gid: int = DEV_GID,
             checkout: str | Path | None = None, patches_out: str | Path | None = None,
             host_cache: bool | str | Path = True,
             image: str | None = None, instance: str | None = None,
             ai_config_rw: bool = False, profile: str | None = None,
             runtime: str | None = None, network: str | None = None, shared: bool = False) -> Devshell:
        """A devshell of `cell` (default: --cell's; a Cell as is, e.g. a test's variant with other
        limits, or a name), opened but not yet entered; see docs/fixtures.md for the rest."""
        the_cell = self._cell(cell)
        labels, reused = self.run_labels, False
        per_run_paths = (instance is None and checkout is None and patches_out is None
                         and host_cache in (True, False))

        def spec_key(*scope: str) -> str:
            """All that makes the devshell but its per-run paths (and where it is kept)."""
            return hashlib.sha256(repr((*scope, the_cell, uid, gid, bool(host_cache), image, ai_config_rw,
                                        profile or self.profile, runtime or self.runtime,
                                        network)).encode()).hexdigest()

        if shared and self.shared_labels is not None and self.reuse_dir is None and per_run_paths:
            # Under xdist: one devshell for every worker that asks for the same one, made by the
            # first under the launcher's lock (the others find it running: the warm path), on
            # paths all of them name alike, and labelled with the controller's run, which
            # removes it once, when every worker is done (a crashed controller's, the next
            # run's sweep).
            key = spec_key()[:8]
            instance, labels = f"t{self.run}-s{key}", self.shared_labels
            checkout, patches_out, host_cache = _stable_paths(
                self.tmp_path_factory.getbasetemp().parent / f"devshell-shared-{key}", host_cache)
            os.makedirs(_shared_marker(self.run), mode=0o700, exist_ok=True)
        elif self.reuse_dir is not None and per_run_paths:
            # Keyed by all that makes it but the per-run paths, which a reused devshell keeps
            # below the cache dir instead; no run label, and a name the run's sweep does not
            # match, so it outlives the run.
            instance, labels, reused = f"r{spec_key(str(self.reuse_dir))[:12]}", {}, True
            checkout, patches_out, host_cache = _stable_paths(self.reuse_dir / instance, host_cache)
        if checkout is None or patches_out is None or host_cache is True:
            # New paths, which devshell creates (and so may give to dev); a checkout readable
            # by dev, as a user's usually is (pytest makes its temporary directories 0700).
            scratch = self.tmp_path_factory.mktemp("devshell-")
            scratch.chmod(0o755)
            if checkout is None:
                checkout = scratch / "checkout"
                checkout.mkdir(mode=0o755)
            patches_out = patches_out or scratch / "patches"
            if host_cache is True:
                host_cache = scratch / "host-cache"
        opts = Options(cell=the_cell.name, checkout=str(checkout), patches_out=str(patches_out),
                       host_cache=str(host_cache) if host_cache else None, image=image,
                       instance=instance or self.new_instance(), uid=uid, gid=gid,
                       ai_config_ro=not ai_config_rw,
                       cells_dirs=tuple(str(p) for p in self.cells_path[:-1]),
                       profile=profile or self.profile, runtime=runtime or self.runtime, network=network)
        if reused:
            opts = self._ready_for_this_run(opts, the_cell)
        opts = check_host_paths(opts)
        shell = open_devshell(opts, the_cell, self.engine, labels=labels, progress=self.progress)
        self.opened.append(shell)
        return shell

    def _ready_for_this_run(self, opts: Options, cell: Cell) -> Options:
        """A reused devshell's drop dir and host cache start each run empty (what the last run's
        agent left there is not this run's), once, whichever xdist worker opens it first; the
        directories bound into its container stay, so its mounts stay what they were. Its
        container is paused meanwhile: nothing inside can race the walk. What cannot be
        emptied or no longer passes the checks (root inside may chmod what it had bound, or
        leave root's files in /patches) is not this run's to fix: the devshell is removed and
        its directories set aside, and the run starts from a new one."""
        from filelock import FileLock

        assert self.reuse_dir is not None and opts.instance is not None
        base = self.reuse_dir / opts.instance
        marker = base / "emptied-for-run"
        name = container_name(cell.name, opts.instance)
        with FileLock(str(base) + ".lock"):
            if marker.exists() and marker.read_text() == self.run:
                return opts
            # Every path below base, spelt from base's real path (empty_dir walks a link-free
            # path); nothing below base is resolved: that is where the agent writes.
            real = os.path.realpath(base)

            def below_real(path: str) -> str:
                return real + path[len(str(base)):]

            keep = {below_real(p) for p in (*(b.source for b in host_binds(opts)), *cache_dirs(opts))}
            try:
                with self.engine.frozen(name):
                    for root in (opts.patches_out, opts.host_cache):
                        if root and os.path.isdir(root):
                            empty_dir(below_real(root), keep)
                check_host_paths(opts)
            except (DevshellError, OSError) as e:
                aside = f"{base}.set-aside-{self.run}"
                warnings.warn(f"devshell: the reused {name} is not fit for another run ({e}): removed, "
                              f"its directories set aside in {aside}", LeftoverWarning, stacklevel=2)
                self.engine.remove_all({"name": f"^/?{name}$"})
                os.rename(base, aside)
                _readable_dirs(base, base / "checkout")
            marker.write_text(self.run)
        return opts

    def container(self, cell: str | Cell | None = None, **options: Any) -> DevshellContainer:
        """The same devshell as open(cell, **options) would give, as a testcontainers container
        (devshell.container.DevshellContainer): opened and entered by start() or `with`, so it
        can first be put on a testcontainers Network with aliases."""
        from .container import DevshellContainer  # testcontainers only for those who ask

        the_cell = self._cell(cell)
        # A new instance unless one is named: never the run's shared or a reused devshell, which
        # other tests use while this one's stop() would remove it.
        options.setdefault("instance", self.new_instance())
        return DevshellContainer(lambda: self.open(the_cell, **options),
                                 planned_network=options.get("network") or the_cell.network,
                                 image=the_cell.image)

    def _cell(self, cell: str | Cell | None) -> Cell:
        # A Cell as is (a test's variant of the --cell cell, e.g. with other limits), or by name.
        return (self.cell if cell is None else cell if isinstance(cell, Cell)
                else cells.find(cell, self.cells_path))


@pytest.fixture(scope="session")
def devshell_factory(devshell_cell: Cell, devshell_cells_path: list[str], devshell_engine: Engine,
                     devshell_run_labels: dict[str, str], devshell_instance: Callable[[], str],
                     tmp_path_factory: pytest.TempPathFactory,
                     pytestconfig: pytest.Config) -> DevshellFactory:
    """The DevshellFactory of this run: `devshell_factory.open(...)` under --cell, --profile
    and --runtime (network: the cell's unless given)."""
    factory = DevshellFactory(cell=devshell_cell, cells_path=devshell_cells_path, engine=devshell_engine,
                              run_labels=devshell_run_labels, new_instance=devshell_instance,
                              tmp_path_factory=tmp_path_factory,
                              profile=pytestconfig.getoption("devshell_profile"),
                              runtime=pytestconfig.getoption("devshell_runtime"),
                              progress=_uncaptured_progress(pytestconfig),
                              reuse_dir=_reuse_dir(pytestconfig), run=_shared_run_id(pytestconfig),
                              shared_labels=_controller_labels(pytestconfig))
    pytestconfig.stash[_FACTORY] = factory
    return factory


@pytest.fixture(scope="session")
def devshell(devshell_factory: DevshellFactory) -> Devshell:
    """The --cell devshell, opened and entered once (init and verify have run): dev has the
    uid/gid of the user running pytest (root's: 1000), with a checkout, patches dir and host
    cache of its own; under xdist one for every worker, with --devshell-reuse one kept between runs."""
    shell = devshell_factory.open(shared=True)
    shell.enter()  # a DevshellError: one line in the report
    return shell


@pytest.fixture(scope="session")
def devshell_cli() -> Callable[..., ExecResult]:
    """Run the real CLI in a subprocess: devshell_cli(shell, "--script", path) re-enters the
    devshell `shell` with the flags that opened it, plus the given ones. The result is an
    ExecResult, as Devshell.run's is: one name, exit_code, for the exit status everywhere."""

    def run(shell: Devshell | None, *args: str, env: dict[str, str] | None = None,
            **options: Any) -> ExecResult:
        argv = to_argv(shell.opts._replace(**options)) if shell is not None else []
        done = subprocess.run([sys.executable, "-m", "devshell", *argv, *args],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})}, timeout=600)
        return ExecResult(done.returncode, done.stdout, done.stderr)

    return run


def tree_state(root: str | os.PathLike[str], *, skip: Sequence[str] = ()) -> dict[str, tuple[object, ...]]:
    """What is at root and below it, links never followed: for each entry (root itself is
    '.') its type, mode, owner and group, and a regular file's sha256 or a link's target. Only
    regular files are opened (a FIFO would block). skip: directories below root, relative,
    that are not walked. Two equal states mean nothing there changed; a root that is a file
    is one entry, not none."""
    import hashlib
    import stat

    root = os.fspath(root)
    out: dict[str, tuple[object, ...]] = {}

    def record(path: str) -> None:
        st = os.lstat(path)
        extra: object = None
        if stat.S_ISLNK(st.st_mode):
            extra = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                            st.st_uid, st.st_gid, extra)

    if not os.path.lexists(root):
        return out
    record(root)
    for dirpath, dirnames, filenames in os.walk(root):
        here = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(here, d)) not in skip]
        for name in [*dirnames, *filenames]:
            record(os.path.join(dirpath, name))
    return out


def _stderr_progress(line: str) -> None:
    sys.stderr.write(f"devshell: {line}\n")


def _uncaptured_progress(config: pytest.Config) -> Callable[[str], None]:
    """An image build takes a minute: its progress is shown even while pytest captures output,
    and from xdist workers too (whose own stderr pytest captures at the descriptor)."""
    capman = config.pluginmanager.getplugin("capturemanager")

    def progress(line: str) -> None:
        if capman is None:
            _stderr_progress(line)
            return
        with capman.global_and_fixture_disabled():
            _stderr_progress(line)
            sys.stderr.flush()

    return progress


# --- a failed test's report ---------------------------------------------------------------------

_FACTORY = pytest.StashKey[DevshellFactory]()
Report = pytest.TestReport
_OPENED_BEFORE = pytest.StashKey[int]()
LOG_LINES = 30  # of the init log and of the container's output, in a failed test's report
DIAGNOSIS_BYTES = 64 * 1024  # the most read of each (verify's words, the log, the output)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    factory = item.config.stash.get(_FACTORY, None)
    item.stash[_OPENED_BEFORE] = len(factory.opened) if factory is not None else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Report, Report]:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(DevshellError):
        # devshell's errors already say what is wrong and the fix, in one line: no traceback.
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    if not report.failed or report.when == "teardown":
        return report
    keep = item.config.getoption("devshell_keep_failed", False)
    for shell in _devshells_of(item):
        report.sections.append((f"devshell {shell.name}", diagnosis(shell)))
        if keep:
            item.config.stash.setdefault(_KEPT, set()).update(
                {shell.name, shell.spec.volume, proxy_name(shell.name)})
            report.user_properties.append(("devshell-kept", f"{shell.name}: {enter_command(shell)}"))
    return report


def _devshells_of(item: pytest.Item) -> list[Devshell]:
    """The devshells a test used: those among its fixtures' values, and those it opened."""
    values = list(getattr(item, "funcargs", {}).values())
    found = [v for v in values if isinstance(v, Devshell)]
    containers = sys.modules.get("devshell.container")  # loaded by whoever made one: never here
    if containers is not None:
        found += [v.devshell for v in values
                  if isinstance(v, containers.DevshellContainer) and v.devshell is not None]
    factory = item.config.stash.get(_FACTORY, None)
    if factory is not None:
        found += factory.opened[item.stash.get(_OPENED_BEFORE, len(factory.opened)):]
    return list({shell.name: shell for shell in found}.values())


def enter_command(shell: Devshell) -> str:
    """The command that enters this devshell as the test opened it."""
    import shlex

    return shlex.join([sys.executable, "-m", "devshell", *to_argv(shell.opts)])


def diagnosis(shell: Devshell) -> str:
    """What to look at first when a test with this devshell failed: how to enter it, what
    --verify says, the init log and the container's last output. Reads only."""
    try:
        text = _diagnose(shell)
    except Exception as e:  # a report must never take the run down with it
        text = f"enter: {enter_command(shell)}\n(the rest could not be read: {type(e).__name__}: {e})"
    # Root inside writes all of it: escapes would reach the terminal of whoever reads the report.
    return "\n".join(for_terminal(line) for line in text.splitlines())


def _diagnose(shell: Devshell) -> str:
    engine = shell.engine
    if engine.inspect(shell.name) is None:
        return f"the container {shell.name} is gone\nenter (makes it again): {enter_command(shell)}"
    # What runs inside is root's to replace: every read is bounded in bytes and time.
    verify = engine.bounded_exec(shell.name, ["sh", "-c", f'{INIT_PATH} --verify 2>&1; echo "(exit $?)"'],
                                 limit=DIAGNOSIS_BYTES).decode(errors="replace").strip()
    log = engine.read_file(shell.name, INIT_LOG, DIAGNOSIS_BYTES)
    tail = ("(missing, or more than it is worth reading)" if log is None else
            "\n".join(log.decode(errors="replace").splitlines()[-LOG_LINES:]) or "(empty)")
    output = engine.logs_tail(shell.name, LOG_LINES, limit=DIAGNOSIS_BYTES).strip() or "(none)"
    return (f"enter: {enter_command(shell)}\n--verify:\n{verify or '(no answer)'}\n"
            f"init log ({INIT_LOG}, last {LOG_LINES} lines):\n{tail}\n"
            f"container output (last {LOG_LINES} lines):\n{output}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    kept = [value for reports in terminalreporter.stats.values() for r in reports
            for key, value in getattr(r, "user_properties", ()) if key == "devshell-kept"]
    if kept:
        terminalreporter.section("devshells kept (--devshell-keep-failed)")
        for line in sorted(set(kept)):
            terminalreporter.write_line(line)
        terminalreporter.write_line("remove each with: devshell down CELL --instance INSTANCE --volume --yes")
