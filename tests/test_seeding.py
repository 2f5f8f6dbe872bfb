"""What of a seed's archive may reach a volume, and in what shape (seeding.py's pure half).

The archives are built here, as a hostile publisher could: members outside the tree, links out
of it, devices, set-id bits, extended attributes, a tree that unpacks past the limit. Nothing
here starts a container: suites/test_warm_build.py seeds real volumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import zstandard

from devshell import seeding
from devshell.cells import Cell, Seed
from devshell.errors import DevshellError


def archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return str(path)


def member(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = "",
           uid: int = 0, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid = kind, mode, link, uid, uid
    info.pax_headers = pax or {}
    return info


def unpacked(chunks) -> list[tarfile.TarInfo]:
    data = b"".join(chunks)
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


GOOD = [(member("install", tarfile.DIRTYPE, mode=0o755), None),
        (member("install/bin", tarfile.DIRTYPE, mode=0o500), None),
        (member("install/bin/tool", mode=0o6755, uid=0,
                pax={"SCHILY.xattr.security.capability": "x"}), b"#!/bin/sh\n"),
        (member("install/lib/libx.so", tarfile.SYMTYPE, link="libx.so.1"), None),
        (member("install/lib/libx.so.1", mode=0o400), b"elf"),
        (member("install/lib/hard", tarfile.LNKTYPE, link="install/lib/libx.so.1"), None)]


def test_rewrite_gives_the_tree_to_dev_without_set_id_bits_or_xattrs_under_the_cell_s_name(tmp_path):
    path = archive(tmp_path / "a.tar.zst", GOOD)
    out = {m.name: m for m in unpacked(seeding.rewrite(path, "install", "prefix", 1000, 1001))}
    assert sorted(out) == ["prefix", "prefix/bin", "prefix/bin/tool", "prefix/lib/hard",
                           "prefix/lib/libx.so", "prefix/lib/libx.so.1"]
    assert all((m.uid, m.gid, m.uname, m.gname) == (1000, 1001, "", "") for m in out.values())
    assert out["prefix/bin/tool"].mode == 0o755  # set-uid and set-gid gone
    assert out["prefix/bin"].mode == 0o700  # a directory dev can always enter and empty
    assert out["prefix/lib/libx.so.1"].mode == 0o600  # a file dev can always replace
    assert not any(k.startswith("SCHILY.xattr") for m in out.values() for k in m.pax_headers)
    assert out["prefix/lib/hard"].linkname == "prefix/lib/libx.so.1"
    assert out["prefix/lib/libx.so"].linkname == "libx.so.1"
    assert seeding.scan(path, "install") == len(GOOD)


def test_file_content_passes_through_unchanged(tmp_path):
    big = bytes(range(256)) * 5000  # not a multiple of the block
    path = archive(tmp_path / "a.tar.zst", [(member("t", tarfile.DIRTYPE), None), (member("t/f"), big)])
    data = b"".join(seeding.rewrite(path, "t", "t", 1, 1))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("t/f").read() == big


@pytest.mark.parametrize("bad, why", [
    (member("/etc/passwd"), "not a path inside install/"),
    (member("install/../etc/passwd"), "not a path inside install/"),
    (member("other/file"), "not a path inside install/"),
    (member("install//x"), "not a path inside install/"),
    (member("install/x", tarfile.SYMTYPE, link="/etc"), "a symbolic link that leaves the tree"),
    (member("install/x", tarfile.SYMTYPE, link="../../etc"), "a symbolic link that leaves the tree"),
    (member("install/x", tarfile.LNKTYPE, link="etc/shadow"), "a hard link to outside the tree"),
    (member("install/dev", tarfile.CHRTYPE), "not a file, directory or link"),
    (member("install/fifo", tarfile.FIFOTYPE), "not a file, directory or link"),
])
def test_a_member_that_could_leave_the_tree_refuses_the_whole_seed(tmp_path, bad, why):
    assert seeding.member_problem(bad, "install") == why
    path = archive(tmp_path / "a.tar.zst", [(member("install", tarfile.DIRTYPE), None), (bad, None)])
    with pytest.raises(DevshellError, match=why):
        seeding.scan(path, "install")


CHAIN = [(member("install", tarfile.DIRTYPE), None), (member("install/a", tarfile.DIRTYPE), None),
         (member("install/a/b", tarfile.SYMTYPE, link=".."), None)]


@pytest.mark.parametrize("then, why", [
    # each of these is inside the tree by its own text: only the chain leaves it
    (member("install/c", tarfile.SYMTYPE, link="a/b/../.."), "a symbolic link through another (install/a/b)"),
    (member("install/a/b/etc/ld.so.preload"), "it lies below the symbolic link install/a/b"),
    (member("install/h", tarfile.LNKTYPE, link="install/a/b/x"), "a hard link to no file before it"),
])
def test_nothing_is_written_or_resolved_through_a_link_of_the_archive(tmp_path, then, why):
    assert seeding.member_problem(then, "install") is None  # (the check of one member alone)
    path = archive(tmp_path / "a.tar.zst", [*CHAIN, (then, b"x" if then.isreg() else None)])
    with pytest.raises(DevshellError, match=re.escape(why)):
        seeding.scan(path, "install")


def test_a_hard_link_to_a_symlink_is_refused(tmp_path):
    """The engine links the symlink itself: install/h would be install/a/b/c/s's ../../.. read
    from install/, which is /; install/h/etc/x would be written there."""
    tree = [(member("install", tarfile.DIRTYPE), None), (member("install/a/b/c", tarfile.DIRTYPE), None),
            (member("install/a/b/c/s", tarfile.SYMTYPE, link="../../.."), None),
            (member("install/h", tarfile.LNKTYPE, link="install/a/b/c/s"), None),
            (member("install/h/etc/x"), b"x")]
    assert all(seeding.member_problem(m, "install") is None for m, _ in tree)  # each alone passes
    with pytest.raises(DevshellError, match="install/h: a hard link to no file before it"):
        seeding.scan(archive(tmp_path / "a.tar.zst", tree), "install")


def test_a_hard_link_to_an_earlier_file_is_taken(tmp_path):
    tree = [(member("t", tarfile.DIRTYPE), None), (member("t/f"), b"x"),
            (member("t/g", tarfile.LNKTYPE, link="t/f"), None)]
    assert seeding.scan(archive(tmp_path / "a.tar.zst", tree), "t") == 3


@pytest.mark.parametrize("kind", [tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE])
def test_file_types_the_tar_inside_may_not_take_are_refused(kind):
    assert seeding.member_problem(member("t/f", kind), "t") == "not a file, directory or link"


def test_a_header_that_says_a_gib_is_refused_before_it_is_read(tmp_path):
    # a pax header declaring 1 GiB of records: tarfile would read it whole into memory
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, 1 << 30
    raw = head.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096
    (tmp_path / "bomb.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    with pytest.raises(DevshellError, match="has a header of 1073741824 bytes"):
        seeding.scan(str(tmp_path / "bomb.tar.zst"), "t")


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(seeding, "MAX_MEMBERS", 2)
    tree = [(member("t", tarfile.DIRTYPE), None), (member("t/a"), b""), (member("t/b"), b"")]
    with pytest.raises(DevshellError, match="or 2 members"):
        seeding.scan(archive(tmp_path / "a.tar.zst", tree), "t")


def test_an_archive_that_changed_since_it_was_verified_is_refused(tmp_path):
    path = archive(tmp_path / "a.tar.zst", [(member("t", tarfile.DIRTYPE), None)])
    with pytest.raises(DevshellError, match="changed in the seed cache"):
        seeding.scan(path, "t", sha256="0" * 64)
    assert seeding.scan(path, "t", sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest()) == 1


def test_a_link_to_a_link_is_taken():
    links = {"install/x": "y", "install/y": "lib/z"}
    assert seeding.link_problem(["install", "install/x", "install/y"], links, {}) is None


def test_a_symlink_within_the_tree_is_taken():
    assert seeding.member_problem(member("install/a/b", tarfile.SYMTYPE, link="../c"), "install") is None


def test_a_tree_past_the_limit_is_refused_before_its_bytes_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(seeding, "MAX_TREE_BYTES", 100)
    tree = [(member("t", tarfile.DIRTYPE), None), (member("t/f"), b"x" * 101)]
    path = archive(tmp_path / "a.tar.zst", tree)
    with pytest.raises(DevshellError, match="unpacks to more than"):
        seeding.scan(path, "t")


def test_an_archive_that_is_not_zstd_tar_is_one_line(tmp_path):
    (tmp_path / "a").write_bytes(b"not zstd at all")
    with pytest.raises(DevshellError, match="is not a zstd-compressed tar"):
        seeding.scan(str(tmp_path / "a"), "t")


def test_a_marker_reads_back_and_anything_else_is_no_marker():
    marker = seeding.Marker("complete", "k-1", "a" * 64)
    assert seeding.parse_marker(marker.to_bytes()) == marker
    assert marker.describe() == "seeded k-1" and marker._replace(state="partial").describe() == "partial k-1"
    def doc(state: str, key: str, sha: str) -> bytes:
        return json.dumps({"state": state, "key": key, "manifest_sha256": sha}).encode()

    for data in (None, b"", b"[]", b"{", doc("done", "k", "a" * 64), doc("complete", "../k", "a" * 64),
                 doc("complete", "k", "A" * 64), b" " * 5000):
        assert seeding.parse_marker(data) is None, data


def test_the_record_is_of_one_volume(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    marker = seeding.Marker("partial", "k", "b" * 64)
    seeding.write_record("devshell-c", marker, "host:1")
    assert seeding.read_record("devshell-c") == marker
    assert seeding.read_record("devshell-c", "host:1") == marker
    assert seeding.read_record("devshell-c", "host:2") is None  # the same name, made again since
    assert seeding.read_record("devshell-d") is None


CELL = Cell(
    name="c", source="c.yaml", platform="linux/amd64", workspace="/home/w/c", src="/home/w/c/src",
    build="/home/w/c/build", ccache="/home/w/c/ccache", install="/home/w/c/install")
PIN = seeding.Marker("complete", "k-2", "2" * 64)
SEEDED_CELL = CELL._replace(seed=Seed("/e", "k-2", "2" * 64))
OLD = seeding.Marker("complete", "k-1", "1" * 64)


@pytest.mark.parametrize("created, reseed, marker, record, seed", [
    (True, False, None, None, True),  # a new volume
    (False, True, PIN, PIN, True),  # --reseed, whatever the volume holds
    (False, False, PIN._replace(state="partial"), None, True),  # a seed left partial
    (False, False, None, PIN._replace(state="partial"), True),  # killed before its marker
    (False, False, None, None, False),  # a volume made before the cell had a seed: left alone
    (False, False, PIN, PIN, False),  # seeded: left alone
    (False, False, None, OLD, False),  # a record of a complete seed, no marker: nothing begun
])
def test_which_volumes_are_seeded(created, reseed, marker, record, seed):
    decided = seeding.decide(SEEDED_CELL, created=created, reseed=reseed, marker=marker, record=record)
    assert decided.seed is seed


def test_a_volume_seeded_from_another_pin_is_kept_with_a_note():
    decision = seeding.decide(SEEDED_CELL, created=False, reseed=False, marker=OLD, record=OLD)
    assert not decision.seed and "holds the seed k-1" in decision.note and "--reseed" in decision.note


def test_the_record_follows_a_complete_marker():
    # killed between the marker and the record: the record says partial, the volume is whole
    decision = seeding.decide(SEEDED_CELL, created=False, reseed=False, marker=PIN,
                              record=PIN._replace(state="partial"))
    assert decision == seeding.Decision(False, None, PIN)
