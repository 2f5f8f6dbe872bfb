"""Warm workspaces: a devshell seeded from a build cache entry rebuilds from its ccache.

The whole loop, with real containers, for a cell that declares its build (`build:`; collected
for no other cell): a cold build in one devshell, `devshell cache pack`, a second devshell on a
new volume seeded from that entry, and rebuilds read off ccache's own statistics. Then the ways
a seed goes wrong: fetched over HTTP from a server on loopback, pinned to the wrong manifest, and
interrupted halfway (the launcher killed, the container killed). Each leaves a correct volume.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from devshell import buildcache, cells, seeding, seeds
from devshell.cells import Seed, Source
from devshell.errors import DevshellError
from devshell.plugin import DEV_GID, DEV_UID
from devshell.spec import container_name

pytestmark = pytest.mark.xdist_group("warm-build")  # one cold build, shared by the module

HIT_RATE = 0.95


def build(shell, **how) -> dict[str, float]:
    """The cell's build in shell (BuildSteps.script), and what it reported."""
    done = shell.run(shell.cell.build_steps.script(**how))
    assert done.exit_code == 0, done.stdout + done.stderr
    return shell.cell.build_steps.read_report(done.stdout)


def report(record_property, name: str, value: str) -> None:
    """A line of the warm-build table printed at the end of the run (conftest.py)."""
    record_property("warm-build", (name, value))


@pytest.fixture(scope="module")
def project(devshell_cell, tmp_path_factory):
    """The cell's project as a git repository on the host, readable by dev: the checkout."""
    steps = devshell_cell.build_steps
    if steps is None or steps.project is None:
        pytest.fail(f"cell {devshell_cell.name} declares no build: with a project; the warm-build "
                    "suite is for a cell that does (c-ccache)", pytrace=False)
    where = tmp_path_factory.mktemp("project")
    where.chmod(0o755)
    return where / "repo", steps.repository(str(where / "repo"))


@pytest.fixture(scope="module")
def cold(devshell_factory, project):
    """A devshell that built the project from nothing."""
    repo, _ = project
    shell = devshell_factory.open(checkout=repo)
    return shell, build(shell, clean=True)


@pytest.fixture(scope="module")
def entry(cold, devshell_cli, tmp_path_factory):
    """The cold devshell packed: the entry's directory, key and manifest sha256 (and, after the
    module, out of the host's seed cache again)."""
    shell, _ = cold
    out = tmp_path_factory.mktemp("entry") / "cache"
    done = devshell_cli(None, "cache", "pack", shell.spec.cell, f"--instance={shell.opts.instance}",
                        f"--out={out}", "--json")
    assert done.exit_code == 0, done.stderr
    packed = json.loads(done.stdout)
    yield out, packed["key"], packed["manifest_sha256"]
    seeds.forget(packed["manifest_sha256"])


def seeded_cell(cell, source: str, key: str, sha: str):
    return cell._replace(seed=Seed(source, key, sha))


def cell_file(cell, directory, source, key: str, sha: str) -> str:
    """The --cell cell's file again, in directory, seeded from source (for the real CLI)."""
    return cells.seeded_copy(cell, str(directory), str(source), key, sha)


@pytest.fixture(scope="module")
def warm(devshell_factory, devshell_cell, project, entry):
    """A second devshell, on a new volume seeded from file:// of the entry."""
    repo, _ = project
    out, key, sha = entry
    return devshell_factory.open(seeded_cell(devshell_cell, f"file://{out}", key, sha), checkout=repo)


@pytest.fixture
def noop(tmp_path):
    """A script that does nothing: a launch that only opens (and seeds) the devshell."""
    script = tmp_path / "noop.sh"
    script.write_text("true\n")
    return script


def workspace_state(shell) -> str:
    """Every path in the volume with its type, size, mode and owner (and the marker's content):
    equal before and after means the volume was left as it was."""
    listing = shell.exec(["sh", "-c", f'cd "{shell.spec.workspace}" && find . -printf "%y %s %m %U:%G %p\\n" '
                          f'| sort; cat {seeding.MARKER} 2>/dev/null'])
    assert listing.exit_code == 0, listing.stderr
    return listing.stdout


def test_a_seeded_volume_rebuilds_from_the_ccache(cold, warm, project, record_property):
    _, cold_build = cold
    seeded = build(warm, clean=True)
    report(record_property, "cold build", f"{cold_build['seconds']:.1f} s, {cold_build['compiled']} objects, "
           f"ccache hit rate {cold_build['hit_rate']:.0%}")
    report(record_property, "seeded clean rebuild", f"{seeded['seconds']:.1f} s, ccache hit rate "
           f"{seeded['hit_rate']:.1%} ({seeded['hits']} hits, {seeded['misses']} misses)")
    assert cold_build["misses"] == cold_build["compiled"] > 0  # the control: a cold cache misses
    # ccache's rate leaves out what it could not cache: the hits must cover the objects too
    assert seeded["hit_rate"] >= HIT_RATE and seeded["hits"] >= HIT_RATE * seeded["compiled"], seeded
    # The source came with the seed: the manifest's commit, fetched inside into src.
    assert seeded["commit"] == project[1]


