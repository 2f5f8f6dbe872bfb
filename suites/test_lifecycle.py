"""The visible lifecycle: status says whether a devshell is what a launch would make (and creates
nothing), down removes only what devshell made for that cell, doctor names what is in the way,
and every --json output is exactly one JSON document."""

from __future__ import annotations

import io
import json

import pytest

from devshell import labels
from devshell.options import to_argv
from devshell.spec import container_name


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devshell: error: ") and "fix:" in lines[0], result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in lines[0]


def one_document(result):
    """stdout is exactly one JSON document (json.loads refuses anything after it) and stderr
    is empty: notes travel inside the document."""
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


def status_of(devshell_cli, opts, *extra):
    return devshell_cli(None, "status", *to_argv(opts), *extra)


def state(engine, name):
    """What down could change: the container's id and whether the volume is there."""
    info = engine.inspect(name)
    return (info and info["Id"]), engine.volume_present(name)


# --- status -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unchanged(devshell_factory):
    """A devshell of this module's own for the commands that must change nothing (status, and
    down refusing): each compares what it could change before and after itself. Not the
    session's shared one, which a command that got through would take from every other test."""
    return devshell_factory.open()


def test_status_of_a_matching_devshell(unchanged, devshell_cli):
    shell = unchanged
    assert shell.run("true").exit_code == 0  # a session, so there is a last one to show
    doc = one_document(status_of(devshell_cli, shell.opts, "--json"))
    assert (doc["container"], doc["state"], doc["owner"]) == (shell.name, "running", "devshell")
    assert (doc["matches"], doc["launch"], doc["differences"]) == (True, "reuse", [])
    assert (doc["volume_present"], doc["volume_owner"], doc["image"]) == (True, "devshell", shell.spec.image)
    assert doc["last_session"] and doc["last_session"].endswith("Z")
    text = status_of(devshell_cli, shell.opts)
    assert text.exit_code == 0 and "matches: a launch would reuse it" in text.stdout


def test_status_names_the_flags_that_differ_and_changes_nothing(unchanged, devshell_cli, devshell_engine):
    shell = unchanged
    before = state(devshell_engine, shell.name)
    result = status_of(devshell_cli, shell.opts._replace(ai_config_ro=False), "--json")
    doc = one_document(result)
    assert (doc["matches"], doc["launch"]) == (False, "recreate")
    assert any("DEVSHELL_AI_CONFIG" in d for d in doc["differences"]), doc["differences"]
    # control: the flags it was opened with still match
    assert one_document(status_of(devshell_cli, shell.opts, "--json"))["matches"] is True
    text = status_of(devshell_cli, shell.opts._replace(ai_config_ro=False))
    assert "differs (" in text.stdout and "DEVSHELL_AI_CONFIG" in text.stdout
    assert state(devshell_engine, shell.name) == before


def test_status_of_no_devshell_creates_nothing(devshell_cli, devshell_cell, devshell_instance,
                                               devshell_engine, tmp_path):
    instance = devshell_instance()
    name = container_name(devshell_cell.name, instance)
    (tmp_path / "checkout").mkdir()
    result = devshell_cli(None, "status", devshell_cell.name, "--instance", instance, "--checkout",
                          str(tmp_path / "checkout"), "--host-cache-dir", str(tmp_path / "cache"), "--json",
                          env={"XDG_STATE_HOME": str(tmp_path / "state")})
    doc = one_document(result)
    assert (doc["container"], doc["state"], doc["launch"]) == (name, "absent", "create")
    assert doc["volume_present"] is False
    assert state(devshell_engine, name) == (None, False)
    assert not (tmp_path / "state").exists() and not (tmp_path / "cache").exists()


def test_status_without_a_cell_lists_our_devshells(devshell, devshell_cli):
    doc = one_document(devshell_cli(None, "status", "--json"))
    ours = [r for r in doc["devshells"] if r["name"] == devshell.name]
    assert len(ours) == 1, doc
    row = ours[0]
    assert (row["cell"], row["container"], row["volume"]) == (devshell.spec.cell, "running", "present")
    text = devshell_cli(None, "status")
    assert text.exit_code == 0 and devshell.name in text.stdout


