"""The visible lifecycle: `devshell status`, `down`, `doctor`, and `--list`.

status, doctor and --list only read: they never create a container, volume or host directory
(devshell's memo of validated cell files aside). down removes a container (and, asked twice or
with --yes, its volume) only if devshell made it for that cell. Every engine call goes through
Engine; what decides and what formats are pure functions of what the engine said
(tests/test_lifecycle.py).

Output is text on stdout for people (notes on stderr), or with --json exactly one JSON
document on stdout, notes inside it. Errors are one line on stderr and exit 2 (cli.main).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

from . import cells, labels
from .cells import Cell
from .egress import proxy_name
from .engine import Engine, launch_lock, pid_alive
from .errors import DevshellError, for_terminal
from .launcher import bind_ids, check_host_paths
from .options import (
    HostFacts,
    Options,
    SubcommandParser,
    _once_flag,
    devshell_by_name,
    devshell_parser,
    parse,
    parser,
)
from .spec import (
    BAKED_REPO,
    NEVER_REUSED,
    STATE_DIR,
    ContainerSpec,
    container_name,
    differences,
    host_binds,
    network_in_force,
    plan,
)

# init.sh's session path truncates this file on every entry: its mtime is the last session.
LAST_SESSION = f"{STATE_DIR}/last-session"
LOW_DISK = 1 << 30  # bytes: less than this free where the engine keeps images is a problem
# Launch flags that are actions of their own, not part of what a launch would create.
ACTIONS = (("--rm", "rm"), ("--verify", "verify"), ("--script", "script"), ("--list", "list"))


def main(command: str, argv: Sequence[str]) -> int:
    # status and down run programs in containers through the docker CLI (du): a SIGTERM or
    # SIGHUP becomes an exit that unwinds, so those CLIs are killed on the way out (not left
    # waiting on what the agent put in du's place).
    import signal

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)
    if command == "status":
        return status(argv)
    if command == "down":
        return down(argv)
    return doctor(argv)


# --- output -----------------------------------------------------------------------------------


def emit(doc: dict[str, Any], lines: Iterable[str], as_json: bool) -> None:
    """One JSON document on stdout, or the text lines on stdout and the notes on stderr.
    Text is escaped for the terminal: names and labels come from the engine, and anyone who
    can reach the engine can put anything in a label."""
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for line in lines:
        print(for_terminal(line, backslash=False))
    for note in doc.get("notes", []):
        print(f"devshell: note: {for_terminal(note, backslash=False)}", file=sys.stderr)


def table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Rows as aligned text columns under a header: (key, heading) pairs; None prints as '-'."""
    cells_ = [[heading for _, heading in columns],
              *([("-" if row.get(key) is None else str(row[key])) for key, _ in columns] for row in rows)]
    widths = [max(len(line[n]) for line in cells_) for n in range(len(columns))]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
            for line in cells_]


def human_size(size: int | None) -> str | None:
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # not reached


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


def short_time(stamp: str | None) -> str | None:
    """An engine timestamp to the second ('2024-05-01T10:00:00Z'); anything else is None.
    The file it describes lives in the container, so its stat is checked, not trusted."""
    found = _RFC3339.fullmatch(stamp or "")
    return f"{found.group(1)}{found.group(2)}" if found else None


# --- cells and images -------------------------------------------------------------------------


def image_state(cell: Cell, present: Callable[[str], bool]) -> str:
    """present (its reference or its build is here), buildable (a recipe can make it offline)
    or missing (it needs a registry or docker load)."""
    if any(ref and present(ref) for ref in (cell.image_ref, cell.built_tag)):
        return "present"
    return "buildable" if cell.recipe else "missing"


def expected_image(cell: Cell, override: str | None, present: Callable[[str], bool]) -> str:
    """The image a launch would give the container, as Engine.ensure_image picks it, without
    building or pulling: a recipe cell whose reference is absent gets its build (a pull that
    could succeed instead needs a registry, which a read-only status does not try)."""
    if override:
        return override
    if cell.image_ref and (cell.recipe is None or present(cell.image_ref)):
        return cell.image_ref
    return cell.built_tag or cell.image_ref or ""


