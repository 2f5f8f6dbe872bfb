"""The contract suites: run them against any cell with `pytest suites --cell=NAME`."""

import os
import socket
import threading

# Imported before any test: pytester restores sys.modules after each test that uses it, and the
# engine imports the docker SDK on first use. Were that first use inside such a test, a later
# `from docker.errors import APIError` would load the module anew, and its classes would no
# longer be the ones the engine's client raises (a test's pytest.raises(APIError) missed a 409).
import docker.errors  # noqa: F401
import pytest
from hostuser import tester, tester_base, tester_python  # noqa: F401  (an ordinary host user's fixtures)

from devshell import cells
from devshell.errors import DevshellError
from devshell.spec import host_binds

pytest_plugins = ["pytester"]

MUTATIONS: list[tuple[str, str, bool, bool]] = []
ATTEMPTS: list[tuple[str, str, str, bool | None]] = []  # (kind, class, attempt, passed or skipped)
FAULTS: list[tuple[str, bool | None]] = []  # (fault, recovered with nothing lost, or skipped)
WARM_BUILD: list[tuple[str, str]] = []  # (measurement, value): test_warm_build.py's numbers


# How many tests the locked profile deselected: counted where the items are collected (each
# xdist worker collects the whole run), handed to the controller, which writes the summary.
STANDARD_DESELECTED = pytest.StashKey[int]()


def pytest_configure(config):
    # A run started in the background (`cmd &` in a script: an asynchronous list starts with
    # SIGINT ignored, and every child inherits that across exec) would hand the CLIs these
    # suites interrupt an ignored SIGINT, and Python then never installs its handler: the
    # signal tests would wait on a CLI that never heard them. Ours is the default handler, so
    # the children get the default disposition.
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "fault(name): a fault the devshell must recover from (fault table)")
    config.addinivalue_line("markers", "attack(cls, attempt): an attempt that must fail (attack table)")
    config.addinivalue_line("markers", "control(cls, attempt): the same attempt, where the guard is absent")
    for suite in ("contract", *SEPARATE_SUITES):
        config.addinivalue_line("markers", f"{suite}: the {suite} suite (set by the file a test is in)")
    config.addinivalue_line("markers", "standard_profile: needs the standard profile: sudo, --as-root, "
                                       "or a writable root filesystem")


def cell_in_force(config):
    """The --cell cell, or None where it does not load (the devshell_cell fixture says why)."""
    name = config.getoption("--cell") or cells.DEFAULT_CELL
    dirs = [os.path.abspath(d) for d in config.getoption("devshell_cells_dirs")]
    try:
        return cells.find(name, cells.search_path(dirs))
    except DevshellError:
        return None


def pytest_ignore_collect(collection_path, config):
    # The warm-build loop is the contract of a cell that declares its build, and of no other:
    # not collected at all elsewhere (nothing is skipped, there is nothing to run).
    if collection_path.name == "test_warm_build.py":
        cell = cell_in_force(config)
        return cell is None or cell.build_steps is None
    return None


def profile_in_force(config):
    """--profile, else the --cell cell's own profile (as the plugin's devshell_profile fixture)."""
    if config.getoption("devshell_profile"):
        return config.getoption("devshell_profile")
    cell = cell_in_force(config)
    # (a cell that does not load: the devshell_cell fixture fails the tests with the reason)
    return cell.profile if cell is not None else cells.DEFAULT_PROFILE


# The suites that run in tox envs of their own (and are timed on their own), by the files that
# hold them; every other test is the contract gate (`-m contract`): the promises of the core,
# the harness and the rendezvous, the run to have on every push.
SEPARATE_SUITES = {
    "security": ("security/", "test_profiles.py"),  # the attack suite and the profiles' proofs
    "faults": ("test_faults.py",),
    "egress": ("test_egress.py",),
    "ccache": ("test_warm_build.py",),
    "downstream": ("test_downstream.py",),  # from a wheel, as root and as another user
}


def suite_of(path) -> str:
    relative = os.path.relpath(path, os.path.dirname(__file__)).replace(os.sep, "/")
    for suite, files in SEPARATE_SUITES.items():
        if any(relative == name or relative.startswith(name) for name in files):
            return suite
    return "contract"


