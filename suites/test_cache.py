"""`devshell cache pack`: a devshell's install tree and ccache become a build cache entry.

The entry is made by the real CLI from a real devshell's volume: its archives hold exactly the
trees made inside, its manifest names the commit git inside reads, and its sha256s are those of
the files written. What the volume holds is the agent's: shapes are checked, nothing is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import pytest

from devshell import buildcache

TREES = """
set -e
mkdir -p "$DEVSHELL_INSTALL/bin" "$DEVSHELL_CCACHE/0/1"
printf 'tool\\n' > "$DEVSHELL_INSTALL/bin/tool" && chmod +x "$DEVSHELL_INSTALL/bin/tool"
printf 'object\\n' > "$DEVSHELL_CCACHE/0/1/abc.o"
cd "$DEVSHELL_SRC"
git init -q && git -c user.name=a -c user.email=a@b.invalid commit -q --allow-empty -m one
git remote add origin https://example.invalid/project.git
git rev-parse HEAD
"""


def pack(devshell_cli, shell, out, *more):
    return devshell_cli(None, "cache", "pack", shell.spec.cell, f"--instance={shell.opts.instance}",
                        f"--out={out}", *more)


def members(path: str) -> dict[str, bytes | None]:
    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z, \
            tarfile.open(fileobj=z, mode="r|") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}


@pytest.fixture(scope="module")
def built(devshell_factory):
    """A devshell with an install tree, a ccache and a source commit, made inside as dev."""
    shell = devshell_factory.open()
    made = shell.run(TREES)
    assert made.exit_code == 0, made.stderr
    return shell, made.stdout.strip()


def test_pack_makes_an_entry_of_the_trees_made_inside(built, devshell_cli, tmp_path):
    shell, commit = built
    out = tmp_path / "entry"
    done = pack(devshell_cli, shell, out, "--json")
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    key = f"{shell.spec.cell}-{commit[:12]}"
    assert result["key"] == key and sorted(os.listdir(out)) == sorted(buildcache.names(key))
    manifest_bytes = (out / f"{key}.manifest.json").read_bytes()
    doc = buildcache.loads(manifest_bytes, "manifest")
    assert result["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert doc["source"] == {"repo": "https://example.invalid/project.git", "commit": commit}
    assert (doc["cell"], doc["workspace"]) == (shell.spec.cell, shell.spec.workspace)
    for role, archive in doc["archives"].items():
        data = (out / archive["file"]).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (archive["sha256"], archive["size"]), role
    assert members(str(out / f"{key}.tar.zst")) == {"install": None, "install/bin": None,
                                                     "install/bin/tool": b"tool\n"}
    assert members(str(out / f"{key}.ccache.tar.zst")) == {
        "ccache": None, "ccache/0": None, "ccache/0/1": None, "ccache/0/1/abc.o": b"object\n"}


def test_an_entry_is_never_overwritten(built, devshell_cli, tmp_path):
    shell, _ = built
    out = tmp_path / "entry"
    assert pack(devshell_cli, shell, out, "--key=k1").exit_code == 0
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    again = pack(devshell_cli, shell, out, "--key=k1")
    assert again.exit_code == 2 and "never overwritten" in again.stderr, again.stderr
    assert len(again.stderr.splitlines()) == 1
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def test_without_a_ccache_the_entry_says_so_and_has_none(devshell_factory, devshell_cli, tmp_path):
    shell = devshell_factory.open()
    assert shell.run('mkdir -p "$DEVSHELL_INSTALL" && rm -rf "$DEVSHELL_CCACHE"').exit_code == 0
    done = pack(devshell_cli, shell, tmp_path / "e", "--key=nocc", "--json")
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["archives"]["ccache"] is None and "cold ccache" in result["notes"][0]
    assert sorted(os.listdir(tmp_path / "e")) == ["nocc.manifest.json", "nocc.tar.zst"]
    assert (result["source"]["commit"], result["key"]) == (None, "nocc")  # no repository in src


def test_what_the_agent_wrote_as_the_source_is_recorded_only_in_its_shape(devshell_factory, devshell_cli,
                                                                         tmp_path):
    # The agent owns the src tree: a remote with a newline and an escape, a HEAD that is not a
    # commit. Neither reaches the manifest.
    shell = devshell_factory.open()
    script = ('set -e; mkdir -p "$DEVSHELL_INSTALL"; cd "$DEVSHELL_SRC"; git init -q; '
              'git config remote.origin.url "$(printf "https://x.invalid/a\\n\\033[2Jb")"')
    assert shell.run(script).exit_code == 0
    done = pack(devshell_cli, shell, tmp_path / "e", "--key=hostile", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["source"] == {"repo": None, "commit": None}


def test_pack_refuses_a_devshell_that_is_not_there(devshell_cli, devshell_cell, devshell_instance, tmp_path):
    done = devshell_cli(None, "cache", "pack", devshell_cell.name, f"--instance={devshell_instance()}",
                        f"--out={tmp_path / 'e'}")
    assert done.exit_code == 2 and "is not there: there is nothing to pack" in done.stderr, done.stderr
    assert not (tmp_path / "e").exists()
