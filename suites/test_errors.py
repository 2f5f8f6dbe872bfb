"""Bad input: one line naming the problem and the fix, exit 2, no traceback, and no change to
any container, volume or file."""


import pytest
import yaml

from devshell.spec import container_name


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
    assert result.exit_code == 2, result.stderr
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
    (tmp_path / "s.sh").write_text("true\n")  # a regular file: only that is a script
    result = devshell_cli(None, "ubuntu-24.04", "--checkout", str(tmp_path / "checkout"),
                          "--instance", instance, "--script", str(tmp_path / "s.sh"),
                          env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert_one_line_error(result, "ghcr.io/catthehacker/ubuntu:act-24.04", "cannot be pulled")
    assert not (tmp_path / "state").exists(), "no drop dir is made for a launch that fails"
    assert engine_state(f"devshell-ubuntu-24.04-{instance}") == before == {
        f"devshell-ubuntu-24.04-{instance}": (None, False)}


def test_missing_image_override_is_one_line_and_creates_nothing(devshell_cli, devshell_instance,
                                                              engine_state, tmp_path):
    name = container_name("bookworm", devshell_instance())
    (tmp_path / "checkout").mkdir()
    result = devshell_cli(None, "--image", "devshell/no-such-image:1", "--checkout",
                          str(tmp_path / "checkout"), "--patches-out", str(tmp_path / "drop"),
                          "--instance", name.removeprefix("devshell-bookworm-"))
    assert_one_line_error(result, "devshell/no-such-image:1")
    assert engine_state(name) == {name: (None, False)}
    assert not (tmp_path / "drop").exists()


# A bad cell file, an unknown flag, a daemon that is not there, and a checkout or patches dir that
# is missing, a file, / or not dev's: rows of the bad-input table (tests/test_bad_input.py),
# which needs no engine for them.


def test_a_missing_docker_cli_is_found_before_anything_changes(devshell_factory, devshell_cli, engine_state,
                                                               tmp_path):
    """Sessions are handed to the docker CLI: without it, a launch that would recreate the
    container (another patches dir) must fail first, leaving the container as it was."""
    shell = devshell_factory.open()
    before = engine_state(shell.name)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    result = devshell_cli(shell, "--script", str(script), patches_out=str(tmp_path / "other"),
                          env={"PATH": str(tmp_path / "no-docker-here")})
    assert_one_line_error(result, "docker CLI is not on PATH")
    assert engine_state(shell.name) == before
    assert not (tmp_path / "other").exists()


def test_a_failing_recipe_step_shows_its_own_last_words(devshell_cli, devshell_cell, devshell_instance,
                                                         tmp_path):
    """A recipe step that fails: the step's own output (apt's reason, say) comes before the one
    error line, not just its exit code."""
    with open(devshell_cell.source, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    recipe = data["image"]["recipe"]
    recipe["run"] = [*recipe.get("run", []), "echo 'E: Unable to locate package no-such-tool' >&2; exit 100"]
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "failing-step.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "checkout").mkdir()
    (tmp_path / "s.sh").write_text("true\n")
    result = devshell_cli(None, "failing-step", "--cells-dir", str(tmp_path / "cells"), "--checkout",
                          str(tmp_path / "checkout"), "--patches-out", str(tmp_path / "drop"),
                          "--instance", devshell_instance(), "--script", str(tmp_path / "s.sh"))
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and lines[-1].startswith("devshell: error: building "), result.stderr
    assert "devshell:   | E: Unable to locate package no-such-tool" in lines, result.stderr