def list_cells(opts: Options) -> int:
    """--list: every cell on the search path with its image, container and volume state. A
    cell file that does not load is named in a note, and the others are still listed."""
    problems: list[DevshellError] = []
    found = cells.available(cells.search_path(opts.cells_dirs), problems)
    engine = Engine.connect()
    rows = []
    for cell in found:
        name = container_name(cell.name, opts.instance)
        info = engine.inspect(name)
        volume_info = engine.volume_info(name)
        found_labels = (info or {}).get("Config", {}).get("Labels") or {}
        runtime = found_labels.get(labels.RUNTIME, "default")
        # (a container made before network modes, or with no readable spec, had the open one)
        network = _identity(found_labels.get(labels.SPEC)).get("network", "open") if info else cell.network
        rows.append({
            "cell": cell.name,
            "image": cell.image,
            "image_state": image_state(cell, partial(engine.image_present, platform=cell.platform)),
            "container": info["State"]["Status"] if info else "absent",
            "volume": "present" if volume_info is not None else "absent",
            "seed": seed_state(name, volume_info),
            # The container's, as its launch recorded them; without one, what a launch would use.
            "profile": found_labels.get(labels.PROFILE, cell.profile),
            "runtime": runtime,
            "network": network_in_force(network, runtime),
            # Under allow, its egress proxy's state (a stopped one lets nothing out).
            "proxy": _proxy_state(engine, name) if network == "allow" else None,
            "limits": {"pids": cell.pids_limit, "memory": cell.memory_limit},
            "source": cell.source,
        })
    doc = {"cells": rows, "notes": [f"skipped a cell file: {p}" for p in problems]}
    columns = [("cell", "cell"), ("image_state", "image_state"), ("container", "container"),
               ("volume", "volume"), ("profile", "profile"), ("runtime", "runtime"), ("network", "network"),
               ("proxy", "proxy"), ("seed", "seed"), ("image", "image")]
    emit(doc, table(columns, rows), opts.json)
    return 0


def seed_state(volume: str, info: dict[str, Any] | None) -> str:
    """none, seeded KEY or partial KEY: the launcher's record of this very volume (seeding.py),
    read without starting anything."""
    if info is None:
        return "none"
    from .seeding import read_record, volume_identity

    record = read_record(volume, volume_identity(info))
    return record.describe() if record else "none"


def _proxy_state(engine: Engine, devshell: str) -> str:
    info = engine.inspect(proxy_name(devshell))
    if info is None:
        return "absent"
    state: str = info["State"]["Status"]
    learning = labels.LEARNING in (info["Config"].get("Labels") or {})
    return state + (" (learning: every name let through)" if learning else "")


# --- status -----------------------------------------------------------------------------------


class Verdict(NamedTuple):
    """What a launch with these flags would do with the container that is there now."""

    state: str  # the engine's: running, exited, paused, created, dead, restarting; or absent
    owner: str | None  # devshell, foreign (no devshell label) or other-cell; None: absent
    matches: bool | None  # the container is what this launch would make; None: absent or not ours
    differences: list[str]
    launch: str  # create, reuse, start, recreate or refuse

    def sentence(self, owner_cell: str | None) -> str:
        if self.launch == "create":
            return "no container: a launch would create it"
        if self.owner == "foreign":
            return "a container with this name that devshell did not create: a launch would refuse it"
        if self.owner == "other-cell":
            return f"belongs to cell {owner_cell}: a launch would refuse it"
        if self.launch == "recreate":
            return (f"differs ({', '.join(self.differences)}): a launch would recreate it "
                    "(the volume stays)")
        return "matches: a launch would " + ("reuse it" if self.launch == "reuse" else "start and reuse it")


