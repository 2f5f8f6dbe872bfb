"""Fetching a build cache entry into the host's seed cache: from a directory, file:// and a real
HTTP server on loopback (started here), verified against the pinned manifest sha256."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from devshell import buildcache, seeds
from devshell.errors import DevshellError

KEY = "c-0123456789ab"


def make_entry(where: Path, *, ccache: bool = True) -> str:
    """An entry in where (archives of arbitrary bytes: fetching never unpacks); its pin."""
    where.mkdir(parents=True, exist_ok=True)
    install, cc, manifest = buildcache.names(KEY)
    archives = {}
    for role, name, data in (("install", install, b"install tree" * 1000),
                             ("ccache", cc, b"ccache" * 500)):
        if role == "ccache" and not ccache:
            archives[role] = None
            continue
        (where / name).write_bytes(data)
        archives[role] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    doc = buildcache.manifest(key=KEY, cell="c", platform="linux/amd64", workspace="/home/runner/w",
                              install="install", ccache_dir="ccache", ccache_settings={}, repo=None,
                              commit=None, install_archive=archives["install"],
                              ccache_archive=archives["ccache"])
    data = buildcache.dumps(doc)
    (where / manifest).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Server:
    """An HTTP server on loopback serving a directory, counting what it was asked for."""

    def __init__(self, root: Path) -> None:
        asked = self.asked = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # http.server's name
                asked.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/entries"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    found = Server(tmp_path / "www")
    yield found
    found.close()


def cached(cache_home: Path) -> list[str]:
    store = cache_home / "devshell" / "seeds"
    return sorted(os.listdir(store)) if store.exists() else []


@pytest.mark.parametrize("spelling", ["dir", "file"])
def test_an_entry_is_fetched_from_a_directory_or_file_url(tmp_path, spelling, cache_home):
    pin = make_entry(tmp_path / "e")
    source = str(tmp_path / "e") if spelling == "dir" else (tmp_path / "e").as_uri()
    got = seeds.fetch(source, KEY, pin)
    assert Path(got.install).read_bytes() == (tmp_path / "e" / f"{KEY}.tar.zst").read_bytes()
    assert Path(got.ccache).read_bytes() == (tmp_path / "e" / f"{KEY}.ccache.tar.zst").read_bytes()
    assert got.manifest["key"] == KEY and got.manifest_sha256 == pin
    # content-addressed: each file under its own sha256
    assert cached(cache_home) == sorted([pin, got.manifest["archives"]["install"]["sha256"],
                                         got.manifest["archives"]["ccache"]["sha256"]])


def test_over_http_with_progress_and_a_second_fetch_downloads_nothing(tmp_path, server):
    pin = make_entry(tmp_path / "www" / "entries")
    seen = []
    got = seeds.fetch(server.url, KEY, pin, progress=lambda f, n, total, s: seen.append((f, n, total)))
    assert Path(got.install).exists() and len(server.asked) == 3
    assert (f"{KEY}.tar.zst", 12000, 12000) in seen  # b"install tree" * 1000
    seeds.fetch(server.url, KEY, pin)
    assert len(server.asked) == 3  # all three were in the cache already


def test_an_entry_the_caller_refuses_on_its_manifest_costs_no_archive_download(tmp_path, server):
    pin = make_entry(tmp_path / "www" / "entries")

    def refuse(manifest):
        raise DevshellError(f"built at {manifest['workspace']}", "seed from another entry")

    with pytest.raises(DevshellError, match="built at /home/runner/w"):
        seeds.fetch(server.url, KEY, pin, check=refuse)
    assert server.asked == [f"/entries/{KEY}.manifest.json"]


def test_an_entry_without_a_ccache_fetches_without_one(tmp_path):
    pin = make_entry(tmp_path / "e", ccache=False)
    assert seeds.fetch(str(tmp_path / "e"), KEY, pin).ccache is None


def test_a_manifest_that_is_not_the_pinned_one_is_refused_and_not_kept(tmp_path, cache_home):
    make_entry(tmp_path / "e")
    with pytest.raises(DevshellError, match=r"checksum mismatch .*manifest\.json"):
        seeds.fetch(str(tmp_path / "e"), KEY, "0" * 64)
    assert cached(cache_home) == []


def test_a_substituted_archive_is_refused_and_nothing_of_it_is_kept(tmp_path, server, cache_home):
    pin = make_entry(tmp_path / "www" / "entries")
    archive = tmp_path / "www" / "entries" / f"{KEY}.tar.zst"
    archive.write_bytes(b"X" * archive.stat().st_size)  # same size, other bytes
    with pytest.raises(DevshellError, match=rf"checksum mismatch for .*{KEY}\.tar\.zst"):
        seeds.fetch(server.url, KEY, pin)
    substituted = hashlib.sha256(archive.read_bytes()).hexdigest()
    left = cached(cache_home)
    assert pin in left and substituted not in left and not any(n.endswith(".partial") for n in left)
    install_sha = buildcache.loads((tmp_path / "www" / "entries" / f"{KEY}.manifest.json").read_bytes(),
                                   "m")["archives"]["install"]["sha256"]
    assert install_sha not in left  # what is cached under a name is that content, or nothing


def test_a_longer_archive_is_cut_off_at_its_size(tmp_path, cache_home):
    pin = make_entry(tmp_path / "e")
    with open(tmp_path / "e" / f"{KEY}.tar.zst", "ab") as f:
        f.write(b"more" * (1 << 18))
    with pytest.raises(DevshellError, match="larger than its manifest says"):
        seeds.fetch(str(tmp_path / "e"), KEY, pin)
    assert not any(name.endswith(".partial") for name in cached(cache_home))


def test_a_malformed_manifest_is_one_error(tmp_path):
    (tmp_path / "e").mkdir()
    data = b'{"format": 1}'
    (tmp_path / "e" / f"{KEY}.manifest.json").write_bytes(data)
    with pytest.raises(DevshellError, match="not a build cache manifest"):
        seeds.fetch(str(tmp_path / "e"), KEY, hashlib.sha256(data).hexdigest())


def test_another_keys_manifest_is_refused(tmp_path):
    pin = make_entry(tmp_path / "e")
    os.rename(tmp_path / "e" / f"{KEY}.manifest.json", tmp_path / "e" / "other.manifest.json")
    with pytest.raises(DevshellError, match="is the entry c-0123456789ab's"):
        seeds.fetch(str(tmp_path / "e"), "other", pin)


@pytest.mark.parametrize("source, why", [
    ("http://127.0.0.1:9/entries", "cannot fetch"),
    ("/nonexistent/entries", "cannot fetch"),
    ("ftp://example.invalid/x", "is not a way devshell fetches"),
])
def test_an_unreachable_source_is_one_error_and_leaves_nothing(source, why, cache_home):
    with pytest.raises(DevshellError, match=why):
        seeds.fetch(source, KEY, "a" * 64)
    assert cached(cache_home) == []


def test_prune_empties_the_seed_cache(tmp_path, cache_home):
    pin = make_entry(tmp_path / "e")
    seeds.fetch(str(tmp_path / "e"), KEY, pin)
    count, freed = seeds.prune()
    assert count == 3 and freed > 13000 and cached(cache_home) == []
    assert seeds.prune() == (0, 0)


def test_a_fifo_in_a_directory_source_is_refused_not_waited_on(tmp_path):
    (tmp_path / "e").mkdir()
    os.mkfifo(tmp_path / "e" / f"{KEY}.manifest.json")
    with pytest.raises(DevshellError, match="not a regular file"):
        seeds.fetch(str(tmp_path / "e"), KEY, "a" * 64)


def test_a_server_that_does_not_speak_http_is_one_error(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"GARBAGE\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(DevshellError, match="cannot fetch"):
        seeds.fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/e", KEY, "a" * 64)
    listener.close()


@pytest.mark.parametrize("url", ["http://[::1/e", "http://127.0.0.1:abc/e"])
def test_a_malformed_url_is_one_error(url):
    with pytest.raises(DevshellError, match="cannot fetch"):
        seeds.fetch(url, KEY, "a" * 64)


def test_a_seed_cache_others_can_write_is_refused(tmp_path, cache_home):
    pin = make_entry(tmp_path / "e")
    store = cache_home / "devshell" / "seeds"
    store.mkdir(parents=True)
    store.chmod(0o777)
    with pytest.raises(DevshellError, match="only you can write"):
        seeds.fetch(str(tmp_path / "e"), KEY, pin)


def test_a_cached_manifest_is_checked_again_every_time(tmp_path, cache_home):
    pin = make_entry(tmp_path / "e")
    seeds.fetch(str(tmp_path / "e"), KEY, pin)
    (cache_home / "devshell" / "seeds" / pin).write_bytes(b'{"planted": true}')
    assert seeds.fetch(str(tmp_path / "e"), KEY, pin).manifest["key"] == KEY  # fetched again


def test_pack_writes_no_more_than_its_budget_and_leaves_nothing(tmp_path):
    from devshell.cache import write_archive

    written: list[str] = []
    with pytest.raises(DevshellError, match="larger than --max-size"):
        write_archive(iter([b"x" * 600, b"y" * 600]), str(tmp_path), "k.tar.zst", written, [1000])
    for path in written:
        os.unlink(path)
    assert os.listdir(tmp_path) == []
    budget = [1000]
    done = write_archive(iter([b"x" * 600]), str(tmp_path), "k.tar.zst", [], budget)
    assert budget == [400] and os.listdir(tmp_path) == ["k.tar.zst"]
    assert done["sha256"] == hashlib.sha256((tmp_path / "k.tar.zst").read_bytes()).hexdigest()
