"""hostfs: the host directories a devshell binds, walked as the agent could have left them.

Pure filesystem tests in temporary directories: no Docker. Ownership is only tested as root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from devshell import hostfs
from devshell.errors import DevshellError
from devshell.hostfs import config_problems, empty_dir, identity, may_write, open_dir, strict_problem

DEV = (1000, 1000)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture(autouse=True)
def _umask() -> Iterator[None]:
    """mkdir's mode passes through the umask: pin it so the modes below are what was asked."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def owner(path: Path) -> tuple[int, int]:
    st = os.stat(path, follow_symlinks=False)
    return st.st_uid, st.st_gid


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def real(tmp_path: Path) -> Path:
    """open_dir takes a symlink-free path; the temporary root may sit behind one (macOS /tmp)."""
    return Path(os.path.realpath(tmp_path))


# --- open_dir -------------------------------------------------------------------------------


def test_open_dir_yields_the_directory(tmp_path):
    base = real(tmp_path)
    with open_dir(str(base)) as fd:
        assert os.path.samestat(os.fstat(fd), os.stat(base))


def test_open_dir_of_the_root_is_the_root():
    with open_dir("/") as fd:
        assert os.path.samestat(os.fstat(fd), os.stat("/"))


def test_open_dir_closes_what_it_opened(tmp_path):
    base = real(tmp_path)
    with open_dir(str(base / "a" / "b"), create=0o700) as fd:
        pass
    with pytest.raises(OSError):
        os.fstat(fd)


def test_open_dir_without_create_refuses_a_missing_dir(tmp_path):
    base = real(tmp_path)
    with pytest.raises(DevshellError, match="does not exist"), open_dir(str(base / "nope" / "x")):
        pass
    assert not (base / "nope").exists()


@pytest.mark.parametrize("at", ["middle", "last"])
@pytest.mark.parametrize("create", [None, 0o700])
def test_open_dir_refuses_a_symlinked_component(tmp_path, at, create):
    base = real(tmp_path)
    target = base / "target"
    (target / "x").mkdir(parents=True)
    (base / "link").symlink_to(target)
    path = base / "link" / "x" if at == "middle" else base / "link"
    with pytest.raises(DevshellError, match="is a symlink") as info, open_dir(str(path), create=create):
        pass
    assert f"{base}/link " in str(info.value)


def test_open_dir_refuses_a_dangling_symlink_rather_than_creating_through_it(tmp_path):
    base = real(tmp_path)
    (base / "link").symlink_to(base / "elsewhere")
    with pytest.raises(DevshellError, match="is a symlink"), open_dir(str(base / "link" / "d"), create=0o700):
        pass
    assert not (base / "elsewhere").exists()


def test_open_dir_refuses_a_file_component(tmp_path):
    base = real(tmp_path)
    (base / "f").write_text("x")
    path = str(base / "f" / "d")
    with pytest.raises(DevshellError, match="cannot be opened"), open_dir(path, create=0o700):
        pass


@pytest.mark.parametrize("create", [0o700, 0o750, 0o755])
def test_open_dir_creates_every_missing_dir_with_the_mode_given(tmp_path, create):
    base = real(tmp_path)
    path = base / "a" / "b" / "c"
    with open_dir(str(path), create=create) as fd:
        assert os.path.samestat(os.fstat(fd), os.stat(path))
    for made in (base / "a", base / "a" / "b", path):
        assert made.is_dir() and not made.is_symlink()
        assert mode(made) == create


def test_open_dir_leaves_an_existing_dirs_mode_alone(tmp_path):
    base = real(tmp_path)
    (base / "a").mkdir(mode=0o755)
    with open_dir(str(base / "a" / "b"), create=0o700):
        pass
    assert (mode(base / "a"), mode(base / "a" / "b")) == (0o755, 0o700)


def test_open_dir_never_chowns_an_existing_dir(tmp_path):
    """Not even trying: unprivileged, a chown to another user would fail, and the open works."""
    base = real(tmp_path)
    (base / "d").mkdir()
    before = owner(base / "d")
    stranger = (os.getuid() + 1, os.getgid() + 1)
    with open_dir(str(base / "d"), create=0o700, owner=stranger):
        pass
    assert owner(base / "d") == before


