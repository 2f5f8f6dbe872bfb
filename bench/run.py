"""Benchmark: devshell's hot paths side by side with the raw docker floor, in one run.

    python bench/run.py [--cell bookworm] [--reps 10] [--json]

Not a test: nothing here asserts a time. Ratios are against floors measured in the same run on
the same machine, so they travel between machines better than milliseconds do.
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

DEVSHELL = [sys.executable, "-m", "devshell"]


def timed(cmd: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if check and done.returncode:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="bookworm")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    # pip compiles an installed package's bytecode; an editable checkout relies on Python writing
    # it at first import, which PYTHONDONTWRITEBYTECODE (set on some machines) prevents, and
    # then every run compiles devshell from source (~30 ms). Measure what users run.
    import devshell

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(devshell.__file__)],
                   check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})

    work = tempfile.mkdtemp(prefix="devshell-bench-")
    script = os.path.join(work, "true.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ntrue\n")
    instance = f"bench{os.getpid()}"
    name = f"devshell-{args.cell}-{instance}"
    checkout, patches, cache = (os.path.join(work, d) for d in ("checkout", "patches", "cache"))
    os.mkdir(checkout)
    os.chmod(work, 0o755)  # mkdtemp makes it 0700: dev must pass through to the host cache
    # With a host cache, so verify checks everything it can (AI links, binds, writability).
    base = [*DEVSHELL, args.cell, "--instance", instance, "--checkout", checkout, "--patches-out",
            patches, "--host-cache-dir", cache, "--uid", "1000", "--gid", "1000"]
    enter = [*base, "--script", script]
    remove = [*base, "--rm"]

    def drop_volume() -> None:
        timed(remove)
        subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)

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
    finally:
        drop_volume()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    report = {
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
    if args.json:
        print(json.dumps(report))
        return 0
    floors = {"warm_reentry": "docker_exec_floor", "verify_exec": "docker_exec_floor",
              "cold_start": "docker_run_floor", "rm_reentry": "docker_run_floor"}
    print(f"{'measure':20} {'min':>8} {'median':>8} {'max':>8}  ratio to floor  (ms, {args.reps} reps)")
    for key, values in results.items():
        ratio = f"{med[key] / med[floors[key]]:.2f} x {floors[key]}" if key in floors else "(floor)"
        print(f"{key:20} {min(values):8.1f} {med[key]:8.1f} {max(values):8.1f}  {ratio}")
    print(f"verify: {report['verify_ms']} ms beyond the exec it rides on "
          f"({report['verify_process_ms']} ms as a whole process, timed inside the container)")
    print("targets: warm <= 2.7x docker exec, cold <= 3.5x docker run --rm, verify <= 20 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