# --- down -------------------------------------------------------------------------------------


def down(devshell_cli, shell, *flags):
    return devshell_cli(None, "down", shell.spec.cell, "--instance", shell.opts.instance, *flags)


def test_down_removes_the_container_and_keeps_the_volume(devshell_factory, devshell_cli, devshell_engine):
    shell = devshell_factory.open()
    result = down(devshell_cli, shell, "--json")
    doc = one_document(result)
    assert (doc["container_removed"], doc["volume_state"]) == (True, "kept")
    assert state(devshell_engine, shell.name) == (None, True)


def test_down_volume_yes_removes_both(devshell_factory, devshell_cli, devshell_engine):
    shell = devshell_factory.open()
    result = down(devshell_cli, shell, "--volume", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "removed" in result.stdout and shell.name in result.stdout
    assert state(devshell_engine, shell.name) == (None, False)


def test_down_volume_in_use_by_another_container_removes_nothing(devshell_factory, devshell_cli,
                                                                  devshell_engine):
    import subprocess

    shell = devshell_factory.open()
    other = f"{shell.name}-user"
    subprocess.run(["docker", "create", "--name", other, "-v", f"{shell.spec.volume}:/x", shell.spec.image,
                    "true"], check=True, capture_output=True)
    try:
        before = state(devshell_engine, shell.name)
        assert_one_line_error(down(devshell_cli, shell, "--volume", "--yes"), "in use", other)
        assert state(devshell_engine, shell.name) == before and before[0]
    finally:
        subprocess.run(["docker", "rm", "-f", other], capture_output=True)
    # The control: with the other container gone, the same command removes both.
    assert down(devshell_cli, shell, "--volume", "--yes").exit_code == 0
    assert state(devshell_engine, shell.name) == (None, False)


def test_down_volume_without_a_terminal_or_yes_removes_nothing(unchanged, devshell_cli, devshell_engine):
    shell = unchanged
    before = state(devshell_engine, shell.name)
    # devshell_cli's stdin is /dev/null: no terminal to ask
    assert_one_line_error(down(devshell_cli, shell, "--volume"), "no terminal", "--yes")
    assert_one_line_error(down(devshell_cli, shell, "--volume", "--json"), "no terminal")
    assert state(devshell_engine, shell.name) == before
    assert before[0] and before[1]


@pytest.fixture
def planted(devshell, devshell_engine, devshell_instance):
    """Plant objects with a devshell name (for this run's cell and a fresh instance) that
    devshell did not make; removed afterwards whatever happens."""
    made = []

    def plant(kind, found_labels=None):
        instance = devshell_instance()
        name = container_name(devshell.spec.cell, instance)
        if kind == "container":
            devshell_engine.client.containers.create(devshell.spec.image, ["true"], name=name,
                                                     labels=found_labels or {})
        else:
            devshell_engine.client.volumes.create(name, labels=found_labels or {})
        made.append((kind, name))
        return instance, name

    yield plant
    for kind, name in made:
        if kind == "container":
            devshell_engine.remove_container(name)
        else:
            devshell_engine.remove_volume(name)


def test_down_refuses_a_foreign_container(planted, devshell, devshell_cli, devshell_engine):
    instance, name = planted("container")
    before = state(devshell_engine, name)
    result = devshell_cli(None, "down", devshell.spec.cell, "--instance", instance)
    assert_one_line_error(result, name, "did not create")
    assert state(devshell_engine, name) == before and before[0]


@pytest.mark.parametrize("found_labels, needle", [
    ({}, "did not create"),
    ({labels.MANAGED: "1", labels.CELL: "some-other-cell"}, "belongs to cell some-other-cell"),
])
def test_down_volume_refuses_a_volume_that_is_not_this_cells(planted, devshell, devshell_cli, devshell_engine,
                                                             found_labels, needle):
    instance, name = planted("volume", found_labels)
    result = devshell_cli(None, "down", devshell.spec.cell, "--instance", instance, "--volume", "--yes")
    assert_one_line_error(result, name, needle)
    assert devshell_engine.volume_present(name)
    # control: without --volume the volume is not down's business, and is left alone
    kept = devshell_cli(None, "down", devshell.spec.cell, "--instance", instance)
    assert kept.exit_code == 0, kept.stderr
    assert devshell_engine.volume_present(name)


# --- doctor -----------------------------------------------------------------------------------


def test_doctor_json_is_one_document_and_lists_a_planted_foreign_volume(planted, devshell_cli,
                                                                        devshell_engine):
    _, name = planted("volume")
    result = devshell_cli(None, "doctor", "--json")
    doc = one_document(result)
    assert result.exit_code == 1 and doc["healthy"] is False
    found = [p for p in doc["problems"] if p["object"] == f"volume {name}"]
    assert len(found) == 1 and name in found[0]["fix"]
    assert doc["engine"]["api_version"] and doc["engine"]["storage_driver"]
    assert {i["state"] for i in doc["images"]} <= {"present", "buildable", "missing"}
    # control: once it is gone, doctor no longer names it
    devshell_engine.remove_volume(name)
    after = one_document(devshell_cli(None, "doctor", "--json"))
    assert not [p for p in after["problems"] if p["object"] == f"volume {name}"]
    text = devshell_cli(None, "doctor")
    assert text.exit_code in (0, 1) and text.stdout.splitlines()[0].startswith("engine")


def test_doctor_names_a_baked_image_no_container_uses_and_not_one_in_use(devshell_factory, devshell_cli,
                                                                        devshell_engine, devshell_instance):
    # A locked devshell runs a baked image: in use, never offered for removal. An image of its
    # own (the cell's image with a label: a new id) under the baked repository, which no
    # container was made from, stands for the bake an older init or setup left behind.
    shell = devshell_factory.open(profile="locked")
    in_use = devshell_engine.inspect(shell.name)["Config"]["Image"]
    assert in_use.startswith("devshell/locked:"), in_use
    left_behind = f"devshell/locked:doctor-{devshell_instance()}"
    dockerfile = io.BytesIO(f"FROM {shell.spec.image}\nLABEL devshell.test=doctor\n".encode())
    devshell_engine.client.images.build(fileobj=dockerfile, tag=left_behind, rm=True)
    try:
        doc = one_document(devshell_cli(None, "doctor", "--json"))
        assert left_behind in doc["baked"]["unused"] and in_use not in doc["baked"]["unused"], doc["baked"]
        text = devshell_cli(None, "doctor").stdout
        assert "docker image rm " in text and left_behind in text, text
    finally:
        devshell_engine.client.images.remove(left_behind)


# --- --json everywhere, --list with a broken cell file ---------------------------------------


def test_every_json_output_is_exactly_one_document(devshell, devshell_cli, devshell_instance):
    cell = devshell.spec.cell
    for argv in (["--list", "--json"], ["status", "--json"], [*to_argv(devshell.opts), "--json"],
                 ["doctor", "--json"], ["down", cell, "--instance", devshell_instance(), "--json"]):
        if argv[0] == cell:
            argv = ["status", *argv]
        result = devshell_cli(None, *argv)
        assert result.exit_code in (0, 1), (argv, result.stderr)
        assert isinstance(one_document(result), dict), argv


def test_list_names_a_broken_cell_file_and_lists_the_others(devshell_cli, devshell_cell, tmp_path):
    (tmp_path / "broken.yaml").write_text("platform: [unclosed\n")
    doc = one_document(devshell_cli(None, "--list", "--json", "--cells-dir", str(tmp_path)))
    assert devshell_cell.name in {c["cell"] for c in doc["cells"]}
    assert len(doc["notes"]) == 1 and "broken.yaml" in doc["notes"][0]
    text = devshell_cli(None, "--list", "--cells-dir", str(tmp_path))
    assert text.exit_code == 0 and devshell_cell.name in text.stdout
    assert [line for line in text.stderr.splitlines() if "broken.yaml" in line] == text.stderr.splitlines()
    assert len(text.stderr.splitlines()) == 1