@as_root
def test_open_dir_gives_only_the_last_created_dir_to_the_owner(tmp_path):
    base = real(tmp_path)
    path = base / "a" / "b" / "c"
    with open_dir(str(path), create=0o700, owner=DEV):
        pass
    assert owner(path) == DEV
    me = (os.getuid(), os.getgid())
    assert owner(base / "a") == owner(base / "a" / "b") == me
    assert owner(base) == me


@as_root
def test_open_dir_as_root_never_chowns_an_existing_last_dir(tmp_path):
    base = real(tmp_path)
    (base / "a" / "b").mkdir(parents=True)
    with open_dir(str(base / "a" / "b"), create=0o700, owner=DEV):
        pass
    assert owner(base / "a" / "b") == (os.getuid(), os.getgid())


@as_root
def test_open_dir_does_not_chown_a_dir_made_meanwhile_by_someone_else(tmp_path, monkeypatch):
    base = real(tmp_path)
    mkdir = os.mkdir

    def racing_mkdir(name, mode=0o777, *, dir_fd=None):
        mkdir(name, mode, dir_fd=dir_fd)  # someone else's, a moment earlier
        raise FileExistsError(name)

    monkeypatch.setattr(hostfs.os, "mkdir", racing_mkdir)
    with open_dir(str(base / "d"), create=0o700, owner=DEV):
        pass
    assert owner(base / "d") == (os.getuid(), os.getgid())


def test_open_dir_refuses_a_symlink_swapped_in_while_creating(tmp_path, monkeypatch):
    """mkdir found the name taken, and it is a symlink now: an error, never a detour."""
    base = real(tmp_path)
    (base / "elsewhere").mkdir()

    def racing_mkdir(name, mode=0o777, *, dir_fd=None):
        os.symlink(str(base / "elsewhere"), name, dir_fd=dir_fd)
        raise FileExistsError(name)

    monkeypatch.setattr(hostfs.os, "mkdir", racing_mkdir)
    with pytest.raises(DevshellError, match="is a symlink"), open_dir(str(base / "d"), create=0o700):
        pass


# --- identity and may_write -----------------------------------------------------------------


def test_identity_is_device_and_inode(tmp_path):
    base = real(tmp_path)
    (base / "d").mkdir()
    st = os.stat(base / "d")
    with open_dir(str(base / "d")) as fd:
        assert identity(fd) == f"{st.st_dev}:{st.st_ino}"


def test_identity_tells_a_swapped_dir_apart(tmp_path):
    base = real(tmp_path)
    (base / "d").mkdir()
    with open_dir(str(base / "d")) as fd:
        before = identity(fd)
    (base / "d").rename(base / "old")
    (base / "d").mkdir()
    with open_dir(str(base / "d")) as fd:
        assert identity(fd) != before


def fake_stat(mode: int, uid: int = 10, gid: int = 20) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize("st_mode, uid, gid, ok", [
    (0o700, 10, 99, True), (0o500, 10, 99, False), (0o600, 10, 99, False), (0o300, 10, 99, True),
    (0o077, 10, 20, False),  # the owner's bits decide for the owner, even when the group's allow
    (0o070, 11, 20, True), (0o050, 11, 20, False), (0o707, 11, 20, False),
    (0o007, 11, 21, True), (0o770, 11, 21, False), (0o005, 11, 21, False),
])
def test_may_write_reads_the_bits_that_apply(st_mode, uid, gid, ok):
    assert may_write(fake_stat(st_mode), uid, gid) is ok


def test_may_write_agrees_with_a_real_dir(tmp_path):
    base = real(tmp_path)
    (base / "d").mkdir(mode=0o755)
    st = os.stat(base / "d")
    assert may_write(st, st.st_uid, st.st_gid)
    assert not may_write(st, st.st_uid + 1, st.st_gid + 1)


# --- strict_problem ----------------------------------------------------------------------------

# (the user's, dev's): uid 10 and gid 20 are the user's, 1000 dev's.
UIDS, GIDS = (10, 1000), (20, 1000)


