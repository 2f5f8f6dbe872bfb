"""status, down, doctor and --list: the pure parts (what a launch would do, what doctor calls a
problem, what is printed), fed with documents shaped like the engine's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devshell import cells, labels, lifecycle
from devshell.cli import run
from devshell.errors import DevshellError
from devshell.options import HostFacts, parse
from devshell.spec import ContainerSpec, plan

HOST = HostFacts(cwd="/home/alice/proj", home="/home/alice", uid=501, gid=20)
CELL = cells.parse({"platform": "linux/amd64", "image": {"ref": "example/img:1"},
                    "workspace": "/workspaces/cellx"}, source="cellx.yaml", stem="cellx")
RECIPE_CELL = cells.parse({"platform": "linux/amd64", "workspace": "/workspaces/cellr",
                           "image": {"recipe": {"debootstrap": {"suite": "bookworm"}}}},
                          source="cellr.yaml", stem="cellr")
BOTH_CELL = cells.parse({"platform": "linux/amd64", "workspace": "/workspaces/cellb",
                         "image": {"ref": "example/both:1",
                                   "recipe": {"debootstrap": {"suite": "bookworm"}}}},
                        source="cellb.yaml", stem="cellb")


def spec_for(*argv: str) -> ContainerSpec:
    return plan(parse(["cellx", *argv], HOST), CELL, init="#!/bin/sh\n")


def container_of(spec: ContainerSpec, state: str = "running", **label_changes: Any) -> dict[str, Any]:
    """An inspect document for the container a launch with spec made."""
    found = {labels.MANAGED: "1", **spec.all_labels()}
    for key, value in label_changes.items():
        if value is None:
            found.pop(key, None)
        else:
            found[key] = value
    return {"Id": "c0ffee", "State": {"Status": state}, "Config": {"Labels": found}}


# --- judge: what a launch with these flags would do ------------------------------------------


def test_no_container_would_be_created():
    assert lifecycle.judge(None, spec_for(), []) == ("absent", None, None, [], "create")


@pytest.mark.parametrize("state, launch", [("running", "reuse"), ("paused", "reuse"), ("exited", "start")])
def test_the_same_spec_matches_and_would_be_reused(state, launch):
    spec = spec_for()
    verdict = lifecycle.judge(container_of(spec, state), spec, [])
    assert (verdict.matches, verdict.launch, verdict.differences) == (True, launch, [])
    assert verdict.owner == "devshell"


def test_other_flags_differ_and_name_what_changed():
    verdict = lifecycle.judge(container_of(spec_for()), spec_for("--uid", "1234"), [])
    assert (verdict.matches, verdict.launch) == (False, "recreate")
    assert verdict.differences == ["env (DEVSHELL_DEV_UID)"]


def test_missing_host_dirs_mean_recreation_even_with_the_same_hash():
    spec = spec_for()
    verdict = lifecycle.judge(container_of(spec), spec, ["/drop"])
    assert (verdict.matches, verdict.launch) == (False, "recreate")
    assert verdict.differences == ["new host dirs (/drop)"]


def test_an_unreadable_identity_label_still_differs():
    broken = container_of(spec_for(), **{labels.SPEC: "{not json", labels.SPEC_HASH: "x"})
    verdict = lifecycle.judge(broken, spec_for(), [])
    assert verdict.launch == "recreate" and verdict.differences


@pytest.mark.parametrize("state, why", [("created", "half-made by an interrupted launch"), ("dead", "dead")])
def test_a_half_made_or_dead_container_would_be_recreated(state, why):
    spec = spec_for()
    assert lifecycle.judge(container_of(spec, state), spec, []).differences == [why]


def test_a_container_without_devshells_label_is_foreign_and_refused():
    spec = spec_for()
    verdict = lifecycle.judge(container_of(spec, **{labels.MANAGED: None}), spec, [])
    assert (verdict.owner, verdict.matches, verdict.launch) == ("foreign", None, "refuse")
    assert "did not create" in verdict.sentence(None)


def test_another_cells_container_is_refused():
    spec = spec_for()
    verdict = lifecycle.judge(container_of(spec, **{labels.CELL: "other"}), spec, [])
    assert (verdict.owner, verdict.launch) == ("other-cell", "refuse")
    assert "belongs to cell other" in verdict.sentence("other")


@pytest.mark.parametrize("found, owner", [({labels.MANAGED: "1", labels.CELL: "cellx"}, "devshell"),
                                          ({labels.MANAGED: "1", labels.CELL: "other"}, "other-cell"),
                                          ({labels.CELL: "cellx"}, "foreign"), (None, "foreign")])
def test_owner_of_a_volume(found, owner):
    assert labels.owner_of(found, "cellx") == owner


# --- images ----------------------------------------------------------------------------------


def test_expected_image_is_the_one_ensure_image_would_pick():
    nothing = set[str]().__contains__
    assert lifecycle.expected_image(CELL, "mine:1", nothing) == "mine:1"
    assert lifecycle.expected_image(CELL, None, nothing) == "example/img:1"  # pulled, or refused
    assert lifecycle.expected_image(RECIPE_CELL, None, nothing) == RECIPE_CELL.built_tag
    assert lifecycle.expected_image(BOTH_CELL, None, {"example/both:1"}.__contains__) == "example/both:1"
    assert lifecycle.expected_image(BOTH_CELL, None, nothing) == BOTH_CELL.built_tag


def test_image_state():
    nothing = set[str]().__contains__
    assert lifecycle.image_state(CELL, {"example/img:1"}.__contains__) == "present"
    assert lifecycle.image_state(CELL, nothing) == "missing"
    assert lifecycle.image_state(RECIPE_CELL, nothing) == "buildable"
    assert lifecycle.image_state(BOTH_CELL, {BOTH_CELL.built_tag or ""}.__contains__) == "present"


# --- status without a cell -------------------------------------------------------------------


def test_rows_join_containers_and_volumes_by_name():
    ours = {labels.MANAGED: "1", labels.CELL: "bookworm"}
    rows = lifecycle.devshell_rows(
        [{"Id": "1", "Names": ["/devshell-bookworm"], "State": "running", "Labels": ours}],
        [{"Name": "devshell-bookworm", "Labels": ours},
         {"Name": "devshell-bookworm-b", "Labels": {**ours, labels.TEST_RUN: "ab12"}}],
        {"devshell-bookworm": 2048})
    keys = ("name", "cell", "container", "volume", "volume_size", "test_run")
    assert [tuple(r[k] for k in keys) for r in rows] == [
        ("devshell-bookworm", "bookworm", "running", "present", 2048, None),
        ("devshell-bookworm-b", "bookworm", "absent", "present", None, "ab12")]


# --- doctor ----------------------------------------------------------------------------------


def test_stray_objects_are_foreign_names_and_dead_runs_leftovers():
    dead, alive = {labels.TEST_RUN: "r1", labels.TEST_PID: "here:111"}, {labels.TEST_RUN: "r2",
                                                                          labels.TEST_PID: "here:222"}
    elsewhere = {labels.TEST_RUN: "r3", labels.TEST_PID: "there:111"}
    containers = [{"Names": ["/devshell-x"], "Labels": {}},  # foreign
                  {"Names": ["/devshell-y"], "Labels": {labels.MANAGED: "1"}},  # ours
                  {"Names": ["/something-else"], "Labels": {}},  # not named like ours
                  {"Names": ["/devshell-t1"], "Labels": {labels.MANAGED: "1", **dead}},
                  {"Names": ["/devshell-t2"], "Labels": {labels.MANAGED: "1", **alive}},
                  {"Names": ["/devshell-t3"], "Labels": {labels.MANAGED: "1", **elsewhere}}]
    volumes = [{"Name": "devshell-v", "Labels": None},
               {"Name": "devshell-y", "Labels": {labels.MANAGED: "1"}}]
    found = lifecycle.stray_objects(containers, volumes, "here", lambda pid: pid == 222)
    assert [f.object for f in found] == ["container devshell-x", "container devshell-t1", "volume devshell-v"]
    assert found[1].fix == "docker rm -f devshell-t1"
    assert "docker volume inspect devshell-v" in found[2].fix
    assert all(f.problem and f.fix and "\n" not in f.fix for f in found)


def doctor_doc(problems: list[dict[str, str]]) -> dict[str, Any]:
    engine = {"host": "unix:///s", "version": "20.10", "api_version": "1.41", "storage_driver": "overlay2",
              "runtimes": ["runc"], "default_runtime": "runc", "root_dir": "/var/lib/docker"}
    return {"healthy": not problems, "engine": engine,
            "disk": {"path": "/var/lib/docker", "free": 5 << 30, "total": 10 << 30},
            "images": [{"cell": "bookworm", "image": "devshell/bookworm:1", "state": "present", "fix": None}],
            "baked": {"images": 0, "unused": []}, "problems": problems, "notes": []}


def test_doctor_text_ends_with_its_verdict():
    assert lifecycle.doctor_lines(doctor_doc([]))[-1] == "healthy"
    lines = lifecycle.doctor_lines(doctor_doc([{"object": "volume devshell-v", "problem": "p", "fix": "f"}]))
    assert lines[-3:] == ["PROBLEM   volume devshell-v: p", "  fix:    f", "1 problem (exit 1)"]
    assert "5.0 GiB free of 10.0 GiB at /var/lib/docker" in lines[3]


def test_unused_baked_images_are_those_no_container_was_made_from():
    images = [{"Id": "sha256:a", "RepoTags": ["devshell/locked:aaa"]},
              {"Id": "sha256:b", "RepoTags": ["devshell/locked:bbb", "mine:kept"]},
              {"Id": "sha256:c", "RepoTags": ["devshell/locked:ccc"]}]
    containers = [{"ImageID": "sha256:a"}, {"ImageID": "sha256:other"}]
    # only devshell's own tags are offered for removal, never another name the image has
    assert lifecycle.unused_baked(images, containers) == {"images": 3, "unused": ["devshell/locked:bbb",
                                                                                "devshell/locked:ccc"]}
    # one image under two baked tags: both counts are of tags
    twice = [{"Id": "sha256:d", "RepoTags": ["devshell/locked:d1", "devshell/locked:d2"]}]
    assert lifecycle.unused_baked(twice, []) == {"images": 2,
                                                 "unused": ["devshell/locked:d1", "devshell/locked:d2"]}
    odd = [{"Id": None, "RepoTags": None}, {"RepoTags": ["<none>:<none>"]}]
    assert lifecycle.unused_baked(odd, [{}]) == {"images": 0, "unused": []}
    assert lifecycle.unused_baked([], containers) == {"images": 0, "unused": []}


def test_doctor_names_unused_baked_images_with_the_command_to_free_them():
    doc = doctor_doc([])
    assert not [line for line in lifecycle.doctor_lines(doc) if line.startswith("baked")]
    doc["baked"] = {"images": 2, "unused": ["devshell/locked:bbb"]}
    [line] = [line for line in lifecycle.doctor_lines(doc) if line.startswith("baked")]
    assert line == "baked     2 locked images, 1 unused by any container; to free it: docker image rm " \
                   "devshell/locked:bbb (a later locked launch bakes again what it needs)"
    assert lifecycle.doctor_lines(doc)[-1] == "healthy"  # housekeeping, not a problem


# --- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp, short", [("2026-11-28T10:59:31.016188276Z", "2026-11-28T10:59:31Z"),
                                          ("2026-11-28T10:59:31+02:00", "2026-11-28T10:59:31+02:00"),
                                          ("\x1b[31mred", None), ("", None), (None, None)])
def test_short_time_keeps_only_a_timestamp(stamp, short):
    assert lifecycle.short_time(stamp) == short


@pytest.mark.parametrize("size, text", [(None, None), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                        (5 << 30, "5.0 GiB"), (5 << 40, "5120.0 GiB")])
def test_human_size(size, text):
    assert lifecycle.human_size(size) == text


def test_table_aligns_and_prints_none_as_a_dash():
    assert lifecycle.table([("a", "A"), ("b", "long")], [{"a": "xyz", "b": None}]) == ["A    long", "xyz  -"]
    assert lifecycle.table([("a", "A")], []) == ["A"]


def test_status_lines_say_what_a_launch_would_do():
    doc = {"container": "devshell-cellx", "state": "exited", "owner": "devshell", "matches": False,
           "differences": ["env (DEVSHELL_DEV_UID)"], "launch": "recreate", "container_cell": "cellx",
           "image": "example/img:1", "volume": "devshell-cellx", "volume_present": True,
           "volume_owner": "devshell", "volume_size": 2048, "last_session": None}
    lines = lifecycle.status_lines(doc)
    assert lines[1] == ("this launch   differs (env (DEVSHELL_DEV_UID)): a launch would recreate it "
                        "(the volume stays)")
    assert lines[3:] == ["volume        devshell-cellx: present, 2.0 KiB", "last session  unknown"]


def test_json_output_is_one_document_and_text_notes_go_to_stderr(capsys):
    lifecycle.emit({"x": 1, "notes": ["n"]}, ["text"], True)
    out, err = capsys.readouterr()
    assert json.loads(out) == {"x": 1, "notes": ["n"]} and err == ""
    lifecycle.emit({"notes": ["n\x1b"]}, ["line\x1b[2J"], False)
    out, err = capsys.readouterr()
    assert out == "line\\x1b[2J\n" and err == "devshell: note: n\\x1b\n"


# --- a broken cell file does not hide the others ---------------------------------------------


def test_available_names_a_broken_file_and_lists_the_rest(tmp_path: Path):
    (tmp_path / "good.yaml").write_text("platform: linux/amd64\nimage: {ref: x}\n"
                                        "workspace: /workspaces/good\n")
    (tmp_path / "bad.yaml").write_text("not: [valid")
    problems: list[DevshellError] = []
    assert [c.name for c in cells.available([tmp_path], problems)] == ["good"]
    assert len(problems) == 1 and "bad.yaml" in problems[0].message and problems[0].fix
    with pytest.raises(DevshellError, match=r"bad\.yaml"):
        cells.available([tmp_path])  # without a problems list, still an error


def test_a_broken_file_still_shadows_a_later_one(tmp_path: Path):
    (tmp_path / "bookworm.yaml").write_text("not: [valid")
    problems: list[DevshellError] = []
    found = cells.available([tmp_path, cells.shipped_cells_dir()], problems)
    assert "bookworm" not in {c.name for c in found} and problems  # find() would stop there too


# --- bad input is refused before any engine is asked -----------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["down"], "down needs a cell"),
    (["down", "--volume"], "down needs a cell (--volume"),
    (["down", "bookworm", "--frobnicate"], "--frobnicate"),
    (["down", "Not/A/Cell"], "is not a cell name"),
    (["down", "bookworm", "--instance", "a b"], "--instance"),
    (["status", "--uid", "5"], "status without a cell"),
    (["status", "bookworm", "--rm"], "--rm is not one"),
    (["status", "bookworm", "--list"], "--list is not one"),
    (["doctor", "bookworm"], "unrecognized arguments"),
    (["shell"], "reserved for a subcommand"),
    (["cache"], "cache needs a subcommand"),
])
def test_bad_input_is_one_error_naming_the_problem_and_a_fix(argv, needle, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # reaching the engine would be a bug
    with pytest.raises(DevshellError) as e:
        run(argv)
    assert needle in str(e.value) and e.value.fix and e.value.exit_code == 2
    assert "no Docker engine" not in str(e.value)