def judge(info: dict[str, Any] | None, spec: ContainerSpec, missing_dirs: Sequence[str]) -> Verdict:
    """Compare the container that is there with the one spec describes, the way
    Engine.ensure_container will at the launch: a change there belongs here too."""
    if info is None:
        return Verdict("absent", None, None, [], "create")
    found = info["Config"].get("Labels") or {}
    state = info["State"]["Status"]
    owner = labels.owner_of(found, spec.cell)
    if owner != "devshell":
        return Verdict(state, owner, None, [], "refuse")
    if state in NEVER_REUSED:
        return Verdict(state, "devshell", False, [NEVER_REUSED[state]], "recreate")
    changed = []
    if missing_dirs:
        # A launch creates them, and a new directory is another identity: the container is
        # recreated to bind it (its recorded bind ids name the old one, or none).
        changed.append(f"new host dirs ({', '.join(missing_dirs)})")
    if found.get(labels.SPEC_HASH) != spec.hash():
        changed += differences(_identity(found.get(labels.SPEC)), spec.identity()) or ["spec"]
    if changed:
        return Verdict(state, "devshell", False, changed, "recreate")
    # A paused one is unpaused and reused, a stopped one started and reused.
    return Verdict(state, "devshell", True, [], "start" if state == "exited" else "reuse")


def _identity(label: str | None) -> dict[str, Any]:
    try:
        found = json.loads(label or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def status(argv: Sequence[str]) -> int:
    ns = parser().parse_args(list(argv))
    if ns.cell is None:
        # Without a cell: every devshell. A launch's flags would mean nothing here.
        # (a leading '_' is the parser's own bookkeeping, not a flag)
        given = [f"--{dest.replace('_', '-')}" for dest, value in vars(ns).items()
                 if dest not in ("json", "cells_dir") and not dest.startswith("_")
                 and value not in (None, False)]
        if given:
            raise DevshellError(f"status without a cell lists every devshell; {given[0]} needs a cell",
                                f"name it: devshell status CELL {given[0]} ...")
        cells.search_path(parse(argv, HostFacts.current()).cells_dirs)  # the same checks as a launch
        return status_all(ns.json)
    for flag, dest in ACTIONS:
        if getattr(ns, dest):
            raise DevshellError(f"status takes a launch's flags, and {flag} is not one",
                                f"drop {flag}")
    opts = parse(argv, HostFacts.current())
    cell = cells.find(opts.cell, cells.search_path(opts.cells_dirs))
    opts = check_host_paths(opts)  # reads only; resolves paths exactly as the launch will
    doc = status_of(Engine.connect(), opts, cell)
    emit(doc, status_lines(doc), opts.json)
    return 0


def status_lines(doc: dict[str, Any]) -> list[str]:
    verdict = Verdict(*(doc[key] for key in Verdict._fields))
    if not doc["volume_present"]:
        volume = "absent (a launch creates it)"
    else:
        size = human_size(doc["volume_size"])
        volume = "present" + (f", {size}" if size else "")
        if doc["volume_owner"] != "devshell":
            volume += f" ({doc['volume_owner']}: a launch would refuse it)"
    return [f"container     {doc['container']}: {doc['state']}",
            f"this launch   {verdict.sentence(doc['container_cell'])}",
            f"image         {doc['image']}",
            f"volume        {doc['volume']}: {volume}",
            f"last session  {doc['last_session'] or 'unknown'}"]


def status_of(engine: Engine, opts: Options, cell: Cell) -> dict[str, Any]:
    """The status document for one launch's devshell. Plans the spec as the launch would
    (launcher.bind_ids, spec.plan), creating nothing: a host dir the launch would create is
    reported missing."""
    ids = bind_ids(opts)
    missing = [] if ids is not None else [b.source for b in host_binds(opts) if not os.path.isdir(b.source)]
    spec = plan(opts._replace(bind_ids=ids or ()), cell,
                image=expected_image(cell, opts.image, partial(engine.image_present, platform=cell.platform)))
    info = engine.inspect(spec.name)
    verdict = judge(info, spec, missing)
    volume = engine.volume_info(spec.volume)
    volume_labels = (volume or {}).get("Labels") or {}
    last = None
    if info is not None and verdict.owner == "devshell":
        last = last_session(engine, info["Id"], info["Config"].get("Labels") or {}, info["State"]["Running"])
    return {
        "cell": cell.name,
        "container": spec.name,
        **verdict._asdict(),
        "container_cell": ((info or {}).get("Config", {}).get("Labels") or {}).get(labels.CELL),
        "image": spec.image,
        "volume": spec.volume,
        "volume_present": volume is not None,
        "volume_owner": labels.owner_of(volume_labels, cell.name) if volume is not None else None,
        # Measured by a program run inside: only in a container devshell made for this cell.
        "volume_size": engine.volume_usage(spec.name) if verdict.owner == "devshell" else None,
        "last_session": last,
        "notes": [],
    }


def last_session(engine: Engine, container: str, found: dict[str, str], running: bool) -> str | None:
    """When a session last entered the container. Under the locked profile init's state is a
    tmpfs, which the engine's archive API cannot see: there find is asked inside (bounded, and
    only in a running container devshell made, as du is)."""
    stamp = engine.path_mtime(container, LAST_SESSION)
    if stamp is None and running and found.get(labels.PROFILE) == "locked":
        stamp = engine.exec_mtime(container, LAST_SESSION)
    return short_time(stamp)


def devshell_rows(containers: Sequence[dict[str, Any]], volumes: Sequence[dict[str, Any]],
                  sizes: dict[str, int]) -> list[dict[str, Any]]:
    """One row per devshell name, from the engine's container and volume lists (a devshell's
    volume has its container's name): container state, volume, size, cell, test run."""
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str, found: dict[str, str]) -> dict[str, Any]:
        got = rows.setdefault(name, {"name": name, "cell": None, "container": "absent", "volume": "absent",
                                     "volume_size": None, "last_session": None, "test_run": None})
        got["cell"] = got["cell"] or found.get(labels.CELL)
        got["test_run"] = got["test_run"] or found.get(labels.TEST_RUN)
        return got

    for c in containers:
        name = (c.get("Names") or ["/?"])[0].lstrip("/")
        row(name, c.get("Labels") or {})["container"] = c.get("State") or "unknown"
    for v in volumes:
        got = row(v["Name"], v.get("Labels") or {})
        got["volume"] = "present"
        got["volume_size"] = sizes.get(v["Name"])
    return sorted(rows.values(), key=lambda r: str(r["name"]))