@pytest.mark.parametrize("st_mode, uid, gid", [
    (0o700, 10, 20), (0o755, 1000, 1000), (0o700, 10, 99),  # group 99 cannot write: fine
    (0o750, 10, 99), (0o770, 10, 20), (0o770, 1000, 1000), (0o775, 10, 1000),  # g+w, allowed gid
    (0o1700, 10, 20), (0o000, 1000, 99),
])
def test_strict_problem_accepts_what_only_the_user_and_dev_can_change(st_mode, uid, gid):
    assert strict_problem(fake_stat(st_mode, uid, gid), UIDS, GIDS) is None


@pytest.mark.parametrize("uid", [0, 11, 999, 65534])
def test_strict_problem_refuses_an_owner_that_is_neither_the_user_nor_dev(uid):
    why = strict_problem(fake_stat(0o700, uid, 20), UIDS, GIDS)
    assert why is not None and f"uid {uid}" in why


@pytest.mark.parametrize("st_mode", [0o702, 0o777, 0o1777, 0o002])
@pytest.mark.parametrize("uid", UIDS)
def test_strict_problem_refuses_what_every_user_can_write(st_mode, uid):
    why = strict_problem(fake_stat(st_mode, uid, 20), UIDS, GIDS)
    assert why is not None and "every user" in why


@pytest.mark.parametrize("gid", [0, 99, 100])
def test_strict_problem_refuses_a_foreign_group_that_can_write(gid):
    why = strict_problem(fake_stat(0o770, 10, gid), UIDS, GIDS)
    assert why is not None and f"group {gid}" in why
    assert strict_problem(fake_stat(0o750, 10, gid), UIDS, GIDS) is None  # readable only: fine


def test_strict_problem_reads_a_file_like_a_directory():
    file = os.stat_result((stat.S_IFREG | 0o666, 0, 0, 1, 10, 20, 0, 0, 0, 0))
    assert "every user" in (strict_problem(file, UIDS, GIDS) or "")
    assert strict_problem(os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 10, 20, 0, 0, 0, 0)),
                          UIDS, GIDS) is None


def test_strict_problem_agrees_with_a_real_dir(tmp_path):
    base = real(tmp_path)
    (base / "d").mkdir(mode=0o700)
    mine = ((os.getuid(), os.getuid()), (os.getgid(), os.getgid()))
    assert strict_problem(os.stat(base / "d"), *mine) is None
    os.chmod(base / "d", 0o777)
    assert "every user" in (strict_problem(os.stat(base / "d"), *mine) or "")
    os.chmod(base / "d", 0o700)
    other = ((os.getuid() + 1, os.getuid() + 2), mine[1])
    assert "neither yours nor dev's" in (strict_problem(os.stat(base / "d"), *other) or "")


@as_root
def test_strict_problem_sees_a_chown_to_another_user(tmp_path):
    base = real(tmp_path)
    (base / "d").mkdir(mode=0o700)
    os.chown(base / "d", 4242, 4242)
    assert "uid 4242" in (strict_problem(os.stat(base / "d"), (0, 1000), (0, 1000)) or "")


# --- config_problems ------------------------------------------------------------------------


@pytest.fixture
def ai(tmp_path: Path) -> Path:
    """A plain AI configuration: settings, a skill, and memory."""
    ai = real(tmp_path) / "cache" / "ai"
    (ai / "skills" / "review").mkdir(parents=True)
    (ai / "memory").mkdir()
    (ai / "settings.json").write_text("{}")
    (ai / "skills" / "review" / "SKILL.md").write_text("# review\n")
    return ai


def problems(ai: Path) -> list[str]:
    return config_problems(str(ai), "memory")


def test_a_plain_config_has_no_problems(ai):
    assert problems(ai) == []


def test_a_hard_linked_file_is_a_problem(ai):
    os.link(ai / "settings.json", ai / "memory" / "settings.json")
    found = problems(ai)
    assert len(found) == 1
    assert f"{ai}/settings.json has 2 hard links" in found[0]


def test_a_hard_link_between_two_config_files_is_a_problem_too(ai):
    os.link(ai / "skills" / "review" / "SKILL.md", ai / "skills" / "copy.md")
    assert len(problems(ai)) == 2