def test_the_seed_is_dev_s_and_marked_complete(warm, entry):
    _, key, sha = entry
    marker = seeding.read_marker(warm.engine, warm.name, warm.spec.workspace)
    assert marker == seeding.Marker("complete", key, sha)
    assert warm.seed == marker
    owners = warm.exec(["sh", "-c", f'find "$0" "$1" ! -user {warm.opts.uid} -o -perm /6000 | head -3',
                        warm.cell.install, warm.cell.ccache])
    assert owners.exit_code == 0 and owners.stdout == "", owners.stdout  # all dev's, no set-id bit
    ran = warm.run('"$DEVSHELL_INSTALL/bin/calc-demo"')
    assert ran.exit_code == 0 and "values:" in ran.stdout, ran.stdout + ran.stderr


def test_one_changed_file_recompiles_one_translation_unit(warm, record_property):
    build(warm, clean=False)  # settled: nothing to do
    changed = build(warm, clean=False, change="lib/stage05.cpp")
    report(record_property, "one file changed", f"{changed['seconds']:.2f} s, {changed['compiled']} object")
    assert (changed["compiled"], changed["misses"]) == (1, 1), changed


def test_the_ccache_stays_warm_across_rm(warm, entry, devshell_cli, record_property, tmp_path):
    removed = devshell_cli(warm, "--rm")
    assert removed.exit_code == 0, removed.stderr
    script = tmp_path / "rebuild.sh"
    script.write_text(warm.cell.build_steps.script(clean=True))
    # With the seeded cell: a new container on a volume whose seed is complete is not seeded again.
    seeded = cell_file(warm.cell, tmp_path / "cells", *entry)
    entered = devshell_cli(warm, f"--script={script}", cells_dirs=(seeded,))
    assert entered.exit_code == 0, entered.stderr
    assert "seeded devshell-" not in entered.stderr and f"· seeded {entry[1]}" in entered.stderr
    found = warm.cell.build_steps.read_report(entered.stdout)
    report(record_property, "after --rm, clean rebuild", f"ccache hit rate {found['hit_rate']:.1%}")
    assert found["hit_rate"] >= HIT_RATE and found["hits"] >= HIT_RATE * found["compiled"], found


class _Counting(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet; the server counts instead
        self.server.requests.append(self.path)


@pytest.fixture
def http_entry(entry):
    """The entry served over HTTP on loopback by a server this test starts."""
    out, key, sha = entry
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Counting, directory=str(out)))
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", key, sha, server.requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_seed_over_http_is_downloaded_by_the_host(devshell_factory, devshell_cell, project, http_entry,
                                                    monkeypatch, tmp_path):
    url, key, sha, requests = http_entry
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # an empty seed cache: it must download
    shell = devshell_factory.open(seeded_cell(devshell_cell, url, key, sha), checkout=project[0])
    assert sorted(requests) == sorted(f"/{f}" for f in (f"{key}.manifest.json", f"{key}.tar.zst",
                                                         f"{key}.ccache.tar.zst"))
    assert shell.seed == seeding.Marker("complete", key, sha)
    assert (tmp_path / "xdg" / "devshell" / "seeds" / sha).is_file()


def variant(entry, where, **changes) -> tuple[str, str]:
    """The entry again in where, its manifest changed (the archives copied as they are): its
    directory and the new manifest's pin."""
    out, key, _ = entry
    where.mkdir()
    doc = buildcache.loads((out / f"{key}.manifest.json").read_bytes(), "the entry")
    doc.update(changes)
    data = buildcache.dumps(doc) if changes.get("format", 1) == 1 else json.dumps(doc).encode()
    for archive in doc["archives"].values():
        if archive is not None:
            shutil.copy(out / archive["file"], where / archive["file"])
    (where / f"{key}.manifest.json").write_bytes(data)
    return str(where), hashlib.sha256(data).hexdigest()


def wrong_pin(entry, tmp_path):
    out, _, sha = entry
    return str(out), sha[:-1] + ("0" if sha[-1] != "0" else "1"), "checksum mismatch"


def unreachable(entry, tmp_path):
    return "http://127.0.0.1:9", entry[2], "cannot fetch http://127.0.0.1:9/"


def malformed(entry, tmp_path):
    where, sha = variant(entry, tmp_path / "malformed", format=2)
    return where, sha, "is not a build cache manifest"


