"""Cells as data: shipped cells load, bad files say file + key + expectation, search order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from devshell import cells
from devshell.cells import PLATFORMS, RESERVED_NAMES, Recipe
from devshell.errors import DevshellError

SHIPPED = ("bookworm", "runner-1001", "ubuntu-24.04")
NO_ENV: dict[str, str] = {}


def doc(**overrides: Any) -> dict[str, Any]:
    """A minimal valid cell document."""
    base: dict[str, Any] = {"platform": "linux/amd64", "image": {"ref": "debian:bookworm"},
                            "workspace": "/workspaces/w"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Whatever devshell caches about loaded cells goes under tmp_path, not the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def shipped() -> list[Any]:
    return [cells.shipped_cells_dir()]


def strs(path: list[Any]) -> list[str]:
    return [str(p) for p in path]


def write(directory: Path, stem: str, data: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(DevshellError) as info:
        cells.load(path)
    return str(info.value)


# --- shipped cells --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cell_loads(name):
    cell = cells.find(name, cells.search_path(environ=NO_ENV))
    assert cell.name == name
    assert cell.platform in PLATFORMS
    assert Path(cell.source).name == f"{name}.yaml"
    assert cell.image


def test_default_cell_is_shipped():
    names = {c.name for c in cells.available(cells.search_path(environ=NO_ENV))}
    assert cells.DEFAULT_CELL in names


def test_available_lists_the_shipped_cells():
    assert set(SHIPPED) <= {c.name for c in cells.available(shipped())}


def test_recipe_cell_image_is_its_built_tag():
    cell = cells.find("bookworm", shipped())
    assert cell.image_ref is None
    assert cell.image == cell.built_tag
    assert cell.image.startswith("devshell/bookworm:")


def test_ref_cell_image_is_its_reference():
    cell = cells.find("ubuntu-24.04", shipped())
    assert (cell.image, cell.built_tag) == ("ghcr.io/catthehacker/ubuntu:act-24.04", None)


def test_runner_1001_shares_bookworms_base_but_not_its_recipe():
    bookworm, runner = (cells.find(n, shipped()) for n in ("bookworm", "runner-1001"))
    assert bookworm.recipe and runner.recipe
    assert bookworm.recipe.base_hash() == runner.recipe.base_hash()
    assert bookworm.recipe.hash() != runner.recipe.hash()


# --- parsing --------------------------------------------------------------------------------


def test_dirs_default_to_src_build_ccache_under_workspace():
    cell = cells.parse(doc(), source="x.yaml", stem="x")
    assert (cell.src, cell.build, cell.ccache) == ("/workspaces/w/src", "/workspaces/w/build",
                                                   "/workspaces/w/ccache")


def test_dirs_may_be_renamed():
    cell = cells.parse(doc(dirs={"src": "s", "build": "b"}), source="x.yaml", stem="x")
    assert (cell.src, cell.build, cell.ccache) == ("/workspaces/w/s", "/workspaces/w/b",
                                                   "/workspaces/w/ccache")


def test_env_values_become_strings():
    cell = cells.parse(doc(env={"A": True, "B": 3, "C": "x", "D": False}), source="x", stem="x")
    assert cell.env == (("A", "true"), ("B", "3"), ("C", "x"), ("D", "false"))


def test_name_key_may_repeat_the_file_stem():
    assert cells.parse(doc(name="x"), source="x.yaml", stem="x").name == "x"


def test_recipe_defaults():
    data = doc(image={"recipe": {"debootstrap": {"suite": "trixie"}}})
    recipe = cells.parse(data, source="x", stem="x").recipe
    assert recipe == Recipe(suite="trixie", variant="minbase", include=(), mirror=None, run=())


# --- errors name file, key and expectation --------------------------------------------------


def test_missing_platform_is_named(tmp_path):
    path = write(tmp_path, "c", doc(platform=None))
    message = load_error(path)
    assert str(path) in message
    assert "missing" in message
    assert "'platform'" in message


def test_bad_platform_lists_the_allowed_values(tmp_path):
    path = write(tmp_path, "c", doc(platform="windows/amd64"))
    message = load_error(path)
    assert str(path) in message
    assert "key 'platform'" in message
    assert "expected one of linux/amd64, linux/arm64" in message
    assert "'windows/amd64'" in message


def test_unknown_top_level_key_is_named(tmp_path):
    path = write(tmp_path, "c", doc(colour="blue"))
    message = load_error(path)
    assert str(path) in message
    assert "unknown key" in message
    assert "'colour'" in message


def test_unknown_nested_key_names_its_parent(tmp_path):
    debootstrap = {"suite": "x", "flavour": 1}
    path = write(tmp_path, "c", doc(image={"recipe": {"debootstrap": debootstrap}}))
    message = load_error(path)
    assert "key 'image.recipe.debootstrap'" in message
    assert "'flavour'" in message


@pytest.mark.parametrize("workspace", ["work", "/", "/w/", "/with space", ""])
def test_workspace_not_matching_the_pattern_is_refused(tmp_path, workspace):
    path = write(tmp_path, "c", doc(workspace=workspace))
    message = load_error(path)
    assert str(path) in message
    assert "key 'workspace'" in message
    assert "expected a value matching" in message


@pytest.mark.parametrize("workspace", ["/patches", "/patches/x", "/checkout", "/checkout/src",
                                       "/cache", "/cache/y", "/home/dev", "/home/dev/w", "/x/../patches",
                                       "/x/../checkout", "/home/x/../dev"])
def test_workspace_colliding_with_launcher_paths_is_refused(tmp_path, workspace):
    path = write(tmp_path, "c", doc(workspace=workspace))
    message = load_error(path)
    assert str(path) in message
    assert "key 'workspace'" in message
    assert "collides" in message


@pytest.mark.parametrize("workspace", ["/home/devx", "/home/dev2/w", "/srv/patches", "/opt/checkout"])
def test_workspace_merely_starting_with_a_reserved_name_is_fine(workspace):
    assert cells.parse(doc(workspace=workspace), source="x", stem="x").workspace == workspace


@pytest.mark.parametrize("workspace", ["/x/..", "/etc", "/usr", "/usr/src/w", "/bin", "/tmp", "/tmp/w",
                                       "/root", "/proc", "/home", "/workspaces", "/srv", "/opt",
                                       "/var/lib/w", "/w/cellx", "/work/w", "/homes/w", "/home/../etc/w"])
def test_workspace_outside_the_workspace_roots_is_refused(tmp_path, workspace):
    """A volume over a system directory hides what the image put there: only paths strictly
    below /home/, /workspaces/, /srv/ or /opt/ are workspaces."""
    message = load_error(write(tmp_path, "c", doc(workspace=workspace)))
    assert "key 'workspace'" in message
    assert "is not strictly below /home/, /workspaces/, /srv/, /opt/" in message


@pytest.mark.parametrize("workspace", ["/home/runner/work/x/x", "/workspaces/x", "/srv/w", "/opt/w/src"])
def test_workspace_below_a_workspace_root_is_fine(workspace):
    assert cells.parse(doc(workspace=workspace), source="x", stem="x").workspace == workspace


def test_reserved_mounts_are_every_host_mount_the_launcher_plans():
    """cells cannot import spec (spec imports cells): the two lists must agree by test."""
    from devshell.spec import CACHE, CHECKOUT, PATCHES

    assert set(cells.RESERVED_MOUNTS) == {PATCHES, CHECKOUT, CACHE}


def test_name_differing_from_file_stem_is_refused(tmp_path):
    path = write(tmp_path, "alpha", doc(name="beta"))
    message = load_error(path)
    assert str(path) in message
    assert "key 'name'" in message
    assert "expected 'alpha'" in message


@pytest.mark.parametrize("stem", sorted(RESERVED_NAMES))
def test_reserved_file_name_is_refused(tmp_path, stem):
    path = write(tmp_path, stem, doc())
    message = load_error(path)
    assert str(path) in message
    assert "key 'name'" in message
    assert "reserved" in message


@pytest.mark.parametrize("stem", ["Upper", "-dash", "has space", "x" * 64])
def test_file_name_outside_the_name_pattern_is_refused(tmp_path, stem):
    assert "key 'name'" in load_error(write(tmp_path, stem, doc()))


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "c", "platform: linux/amd64\nimage: [unclosed\n")
    message = load_error(path)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "line" in message


def test_empty_file_is_refused_as_not_an_object(tmp_path):
    message = load_error(write(tmp_path, "c", ""))
    assert "the cell file is empty" in message


@pytest.mark.parametrize("text, what", [("- a\n- b\n", "a list"), ("just text\n", "a str"), ("7\n", "a int")])
def test_a_cell_file_that_is_not_a_mapping_is_refused(tmp_path, text, what):
    assert f"the cell file is {what}, not a mapping of keys" in load_error(write(tmp_path, "c", text))


def test_unreadable_path_is_a_devshell_error(tmp_path):
    assert "cannot read" in load_error(tmp_path / "absent.yaml")


@pytest.mark.parametrize("key", ["HOME", "DEVSHELL_CELL", "DEVSHELL_ANYTHING"])
def test_launcher_env_keys_are_refused(tmp_path, key):
    path = write(tmp_path, "c", doc(env={"OK": "1", key: "x"}))
    message = load_error(path)
    assert str(path) in message
    assert f"key 'env.{key}'" in message


def test_env_key_must_be_an_identifier(tmp_path):
    assert "key 'env'" in load_error(write(tmp_path, "c", doc(env={"1X": "y"})))


def test_dirs_must_be_single_components(tmp_path):
    assert "key 'dirs.src'" in load_error(write(tmp_path, "c", doc(dirs={"src": "a/b"})))


# --- trust profile and limits ---------------------------------------------------------------


def test_profile_and_limits_default_to_standard_and_the_default_limits():
    cell = cells.parse(doc(), source="x.yaml", stem="x")
    assert (cell.profile, cell.pids_limit, cell.memory_limit) == (
        "standard", cells.DEFAULT_PIDS_LIMIT, cells.DEFAULT_MEMORY_LIMIT)


@pytest.mark.parametrize("profile", cells.PROFILES)
def test_each_profile_is_taken(profile):
    assert cells.parse(doc(profile=profile), source="x", stem="x").profile == profile


@pytest.mark.parametrize("mode", cells.NETWORK_MODES)
def test_each_network_mode_is_taken(mode):
    assert cells.parse(doc(network={"mode": mode}), source="x", stem="x").network == mode


def test_network_allow_is_read_into_rules():
    from devshell.egress import Rule

    cell = cells.parse(doc(network={"mode": "allow", "allow": ["Deb.Debian.org", "*.pythonhosted.org",
                                                                "git.example.com:8443"]}),
                       source="x", stem="x")
    assert cell.network == "allow"
    assert cell.allow == (Rule("deb.debian.org"), Rule("pythonhosted.org", True),
                          Rule("git.example.com", False, 8443))
    assert [str(r) for r in cell.allow] == ["deb.debian.org", "*.pythonhosted.org", "git.example.com:8443"]


def test_network_defaults_to_open():
    assert cells.parse(doc(), source="x", stem="x").network == "open"
    assert cells.parse(doc(network={}), source="x", stem="x").network == "open"


@pytest.mark.parametrize("network, key, why", [
    ({"mode": "host"}, "network.mode", "expected one of open, allow, none"),
    ({"mode": "bridge"}, "network.mode", "expected one of open, allow, none"),
    ({"mode": None}, "network.mode", "expected one of open, allow, none"),
    ({"deny": ["pypi.org"]}, "network", "unknown key ('deny'"),
    ({"allow": "deb.debian.org"}, "network.allow", "expected array"),
    ({"allow": [7]}, "network.allow.0", "expected string"),
    ({"allow": ["https://pypi.org"]}, "network.allow.0", "is not a host name"),
    ({"allow": ["10.0.0.1"]}, "network.allow.0", "is an address"),
    ({"allow": ["*.org"]}, "network.allow.0", "whole top-level domain"),
    ({"allow": ["pypi.org:0"]}, "network.allow.0", "outside 1..65535"),
    ({"allow": ["pypi.org:70000"]}, "network.allow.0", "outside 1..65535"),
    ({"allow": ["ok.org", "bad host"]}, "network.allow.1", "is not a host name"),
    ("none", "network", "expected object"),
])
def test_a_bad_network_block_is_refused(tmp_path, network, key, why):
    path = write(tmp_path, "c", doc(network=network))
    message = load_error(path)
    assert str(path) in message and f"key '{key}'" in message and why in message, message


@pytest.mark.parametrize("memory, size", [(64 << 20, 64 << 20), ("67108864", 64 << 20), ("64m", 64 << 20),
                                          ("64M", 64 << 20), ("65536k", 64 << 20), ("2g", 2 << 30),
                                          ("2G", 2 << 30), (1 << 40, 1 << 40), ("1024g", 1 << 40)])
def test_memory_is_bytes_or_a_number_with_k_m_or_g(memory, size):
    cell = cells.parse(doc(limits={"memory": memory}), source="x", stem="x")
    assert cell.memory_limit == size
    assert (cell.pids_limit, cell.profile) == (cells.DEFAULT_PIDS_LIMIT, "standard")


def test_the_smallest_limits_are_taken():
    cell = cells.parse(doc(limits={"pids": cells.MIN_PIDS_LIMIT, "memory": "64m"}), source="x", stem="x")
    assert (cell.pids_limit, cell.memory_limit) == (64, cells.MIN_MEMORY_LIMIT) == (64, 64 << 20)


def test_whole_numbers_written_as_floats_become_ints(tmp_path):
    """JSON Schema's integer includes 128.0, which YAML reads as a float: the engine takes
    only an int (this once ended in a traceback)."""
    path = write(tmp_path, "c", "platform: linux/amd64\nimage: {ref: x}\nworkspace: /workspaces/w\n"
                                "limits: {pids: 128.0, memory: 1073741824.0}\n")
    for _ in ("parsed", "remembered"):
        cell = cells.load(str(path))
        assert (cell.pids_limit, cell.memory_limit) == (128, 1 << 30)
        assert (type(cell.pids_limit), type(cell.memory_limit)) == (int, int)


def test_a_remembered_cell_keeps_its_profile_and_limits(tmp_path):
    path = write(tmp_path, "c", doc(profile="locked", limits={"pids": 256, "memory": "2g"}))
    parsed = cells.load(str(path))
    assert list((tmp_path / "xdg-cache" / "devshell" / "cells").glob("*.json"))  # remembered
    assert cells.load(str(path)) == parsed
    assert (parsed.profile, parsed.pids_limit, parsed.memory_limit) == ("locked", 256, 2 << 30)


@pytest.mark.parametrize("profile", ["root", "Locked", "", True, 1, ["locked"]])
def test_a_profile_outside_the_choices_is_refused(tmp_path, profile):
    path = write(tmp_path, "c", doc(profile=profile))
    message = load_error(path)
    assert str(path) in message
    assert "key 'profile'" in message
    assert "expected one of standard, locked" in message


@pytest.mark.parametrize("limits, key, why", [
    ({"pids": 63}, "limits.pids", "less than the minimum of 64"),
    ({"pids": 0}, "limits.pids", "less than the minimum of 64"),
    ({"pids": -1}, "limits.pids", "less than the minimum of 64"),
    ({"pids": (1 << 22) + 1}, "limits.pids", "greater than the maximum of 4194304"),
    ({"pids": 99999999999999999999999}, "limits.pids", "greater than the maximum"),
    ({"pids": True}, "limits.pids", "got bool"),
    ({"pids": "4096"}, "limits.pids", "got str"),
    ({"pids": 100.5}, "limits.pids", "got float"),
    ({"memory": "1k"}, "limits.memory", "1024 bytes is below 64 MiB"),
    ({"memory": (64 << 20) - 1}, "limits.memory", "is below 64 MiB"),
    ({"memory": "65535k"}, "limits.memory", "is below 64 MiB"),
    ({"memory": 0}, "limits.memory", "0 bytes is below 64 MiB"),
    ({"memory": -(1 << 30)}, "limits.memory", "is below 64 MiB"),
    ({"memory": (1 << 40) + 1}, "limits.memory", "is above 1024 GiB, more than any host"),
    ({"memory": "99999999999999g"}, "limits.memory", "is above 1024 GiB, more than any host"),
    ({"memory": True}, "limits.memory", "got bool"),
    ({"memory": 1.5}, "limits.memory", "got float"),
    ({"memory": "lots"}, "limits.memory", "expected a value matching"),
    ({"memory": ""}, "limits.memory", "expected a value matching"),
    ({"memory": "1 g"}, "limits.memory", "expected a value matching"),
    ({"memory": "1gb"}, "limits.memory", "expected a value matching"),
    ({"memory": "1t"}, "limits.memory", "expected a value matching"),
    ({"memory": "-1g"}, "limits.memory", "expected a value matching"),
    ({"memory": "1.5g"}, "limits.memory", "expected a value matching"),
    ({"memory": "0x10000000"}, "limits.memory", "expected a value matching"),
    ({"memory": " 2g"}, "limits.memory", "expected a value matching"),
    ({"cpu": 2}, "limits", "unknown key ('cpu'"),
    ([], "limits", "expected object"),
    ("big", "limits", "expected object"),
])
def test_bad_limits_are_refused_naming_file_and_key(tmp_path, limits, key, why):
    path = write(tmp_path, "c", doc(limits=limits))
    message = load_error(path)
    assert str(path) in message
    assert f"key {key!r}" in message
    assert why in message


@pytest.mark.parametrize("value, size", [(0, 0), (7, 7), ("7", 7), ("1k", 1 << 10), ("1K", 1 << 10),
                                         ("3m", 3 << 20), ("5g", 5 << 30), (2.0, 2)])
def test_memory_bytes_reads_sizes_as_docker_does(value, size):
    assert cells.memory_bytes(value) == size


# --- search path ----------------------------------------------------------------------------


def test_search_path_is_cells_dirs_then_env_then_shipped(tmp_path):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    os.mkdir(a)
    os.mkdir(b)
    environ = {cells.CELLS_PATH_ENV: os.pathsep.join([c, "", d])}
    path = cells.search_path([a, b], environ=environ)
    assert strs(path) == [a, b, c, d, str(cells.shipped_cells_dir())]


def test_search_path_without_env_is_only_shipped():
    assert strs(cells.search_path(environ=NO_ENV)) == strs(shipped())


def test_cells_dir_cell_is_found(tmp_path):
    write(tmp_path, "mine", doc())
    assert cells.find("mine", cells.search_path([str(tmp_path)], environ=NO_ENV)).name == "mine"


def test_env_path_cell_is_found(tmp_path):
    write(tmp_path, "mine", doc())
    environ = {cells.CELLS_PATH_ENV: str(tmp_path)}
    assert cells.find("mine", cells.search_path(environ=environ)).name == "mine"


def test_cells_dir_shadows_env_path_and_shipped(tmp_path):
    write(tmp_path / "flag", "bookworm", doc(description="from --cells-dir"))
    write(tmp_path / "env", "bookworm", doc(description="from env"))
    path = cells.search_path([str(tmp_path / "flag")],
                             environ={cells.CELLS_PATH_ENV: str(tmp_path / "env")})
    assert cells.find("bookworm", path).description == "from --cells-dir"


def test_env_path_shadows_shipped(tmp_path):
    write(tmp_path, "bookworm", doc(description="from env"))
    path = cells.search_path(environ={cells.CELLS_PATH_ENV: str(tmp_path)})
    assert cells.find("bookworm", path).description == "from env"


def test_first_match_wins_among_env_path_entries(tmp_path):
    write(tmp_path / "one", "c", doc(description="one"))
    write(tmp_path / "two", "c", doc(description="two"))
    environ = {cells.CELLS_PATH_ENV: f"{tmp_path / 'one'}{os.pathsep}{tmp_path / 'two'}"}
    assert cells.find("c", cells.search_path(environ=environ)).description == "one"


def test_a_broken_shadowed_cell_is_never_read(tmp_path):
    write(tmp_path / "one", "c", doc())
    write(tmp_path / "two", "c", "not: [valid")
    assert cells.find("c", [tmp_path / "one", tmp_path / "two"]).name == "c"


def test_available_resolves_shadowing_like_find(tmp_path):
    write(tmp_path, "bookworm", doc(description="mine"))
    found = {c.name: c for c in cells.available([tmp_path, *shipped()])}
    assert set(SHIPPED) <= set(found)
    assert found["bookworm"].description == "mine"


def test_missing_search_dirs_are_skipped(tmp_path):
    assert cells.find("bookworm", [tmp_path / "absent", *shipped()]).name == "bookworm"


def test_unknown_cell_error_lists_available_cells(tmp_path):
    write(tmp_path, "mine", doc())
    with pytest.raises(DevshellError) as info:
        cells.find("nope", cells.search_path([str(tmp_path)], environ=NO_ENV))
    assert "'nope'" in info.value.message
    assert str(tmp_path) in info.value.message
    assert info.value.fix is not None
    for name in (*SHIPPED, "mine"):
        assert name in info.value.fix


# --- recipe identity ------------------------------------------------------------------------

RECIPE = Recipe(suite="bookworm", include=("git", "sudo"), run=("echo one",))


def test_recipe_hash_changes_when_run_lines_change():
    assert RECIPE._replace(run=("echo two",)).hash() != RECIPE.hash()


def test_base_hash_ignores_run_lines():
    assert RECIPE._replace(run=("echo two", "echo three")).base_hash() == RECIPE.base_hash()


def test_run_line_order_matters():
    two = RECIPE._replace(run=("a", "b"))
    assert RECIPE._replace(run=("b", "a")).hash() != two.hash()


def test_include_order_does_not_matter():
    assert RECIPE._replace(include=("sudo", "git")).base_hash() == RECIPE.base_hash()


@pytest.mark.parametrize("change", [{"suite": "trixie"}, {"variant": "buildd"},
                                    {"include": ("git",)}, {"mirror": "http://m"}])
def test_base_hash_changes_with_the_base(change):
    assert RECIPE._replace(**change).base_hash() != RECIPE.base_hash()


def test_built_tag_changes_with_the_recipe():
    cell = cells.parse(doc(image={"recipe": {"debootstrap": {"suite": "bookworm"},
                                             "run": ["echo one"]}}), source="x", stem="x")
    changed = cell._replace(recipe=cell.recipe._replace(run=("echo two",)))
    assert cell.built_tag != changed.built_tag
    assert cell.built_tag == cell._replace().built_tag


def test_ref_wins_over_recipe_for_the_image():
    data = doc(image={"ref": "r:1", "recipe": {"debootstrap": {"suite": "bookworm"}}})
    cell = cells.parse(data, source="x", stem="x")
    assert cell.image == "r:1"
    assert cell.built_tag is not None


def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("platform: linux/amd64\nimage: {ref: x}\nworkspace: /home/runner/w\nworkspace: /etc\n")
    with pytest.raises(DevshellError, match=r"line 4: key 'workspace' is given twice"):
        cells.load(str(path))


def test_a_key_that_is_not_text_is_an_error_not_a_traceback(tmp_path):
    path = tmp_path / "numkey.yaml"
    path.write_text("platform: linux/amd64\nimage: {ref: x}\nworkspace: /home/runner/w\nenv: {1: a}\n")
    with pytest.raises(DevshellError, match=r"line 4: key 1 is not text"):
        cells.load(str(path))


def test_seed_source_and_build_are_read_into_the_cell(tmp_path):
    sha, commit = "a" * 64, "b" * 40
    cell = cells.parse(doc(seed={"from": "https://cache.example/c", "key": "c-1", "manifest_sha256": sha},
                           source={"repo": "https://git.example/r.git", "commit": commit},
                           build={"project": "proj", "configure": "cmake .", "compile": "make",
                                  "install": "make install"}),
                       source=str(tmp_path / "c.yaml"), stem="c")
    assert cell.seed == cells.Seed("https://cache.example/c", "c-1", sha)
    assert cell.source_pin == cells.Source("https://git.example/r.git", commit)
    # project is beside the cell file
    assert cell.build_steps == cells.BuildSteps("cmake .", "make", "make install", str(tmp_path / "proj"))


def test_without_them_a_cell_has_no_seed_source_or_build():
    cell = cells.parse(doc(), source="x", stem="x")
    assert (cell.seed, cell.source_pin, cell.build_steps) == (None, None, None)


def test_the_shipped_c_ccache_cell_builds_the_project_beside_it():
    cell = cells.find("c-ccache", [cells.shipped_cells_dir()])
    assert cell.build_steps is not None and cell.seed is None
    assert os.path.isfile(os.path.join(cell.build_steps.project, "CMakeLists.txt"))
    assert dict(cell.env)["CMAKE_CXX_COMPILER_LAUNCHER"] == "ccache"