@pytest.mark.parametrize("where, target", [
    ("settings.json", "memory/settings.json"),
    ("skills/review/SKILL.md", "../../memory/x"),
    ("skills/m", "../memory"),
    ("skills/m2", "./../memory/"),
])
def test_a_symlink_into_memory_is_a_problem(ai, where, target):
    link = ai / where
    if link.exists():
        link.unlink()
    link.symlink_to(target)
    found = problems(ai)
    assert len(found) == 1
    assert f"{ai}/{where} is a symlink to {target}" in found[0]


@pytest.mark.parametrize("target", ["/etc/passwd", "/cache/ai/memory/x", "/"])
def test_an_absolute_symlink_is_a_problem(ai, target):
    (ai / "skills" / "abs").symlink_to(target)
    assert len(problems(ai)) == 1


@pytest.mark.parametrize("where, target", [("up", ".."), ("out", "../outside"),
                                           ("skills/out", "../../x"), ("self", "."),
                                           ("skills/top", "..")])
def test_a_symlink_leaving_the_config_is_a_problem(ai, where, target):
    """Out of ai/ (the host cache is writable inside) or to ai/ itself (which holds memory)."""
    (ai / where).symlink_to(target)
    assert len(problems(ai)) == 1


def test_a_symlink_climbing_back_through_another_link_is_a_problem(ai):
    """skills/review/l leads to skills; 'l/../memory' is then ai/memory, though read lexically
    from skills/review it would be skills/review/memory."""
    (ai / "skills" / "review" / "l").symlink_to("../../skills")
    (ai / "skills" / "review" / "m").symlink_to("l/../memory")
    assert os.path.realpath(ai / "skills" / "review" / "m") == str(ai / "memory")
    found = problems(ai)
    assert [p.split(" is a symlink")[0] for p in found] == [f"{ai}/skills/review/m"]


@pytest.mark.parametrize("where, target", [("skills/review/settings", "../../settings.json"),
                                           ("skills/alias", "review"),
                                           ("skills/review/here", "./SKILL.md"),
                                           ("conf", "skills/review/SKILL.md"),
                                           ("dangling", "skills/not-yet")])
def test_a_relative_symlink_staying_inside_is_fine(ai, where, target):
    (ai / where).symlink_to(target)
    assert problems(ai) == []


def test_memory_itself_is_not_walked(ai):
    """Memory is writable inside anyway: what is in it is not the configuration's problem."""
    (ai / "memory" / "abs").symlink_to("/etc/passwd")
    (ai / "memory" / "up").symlink_to("../../..")
    (ai / "memory" / "f").write_text("x")
    os.link(ai / "memory" / "f", ai / "memory" / "g")
    assert problems(ai) == []


def test_only_the_top_memory_is_memory(ai):
    (ai / "skills" / "memory").mkdir()
    (ai / "skills" / "memory" / "abs").symlink_to("/etc")
    assert len(problems(ai)) == 1


def test_every_problem_is_reported(ai):
    (ai / "a").symlink_to("/x")
    (ai / "skills" / "b").symlink_to("../memory")
    os.link(ai / "settings.json", ai / "memory" / "s")
    assert len(problems(ai)) == 3


def test_config_problems_refuses_a_symlinked_ai_dir(ai):
    (ai.parent / "ai2").symlink_to(ai)
    with pytest.raises(DevshellError, match="is a symlink"):
        config_problems(str(ai.parent / "ai2"), "memory")


def test_config_problems_refuses_more_than_max_entries(ai, monkeypatch):
    # settings.json, skills, memory, skills/review, skills/review/SKILL.md: 5 entries
    monkeypatch.setattr(hostfs, "MAX_CONFIG_ENTRIES", 5)
    assert problems(ai) == []
    (ai / "one-more").write_text("x")
    with pytest.raises(DevshellError, match="more than 5 entries"):
        problems(ai)