def elsewhere(entry, tmp_path):
    where, sha = variant(entry, tmp_path / "elsewhere", workspace="/home/runner/work/other/other")
    return where, sha, "was built at /home/runner/work/other/other, and cell"


@pytest.mark.parametrize("bad", [wrong_pin, unreachable, malformed, elsewhere])
def test_a_seed_that_cannot_be_taken_is_one_line_and_the_volume_left_as_it_was(
        bad, noop, warm, entry, devshell_cli, devshell_instance, devshell_engine, tmp_path):
    source, sha, needle = bad(entry, tmp_path)
    cells_dir = cell_file(warm.cell, tmp_path / "cells", source, entry[1], sha)
    before = workspace_state(warm)
    # An empty seed cache: what the host already holds under the pin needs no source (the pin,
    # not the URL, names the content), so an unreachable one would go unnoticed.
    fresh_cache = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    reseed = devshell_cli(warm, "--reseed", f"--script={noop}", cells_dirs=(cells_dir,), env=fresh_cache)
    said = reseed.stderr.strip().splitlines()
    assert reseed.exit_code == 2 and len(said) == 1 and needle in said[0], reseed.stderr
    assert workspace_state(warm) == before
    # ... and a new devshell with that seed is never made: no container, no volume.
    instance = devshell_instance()
    fresh = devshell_cli(warm, f"--script={noop}", cells_dirs=(cells_dir,), instance=instance,
                         env=fresh_cache)
    assert fresh.exit_code == 2 and needle in fresh.stderr, fresh.stderr
    name = container_name(warm.cell.name, instance)
    assert devshell_engine.inspect(name) is None and devshell_engine.volume_info(name) is None


def test_reseed_takes_the_pinned_entry_and_keeps_the_rest_of_the_volume(noop, warm, entry, devshell_cli,
                                                                        tmp_path):
    """The control of the refusals above: the right pin reseeds that same volume."""
    out, key, sha = entry
    cells_dir = cell_file(warm.cell, tmp_path / "right", out, key, sha)
    warm.exec(["sh", "-c", f'echo mine > "{warm.spec.workspace}/kept"'], user=str(warm.opts.uid))
    warm.exec(["rm", "-rf", f"{warm.cell.install}/bin"], user=str(warm.opts.uid))
    right = devshell_cli(warm, "--reseed", f"--script={noop}", cells_dirs=(cells_dir,))
    assert right.exit_code == 0 and "seeded" in right.stderr, right.stderr
    assert warm.exec(["cat", f"{warm.spec.workspace}/kept"]).stdout == "mine\n"
    assert warm.exec(["test", "-x", f"{warm.cell.install}/bin/calc-demo"]).exit_code == 0


def test_an_entry_without_ccache_or_source_seeds_a_cold_ccache_and_the_cell_s_source(
        noop, entry, project, devshell_factory, devshell_cell, devshell_engine, tmp_path):
    repo, commit = project
    archives = buildcache.loads((entry[0] / f"{entry[1]}.manifest.json").read_bytes(), "entry")["archives"]
    where, sha = variant(entry, tmp_path / "bare", source={"repo": None, "commit": None},
                         archives={**archives, "ccache": None})
    cell = devshell_cell._replace(seed=Seed(where, entry[1], sha),
                                  source_pin=Source("file:///checkout", commit))
    shell = devshell_factory.open(cell, checkout=repo)
    head = shell.exec(["git", "-C", cell.src, "rev-parse", "HEAD"], user=str(shell.opts.uid))
    assert head.stdout.strip() == commit
    assert shell.exec(["sh", "-c", f'ls -A "{cell.ccache}" | wc -l']).stdout.strip() == "0"
    assert shell.seed == seeding.Marker("complete", entry[1], sha)


def test_reseed_clean_empties_the_volume_first(noop, warm, entry, devshell_cli, tmp_path):
    out, key, sha = entry
    cells_dir = cell_file(warm.cell, tmp_path / "cells", out, key, sha)
    warm.exec(["sh", "-c", f'echo mine > "{warm.spec.workspace}/gone"'], user=str(warm.opts.uid))
    done = devshell_cli(warm, "--reseed", "--clean", f"--script={noop}", cells_dirs=(cells_dir,))
    assert done.exit_code == 0 and "seeded" in done.stderr, done.stderr
    assert warm.exec(["test", "-e", f"{warm.spec.workspace}/gone"]).exit_code == 1
    assert warm.exec(["test", "-x", f"{warm.cell.install}/bin/calc-demo"]).exit_code == 0


def listed_seed(devshell_cli, cell, cells_dir, instance) -> str:
    shown = devshell_cli(None, "--list", "--json", f"--cells-dir={cells_dir}", f"--instance={instance}")
    assert shown.exit_code == 0, shown.stderr
    return next(row["seed"] for row in json.loads(shown.stdout)["cells"] if row["cell"] == cell)


