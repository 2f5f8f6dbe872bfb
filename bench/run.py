"""Benchmark: devshell's hot paths side by side with the raw docker floor, in one run.

    python bench/run.py [--cell bookworm] [--reps 10] [--json] [--no-profiles] [--gate]
    python bench/run.py --ccache [--cell c-ccache] [--reps 3] [--json]

Not a test: nothing here asserts a time. Ratios are against floors measured in the same run on
the same machine, so they travel between machines better than milliseconds do.

Also, unless --no-profiles: cold start and warm re-entry under --network allow (warm: the
proxy's checks and verify's self-test; cold: a new network and proxy besides the devshell),
under --profile locked, and under gVisor (--runtime runsc, locked) when the engine has runsc
registered. Each is a ratio to
the raw docker floor with the same runtime (devshell's own overhead there) and a difference
in ms to the standard profile under the default runtime (what the profile or runtime adds).

With --gate, also the contract gate's wall time (gate_s): `pytest suites --cell=CELL -m
contract -n 2`, the run to have on every push (README, tox -e contract), after the rows above.

With --ccache, only warm workspaces (docs/performance.md): the cell's project built cold, packed,
and rebuilt clean in a devshell seeded from that entry: cold_build_s, warm_rebuild_s and
ccache_hit_rate (read from ccache's own statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

DEVSHELL = [sys.executable, "-m", "devshell"]


def timed(cmd: list[str], check: bool = True) -> float:
    return timed_stderr(cmd, check)[0]


def timed_stderr(cmd: list[str], check: bool = True) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if check and done.returncode:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, done.stderr


def verify_inside(name: str, reps: int) -> tuple[float, float]:
    """What --verify costs, timed inside the container over many runs (the docker exec around it
    is far noisier than the thing measured): the whole devshell-init --verify process, and what
    it costs beyond the same script doing nothing (--status), which the session's exec pays
    anyway. Returns (process_ms, beyond_ms)."""
    # Interleaved, one pair per line, so a busy moment weighs on both sides of a pair alike.
    loop = (f'for i in $(seq {reps * 10}); do for mode in --status --verify; do '
            's=$EPOCHREALTIME; /usr/local/libexec/devshell-init $mode >/dev/null || exit 1; '
            'printf "%s " $(( ${EPOCHREALTIME/./} - ${s/./} )); done; echo; done')
    done = subprocess.run(["docker", "exec", name, "bash", "-c", loop], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench: verify failed inside {name}: {done.stdout}{done.stderr}")
    pairs = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    return (statistics.median(v for _, v in pairs) / 1000,
            statistics.median(v - idle for idle, v in pairs) / 1000)


def sample(reps: int, once: Callable[[], float], before: Callable[[], None] = lambda: None) -> list[float]:
    out = []
    for _ in range(reps):
        before()
        out.append(once())
    return out


# Beside the standard profile under the engine's default runtime: (key, devshell's flags, the
# engine runtime they run under; "" is the default).
# gVisor runs devshells only under locked (the launcher refuses standard there: the filter
# devshell installs on gVisor's sessions needs no-new-privileges, which rules out sudo).
VARIANTS = (("allow", ("--network", "allow"), ""),  # cold: a new proxy and network too
            ("locked", ("--profile", "locked"), ""),
            ("locked_runsc", ("--profile", "locked", "--runtime", "runsc"), "runsc"))


def runsc_problem() -> str | None:
    """Why devshell cannot run under runsc on this engine (as devshell itself judges it), or None."""
    from devshell.engine import Engine
    from devshell.errors import DevshellError

    try:
        Engine.connect().runtime("runsc")
    except DevshellError as e:
        return "not registered" if "not registered" in e.message else e.message
    return None


def devshell_argv(cell: str, instance: str, root: str, script: str) -> tuple[list[str], list[str]]:
    """(enter, remove) for the devshell CELL-INSTANCE, its checkout, patches and host cache in root."""
    checkout, patches, cache = (os.path.join(root, d) for d in ("checkout", "patches", "cache"))
    os.makedirs(checkout, exist_ok=True)
    # With a host cache, so verify checks everything it can (AI links, binds, writability).
    base = [*DEVSHELL, cell, "--instance", instance, "--checkout", checkout, "--patches-out",
            patches, "--host-cache-dir", cache, "--uid", "1000", "--gid", "1000"]
    return [*base, "--script", script], [*base, "--rm"]


def drop(cell: str, instance: str, remove: list[str]) -> None:
    """Remove the devshell's container (devshell --rm) and its volume."""
    timed(remove)
    subprocess.run(["docker", "volume", "rm", "-f", f"devshell-{cell}-{instance}"], capture_output=True)
    # ... and its egress proxy and network, where it ran under --network allow
    proxy = f"devshell_egress-{cell}-{instance}"
    subprocess.run(["docker", "rm", "-f", proxy], capture_output=True)
    subprocess.run(["docker", "network", "rm", proxy], capture_output=True)


