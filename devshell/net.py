"""`devshell net log` and `devshell net learn`: the egress audit log, and a policy from a session.

The log is the proxy's (egress.py), on the host under the devshell's state dir: the agent
cannot reach it, and it outlives the container (--rm) and the proxy. Its lines are what the
agent asked for, so they are parsed against one shape (egress.parse_log) and escaped for the
terminal before they are printed.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence

from .egress import LOG_FILE, MAX_LOG_BYTES, Entry, allow_block, parse_log
from .errors import DevshellError, for_terminal
from .options import HostFacts, _once_flag, devshell_by_name, devshell_parser, parse
from .spec import container_name

FOLLOW_INTERVAL = 0.5  # seconds between looks at a followed log
USAGE = "devshell net log CELL [--instance NAME] [--json] [--follow] | devshell net learn CELL [launch flags]"


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("log", "learn"):
        got = f"{argv[0]!r} is not a net subcommand" if argv else "net needs a subcommand"
        raise DevshellError(got, USAGE)
    if argv[0] == "learn":
        return learn(argv[1:])
    return log(argv[1:])


def log_path(cell: str, instance: str | None) -> str:
    return os.path.join(HostFacts.current().egress_dir(container_name(cell, instance)), LOG_FILE)


def log(argv: Sequence[str]) -> int:
    p = devshell_parser("devshell net log", "Print what a devshell's egress proxy allowed and denied.",
                        "the cell whose devshell's log to print")
    _once_flag(p, "--json", action="store_true", help="one JSON object per request (JSON Lines)")
    _once_flag(p, "--follow", action="store_true", help="keep printing requests as they come (Ctrl-C ends)")
    ns = p.parse_args(list(argv))
    if ns.cell is None:
        raise DevshellError("net log needs a cell", USAGE)
    name = devshell_by_name(ns.cell, ns.instance)
    path = log_path(ns.cell, ns.instance)
    if not os.path.lexists(path):
        raise DevshellError(f"{name} has no egress log ({path}): it never ran under --network allow",
                            "launch it with --network allow (or mode: allow in its cell), "
                            f"then net log {ns.cell}")

    def show(entries: list[Entry], unreadable: list[str]) -> None:
        for e in entries:
            print(json.dumps(e.as_dict(name)) if ns.json else for_terminal(e.line(name), backslash=False),
                  flush=True)
        if unreadable:  # never silently: a line the parser left out may be a request
            print(f"devshell: note: {len(unreadable)} line(s) of {path} are not in the proxy's log "
                  f"format and are not shown; the first: {for_terminal(unreadable[0][:200])}",
                  file=sys.stderr, flush=True)

    offset = tail(path, show)
    if not ns.follow:
        return 0
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            offset = tail(path, show, offset)
    except KeyboardInterrupt:
        return 0


def tail(path: str, show: Callable[[list[Entry], list[str]], None], offset: int | None = None) -> int:
    """Show the whole lines from offset (None: the last MAX_LOG_BYTES) on; returns where the
    next read starts (after the last whole line). Only a regular file, never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise DevshellError(f"cannot read the egress log {path} ({e.strerror})",
                            "check its permissions (the proxy writes it as dev's uid)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DevshellError(f"the egress log {path} is not a regular file", f"remove {path}")
        if offset is None or offset > st.st_size:  # a first read, or a log that was emptied
            offset = max(0, st.st_size - MAX_LOG_BYTES)
            if offset:
                f.seek(offset)
                f.readline()  # start at a whole line
                offset = f.tell()
        f.seek(offset)
        data = f.read(MAX_LOG_BYTES)
    whole = data[: data.rfind(b"\n") + 1]
    unreadable: list[str] = []
    entries = parse_log(whole, unreadable)
    show(entries, unreadable)
    return offset + len(whole)


def learn(argv: Sequence[str]) -> int:
    """A session under allow whose proxy lets everything through and logs it; then the policy
    goes back to the cell's and the `network:` block that allows what was asked is printed."""
    opts = parse(list(argv), HostFacts.current())
    for flag, given in (("--rm", opts.rm), ("--verify", opts.verify), ("--list", opts.list)):
        if given:
            raise DevshellError(f"net learn runs a session, and {flag} is not one", f"drop {flag}")
    if opts.network not in (None, "allow"):
        raise DevshellError(f"net learn runs under --network allow, and was given --network {opts.network}",
                            "drop --network")
    import signal

    from .cli import launch

    # A TERM or HUP unwinds (SystemExit), so learned() puts the cell's policy back on the way
    # out; only a KILL leaves the proxy learning, which --list then says, until the next launch.
    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)
    return launch(opts._replace(network="allow"), learn=True)


def learned(shell: object, session: Callable[[], int]) -> int:
    """Run session under the learning proxy; whatever happens, put the cell's policy back."""
    from .launcher import Devshell, restore_policy

    assert isinstance(shell, Devshell)
    path = log_path(shell.spec.cell, shell.opts.instance)
    start = os.stat(path).st_size if os.path.exists(path) else 0
    import signal

    try:
        code = session()
    finally:
        # A second signal must not cut the restore short.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        restore_policy(shell)
    entries: list[Entry] = []
    if os.path.exists(path):
        tail(path, lambda found, _unreadable: entries.extend(found), start)
    block = allow_block(entries)
    sys.stdout.write(block)
    kept = block.count("\n    - ")
    through = {e.host for e in entries if e.verdict == "allowed"}
    print(f"devshell: {len(entries)} request(s); {kept} name(s) let through are in the block above "
          f"(put it in cell {shell.spec.cell}'s file)"
          + (f"; {len(through) - kept} let through that a cell cannot name were left out"
             if len(through) > kept else "")
          + ". The proxy is back to the cell's policy.", file=sys.stderr)
    return code