@pytest.mark.fault("seed interrupted")
@pytest.mark.parametrize("kill", ["launcher", "container"])
def test_an_interrupted_seed_is_redone_at_the_next_entry(noop, kill, entry, project, devshell_cli,
                                                         devshell_cell, devshell_instance, devshell_engine,
                                                         tmp_path):
    out, key, sha = entry
    cells_dir = cell_file(devshell_cell, tmp_path / "cells",
                          out, key, sha)
    instance = devshell_instance()
    name = container_name(devshell_cell.name, instance)
    argv = [sys.executable, "-m", "devshell", devshell_cell.name, f"--cells-dir={cells_dir}",
            f"--instance={instance}", f"--checkout={project[0]}", f"--patches-out={tmp_path / 'patches'}",
            f"--uid={DEV_UID}", f"--gid={DEV_GID}", f"--script={noop}"]
    launch = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    # Interrupted once the seed is under way in the volume: its marker says partial.
    begun = seeding.Marker("partial", key, sha)
    while seeding.read_marker(devshell_engine, name, devshell_cell.workspace) != begun:
        assert launch.poll() is None, f"the launch ended before its seed began: {launch.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if kill == "launcher":
        launch.send_signal(signal.SIGKILL)
    else:
        subprocess.run(["docker", "kill", name], capture_output=True, check=False)
    launch.wait(timeout=120)
    assert launch.returncode != 0  # it did not get to finish
    assert listed_seed(devshell_cli, devshell_cell.name, cells_dir, instance) == f"partial {key}"
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "seeded" in again.stderr
    assert listed_seed(devshell_cli, devshell_cell.name, cells_dir, instance) == f"seeded {key}"
    marker = seeding.read_marker(devshell_engine, name, devshell_cell.workspace)
    assert marker == seeding.Marker("complete", key, sha)
    # The install tree is the entry's, whole.
    with open(out / f"{key}.tar.zst", "rb") as f:
        import tarfile

        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(f) as z, tarfile.open(fileobj=z, mode="r|") as tar:
            packed = sorted(m.name for m in tar if m.isfile())
    listing = devshell_engine.exec(name, ["find", "install", "-type", "f"], workdir=devshell_cell.workspace)
    assert sorted(listing.stdout.split()) == packed


def escaping_tree(workspace: str) -> bytes:
    """A tar no member of which leaves install/ by its own text, which still writes /etc/NAME
    when unpacked by something that follows what it unpacked: a symlink deep enough to climb
    to the workspace, and a hard link to it one level down (a hard link to a symlink is that
    symlink again, its text read from elsewhere: from install/, past /)."""
    import io
    import tarfile

    depth = len(workspace.strip("/").split("/")) + 1  # install/ below the workspace
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["install", *("install/" + "/".join(["d"] * n) for n in range(1, 7))]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        # six levels below install/, six ../: install/ itself, inside by its own text
        link = tarfile.TarInfo("install/" + "/".join(["d"] * 6) + "/s")
        link.type, link.linkname = tarfile.SYMTYPE, "/".join([".."] * 6)
        tar.addfile(link)
        hard = tarfile.TarInfo("install/h")
        hard.type, hard.linkname = tarfile.LNKTYPE, link.name
        tar.addfile(hard)
        data = b"escaped\n"
        escape = tarfile.TarInfo("install/h/etc/devshell-seed-escape")
        escape.size, escape.mode = len(data), 0o644
        tar.addfile(escape, io.BytesIO(data))
    assert depth <= 6  # the hard link's six ../, read from install/, climb to /
    return raw.getvalue()


@pytest.mark.attack("seed", "unpack a tree whose links lead out of the volume, into /etc")
def test_the_tar_inside_unpacks_as_dev_and_never_writes_outside_what_dev_may(devshell_factory):
    shell = devshell_factory.open()
    assert shell.run("true").exit_code == 0  # init has given the workspace to dev
    tree = escaping_tree(shell.spec.workspace)
    with pytest.raises(DevshellError):  # tar refuses (or fails on) what it would write through
        seeding.unpack(shell.engine, shell.name, shell.spec.workspace, iter([tree]),
                       f"{shell.opts.uid}:{shell.opts.gid}")
    assert shell.exec(["test", "-e", "/etc/devshell-seed-escape"]).exit_code == 1


@pytest.mark.control("seed", "unpack a tree whose links lead out of the volume, into /etc")
def test_the_engine_s_archive_api_writes_the_same_tree_into_etc(devshell_factory, devshell_engine):
    shell = devshell_factory.open()
    assert shell.run("true").exit_code == 0
    tree = escaping_tree(shell.spec.workspace)
    devshell_engine.client.api.put_archive(shell.name, shell.spec.workspace, tree)
    assert shell.exec(["cat", "/etc/devshell-seed-escape"]).stdout == "escaped\n"