class Variants(NamedTuple):
    runsc: str | None  # why devshell cannot run under runsc here; None: it can
    rows: dict[str, list[float]]  # {key}_warm, {key}_cold, and docker_{exec,run}_runsc floors
    first_launch_ms: float | None  # the locked warm-up, when it baked the image (else None)


def measure_variants(args: argparse.Namespace, work: str, script: str, instance: str,
                     image: str) -> Variants:
    """Warm re-entry and cold start for each of VARIANTS, after one warm-up launch each (which
    bakes the locked image when it is not there yet: a one-time cost, reported apart), and the
    docker exec and run floors under runsc. Every devshell made here is dropped before return."""
    runsc = runsc_problem()
    rows: dict[str, list[float]] = {}
    first_launch_ms = None
    for key, flags, runtime in VARIANTS:
        if runtime and runsc:
            continue
        baked = measure_variant(args, os.path.join(work, key), script,
                                f"{instance}-{key.replace('_', '-')}", image, key, flags, runtime, rows)
        first_launch_ms = first_launch_ms if baked is None else baked
    return Variants(runsc, rows, first_launch_ms)


def measure_variant(args: argparse.Namespace, root: str, script: str, instance: str, image: str,
                    key: str, flags: tuple[str, ...], runtime: str,
                    rows: dict[str, list[float]]) -> float | None:
    """One variant's rows into rows; the warm-up's time when it baked the locked image."""
    enter, remove = devshell_argv(args.cell, instance, root, script)
    enter += flags
    name = f"devshell-{args.cell}-{instance}"
    try:
        first_ms, err = timed_stderr(enter)  # the warm-up
        if runtime and f"docker_exec_{runtime}" not in rows:
            # The raw floors under the same runtime: an exec into this running sandbox, and a
            # whole sandbox's life for `true`.
            rows[f"docker_exec_{runtime}"] = sample(args.reps, lambda: timed(
                ["docker", "exec", name, "true"]))
            rows[f"docker_run_{runtime}"] = sample(args.reps, lambda: timed(
                ["docker", "run", "--rm", f"--runtime={runtime}", image, "true"]))
        rows[f"{key}_warm"] = sample(args.reps, lambda: timed(enter))
        rows[f"{key}_cold"] = sample(args.reps, lambda: timed(enter),
                                     before=lambda: drop(args.cell, instance, remove))
    finally:
        drop(args.cell, instance, remove)
    return first_ms if "devshell: baking " in err else None


