"""Bad input: one line naming the problem and the fix, exit 2, no traceback, and no change to
any container, volume or file."""

import pytest


@pytest.fixture
def engine_state(devshell_engine):
    """The containers and volumes a command could touch, by name (other xdist workers create
    theirs meanwhile, so a global snapshot would race)."""
    def snapshot(*names):
        def container(name):
            info = devshell_engine.inspect(name)
            return info and (info["Id"], info["State"]["Status"])
        return {n: (container(n), devshell_engine.volume_present(n)) for n in names}
    return snapshot


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devshell: error: "), result.stderr
    assert "fix:" in lines[0]
    for needle in needles:
        assert needle in lines[0]


def test_unpullable_image_is_one_line_and_creates_nothing(devshell_cli, devshell_instance,
                                                        engine_state, tmp_path):
    instance = devshell_instance()
    before = engine_state(f"devshell-ubuntu-24.04-{instance}")
    result = devshell_cli(None, "ubuntu-24.04", "--patches-out", str(tmp_path),
                          "--instance", instance, "--script", "/dev/null")
    assert_one_line_error(result, "ghcr.io/catthehacker/ubuntu:act-24.04", "cannot be pulled")
    assert engine_state(f"devshell-ubuntu-24.04-{instance}") == before == {
        f"devshell-ubuntu-24.04-{instance}": (None, False)}


def test_missing_image_override_is_one_line_and_creates_nothing(devshell_cli, devshell_instance,
                                                              engine_state, tmp_path):
    name = f"devshell-bookworm-{devshell_instance()}"
    result = devshell_cli(None, "--image", "devshell/no-such-image:1", "--patches-out",
                          str(tmp_path), "--instance", name.removeprefix("devshell-bookworm-"))
    assert_one_line_error(result, "devshell/no-such-image:1")
    assert engine_state(name) == {name: (None, False)}


def test_bad_cell_file_names_file_and_key(devshell_cli, engine_state, tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "broken.yaml").write_text("platform: linux/s390x\nimage: {ref: x}\nworkspace: /w\n")
    result = devshell_cli(None, "broken", "--cells-dir", str(cells), "--patches-out", str(tmp_path))
    assert_one_line_error(result, "broken.yaml", "platform")
    assert engine_state("devshell-broken") == {"devshell-broken": (None, False)}


def test_unreachable_daemon_is_one_line(devshell_cli, tmp_path):
    (tmp_path / "project").mkdir()
    result = devshell_cli(None, "--patches-out", str(tmp_path / "project"), "--host-cache-dir",
                          str(tmp_path / "cache"), env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert_one_line_error(result, "Docker", "DOCKER_HOST")
    assert not (tmp_path / "cache").exists()


def test_bad_flag_is_one_line(devshell_cli):
    assert_one_line_error(devshell_cli(None, "--frobnicate"), "--frobnicate")


@pytest.mark.parametrize("where", ["missing", "file", "root"])
def test_bad_patches_dir_is_refused(devshell_cli, engine_state, tmp_path, where):
    path = {"missing": tmp_path / "nope", "file": tmp_path / "f", "root": "/"}[where]
    if where == "file":
        path.write_text("")
    before = engine_state("devshell-bookworm")
    assert_one_line_error(devshell_cli(None, "--patches-out", str(path)), "patches")
    assert engine_state("devshell-bookworm") == before