@pytest.hookimpl(tryfirst=True)  # before -m reads the markers (pytest's own deselection hook)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(suite_of(item.path))
    # Under locked the agent is never root (no sudo, no --as-root, a read-only root filesystem):
    # a test whose premise is one of those does not apply. Deselected, not skipped: there is
    # nothing to skip, and test_profiles.py proves that premise cannot arise.
    if profile_in_force(config) != "locked":
        return
    standard = [item for item in items if item.get_closest_marker("standard_profile")]
    if standard:
        items[:] = [item for item in items if not item.get_closest_marker("standard_profile")]
        config.hook.pytest_deselected(items=standard)
    config.stash[STANDARD_DESELECTED] = len(standard)


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and STANDARD_DESELECTED in session.config.stash:
        workeroutput["standard_deselected"] = session.config.stash[STANDARD_DESELECTED]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist: the count a worker deselected (every worker collects, and deselects, the same)."""
    count = getattr(node, "workeroutput", {}).get("standard_deselected")
    if count is not None:
        node.config.stash[STANDARD_DESELECTED] = max(count, node.config.stash.get(STANDARD_DESELECTED, 0))


def _named(item, name: str) -> str:
    """A marked attempt or fault, with a parametrized test's id."""
    callspec = getattr(item, "callspec", None)
    return f"{name} [{callspec.id}]" if callspec else name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Records each marked outcome as a user property: ("attack", (class, attempt, blocked)),
    ("control", (class, attempt, works)), ("fault", (name, recovered)); None where skipped."""
    report = (yield).get_result()
    # The call phase decides; a failed or skipped setup counts too (the attempt was not shown
    # to be blocked, or to work). One control may serve several attacks.
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    result = None if report.skipped else report.passed
    for kind in ("attack", "control"):
        for mark in item.iter_markers(kind):
            cls, attempt = mark.args
            report.user_properties.append((kind, (cls, _named(item, attempt), result)))
    for mark in item.iter_markers("fault"):
        report.user_properties.append(("fault", (_named(item, mark.args[0]), result)))


def pytest_runtest_logreport(report):
    # Here rather than in the suites' own hooks: under xdist this runs where the summary is written.
    if report.when == "call":
        MUTATIONS.extend(tuple(v) for k, v in report.user_properties if k == "mutation")
    ATTEMPTS.extend((kind, *value) for kind, value in report.user_properties if kind in ("attack", "control"))
    FAULTS.extend(tuple(value) for kind, value in report.user_properties if kind == "fault")
    if report.when == "call":
        WARM_BUILD.extend(tuple(value) for kind, value in report.user_properties if kind == "warm-build")


def pytest_terminal_summary(terminalreporter, config):
    if STANDARD_DESELECTED in config.stash:
        terminalreporter.write_line(
            f"profile locked: {config.stash[STANDARD_DESELECTED]} tests of the standard profile (sudo, "
            "--as-root, writable root) deselected; test_profiles.py proves their premise cannot arise")
    attack_table(terminalreporter)
    fault_table(terminalreporter)
    if WARM_BUILD:
        terminalreporter.section("warm build")
        width = max(len(name) for name, _ in WARM_BUILD)
        for name, value in WARM_BUILD:
            terminalreporter.write_line(f"{name.ljust(width)}  {value}")
    if not MUTATIONS:
        return
    tr = terminalreporter
    tr.section("--verify mutation table")
    width = max(len(m) for m, *_ in MUTATIONS)
    tr.write_line(f"{'mutation'.ljust(width)}  {'element'.ljust(22)}  caught  repaired")
    for mutation, element, caught, repaired in sorted(MUTATIONS):
        tr.write_line(f"{mutation.ljust(width)}  {element.ljust(22)}  {'yes' if caught else 'NO':6}  "
                      f"{'yes' if repaired else 'NO'}")
    tr.write_line(f"caught {sum(r[2] for r in MUTATIONS)}/{len(MUTATIONS)}, "
                  f"repaired {sum(r[3] for r in MUTATIONS)}/{len(MUTATIONS)}")


def attack_table(terminalreporter):
    if not ATTEMPTS:
        return
    tr = terminalreporter
    tr.section("attack table")
    words = {"attack": {True: "blocked", False: "NOT BLOCKED", None: "skipped"},
             "control": {True: "control works: yes", False: "control works: NO", None: "control skipped"}}
    # One line per attempt: its attack result and, where a control has the same name, the control's.
    rows: dict[tuple[str, str], dict[str, list[bool | None]]] = {}
    for kind, cls, attempt, result in ATTEMPTS:
        rows.setdefault((cls, attempt), {}).setdefault(kind, []).append(result)
    width = max(len(f"{cls}  {attempt}") for cls, attempt in rows)
    for (cls, attempt), kinds in sorted(rows.items()):
        parts = []
        for kind in ("attack", "control"):
            if kind in kinds:
                known = [r for r in kinds[kind] if r is not None]
                parts.append(words[kind][all(known) if known else None])
        tr.write_line(f"{f'{cls}  {attempt}'.ljust(width)}  {' · '.join(parts)}")
    for kind, good, bad in (("attack", "blocked", "NOT BLOCKED"), ("control", "work", "do NOT work")):
        results = [r[3] for r in ATTEMPTS if r[0] == kind]
        tr.write_line(f"{kind}s: {sum(r is True for r in results)}/{len(results)} {good}, "
                      f"{sum(r is False for r in results)} {bad}, {sum(r is None for r in results)} skipped")


def fault_table(terminalreporter):
    if not FAULTS:
        return
    tr = terminalreporter
    tr.section("fault table")
    words = {True: "recovered, nothing lost", False: "NOT RECOVERED", None: "skipped"}
    width = max(len(name) for name, _ in FAULTS)
    for name, result in sorted(FAULTS):
        tr.write_line(f"{name.ljust(width)}  {words[result]}")
    results = [r for _, r in FAULTS]
    tr.write_line(f"faults: {sum(r is True for r in results)}/{len(results)} recovered, "
                  f"{sum(r is False for r in results)} not, {sum(r is None for r in results)} skipped")


# --- a listener on this host, for the network's attacks and controls -------------------------


class Listener:
    """A TCP listener on this host at address, answering one line: who connected is recorded."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        try:
            self.sock.bind((address, 0))
        except OSError as e:
            self.sock.close()
            pytest.skip(f"the engine's bridge {address} is not on this machine ({e.strerror})")
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.address, self.port = self.sock.getsockname()[:2]
        self.peers: list[str] = []
        self.over = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.over.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                conn.sendall(b"hello from the host\n")

    def close(self) -> None:
        self.over.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def bridge_listener():
    """bridge_listener(shell): a Listener at the gateway of the bridge network shell (a devshell
    with a network) is on, which is this host: what a devshell with a network reaches, never an
    address outside this machine. Closed after the test."""
    made: list[Listener] = []

    def listen(shell) -> Listener:
        networks = shell.engine.inspect(shell.name)["NetworkSettings"]["Networks"]
        gateway = next((n.get("Gateway") for n in networks.values() if n.get("Gateway")), None)
        if not gateway:
            pytest.skip(f"{shell.name} has no bridge gateway to listen on")
        made.append(Listener(gateway))
        return made[-1]

    yield listen
    for listener in made:
        listener.close()


@pytest.fixture
def host_listener():
    """A Listener on every address of this host: whatever of the host a container reaches
    (egress's attacks and their controls). Closed after the test."""
    listener = Listener("0.0.0.0")
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def connect():
    """connect(shell, listener, user=dev's uid): a raw `docker exec` that opens a TCP connection
    to the listener and prints `got: LINE` for what it answers: the claim is the container's,
    whatever runs in it. Bounded, so a connection left hanging fails rather than waits."""
    def run(shell, listener: Listener, user: str | None = None):
        script = (f"exec 3<>/dev/tcp/{listener.address}/{listener.port} && read -r line <&3 "
                  "&& echo \"got: $line\"")
        argv = ["timeout", "-s", "KILL", "60", "bash", "-c", script]
        return shell.exec(argv, user=user or str(shell.opts.uid))
    return run


@pytest.fixture(scope="session")
def memory_mount():
    """memory_mount(shell): (where this checkout's AI memory is mounted inside, its host path),
    read off the spec: memory is a bind of its own below /cache/ai."""
    def find(shell) -> tuple[str, str]:
        [bind] = [b for b in host_binds(shell.opts) if b.role == "memory"]
        return bind.target, bind.source
    return find
