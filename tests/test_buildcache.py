"""The build cache format's pure parts: names, keys and the manifest's schema."""

from __future__ import annotations

import json

import pytest

from devshell import buildcache
from devshell.errors import DevshellError

SHA = "a" * 64


def doc(**over):
    base = dict(key="c-0123456789ab", cell="c", platform="linux/amd64", workspace="/home/runner/w",
                install="install", ccache_dir="ccache", ccache_settings={"CCACHE_BASEDIR": "/home/runner/w"},
                repo="https://example.invalid/p.git", commit="0123456789abcdef0123456789abcdef01234567",
                install_archive={"file": "c-0123456789ab.tar.zst", "sha256": SHA, "size": 10},
                ccache_archive={"file": "c-0123456789ab.ccache.tar.zst", "sha256": SHA, "size": 5})
    base.update(over)
    return buildcache.manifest(**base)


def test_an_entry_is_three_files_named_by_its_key():
    assert buildcache.names("k") == ("k.tar.zst", "k.ccache.tar.zst", "k.manifest.json")
    assert buildcache.default_key("c", "0123456789abcdef0123456789abcdef01234567") == "c-0123456789ab"
    assert buildcache.default_key("c", None) == "c-unversioned"


@pytest.mark.parametrize("key", ["", "-x", ".x", "a/b", "a b", "x" * 129, "../x"])
def test_a_key_is_a_file_name_stem(key):
    with pytest.raises(DevshellError, match="not a build cache key"):
        buildcache.check_key(key)


def test_a_manifest_round_trips_and_its_bytes_are_stable():
    made = doc()
    data = buildcache.dumps(made)
    assert buildcache.loads(data, "m") == made
    assert buildcache.dumps(json.loads(data)) == data
    assert list(json.loads(data)) == sorted(json.loads(data))


def test_the_ccache_archive_is_optional_and_the_source_may_be_unknown():
    assert buildcache.loads(buildcache.dumps(doc(ccache_archive=None, repo=None, commit=None)), "m")


@pytest.mark.parametrize("change, where", [
    (lambda d: d.update(format=2), "format"),
    (lambda d: d["archives"]["install"].update(sha256="xyz"), "archives.install.sha256"),
    (lambda d: d["archives"]["install"].update(file="other.tar.zst"), "not its key's"),
    (lambda d: d["archives"]["ccache"].update(file="c-0123456789ab.tar.zst"), "not its key's"),
    (lambda d: d["archives"]["install"].update(file="../x.tar.zst"), "archives.install.file"),
    (lambda d: d.update(workspace="relative/path"), "workspace"),
    (lambda d: d.update(install="../up"), "install"),
    (lambda d: d["source"].update(commit="HEAD"), "source.commit"),
    (lambda d: d.update(extra=1), "(top)"),
    (lambda d: d.pop("archives"), "(top)"),
])
def test_a_malformed_manifest_is_refused_naming_what(change, where):
    made = doc()
    change(made)
    with pytest.raises(DevshellError, match=r"not a build cache manifest|not its key's") as e:
        buildcache.loads(json.dumps(made).encode(), "entry.manifest.json")
    assert "entry.manifest.json" in e.value.message and where in e.value.message, e.value.message


@pytest.mark.parametrize("data, why", [(b"{", "not JSON"), (b"[]", "not a build cache manifest"),
                                       (b" " * (70 << 10), "larger than")])
def test_what_is_not_a_manifest_at_all_is_one_clear_error(data, why):
    with pytest.raises(DevshellError, match=why):
        buildcache.loads(data, "m")