def status_all(as_json: bool) -> int:
    engine = Engine.connect()
    # Devshells only: an egress proxy (labels.ROLE) serves one, and `--list` shows its state.
    containers = [c for c in engine.list_containers(labels.MANAGED)
                  if labels.ROLE not in (c.get("Labels") or {})]
    names = [(c.get("Names") or ["/?"])[0].lstrip("/") for c in containers if c.get("State") == "running"]
    # Each measure is bounded (10 s), and they run side by side: k hostile devshells must not
    # make status wait k times as long.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        measured = dict(zip(names, pool.map(engine.volume_usage, names), strict=True))
    sizes = {name: size for name, size in measured.items() if size is not None}
    rows = devshell_rows(containers, engine.list_volumes(labels.MANAGED), sizes)
    by_name = {(c.get("Names") or ["/?"])[0].lstrip("/"): c for c in containers}
    for r in rows:
        if r["name"] in by_name:
            c = by_name[r["name"]]
            r["last_session"] = last_session(engine, c["Id"], c.get("Labels") or {},
                                             c.get("State") == "running")
    doc = {"devshells": rows, "notes": []}
    shown = [{**r, "volume_size": human_size(r["volume_size"])} for r in rows]
    columns = [("name", "name"), ("cell", "cell"), ("container", "container"), ("volume", "volume"),
               ("volume_size", "size"), ("last_session", "last session"), ("test_run", "test run")]
    lines = table(columns, shown)
    emit(doc, lines if rows else ["no devshells on this engine"], as_json)
    return 0


