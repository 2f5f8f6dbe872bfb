"""The command line: grammar in options.py, output and exit codes here.

Errors the user can fix are one line on stderr and exit 2; nothing else becomes a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from . import cells
from .engine import Engine, require_docker_cli, stderr_progress
from .errors import DevshellError, for_terminal
from .launcher import check_host_paths, check_seed_flags, enter, open_devshell, read_script, remove
from .options import HostFacts, Options, parse
from .spec import INIT_PATH, container_name


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except DevshellError as e:
        print(f"devshell: error: {for_terminal(str(e), backslash=False)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a last net: the host or engine refused something we did not foresee
        if not isinstance(e, OSError) and not type(e).__module__.startswith("docker"):
            raise
        print(f"devshell: error: {for_terminal(str(e), backslash=False)}; "
              "fix: check the path, permissions and the Docker daemon", file=sys.stderr)
        return 2


def run(argv: Sequence[str]) -> int:
    if argv and argv[0] == "patches":  # a reserved word: no cell may be named so
        from . import patches

        return patches.main(argv[1:])
    if argv and argv[0] in ("status", "down", "doctor"):  # lifecycle.py: imported only for these
        from . import lifecycle

        return lifecycle.main(argv[0], argv[1:])
    if argv and argv[0] == "net":
        from . import net

        return net.main(argv[1:])
    if argv and argv[0] == "cache":
        from . import cache

        return cache.main(argv[1:])
    if argv and argv[0] in cells.RESERVED_NAMES:
        raise DevshellError(f"{argv[0]!r} is reserved for a subcommand this version does not have",
                            "see devshell --help; subcommands: patches, status, down, doctor, net, cache")
    opts = parse(argv, HostFacts.current())
    if opts.list:
        from . import lifecycle

        return lifecycle.list_cells(opts)
    return launch(opts)


def launch(opts: Options, *, learn: bool = False) -> int:
    """A launch (or --rm, --verify) for parsed options; learn: net learn's session."""
    path = cells.search_path(opts.cells_dirs)
    cell = cells.find(opts.cell, path)
    if opts.rm:
        removed = remove(Engine.connect(), cell, opts.instance)
        name = container_name(cell.name, opts.instance)
        say(opts, {"container": name, "removed": removed, "volume": "kept"},
            f"{name} {'removed' if removed else 'was not there'}; volume {name} kept")
        return 0
    if opts.verify:
        return verify(Engine.connect(), cell.name, container_name(cell.name, opts.instance))
    check_seed_flags(opts, cell)
    opts = check_host_paths(opts)
    script = read_script(opts.script) if opts.script else None
    require_docker_cli()
    engine = Engine.connect()
    # With --json the session's summary is the one thing on stderr: notes and build progress
    # go into it rather than beside it (stdout stays the script's).
    notes = list(opts.notes)
    shell = open_devshell(opts, cell, engine, progress=notes.append if opts.json else stderr_progress,
                          learn=learn)
    spec = shell.spec
    if not opts.json:
        for note in opts.notes:
            print(f"devshell: {note}", file=sys.stderr)
    say(opts, {"container": spec.name, "state": shell.outcome.state, "why": shell.outcome.why,
               "volume": spec.volume, "volume_created": shell.volume_created, "image": spec.image,
               "checkout": opts.checkout, "patches": opts.patches_out, "cache": opts.host_cache,
               "uid": opts.uid, "gid": opts.gid, "user": "root" if opts.as_root else "dev",
               "profile": spec.profile, "runtime": shell.runtime, "network": shell.network,
               "limits": {"pids": spec.pids_limit, "memory": spec.memory_limit},
               "seed": shell.seed.describe() if shell.seed else None, "notes": notes},
        f"{spec.name} {shell.outcome} · /checkout={opts.checkout} (read-only) · /patches={opts.patches_out}"
        + (f" · /cache={opts.host_cache}" if opts.host_cache else "")
        + f" · {'root' if opts.as_root else f'dev {opts.uid}:{opts.gid}'}"
        + f" · profile {spec.profile} · runtime {shell.runtime} · network {shell.network}"
        + f" · limits {spec.pids_limit} pids, {spec.memory_limit >> 20} MiB"
        + (f" · {shell.seed.describe()}" if shell.seed else ""))
    tty = script is None and sys.stdin.isatty() and sys.stdout.isatty()
    if not learn:
        return enter(shell, script=script, tty=tty)
    from .net import learned

    return learned(shell, lambda: enter(shell, script=script, tty=tty))


def say(opts: Options, data: dict[str, object], text: str) -> None:
    """Status goes to stderr so a script's stdout stays its own; --json makes it one object."""
    print(json.dumps(data) if opts.json else f"devshell: {text}", file=sys.stderr)


def verify(engine: Engine, cell: str, name: str) -> int:
    info = engine.inspect_own(name, cell)
    if info is None:
        raise DevshellError(f"no container {name} to verify", "open the devshell first")
    if not info["State"]["Running"]:
        engine.start(name)
    result = engine.exec(name, [INIT_PATH, "--verify"])
    sys.stdout.write(result.stdout)
    print(f"devshell: {name}: {result.exit_code} failure(s)", file=sys.stderr)
    return result.exit_code
