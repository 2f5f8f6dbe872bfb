"""Bad input: one line naming the problem and the fix, exit 2, no traceback, and no change to
any container, volume or file."""

import os

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
    (tmp_path / "checkout").mkdir()
    result = devshell_cli(None, "ubuntu-24.04", "--checkout", str(tmp_path / "checkout"),
                          "--instance", instance, "--script", "/dev/null",
                          env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert_one_line_error(result, "ghcr.io/catthehacker/ubuntu:act-24.04", "cannot be pulled")
    assert not (tmp_path / "state").exists(), "no drop dir is made for a launch that fails"
    assert engine_state(f"devshell-ubuntu-24.04-{instance}") == before == {
        f"devshell-ubuntu-24.04-{instance}": (None, False)}


def test_missing_image_override_is_one_line_and_creates_nothing(devshell_cli, devshell_instance,
                                                              engine_state, tmp_path):
    name = f"devshell-bookworm-{devshell_instance()}"
    (tmp_path / "checkout").mkdir()
    result = devshell_cli(None, "--image", "devshell/no-such-image:1", "--checkout",
                          str(tmp_path / "checkout"), "--patches-out", str(tmp_path / "drop"),
                          "--instance", name.removeprefix("devshell-bookworm-"))
    assert_one_line_error(result, "devshell/no-such-image:1")
    assert engine_state(name) == {name: (None, False)}
    assert not (tmp_path / "drop").exists()


def test_bad_cell_file_names_file_and_key(devshell_cli, engine_state, tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "broken.yaml").write_text("platform: linux/s390x\nimage: {ref: x}\nworkspace: /w\n")
    result = devshell_cli(None, "broken", "--cells-dir", str(cells), "--checkout", str(tmp_path))
    assert_one_line_error(result, "broken.yaml", "platform")
    assert engine_state("devshell-broken") == {"devshell-broken": (None, False)}


def test_unreachable_daemon_is_one_line(devshell_cli, tmp_path):
    (tmp_path / "project").mkdir()
    result = devshell_cli(None, "--checkout", str(tmp_path / "project"), "--host-cache-dir",
                          str(tmp_path / "cache"), env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert_one_line_error(result, "Docker", "DOCKER_HOST")
    assert not (tmp_path / "cache").exists()


def test_bad_flag_is_one_line(devshell_cli):
    assert_one_line_error(devshell_cli(None, "--frobnicate"), "--frobnicate")


@pytest.mark.parametrize("flag, where", [("--checkout", "missing"), ("--checkout", "file"),
                                         ("--checkout", "root"), ("--patches-out", "file"),
                                         ("--patches-out", "root"), ("--patches-out", "not dev's"),
                                         ("--patches-out", "inside the checkout")])
def test_bad_checkout_or_patches_dir_is_refused(devshell_cli, engine_state, tmp_path, flag, where):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    path = {"missing": tmp_path / "nope", "file": tmp_path / "f", "root": "/",
            "not dev's": tmp_path / "mine", "inside the checkout": checkout / "drop"}[where]
    if where == "file":
        path.write_text("")
    if where == "not dev's":
        path.mkdir(mode=0o700)  # the launching user's (root here, dev is 1000): never chowned
    args = ["--checkout", str(path)] if flag == "--checkout" else \
        ["--checkout", str(checkout), "--patches-out", str(path), "--uid", "1000", "--gid", "1000"]
    before = engine_state("devshell-bookworm")
    stat_before = os.stat(path) if where == "not dev's" else None
    assert_one_line_error(devshell_cli(None, *args), flag.removeprefix("--").split("-")[0])
    assert engine_state("devshell-bookworm") == before
    if stat_before is not None:
        after = os.stat(path)
        assert (after.st_uid, after.st_mode) == (stat_before.st_uid, stat_before.st_mode)


def test_a_missing_docker_cli_is_found_before_anything_changes(devshell_factory, devshell_cli, engine_state,
                                                               tmp_path):
    """Sessions are handed to the docker CLI: without it, a launch that would recreate the
    container (another patches dir) must fail first, leaving the container as it was."""
    shell = devshell_factory()
    before = engine_state(shell.name)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    result = devshell_cli(shell, "--script", str(script), patches_out=str(tmp_path / "other"),
                          env={"PATH": str(tmp_path / "no-docker-here")})
    assert_one_line_error(result, "docker CLI is not on PATH")
    assert engine_state(shell.name) == before
    assert not (tmp_path / "other").exists()