# --- down -------------------------------------------------------------------------------------


def down_parser() -> argparse.ArgumentParser:
    p = devshell_parser("devshell down", "Remove a cell's container (and with --volume its volume).",
                        "the cell whose devshell goes")
    _once_flag(p, "--volume", action="store_true",
               help="also remove the volume (sources, build tree, ccache): asks on a terminal")
    _once_flag(p, "--yes", action="store_true", help="remove the volume without asking")
    _once_flag(p, "--json", action="store_true", help="one JSON document on stdout")
    return p


def down(argv: Sequence[str]) -> int:
    ns = down_parser().parse_args(list(argv))
    if ns.cell is None:
        whose = " (--volume removes that cell's volume)" if ns.volume else ""
        raise DevshellError(f"down needs a cell{whose}", "devshell down CELL [--instance NAME] [--volume]")
    # The cell file itself is not needed: a devshell can be taken down after its cell is gone.
    name = devshell_by_name(ns.cell, ns.instance)
    if ns.yes and not ns.volume:
        raise DevshellError("--yes answers the question --volume asks, and there is no --volume",
                            "drop --yes, or add --volume to remove the volume too")
    engine = Engine.connect()
    return _down(engine, ns, name)


def _down_checks(engine: Engine, ns: argparse.Namespace, name: str) -> tuple[dict[str, Any] | None,
                                                                             dict[str, Any] | None]:
    """The container and volume down would remove, refused unless devshell made them for the
    cell (and, with --volume, unless no other container uses the volume)."""
    info = engine.inspect_own(name, ns.cell)
    volume = engine.volume_own(name, ns.cell) if ns.volume else engine.volume_info(name)
    if ns.volume and volume is not None:
        users = [c for c in engine.containers_using(name) if info is None or c["Id"] != info["Id"]]
        if users:
            others = ", ".join((c.get("Names") or ["?"])[0].lstrip("/") for c in users)
            raise DevshellError(f"volume {name} is in use by another container ({others}); nothing was "
                                "removed", "remove or stop using it there first, then down --volume again")
    return info, volume


def _down(engine: Engine, ns: argparse.Namespace, name: str) -> int:
    # All checked before anything goes: a refusal leaves everything as it was.
    info, volume = _down_checks(engine, ns, name)
    asking = ns.volume and volume is not None and not ns.yes
    if asking and not sys.stdin.isatty():
        raise DevshellError(f"--volume would remove volume {name} (cell {ns.cell}), and there is no "
                            "terminal to ask", "add --yes to remove it without asking")
    size = engine.volume_usage(name) if asking else None  # for the question only: bounded, but not free
    held = f"{human_size(size) or 'size unknown'}: sources, build tree, ccache"
    what = f"volume {name} (cell {ns.cell}, {held})"
    question = f"devshell: remove {what}" + (f" and container {name}" if info else "") + "? [y/N] "
    if asking and not confirm(question):
        doc = down_doc(name, False, "kept", size, declined=True)
        emit(doc, [f"{name}: nothing removed (not confirmed)"], ns.json)
        return 1
    # Under the launch lock, so no launch of this devshell makes or replaces it meanwhile; taken
    # only now (not across the measuring and the question, which would hold launches up), so
    # what was checked is checked again. By id: the container removed is the one checked.
    with launch_lock(name):
        again, volume = _down_checks(engine, ns, name)
        if (again or {}).get("Id") != (info or {}).get("Id"):
            raise DevshellError(f"{name} was replaced while down asked; nothing was removed",
                                "run down again")
        removed = engine.remove_container(info["Id"]) if info is not None else False
        # Its egress proxy and network (--network allow) go with it: they serve it alone.
        engine.remove_egress(proxy_name(name), ns.cell)
        if volume is None:
            volume_state = "absent"
        elif ns.volume:
            volume_state = "removed" if engine.remove_volume(name) else "absent"
            from .seeding import forget_record

            forget_record(name)  # the host's record of its seed goes with it
        else:
            volume_state = "kept"
    doc = down_doc(name, removed, volume_state, size)
    container_text = "container removed" if removed else "no container"
    volume_text = {"removed": f"{what} removed", "kept": f"volume {name} kept (down --volume removes it)",
                   "absent": "no volume"}[volume_state]
    emit(doc, [f"{name}: {container_text}; {volume_text}"], ns.json)
    return 0