def test_config_problems_closes_every_fd(ai, monkeypatch):
    (ai / "skills" / "a" / "b" / "c").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    problems(ai)
    monkeypatch.setattr(hostfs, "MAX_CONFIG_ENTRIES", 3)
    with pytest.raises(DevshellError):
        problems(ai)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_config_problems_refuses_a_tree_nested_too_deep(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostfs, "MAX_CONFIG_DEPTH", 3)
    ai = tmp_path / "ai"
    (ai / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
    with pytest.raises(DevshellError, match="nested deeper than 3"):
        config_problems(str(ai), "memory")


def test_config_problems_keeps_one_directory_open_per_level(tmp_path: Path) -> None:
    """A wide tree an earlier session left must not exhaust the launcher's file descriptors."""
    import resource

    ai = tmp_path / "ai"
    for n in range(300):
        (ai / "skills" / "wide" / f"d{n}").mkdir(parents=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        assert config_problems(str(ai), "memory") == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_config_problem_reaches_the_terminal_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Names in the host cache are the agent's: an error naming one must not drive the terminal."""
    from devshell import cli

    ai = tmp_path / "cache" / "ai"
    (ai / "skills").mkdir(parents=True)
    os.symlink("/etc", ai / "skills" / "evil\x1b]0;PWNED\x07\x1b[2J\u202e")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code = cli.main(["--checkout", str(checkout), "--host-cache-dir", str(tmp_path / "cache"),
                     "--script", "/dev/null"])
    err = capsys.readouterr().err
    assert code == 2 and "symlink" in err
    assert "\x1b" not in err and "\u202e" not in err and "\\x1b]0;PWNED" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="setting up the drop dir for another uid needs chown")
def test_a_non_root_user_cannot_have_new_cache_dirs_made_for_another_dev_uid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root, what devshell makes is the user's: with --uid of someone else, dev could not
    write it, so the launch is refused before anything is made (not after, with a broken verify)."""
    from devshell.launcher import check_host_paths
    from devshell.options import Options

    (tmp_path / "checkout").mkdir()
    (tmp_path / "drop").mkdir()
    os.chown(tmp_path / "drop", 4321, 4321)
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    monkeypatch.setattr(os, "getgid", lambda: 1234)
    opts = Options(checkout=str(tmp_path / "checkout"), patches_out=str(tmp_path / "drop"),
                   host_cache=str(tmp_path / "cache"), uid=4321, gid=4321)
    with pytest.raises(DevshellError, match="only root can give the new"):
        check_host_paths(opts)
    assert not (tmp_path / "cache").exists()


def test_read_regular_reads_a_regular_file_up_to_one_byte_past_the_limit(tmp_path):
    (tmp_path / "f").write_bytes(b"abcdef")
    assert hostfs.read_regular(str(tmp_path / "f"), 3) == b"abcd"
    assert hostfs.read_regular(str(tmp_path / "f"), 100) == b"abcdef"


def test_read_regular_refuses_what_is_not_a_regular_file_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: an open or read would wait
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "zero", "dir"):
        assert hostfs.read_regular(str(tmp_path / name), 10) is None
    with pytest.raises(FileNotFoundError):
        hostfs.read_regular(str(tmp_path / "absent"), 10)


def test_empty_dir_removes_all_but_kept_dirs_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host file\n")
    root = tmp_path / "drop"
    (root / "keep" / "deeper").mkdir(parents=True)
    (root / "keep" / "deeper" / "note").write_text("x")
    (root / "keep" / "to-outside").symlink_to(outside)
    (root / "gone" / "sub").mkdir(parents=True)
    (root / "gone" / "sub" / "f").write_text("x")
    (root / "gone" / "to-outside").symlink_to(outside)
    (root / "file").write_text("x")
    (root / "link-dir").symlink_to(outside)
    empty_dir(str(root), keep={str(root / "keep")})
    assert sorted(p.name for p in root.iterdir()) == ["keep"]
    assert list((root / "keep").iterdir()) == []
    assert (outside / "precious").read_text() == "host file\n"


def test_empty_dir_leaves_a_kept_dir_swapped_for_a_link_and_what_it_points_at(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host file\n")
    root = tmp_path / "cache"
    root.mkdir()
    (root / "ai").symlink_to(outside)  # the agent's swap of a directory devshell keeps
    empty_dir(str(root), keep={str(root / "ai")})
    assert list(root.iterdir()) == [] and (outside / "precious").read_text() == "host file\n"