def ccache_bench(args: argparse.Namespace) -> dict[str, Any]:
    """A cold build in one devshell, `cache pack`, a second devshell seeded from the entry, and
    clean rebuilds there (--reps of them; the median): all timed inside, with ccache's own
    count of hits. The cell must declare build: with a project (the c-ccache cell does)."""
    from devshell import cells, seeds

    cell = cells.find(args.cell, cells.search_path())
    steps = cell.build_steps
    if steps is None or steps.project is None:
        raise SystemExit(f"bench: cell {cell.name} declares no build: with a project; "
                         "try --cell c-ccache")
    work = tempfile.mkdtemp(prefix="devshell-bench-ccache-")
    os.chmod(work, 0o755)
    repo = os.path.join(work, "checkout")
    steps.repository(repo)
    scripts = {}
    for what, text in (("cold", steps.script(clean=True)), ("warm", steps.script(clean=True)),
                       ("noop", "#!/bin/sh\ntrue\n")):
        scripts[what] = os.path.join(work, f"{what}.sh")
        with open(scripts[what], "w") as f:
            f.write(text)
    cold_instance, warm_instance = f"benchcold{os.getpid()}", f"benchwarm{os.getpid()}"
    entry: dict[str, Any] | None = None

    def launch(instance: str, script: str, *more: str,
               report: bool = True) -> tuple[float, dict[str, Any]]:
        argv = [*DEVSHELL, cell.name, "--instance", instance, "--checkout", repo, "--patches-out",
                os.path.join(work, f"patches-{instance}"), "--uid", "1000", "--gid", "1000", *more,
                "--script", script]
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise SystemExit(f"bench: {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return time.perf_counter() - start, steps.read_report(done.stdout) if report else {}

    try:
        launch(cold_instance, scripts["noop"], report=False)  # the image, once; not timed
        subprocess.run([*DEVSHELL, "down", cell.name, "--instance", cold_instance, "--volume", "--yes"],
                       capture_output=True, check=True)
        _, cold = launch(cold_instance, scripts["cold"])
        out = os.path.join(work, "entry")
        packed = subprocess.run([*DEVSHELL, "cache", "pack", cell.name, "--instance", cold_instance,
                                 "--out", out, "--json"], capture_output=True, text=True)
        if packed.returncode:
            raise SystemExit(f"bench: cache pack failed: {packed.stderr.strip()}")
        entry = json.loads(packed.stdout)
        cells_dir = cells.seeded_copy(cell, os.path.join(work, "cells"), out, entry["key"],
                                      entry["manifest_sha256"])
        seeded_s, _ = launch(warm_instance, scripts["noop"], "--cells-dir", cells_dir, report=False)
        rebuilds = [launch(warm_instance, scripts["warm"], "--cells-dir", cells_dir)[1]
                    for _ in range(max(1, args.reps))]
        first = rebuilds[0]
    finally:
        for instance in (cold_instance, warm_instance):
            subprocess.run([*DEVSHELL, "down", cell.name, "--instance", instance, "--volume", "--yes"],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        if entry is not None:
            seeds.forget(entry["manifest_sha256"])  # what this run put in the host's seed cache
    warm = statistics.median(r["seconds"] for r in rebuilds)
    return {
        "cell": cell.name,
        "reps": len(rebuilds),
        "objects": cold["compiled"],
        "cold_build_s": round(cold["seconds"], 2),
        "warm_rebuild_s": round(warm, 2),
        "warm_to_cold": round(warm / cold["seconds"], 3),
        # the first rebuild after the seed: what the issue measures (later ones hit the same)
        "ccache_hit_rate": round(first["hit_rate"], 4),
        # the launch that makes the container and seeds its new volume (fetch, check, stream in,
        # the source fetched inside), with a script that does nothing
        "seeded_launch_s": round(seeded_s, 2),
    }


GATE_TARGET_S = 45


def with_bytecode() -> dict[str, str]:
    """This environment without PYTHONDONTWRITEBYTECODE (set on some machines; tox does not pass
    it): without cached bytecode every Python process compiles its modules again, and every
    pytest process its plugins' too, with assertions rewritten (1.5 s each here)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def gate_bench(cell: str) -> dict[str, Any]:
    """The contract gate as `tox -e contract` runs it (-m contract -n 2, cached bytecode): wall
    time of the whole pytest process (collection, images present, every devshell made and
    removed), what it passed, and its exit status: a failed gate's time is no measurement."""
    from devshell.contract import suites_dir

    argv = [sys.executable, "-m", "pytest", str(suites_dir()), f"--cell={cell}", "-m", "contract",
            "-n", "2", "-q", "-p", "no:cacheprovider"]
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=with_bytecode())
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-4000:] + run.stderr[-2000:])
        sys.stderr.write(f"bench: the contract gate failed (exit {run.returncode}): {' '.join(argv)}\n")
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    return {"gate_s": round(elapsed, 1) if run.returncode == 0 else None, "gate_exit": run.returncode,
            "gate_summary": summary.strip("= "), "gate_target_s": GATE_TARGET_S}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default=None, help="default: bookworm, or c-ccache with --ccache")
    ap.add_argument("--ccache", action="store_true",
                    help="only the warm-workspace rows: cold build, seeded clean rebuild, ccache hit rate")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-profiles", action="store_true",
                    help="skip the allow, locked profile and runsc rows (standard profile only)")
    ap.add_argument("--gate", action="store_true",
                    help="also time the contract gate (pytest suites -m contract -n 2): gate_s")
    args = ap.parse_args()
    if args.ccache and args.gate:
        ap.error("--gate times the contract gate beside the launch rows, not with --ccache: run them apart")
    args.cell = args.cell or ("c-ccache" if args.ccache else "bookworm")
    if args.ccache:
        found = ccache_bench(args)
        if args.json:
            print(json.dumps(found))
        else:
            print(f"{found['cell']}: {found['objects']} objects; cold build {found['cold_build_s']} s; "
                  f"seeded clean rebuild {found['warm_rebuild_s']} s (median of {found['reps']}, "
                  f"{found['warm_to_cold']:.1%} of cold) at a ccache hit rate of "
                  f"{found['ccache_hit_rate']:.1%}; "
                  f"a launch that seeds takes {found['seeded_launch_s']} s")
        return 0

    # pip compiles an installed package's bytecode; an editable checkout relies on Python writing
    # it at first import, which PYTHONDONTWRITEBYTECODE (set on some machines) prevents, and
    # then every run compiles devshell from source (~30 ms). Measure what users run.
    import devshell

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(devshell.__file__)],
                   check=True, env=with_bytecode())

    work = tempfile.mkdtemp(prefix="devshell-bench-")
    script = os.path.join(work, "true.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrue\n")
    instance = f"bench{os.getpid()}"
    name = f"devshell-{args.cell}-{instance}"
    os.chmod(work, 0o755)  # mkdtemp makes it 0700: dev must pass through to the host cache
    enter, remove = devshell_argv(args.cell, instance, work, script)

    def drop_volume() -> None:
        drop(args.cell, instance, remove)

    try:
        timed(enter)  # build the image if needed; start and verify the container
        image = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True,
                                          text=True).stdout)[0]["Config"]["Image"]
        verify_process_ms, verify_ms = verify_inside(name, args.reps)
        results = {
            "docker_exec_floor": sample(args.reps, lambda: timed(["docker", "exec", name, "true"])),
            "warm_reentry": sample(args.reps, lambda: timed(enter)),
            "verify_exec": sample(args.reps, lambda: timed(
                ["docker", "exec", name, "/usr/local/libexec/devshell-init", "--verify"])),
            "docker_run_floor": sample(args.reps, lambda: timed(["docker", "run", "--rm", image, "true"])),
            "cold_start": sample(args.reps, lambda: timed(enter), before=drop_volume),
            "rm_reentry": sample(args.reps, lambda: timed(enter), before=lambda: timed(remove) and None),
        }
        variants = None if args.no_profiles else measure_variants(args, work, script, instance, image)
    finally:
        drop_volume()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    report: dict[str, Any] = {
        "cell": args.cell,
        "reps": args.reps,
        "warm_reentry_ms": round(med["warm_reentry"], 1),
        "docker_exec_floor_ms": round(med["docker_exec_floor"], 1),
        "cold_start_ms": round(med["cold_start"], 1),
        "docker_run_floor_ms": round(med["docker_run_floor"], 1),
        # What --verify adds beyond the exec it rides on (timed inside; see verify_inside).
        "verify_ms": round(verify_ms, 1),
        "verify_process_ms": round(verify_process_ms, 1),
        "verify_exec_ms": round(med["verify_exec"], 1),
        "rm_reentry_ms": round(med["rm_reentry"], 1),
        "warm_ratio": round(med["warm_reentry"] / med["docker_exec_floor"], 2),
        "cold_ratio": round(med["cold_start"] / med["docker_run_floor"], 2),
        "targets": {"warm_ratio": 2.7, "cold_ratio": 3.5, "verify_ms": 20},
    }
    # key -> (floor key, the standard row it adds to); floors under runc are the ones above.
    against: dict[str, tuple[str, str]] = {}
    if variants is not None:
        med.update({k: statistics.median(v) for k, v in variants.rows.items()})
        for key, _, runtime in VARIANTS:
            if f"{key}_warm" in variants.rows:
                exec_floor, run_floor = ((f"docker_exec_{runtime}", f"docker_run_{runtime}") if runtime
                                         else ("docker_exec_floor", "docker_run_floor"))
                against[f"{key}_warm"] = (exec_floor, "warm_reentry")
                against[f"{key}_cold"] = (run_floor, "cold_start")
        report["profiles"] = {
            key: {"ms": round(med[key], 1), "floor": floor, "ratio": round(med[key] / med[floor], 2),
                  "added_ms": round(med[key] - med[std], 1)} for key, (floor, std) in against.items()}
        report["runsc_floors_ms"] = {k: round(med[k], 1) for k in variants.rows if k.startswith("docker_")}
        report["runsc"] = variants.runsc or "registered"
        first = variants.first_launch_ms
        report["locked_first_launch_ms"] = None if first is None else round(first, 1)
        # The bake alone, roughly: that first launch less a cold start of the baked image.
        report["locked_bake_ms"] = (None if first is None or "locked_cold" not in med
                                    else round(first - med["locked_cold"], 1))
    if args.gate:
        report.update(gate_bench(args.cell))
    failed = 1 if args.gate and report["gate_exit"] != 0 else 0
    if args.json:
        print(json.dumps(report))
        return failed
    floors = {"warm_reentry": "docker_exec_floor", "verify_exec": "docker_exec_floor",
              "cold_start": "docker_run_floor", "rm_reentry": "docker_run_floor"}
    print(f"{'measure':20} {'min':>8} {'median':>8} {'max':>8}  ratio to floor  (ms, {args.reps} reps)")
    for key, values in results.items():
        ratio = f"{med[key] / med[floors[key]]:.2f} x {floors[key]}" if key in floors else "(floor)"
        print(f"{key:20} {min(values):8.1f} {med[key]:8.1f} {max(values):8.1f}  {ratio}")
    print(f"verify: {report['verify_ms']} ms beyond the exec it rides on "
          f"({report['verify_process_ms']} ms as a whole process, timed inside the container)")
    print("targets: warm <= 2.7x docker exec, cold <= 3.5x docker run --rm, verify <= 20 ms")
    if args.gate:
        print(f"contract gate: {report['gate_s']} s wall ({report['gate_summary']}); "
              f"target <= {GATE_TARGET_S} s" if not failed else
              f"contract gate: failed, exit {report['gate_exit']} ({report['gate_summary']})")
    if variants is None:
        return failed
    print(f"{'profile, runtime':20} {'min':>8} {'median':>8} {'max':>8}  ratio to floor (same runtime)"
          f"{'':8}added to standard")
    for key, values in variants.rows.items():
        if key in against:
            floor, std = against[key]
            ratio = f"{med[key] / med[floor]:.2f} x {floor}"
            added = f"{med[key] - med[std]:+8.1f} ms vs {std}"
        else:
            ratio, added = "(floor)", ""
        print(f"{key:20} {min(values):8.1f} {med[key]:8.1f} {max(values):8.1f}  {ratio:36} {added}".rstrip())
    first = variants.first_launch_ms
    if first is not None and "locked_cold" in med:
        print(f"locked bake: ~{first - med['locked_cold']:.0f} ms once (first launch {first:.0f} ms, "
              "bake + cold start, less locked_cold); the image is cached afterwards")
    elif "locked_cold" in med:
        print("locked bake: image already baked (cached), not timed")
    if variants.runsc:
        print(f"runsc: {variants.runsc}, skipped")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