def down_doc(name: str, removed: bool, volume_state: str, size: int | None, *,
             declined: bool = False) -> dict[str, Any]:
    return {"container": name, "container_removed": removed, "volume": name, "volume_state": volume_state,
            "volume_size": size, "declined": declined, "notes": []}


def confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# --- doctor -----------------------------------------------------------------------------------


class Finding(NamedTuple):
    """A problem doctor found, and the one thing to do about it."""

    object: str
    problem: str
    fix: str


def stray_objects(containers: Sequence[dict[str, Any]], volumes: Sequence[dict[str, Any]],
                  host: str, alive: Callable[[int], bool]) -> list[Finding]:
    """Objects with devshell's names that devshell did not make (it refuses to use or remove
    them), and test-run objects whose run's process on this host is gone (the next run would
    sweep them; nothing else will)."""
    found = []
    objects = [("container", (c.get("Names") or ["/?"])[0].lstrip("/"), c.get("Labels") or {})
               for c in containers]
    objects += [("volume", v["Name"], v.get("Labels") or {}) for v in volumes]
    for kind, name, got in objects:
        remove = f"docker rm -f {name}" if kind == "container" else f"docker volume rm {name}"
        if name.startswith("devshell-") and labels.MANAGED not in got:
            found.append(Finding(f"{kind} {name}", "has a devshell name but devshell did not create it, "
                                 "so devshell refuses to use or remove it",
                                 f"see what it is (docker {'' if kind == 'container' else 'volume '}inspect "
                                 f"{name}); if it is not needed, {remove}; else use another --instance"))
            continue
        owner_host, _, pid = got.get(labels.TEST_PID, "").partition(":")
        if labels.TEST_RUN in got and owner_host == host and pid.isdigit() and not alive(int(pid)):
            found.append(Finding(f"{kind} {name}", f"left by test run {got[labels.TEST_RUN]}, whose "
                                 f"process {pid} is gone", remove))
    return found


def unused_baked(images: Sequence[dict[str, Any]], containers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The locked profile's baked images (spec.BAKED_REPO) that no container, running or not,
    was made from: a new bake (another init, setup or uid) leaves the old one behind, and
    nothing else removes it. Housekeeping, not a problem: each takes disk, none is in the way."""
    used = {c.get("ImageID") for c in containers}

    def baked_tags(found: Sequence[dict[str, Any]]) -> list[str]:
        return sorted(t for i in found for t in i.get("RepoTags") or [] if t.startswith(f"{BAKED_REPO}:"))

    # Tags, not image ids, on both counts: a tag is what `docker image rm` takes. (No size:
    # each shares its base layers with the cell's image, so its Size would overstate what
    # removing it frees.)
    return {"images": len(baked_tags(images)),
            "unused": baked_tags([i for i in images if i.get("Id") not in used])}


def disk_free(engine_root: str | None, local: bool) -> dict[str, Any]:
    """Free space where the engine keeps images and volumes: its root dir if this machine can
    read it, else /var/lib/docker, else unknown (an engine elsewhere: its disk is not ours)."""
    if local:
        for path in (engine_root, "/var/lib/docker"):
            if not path:
                continue
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            return {"path": path, "free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}
    return {"path": None, "free": None, "total": None}


def doctor(argv: Sequence[str]) -> int:
    p = SubcommandParser(prog="devshell doctor", allow_abbrev=False,
                description="Check the engine, images and devshell's objects; exit 1 on problems.")
    p.add_argument("--cells-dir", action="append", default=[], metavar="DIR",
                   help="also look for cells in DIR")
    _once_flag(p, "--json", action="store_true", help="one JSON document on stdout")
    ns = p.parse_args(list(argv))
    if "" in ns.cells_dir:
        raise DevshellError("--cells-dir needs a directory, and was given an empty value",
                            "pass --cells-dir DIR")
    engine = Engine.connect()
    version, info = engine.version(), engine.system_info()
    problems: list[Finding] = []
    cell_problems: list[DevshellError] = []
    found = cells.available(cells.search_path([os.path.abspath(d) for d in ns.cells_dir]), cell_problems)
    for e in cell_problems:
        problems.append(Finding("cell file", e.message, e.fix or "edit the cell file"))
    images = []
    for cell in found:
        state = image_state(cell, partial(engine.image_present, platform=cell.platform))
        images.append({"cell": cell.name, "image": cell.image, "state": state,
                       "fix": f"docker load {cell.image} (no recipe builds it offline)" if state == "missing"
                       else None})
    disk = disk_free(info.get("DockerRootDir"), engine.host.startswith("unix://"))
    if disk["free"] is not None and disk["free"] < LOW_DISK:
        problems.append(Finding(f"disk {disk['path']}", f"only {human_size(disk['free'])} free",
                                "free space there (docker image prune removes unused images)"))
    containers = engine.list_containers()
    problems += stray_objects(containers, engine.list_volumes(), os.uname().nodename, pid_alive)
    baked = unused_baked(engine.list_images(BAKED_REPO), containers)
    engine_doc = {"host": engine.host, "version": version.get("Version"),
                  "api_version": version.get("ApiVersion"),
                  "storage_driver": info.get("Driver"), "runtimes": sorted(info.get("Runtimes") or {}),
                  "default_runtime": info.get("DefaultRuntime"), "root_dir": info.get("DockerRootDir")}
    doc = {"healthy": not problems, "engine": engine_doc, "disk": disk, "images": images, "baked": baked,
           "problems": [f._asdict() for f in problems],
           "notes": ["a missing image is not a problem until its cell is used"]
           if any(i["state"] == "missing" for i in images) else []}
    emit(doc, doctor_lines(doc), ns.json)
    return 1 if problems else 0


def doctor_lines(doc: dict[str, Any]) -> list[str]:
    e, disk = doc["engine"], doc["disk"]
    lines = [f"engine    Docker {e['version']}, API {e['api_version']}, at {e['host']}",
             f"storage   {e['storage_driver']}",
             f"runtimes  {', '.join(e['runtimes'])} (default {e['default_runtime']})",
             f"disk      {human_size(disk['free'])} free of {human_size(disk['total'])} at {disk['path']}"
             if disk["free"] is not None
             else "disk      unknown (the engine's root dir is not on this machine)"]
    for image in doc["images"]:
        lines.append(f"image     {image['cell']}: {image['state']} ({image['image']})"
                     + (f"; fix: {image['fix']}" if image["fix"] else ""))
    baked = doc["baked"]
    if baked["images"]:
        unused = baked["unused"]
        # The current bake of a cell is unused too once its devshells are gone; removing it
        # only costs the next locked launch a bake.
        free = (f"; to free {'them' if len(unused) > 1 else 'it'}: docker image rm {' '.join(unused)} "
                "(a later locked launch bakes again what it needs)")
        lines.append(f"baked     {baked['images']} locked image{'s' if baked['images'] > 1 else ''}, "
                     f"{len(unused)} unused by any container" + (free if unused else ""))
    for problem in doc["problems"]:
        lines += [f"PROBLEM   {problem['object']}: {problem['problem']}", f"  fix:    {problem['fix']}"]
    n = len(doc["problems"])
    lines.append("healthy" if not n else f"{n} problem{'s' if n > 1 else ''} (exit 1)")
    return lines
