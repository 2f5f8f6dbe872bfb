"""spec.plan: Options + Cell -> ContainerSpec -> docker run argv / SDK kwargs, and the session."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from devshell import cells, seccomp
from devshell.engine import Runtime
from devshell.errors import DevshellError
from devshell.options import HostFacts, Options, image_problem, parse
from devshell.spec import (
    BAKED_REPO,
    CACHE,
    CHECKOUT,
    DEV_HOME,
    HOME_IN_VOLUME_ENV,
    INIT_PATH,
    LABEL_CELL,
    LABEL_HASH,
    LABEL_IDENTITY,
    LOCKED_TMPFS,
    MAX_EXEC_ARG,
    PATCHES,
    PROFILE_ENV,
    RUNTIME_WITHOUT_NETWORK,
    SETUP_PATH,
    STATE_DIR,
    Bind,
    ContainerSpec,
    ExecSpec,
    Mount,
    ai_key,
    ai_repo,
    container_name,
    differences,
    host_binds,
    memory_dir,
    network_in_force,
    plan,
    profile_of,
    script_args,
    session,
)

HOST = HostFacts(cwd="/home/alice/proj", home="/home/alice", uid=501, gid=20)
DROP = "/home/alice/.local/state/devshell/patches/-home-alice-proj.2af6b4a7"  # key + sha256(path)[:8]
# The checkout's memory below the host cache's ai/: memory/<basename>/<path as one name>.
MEMORY = "memory/proj/-home-alice-proj"
INIT = "#!/bin/sh\n: test init\n"
CELL = cells.parse(
    {"platform": "linux/arm64", "image": {"ref": "example/img:1"}, "workspace": "/workspaces/cellx",
     "env": {"CCACHE_DIR": "/workspaces/cellx/ccache", "LANG": "C.UTF-8"}},
    source="cellx.yaml", stem="cellx",
)
# CELL's twin that asks for the locked profile and limits of its own.
LOCKED_CELL = cells.parse(
    {"platform": "linux/arm64", "image": {"ref": "example/img:1"}, "workspace": "/workspaces/cellx",
     "env": {"CCACHE_DIR": "/workspaces/cellx/ccache", "LANG": "C.UTF-8"},
     "profile": "locked", "limits": {"pids": 256, "memory": "2g"}},
    source="cellx.yaml", stem="cellx",
)
CONTRACT = {"HOME", "DEVSHELL_CELL", "DEVSHELL_DEV_UID", "DEVSHELL_DEV_GID", "DEVSHELL_DEV_HOME",
            "DEVSHELL_PATCHES_MOUNT", "DEVSHELL_CHECKOUT_MOUNT", "DEVSHELL_WORKSPACE",
            "DEVSHELL_SRC", "DEVSHELL_BUILD", "DEVSHELL_CCACHE", "DEVSHELL_INSTALL", "DEVSHELL_AI_REPO",
            "DEVSHELL_AI_REPO_ENCODED", "DEVSHELL_STATE_DIR", "DEVSHELL_PROFILE"}


def spec_for(*argv: str, **kw: Any) -> ContainerSpec:
    return plan(parse(argv, HOST), CELL, init=INIT, **kw)


def read_mount(value: str) -> dict[str, Any]:
    """A --mount value read back as the docker CLI does, into the Engine API's shape. Strict:
    a field it does not know is an error, not something silently dropped."""
    fields = next(csv.reader([value]))
    kv = dict(f.partition("=")[::2] for f in fields if "=" in f)
    assert set(kv) == {"type", "source", "target"}, fields
    flags = [f for f in fields if "=" not in f]
    assert set(flags) <= {"readonly", "bind-nonrecursive"} and len(set(flags)) == len(flags), fields
    mount: dict[str, Any] = {"Type": kv["type"], "Source": kv["source"], "Target": kv["target"],
                             "ReadOnly": "readonly" in flags}
    if "bind-nonrecursive" in flags:
        mount["BindOptions"] = {"NonRecursive": True}
    return mount


def read_run_argv(argv: list[str], seccomp_files: dict[str, str]) -> dict[str, Any]:
    """Read `docker run` argv back into the shape of sdk_kwargs(). The CLI takes the seccomp
    profile as a file (seccomp_files: name -> content); the SDK takes its content inline.
    Strict: a flag it does not know, or a one-value flag given twice, is an error."""
    assert argv[:3] == ["docker", "run", "--detach"]
    out: dict[str, Any] = {"detach": True, "init": False, "read_only": False, "labels": {}, "mounts": [],
                           "environment": {}, "cap_drop": [], "security_opt": [], "tmpfs": {}}
    valued = {"--name": ("name", str), "--hostname": ("hostname", str), "--platform": ("platform", str),
              "--user": ("user", str), "--workdir": ("working_dir", str),
              "--pids-limit": ("pids_limit", int), "--memory": ("mem_limit", int),
              "--memory-swap": ("memswap_limit", int), "--runtime": ("runtime", str)}
    switches = {"--init": "init", "--read-only": "read_only"}
    i = 3
    while argv[i].startswith("--"):
        # The CLI takes a value as the next argument or after '=' (--pids-limit=4096): read both.
        flag, equals, value = argv[i].partition("=")
        if flag in switches:
            assert not equals and out[switches[flag]] is False, argv[i]
            out[switches[flag]] = True
            i += 1
            continue
        if not equals:
            value = argv[i + 1]
            i += 1
        i += 1
        if flag in valued:
            key, convert = valued[flag]
            assert key not in out, f"{flag} given twice"
            out[key] = convert(value)
        elif flag in ("--label", "--env"):
            key, _, v = value.partition("=")
            out["labels" if flag == "--label" else "environment"][key] = v
        elif flag == "--mount":
            out["mounts"].append(read_mount(value))
        elif flag == "--cap-drop":
            out["cap_drop"].append(value)
        elif flag == "--security-opt":
            kind, _, file = value.partition("=")
            out["security_opt"].append(f"seccomp={seccomp_files[file]}" if kind == "seccomp" else value)
        elif flag == "--tmpfs":
            path, _, options = value.partition(":")
            assert path not in out["tmpfs"], value
            out["tmpfs"][path] = options
        else:
            raise AssertionError(f"unexpected docker run flag {flag}")
    out["image"], out["command"] = argv[i], argv[i + 1:]
    return out


# --- mounts ---------------------------------------------------------------------------------


def test_mounts_are_the_volume_the_drop_dir_and_the_checkout_read_only():
    assert set(spec_for().mounts) == {Mount("volume", "devshell-cellx", "/workspaces/cellx"),
                                      Mount("bind", DROP, PATCHES),
                                      Mount("bind", "/home/alice/proj", CHECKOUT, read_only=True)}


def test_checkout_and_patches_flags_pick_the_sources():
    spec = spec_for("--checkout", "/src/p", "--patches-out", "/out")
    assert Mount("bind", "/src/p", CHECKOUT, read_only=True) in spec.mounts
    assert Mount("bind", "/out", PATCHES) in spec.mounts


def test_host_cache_binds_ai_read_only_and_this_checkouts_memory_writable():
    assert set(spec_for("--host-cache-dir", "/c").mounts) == {
        Mount("volume", "devshell-cellx", "/workspaces/cellx"),
        Mount("bind", DROP, PATCHES),
        Mount("bind", "/home/alice/proj", CHECKOUT, read_only=True),
        Mount("bind", "/c/ai", f"{CACHE}/ai", read_only=True),
        Mount("bind", "/c/ai/memory", f"{CACHE}/ai/memory", read_only=True),
        Mount("bind", f"/c/ai/{MEMORY}", f"{CACHE}/ai/{MEMORY}"),
    }
    assert dict(spec_for("--host-cache-dir", "/c").env)["DEVSHELL_AI_CONFIG"] == "ro"


def test_ai_config_rw_makes_ai_writable_and_keeps_memory_its_own_mount():
    """Memory is a mount of its own in both modes: no hard link joins it to the config. All
    projects' memory/ stays a read-only mount even under a writable ai/, so nothing inside
    can rename or replace it."""
    opts = parse(["--host-cache-dir", "/c", "--ai-config-rw"], HOST)
    spec = plan(opts, CELL, init=INIT)
    assert Mount("bind", "/c/ai", f"{CACHE}/ai") in spec.mounts
    assert Mount("bind", f"/c/ai/{MEMORY}", f"{CACHE}/ai/{MEMORY}") in spec.mounts
    assert [m.target for m in spec.mounts if m.read_only] == [CHECKOUT, f"{CACHE}/ai/memory"]
    assert dict(spec.env)["DEVSHELL_AI_CONFIG"] == "rw"


@pytest.mark.parametrize("argv", [("--host-cache-dir", "/c"), ("--host-cache",),
                                  ("--host-cache-dir", "/c", "--ai-config-rw")])
def test_the_host_cache_itself_is_never_bound(argv):
    """What is bound read-write, root inside can chown and chmod: the host cache stays its
    maker's, and only ai/ (and this checkout's memory) below it cross."""
    opts = parse(argv, HOST)
    spec = plan(opts, CELL, init=INIT)
    assert opts.host_cache is not None
    assert CACHE not in {m.target for m in spec.mounts}
    assert opts.host_cache not in {m.source for m in spec.mounts}
    below = [m for m in spec.mounts if m.target.startswith(CACHE + "/")]
    assert [m.source for m in below] == [f"{opts.host_cache}/ai", f"{opts.host_cache}/ai/memory",
                                         f"{opts.host_cache}/ai/{MEMORY}"]


def test_memory_bind_is_exactly_this_checkouts_memory_dir():
    """The one writable memory is this checkout's: every other project's is read-only."""
    one = plan(parse(["--host-cache-dir", "/c"], HOST), CELL, init=INIT)
    two = plan(parse(["--host-cache-dir", "/c", "--checkout", "/srv/other"], HOST), CELL, init=INIT)
    memory = [m for m in one.mounts if m.target.startswith(f"{CACHE}/ai/memory")]
    assert memory == [Mount("bind", "/c/ai/memory", "/cache/ai/memory", read_only=True),
                      Mount("bind", "/c/ai/memory/proj/-home-alice-proj",
                            "/cache/ai/memory/proj/-home-alice-proj")]
    assert [m.target for m in two.mounts if m.target.startswith(f"{CACHE}/ai/memory/")] == [
        "/cache/ai/memory/other/-srv-other"]
    for spec in (one, two):
        writable = [m.target for m in spec.mounts if m.target.startswith(CACHE) and not m.read_only]
        assert len(writable) == 1 and writable[0].startswith(f"{CACHE}/ai/memory/")


def test_memory_target_is_where_init_looks_for_it():
    """init reads its memory dir as $CACHE/ai/memory/$DEVSHELL_AI_REPO/$DEVSHELL_AI_REPO_ENCODED."""
    spec = spec_for("--host-cache-dir", "/c", "--checkout", "/srv/a b,ü")
    env = dict(spec.env)
    target = (f"{env['DEVSHELL_CACHE_MOUNT']}/ai/memory/{env['DEVSHELL_AI_REPO']}/"
              f"{env['DEVSHELL_AI_REPO_ENCODED']}")
    assert Mount("bind", f"/c{target[len(CACHE):]}", target) in spec.mounts


@pytest.mark.parametrize("checkout, memory", [
    ("/home/alice/proj", "memory/proj/-home-alice-proj"),
    ("/srv/a b/ü", "memory/ü/-srv-a b-ü"),
    ("/srv/x:y", "memory/x:y/-srv-x-y"),
    ("/srv/w\\x", "memory/x/-srv-w-x"),
    # A POSIX name may end in '\..': the basename is never '.' or '..', which would lead the
    # memory bind out of memory/ (to ai/<key>, inside the read-only config).
    ("/srv/x\\..", "memory/x/-srv-x-.."),
    ("/srv/x\\.", "memory/x/-srv-x-."),
    ("/srv/..\\", "memory/srv/-srv-..-"),
])
def test_memory_dir_is_two_plain_components_below_memory(checkout, memory):
    assert memory_dir(checkout) == memory
    parts = memory.split("/")
    assert len(parts) == 3 and not {".", "..", ""} & set(parts[1:])


def test_host_binds_are_the_drop_dir_the_checkout_and_with_a_cache_ai_and_memory():
    assert host_binds(parse([], HOST)) == [Bind("patches", DROP, PATCHES, False),
                                           Bind("checkout", "/home/alice/proj", CHECKOUT, True)]
    assert host_binds(parse(["--host-cache-dir", "/c"], HOST))[2:] == [
        Bind("ai", "/c/ai", f"{CACHE}/ai", True),
        Bind("memories", "/c/ai/memory", f"{CACHE}/ai/memory", True),
        Bind("memory", f"/c/ai/{MEMORY}", f"{CACHE}/ai/{MEMORY}", False)]
    assert host_binds(parse(["--host-cache-dir", "/c", "--ai-config-rw"], HOST))[2] == Bind(
        "ai", "/c/ai", f"{CACHE}/ai", False)


@pytest.mark.parametrize("argv", [(), ("--host-cache",), ("--host-cache", "--ai-config-rw"),
                                  ("--checkout", "/s/x", "--patches-out", "/o")])
def test_plan_binds_exactly_host_binds(argv):
    """host_binds is the one list: the launcher checks, creates and records the identity of
    exactly what plan binds (and the volume is the only other mount)."""
    opts = parse(argv, HOST)
    spec = plan(opts, CELL, init=INIT)
    assert [m for m in spec.mounts if m.kind == "bind"] == [
        Mount("bind", b.source, b.target, b.read_only) for b in host_binds(opts)]
    assert [m.kind for m in spec.mounts] == ["volume"] + ["bind"] * len(host_binds(opts))


def test_without_cache_only_the_checkout_is_read_only():
    assert [m.target for m in spec_for().mounts if m.read_only] == [CHECKOUT]


def test_nothing_is_bound_inside_patches_or_the_checkout():
    """The checkout's .git comes along read-only with the checkout; nothing is bound over /patches."""
    for argv in [(), ("--host-cache",), ("--host-cache", "--ai-config-rw")]:
        targets = [m.target for m in spec_for(*argv).mounts]
        assert not [t for t in targets if t.startswith((PATCHES + "/", CHECKOUT + "/"))]


def test_bind_ids_travel_in_the_env_only_when_recorded():
    """By role, in host_binds order: init maps each role to its mount target."""
    assert "DEVSHELL_BIND_IDS" not in dict(spec_for().env)
    opts = parse(["--host-cache-dir", "/c"], HOST)._replace(
        bind_ids=(("patches", "1:3"), ("checkout", "1:2"), ("ai", "7:8"), ("memories", "7:5"),
                  ("memory", "7:9")))
    spec = plan(opts, CELL, init=INIT)
    assert dict(spec.env)["DEVSHELL_BIND_IDS"] == (
        "patches=1:3 checkout=1:2 ai=7:8 memories=7:5 memory=7:9")
    assert spec.mounts == spec_for("--host-cache-dir", "/c").mounts


def test_bind_ids_change_the_hash():
    """A container bound to other directories (same paths, other inodes) is not reused."""
    opts = parse([], HOST)
    one = plan(opts._replace(bind_ids=(("patches", "1:3"),)), CELL, init=INIT)
    two = plan(opts._replace(bind_ids=(("patches", "1:4"),)), CELL, init=INIT)
    assert one.hash() != two.hash()
    assert differences(one.identity(), two.identity()) == ["env (DEVSHELL_BIND_IDS)"]


def test_volume_is_named_after_the_container():
    spec = spec_for("--instance", "two")
    assert spec.volume == spec.name == "devshell-cellx-two"
    assert Mount("volume", "devshell-cellx-two", "/workspaces/cellx") in spec.mounts


@pytest.mark.parametrize("instance, name", [(None, "devshell-bookworm"),
                                            ("b", "devshell-bookworm-b")])
def test_container_names(instance, name):
    assert container_name("bookworm", instance) == name


def test_shipped_cell_plans_its_workspace_volume(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # loading may cache; keep it private
    bookworm = cells.find("bookworm", [cells.shipped_cells_dir()])
    spec = plan(parse([], HOST), bookworm, init=INIT)
    assert Mount("volume", "devshell-bookworm", bookworm.workspace) in spec.mounts
    assert spec.image == bookworm.built_tag


# --- env contract ---------------------------------------------------------------------------


def test_env_contract_without_cache():
    env = dict(spec_for().env)
    assert {k for k in env if k == "HOME" or k.startswith("DEVSHELL_")} == CONTRACT


def test_cache_env_only_with_cache():
    assert "DEVSHELL_CACHE_MOUNT" not in dict(spec_for().env)
    assert dict(spec_for("--host-cache").env)["DEVSHELL_CACHE_MOUNT"] == CACHE


def test_env_contract_values():
    env = dict(spec_for("--uid", "1234", "--gid", "4321").env)
    assert env["HOME"] == env["DEVSHELL_DEV_HOME"] == DEV_HOME == "/home/dev"
    assert (env["DEVSHELL_DEV_UID"], env["DEVSHELL_DEV_GID"]) == ("1234", "4321")
    assert env["DEVSHELL_PATCHES_MOUNT"] == PATCHES
    assert env["DEVSHELL_CHECKOUT_MOUNT"] == CHECKOUT
    assert env["DEVSHELL_CELL"] == "cellx"
    assert env["DEVSHELL_WORKSPACE"] == "/workspaces/cellx"
    dirs = ("DEVSHELL_SRC", "DEVSHELL_BUILD", "DEVSHELL_CCACHE", "DEVSHELL_INSTALL")
    assert [env[k] for k in dirs] == [f"/workspaces/cellx/{d}" for d in ("src", "build", "ccache", "install")]


def test_ai_repo_env_describes_the_checkout():
    env = dict(spec_for().env)
    assert env["DEVSHELL_AI_REPO"] == "proj"
    assert env["DEVSHELL_AI_REPO_ENCODED"] == "-home-alice-proj"
    env = dict(spec_for("--checkout", "/srv/x", "--patches-out", "/out/y").env)
    assert (env["DEVSHELL_AI_REPO"], env["DEVSHELL_AI_REPO_ENCODED"]) == ("x", "-srv-x")


def test_cell_env_is_passed_through():
    env = dict(spec_for().env)
    assert (env["CCACHE_DIR"], env["LANG"]) == ("/workspaces/cellx/ccache", "C.UTF-8")


def test_env_is_sorted_by_key():
    keys = [k for k, _ in spec_for().env]
    assert keys == sorted(keys)


# --- ai_key / ai_repo -----------------------------------------------------------------------


@pytest.mark.parametrize("path, key", [("/Users/v/work/Proj", "-Users-v-work-Proj"),
                                       ("C:\\Users\\v\\proj", "C--Users-v-proj"),
                                       ("/home/a b/ü", "-home-a b-ü")])
def test_ai_key_examples(path, key):
    assert ai_key(path) == key


@pytest.mark.parametrize("path, repo", [("/Users/v/work/Proj", "Proj"),
                                        ("C:\\Users\\v\\proj", "proj"),
                                        ("/srv/x/", "x"), ("C:\\a\\b\\", "b"), ("/", "-")])
def test_ai_repo_is_the_basename_for_both_styles(path, repo):
    assert ai_repo(path) == repo


# --- identity and hash ----------------------------------------------------------------------


def test_hash_is_stable_for_equal_specs():
    assert spec_for().hash() == spec_for().hash()
    assert spec_for() == spec_for()


@pytest.mark.parametrize("argv", [("--patches-out", "/elsewhere"), ("--checkout", "/elsewhere"),
                                  ("--image", "other:2"), ("--uid", "777"), ("--gid", "777"),
                                  ("--host-cache",)])
def test_hash_changes_with_what_enters_the_container(argv):
    assert spec_for(*argv).hash() != spec_for().hash()


def test_hash_changes_with_the_cells_image():
    assert spec_for(image="built:9").hash() != spec_for().hash()


def test_image_flag_wins_over_the_engines_image_and_the_cells():
    assert spec_for("--image", "flag:1", image="built:9").image == "flag:1"
    assert spec_for(image="built:9").image == "built:9"
    assert spec_for().image == "example/img:1"


def test_as_root_does_not_change_the_spec():
    assert spec_for("--as-root") == spec_for()
    assert spec_for("--as-root").hash() == spec_for().hash()


def test_labels_do_not_change_the_hash():
    assert spec_for(labels={"team": "x"}).hash() == spec_for().hash()


def test_init_script_changes_the_hash():
    other = plan(parse([], HOST), CELL, init=INIT + "echo changed\n")
    assert other.hash() != spec_for().hash()


def test_default_init_is_the_packaged_script():
    spec = plan(parse([], HOST), CELL)
    assert dict(spec.files)[INIT_PATH].startswith("#!")


def test_setup_is_copied_in_only_when_the_cell_has_one():
    with_setup = cells.parse({"platform": "linux/amd64", "image": {"ref": "i"}, "workspace": "/workspaces/w",
                              "setup": "echo hi\n"}, source="s", stem="s")
    assert dict(plan(parse([], HOST), with_setup, init=INIT).files)[SETUP_PATH] == "echo hi\n"
    assert SETUP_PATH not in dict(spec_for().files)


def test_differences_is_empty_for_equal_identities():
    assert differences(spec_for().identity(), spec_for().identity()) == []


def test_differences_names_the_image():
    assert differences(spec_for().identity(), spec_for("--image", "x:2").identity()) == ["image"]


def test_differences_names_changed_env_keys():
    old, new = spec_for().identity(), spec_for("--uid", "777").identity()
    assert differences(old, new) == ["env (DEVSHELL_DEV_UID)"]


def test_differences_names_mount_targets():
    old, new = spec_for().identity(), spec_for("--patches-out", "/elsewhere").identity()
    assert "mounts (/patches)" in differences(old, new)


def test_differences_names_the_checkout_mount_and_its_ai_repo():
    old, new = spec_for("--patches-out", "/o").identity(), spec_for(
        "--patches-out", "/o", "--checkout", "/elsewhere").identity()
    assert differences(old, new) == ["env (DEVSHELL_AI_REPO, DEVSHELL_AI_REPO_ENCODED)",
                                     "mounts (/checkout)"]


def test_ai_config_mode_changes_the_hash_and_names_the_ai_mount():
    old, new = spec_for("--host-cache").identity(), spec_for("--host-cache", "--ai-config-rw").identity()
    assert differences(old, new) == ["env (DEVSHELL_AI_CONFIG)", "mounts (/cache/ai)"]


def test_differences_names_an_added_cache_mount():
    old, new = spec_for().identity(), spec_for("--host-cache").identity()
    assert differences(old, new) == ["env (DEVSHELL_AI_CONFIG, DEVSHELL_CACHE_MOUNT)",
                                     f"mounts (/cache/ai, /cache/ai/memory, /cache/ai/{MEMORY})"]


# --- docker run argv and SDK kwargs ---------------------------------------------------------


@pytest.mark.parametrize("cell", [CELL, LOCKED_CELL], ids=["standard-cell", "locked-cell"])
@pytest.mark.parametrize("argv", [(), ("--host-cache",), ("--instance", "b", "--uid", "9"),
                                  ("--patches-out", "/x/a,b \"q\" = ü", "--host-cache-dir", "/c,d",
                                   "--checkout", "/s/\"r\",ü"),
                                  ("--image", "other:2"), ("--host-cache", "--ai-config-rw"),
                                  ("--profile", "locked"), ("--profile", "standard"), ("--runtime", "runsc"),
                                  ("--profile", "locked", "--runtime", "io.containerd.runsc.v1",
                                   "--host-cache")])
def test_run_argv_and_sdk_kwargs_agree(cell, argv):
    spec = plan(parse(argv, HOST), cell, init=INIT, labels={"team": "a=b"})
    assert read_run_argv(spec.run_argv(), {spec.seccomp_file(): spec.seccomp}) == spec.sdk_kwargs()


# --- containment: capabilities and seccomp --------------------------------------------------


def test_spec_drops_mknod_and_setfcap_and_sets_devshells_seccomp_profile():
    spec = spec_for()
    assert {"MKNOD", "SETFCAP"} <= set(spec.cap_drop)
    assert spec.cap_drop == seccomp.CAP_DROP
    assert spec.seccomp == seccomp.profile()
    assert json.loads(spec.seccomp)


def test_run_argv_drops_the_caps_and_names_the_profile_by_content():
    spec = spec_for()
    argv = spec.run_argv()
    digest = hashlib.sha256(spec.seccomp.encode()).hexdigest()[:16]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-drop"] == list(spec.cap_drop)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--security-opt"] == [
        f"seccomp=devshell-seccomp-{digest}.json"]
    assert spec.seccomp_file() == f"devshell-seccomp-{digest}.json"


def test_sdk_and_api_carry_the_caps_and_the_profile_inline():
    spec = spec_for()
    kwargs = spec.sdk_kwargs()
    assert kwargs["cap_drop"] == list(spec.cap_drop)
    assert kwargs["security_opt"] == [f"seccomp={spec.seccomp}"]
    host_config = spec.api_create()[1]["HostConfig"]
    assert host_config["CapDrop"] == list(spec.cap_drop)
    assert host_config["SecurityOpt"] == [f"seccomp={spec.seccomp}"]


def test_identity_holds_the_caps_and_a_hash_of_the_profile():
    spec = spec_for()
    identity = spec.identity()
    assert identity["cap_drop"] == sorted(spec.cap_drop)
    assert identity["seccomp"] == hashlib.sha256(spec.seccomp.encode()).hexdigest()[:16]
    assert spec.seccomp not in json.dumps(identity)  # the label stays small


@pytest.mark.parametrize("change", [{"seccomp": "{}"}, {"cap_drop": ("MKNOD",)}])
def test_containment_changes_the_hash(change):
    spec = spec_for()
    other = spec._replace(**change)
    assert other.hash() != spec.hash()
    assert differences(spec.identity(), other.identity()) == sorted(change)


def test_run_argv_pins_the_platform():
    argv = spec_for().run_argv()
    assert argv[argv.index("--platform") + 1] == "linux/arm64"


def test_run_argv_ends_with_image_and_idle_command():
    assert spec_for().run_argv()[-3:] == ["example/img:1", INIT_PATH, "--idle"]


def test_labels_carry_cell_hash_and_identity():
    spec = spec_for(labels={"team": "x"})
    labels = spec.all_labels()
    assert labels[LABEL_CELL] == "cellx"
    assert labels[LABEL_HASH] == spec.hash()
    assert json.loads(labels[LABEL_IDENTITY]) == spec.identity()
    assert labels["team"] == "x"


def test_caller_labels_cannot_override_devshell_labels():
    spec = spec_for(labels={LABEL_CELL: "forged", LABEL_HASH: "forged"})
    assert spec.all_labels()[LABEL_CELL] == "cellx"
    assert spec.all_labels()[LABEL_HASH] == spec.hash()


@pytest.mark.parametrize("source", ["/a,b", '/a"b', "/a b", "/ü"])
def test_mount_cli_survives_csv_special_characters(source):
    fields = next(csv.reader([Mount("bind", source, PATCHES).cli()]))
    assert fields == ["type=bind", f"source={source}", f"target={PATCHES}", "bind-nonrecursive"]


def test_read_only_mount_says_readonly():
    fields = next(csv.reader([Mount("bind", "/a", "/b", read_only=True).cli()]))
    assert fields == ["type=bind", "source=/a", "target=/b", "readonly", "bind-nonrecursive"]
    assert "readonly" not in Mount("bind", "/a", "/b").cli()


@pytest.mark.parametrize("source", ["/a\nb", "/a\rb"])
def test_mount_cli_survives_line_breaks(source):
    fields = next(csv.reader([Mount("bind", source, PATCHES).cli()]))
    assert fields == ["type=bind", f"source={source}", f"target={PATCHES}", "bind-nonrecursive"]


def test_a_volume_has_no_bind_options():
    volume = Mount("volume", "v", "/w")
    assert volume.cli() == "type=volume,source=v,target=/w"
    assert volume.sdk() == {"Type": "volume", "Source": "v", "Target": "/w", "ReadOnly": False}


@pytest.mark.parametrize("argv", [(), ("--host-cache",), ("--host-cache", "--ai-config-rw")])
def test_every_bind_is_non_recursive_in_every_rendering(argv):
    """A mount below a bound host dir (say, under the checkout) never comes along: the engine
    would make only the top of a recursive bind read-only."""
    spec = spec_for(*argv)
    binds = [m for m in spec.mounts if m.kind == "bind"]
    assert len(binds) == (5 if argv else 2)
    for m in binds:
        assert m.sdk()["BindOptions"] == {"NonRecursive": True}
        assert "bind-nonrecursive" in next(csv.reader([m.cli()]))
    for rendered in (spec.sdk_kwargs()["mounts"], spec.api_create()[1]["HostConfig"]["Mounts"]):
        assert [m["BindOptions"] for m in rendered if m["Type"] == "bind"] == [
            {"NonRecursive": True}] * len(binds)
    argv_mounts = [read_mount(v) for i, v in enumerate(spec.run_argv()[1:])
                   if spec.run_argv()[i] == "--mount"]
    assert [m.get("BindOptions") for m in argv_mounts if m["Type"] == "bind"] == [
        {"NonRecursive": True}] * len(binds)


def test_identity_records_that_binds_are_non_recursive():
    """A container whose binds the engine made otherwise (recursive, by an older devshell) is
    not reused: what the engine is told of a mount is in the identity."""
    spec = spec_for()
    entries = {m[2]: m for m in spec.identity()["mounts"]}
    assert entries[CHECKOUT] == ["bind", "/home/alice/proj", CHECKOUT, True, True]
    assert entries["/workspaces/cellx"][-1] is False
    old = {**spec.identity(), "mounts": sorted(m[:4] for m in spec.identity()["mounts"])}
    assert differences(old, spec.identity()) == ["mounts (/checkout, /patches, /workspaces/cellx)"]


# --- trust profiles, runtime and limits ----------------------------------------------------

# What differs per checkout: one baked image serves every checkout, so none of these is baked in.
PER_CHECKOUT_ENV = ("DEVSHELL_AI_REPO", "DEVSHELL_AI_REPO_ENCODED", "DEVSHELL_BIND_IDS",
                    "DEVSHELL_CACHE_MOUNT", "DEVSHELL_AI_CONFIG")
BASE_ID = "sha256:" + "1" * 64
BIND_IDS = (("patches", "1:3"), ("checkout", "1:2"))


def renderings(spec: ContainerSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The docker run argv (read back), the SDK kwargs and the Engine API's HostConfig."""
    return (read_run_argv(spec.run_argv(), {spec.seccomp_file(): spec.seccomp}), spec.sdk_kwargs(),
            spec.api_create()[1]["HostConfig"])


def profile_settings(spec: ContainerSpec) -> list[tuple[bool, dict[str, str], list[str]]]:
    """(read-only root, tmpfs mounts, security options) as each rendering tells the engine."""
    argv, sdk, host_config = renderings(spec)
    return [(argv["read_only"], argv["tmpfs"], argv["security_opt"]),
            (sdk["read_only"], sdk["tmpfs"], sdk["security_opt"]),
            (host_config["ReadonlyRootfs"], host_config["Tmpfs"], host_config["SecurityOpt"])]


def locked_spec(*argv: str, cell: cells.Cell = LOCKED_CELL, init: str = INIT,
                bind_ids: tuple[tuple[str, str], ...] = ()) -> ContainerSpec:
    return plan(parse(argv, HOST)._replace(bind_ids=bind_ids), cell, init=init)


def test_standard_is_the_default_and_keeps_a_writable_root():
    spec = spec_for()
    assert (spec.profile, spec.locked, spec.runtime) == ("standard", False, "")
    assert profile_settings(spec) == [(False, {}, [f"seccomp={spec.seccomp}"])] * 3
    env = dict(spec.env)
    assert env[PROFILE_ENV] == "standard"
    assert HOME_IN_VOLUME_ENV not in env


@pytest.mark.parametrize("spec", [spec_for("--profile", "locked"), locked_spec()],
                         ids=["--profile locked", "locked cell"])
def test_locked_is_a_read_only_root_with_tmpfs_and_no_new_privileges_in_every_rendering(spec):
    assert spec.locked
    assert profile_settings(spec) == [(True, dict(LOCKED_TMPFS),
                                       [f"seccomp={spec.seccomp}", "no-new-privileges"])] * 3


def test_locked_tmpfs_is_tmp_and_inits_state_without_setuid_or_devices():
    """Writable besides the volume and the binds: only /tmp and init's state, and neither can
    hold a setuid binary or a device node that works."""
    assert set(dict(LOCKED_TMPFS)) == {"/tmp", STATE_DIR}
    for _, options in LOCKED_TMPFS:
        assert {"nosuid", "nodev"} <= set(options.split(","))


def test_locked_env_names_the_profile_and_puts_home_in_the_volume():
    env = dict(spec_for("--profile", "locked").env)
    assert env[PROFILE_ENV] == "locked"
    assert env[HOME_IN_VOLUME_ENV] == "/workspaces/cellx/.devshell-home"
    assert env[HOME_IN_VOLUME_ENV].startswith(env["DEVSHELL_WORKSPACE"] + "/")
    assert env["HOME"] == DEV_HOME  # a link to the volume, baked into the locked image


@pytest.mark.parametrize("argv, cell, profile", [((), CELL, "standard"), ((), LOCKED_CELL, "locked"),
                                                 (("--profile", "locked"), CELL, "locked"),
                                                 (("--profile", "standard"), LOCKED_CELL, "standard")])
def test_the_profile_flag_wins_over_the_cells(argv, cell, profile):
    spec = plan(parse(argv, HOST), cell, init=INIT)
    assert spec.profile == dict(spec.env)[PROFILE_ENV] == profile
    # The limits are the cell's under either profile.
    assert (spec.pids_limit, spec.memory_limit) == (cell.pids_limit, cell.memory_limit)


def test_as_root_under_a_locked_cell_is_refused():
    opts = parse(["--as-root"], HOST)
    with pytest.raises(DevshellError) as info:
        profile_of(opts, LOCKED_CELL)
    assert "--as-root" in info.value.message and "cellx" in info.value.message
    assert "--profile standard" in (info.value.fix or "")
    with pytest.raises(DevshellError, match="--as-root"):
        plan(opts, LOCKED_CELL, init=INIT)


def test_profile_standard_lets_as_root_into_a_locked_cell():
    opts = parse(["--as-root", "--profile", "standard"], HOST)
    assert profile_of(opts, LOCKED_CELL) == "standard"
    spec = plan(opts, LOCKED_CELL, init=INIT)
    assert not spec.locked
    assert "--as-root" in session(spec, opts, script=None, tty=False).argv


def test_as_root_with_profile_locked_is_refused_by_plan_too():
    """parse refuses the pair; Options a harness builds directly meet the same refusal."""
    with pytest.raises(DevshellError, match="--as-root"):
        profile_of(Options(as_root=True, profile="locked", patches_out="/p"), CELL)
    assert profile_of(Options(as_root=True, patches_out="/p"), CELL) == "standard"


@pytest.mark.parametrize("cell, pids, memory", [(CELL, cells.DEFAULT_PIDS_LIMIT, cells.DEFAULT_MEMORY_LIMIT),
                                                (LOCKED_CELL, 256, 2 << 30)])
def test_limits_are_the_cells_and_swap_is_memory_in_every_rendering(cell, pids, memory):
    """No swap on top of the memory limit: a hog meets the limit, not the disk."""
    spec = plan(parse([], HOST), cell, init=INIT)
    argv, sdk, host_config = renderings(spec)
    assert (spec.pids_limit, spec.memory_limit) == (pids, memory)
    assert (argv["pids_limit"], argv["mem_limit"], argv["memswap_limit"]) == (pids, memory, memory)
    assert (sdk["pids_limit"], sdk["mem_limit"], sdk["memswap_limit"]) == (pids, memory, memory)
    assert (host_config["PidsLimit"], host_config["Memory"], host_config["MemorySwap"]) == (
        pids, memory, memory)
    assert spec.identity()["limits"] == {"pids": pids, "memory": memory}


def test_runtime_reaches_the_engine_only_when_given():
    default, runsc = renderings(spec_for()), renderings(spec_for("--runtime", "runsc"))
    assert ("runtime" in default[0], "runtime" in default[1], "Runtime" in default[2]) == (False,) * 3
    assert (runsc[0]["runtime"], runsc[1]["runtime"], runsc[2]["Runtime"]) == ("runsc",) * 3


@pytest.mark.parametrize("argv, cell, changed", [
    (("--profile", "locked"), CELL, ["env (DEVSHELL_HOME_IN_VOLUME, DEVSHELL_PROFILE)", "profile",
                                     "read_only", "security_opt", f"tmpfs (/tmp, {STATE_DIR})"]),
    (("--runtime", "runsc"), CELL, ["runtime"]),
    ((), CELL._replace(pids_limit=128), ["limits (pids)"]),
    ((), CELL._replace(memory_limit=1 << 30), ["limits (memory)"]),
    ((), LOCKED_CELL, ["env (DEVSHELL_HOME_IN_VOLUME, DEVSHELL_PROFILE)", "limits (memory, pids)",
                       "profile", "read_only", "security_opt", f"tmpfs (/tmp, {STATE_DIR})"]),
])
def test_profile_runtime_and_limits_change_the_hash_and_are_named(argv, cell, changed):
    """A container made under another profile, runtime or limits is recreated, and says why."""
    spec = plan(parse(argv, HOST), cell, init=INIT)
    assert spec.hash() != spec_for().hash()
    assert differences(spec_for().identity(), spec.identity()) == changed


def test_naming_the_profile_in_force_changes_nothing():
    assert spec_for("--profile", "standard") == spec_for()
    assert locked_spec("--profile", "locked") == locked_spec()
    assert locked_spec("--profile", "locked").hash() == locked_spec().hash()


def test_bake_env_holds_nothing_per_checkout_and_only_what_the_container_gets():
    """One baked image serves every checkout; what the commit leaves in the image's config
    is overridden by the container's own env, so it must agree with it."""
    spec = locked_spec("--host-cache-dir", "/c", bind_ids=BIND_IDS)
    env, baked = dict(spec.env), spec.bake_env()
    assert set(PER_CHECKOUT_ENV) <= set(env)  # the control: there to be left out
    assert not set(PER_CHECKOUT_ENV) & set(baked)
    assert baked.items() <= env.items()
    assert {"HOME", "DEVSHELL_DEV_UID", "DEVSHELL_DEV_GID", PROFILE_ENV, HOME_IN_VOLUME_ENV,
            "CCACHE_DIR", "LANG"} <= set(baked)


def test_baked_image_is_one_per_base_not_per_checkout():
    here = locked_spec()
    elsewhere = locked_spec("--checkout", "/srv/other", "--patches-out", "/out/other",
                            "--host-cache-dir", "/c", "--instance", "two", bind_ids=BIND_IDS)
    assert elsewhere.hash() != here.hash()  # the control: two different containers
    assert elsewhere.bake_env() == here.bake_env()
    assert elsewhere.baked_image(BASE_ID) == here.baked_image(BASE_ID)
    assert here.baked_image(BASE_ID).startswith(f"{BAKED_REPO}:")
    assert image_problem(here.baked_image(BASE_ID)) is None


BAKE_INPUTS: dict[str, Callable[[], str]] = {
    "base id": lambda: locked_spec().baked_image("sha256:" + "2" * 64),
    "init": lambda: locked_spec(init=INIT + "echo changed\n").baked_image(BASE_ID),
    "uid": lambda: locked_spec("--uid", "777").baked_image(BASE_ID),
    "gid": lambda: locked_spec("--gid", "777").baked_image(BASE_ID),
    "setup": lambda: locked_spec(cell=LOCKED_CELL._replace(setup="echo hi\n")).baked_image(BASE_ID),
    "cell env": lambda: locked_spec(cell=LOCKED_CELL._replace(env=(("LANG", "C"),))).baked_image(BASE_ID),
}


@pytest.mark.parametrize("what", list(BAKE_INPUTS))
def test_baked_image_changes_with_what_the_bake_reads(what):
    assert BAKE_INPUTS[what]() != locked_spec().baked_image(BASE_ID)


# --- session --------------------------------------------------------------------------------


def session_for(*argv: str, script: str | None = None, tty: bool = True) -> ExecSpec:
    opts = parse(argv, HOST)
    return session(plan(opts, CELL, init=INIT), opts, script=script, tty=tty)


def test_session_runs_init_with_the_spec_hash():
    assert session_for().argv == (INIT_PATH, "--session", spec_for().hash())


def test_session_passes_as_root_only_with_as_root():
    assert "--as-root" in session_for("--as-root").argv
    assert "--as-root" not in session_for().argv


def test_session_passes_script_content_and_its_hash_only_with_a_script():
    argv = session_for(script="echo hi\n").argv
    assert argv[-4:-1] == ("--script", "echo hi\n", "--script-id")
    assert argv[-1] == hashlib.sha256(b"echo hi\n").hexdigest()[:32]
    assert "--script" not in session_for().argv


def test_session_has_a_tty_only_without_a_script():
    assert session_for(tty=True).tty
    assert not session_for(script="true", tty=True).tty
    assert not session_for(tty=False).tty


def test_session_id_names_the_entry_and_what_stop_stops():
    opts = parse((), HOST)
    ex = session(plan(opts, CELL, init=INIT), opts, script="true", tty=False, session_id="0a1b")
    assert ex.argv[3:5] == ("--session-id", "0a1b")
    assert ex.stop_argv("INT") == [INIT_PATH, "--stop", "0a1b", "INT"]
    assert "--session-id" not in session_for().argv


def test_a_script_of_utf8_text_travels_as_it_is():
    assert script_args("echo caf\u00e9\n")[:2] == ["--script", "echo caf\u00e9\n"]


def test_a_script_with_bytes_that_are_not_utf8_travels_in_base64_byte_for_byte():
    raw = b"printf '\xff\xfe'\n"
    flag, content, _, digest = script_args(raw.decode("utf-8", "surrogateescape"))
    assert flag == "--script-base64" and base64.b64decode(content) == raw
    assert digest == hashlib.sha256(raw).hexdigest()[:32]


def test_a_script_too_long_for_one_exec_argument_is_refused():
    script_args("x" * (MAX_EXEC_ARG - 1))  # the control: just fits
    with pytest.raises(DevshellError, match="longer than the 128 KiB"):
        script_args("x" * MAX_EXEC_ARG)
    # base64 grows a script by 4/3: 100 KiB of not-UTF-8 no longer fits.
    with pytest.raises(DevshellError, match="in base64"):
        script_args((b"\xff" * (100 * 1024)).decode("utf-8", "surrogateescape"))


def test_session_cli_asks_docker_for_a_tty_only_when_tty():
    assert "--tty" in session_for(tty=True).cli()
    assert "--tty" not in session_for(script="true").cli()


def test_session_enters_the_named_container_in_the_workspace_as_root():
    ex = session_for("--instance", "two")
    assert (ex.container, ex.workdir) == ("devshell-cellx-two", "/workspaces/cellx")
    cli = ex.cli()
    assert cli[cli.index("--user") + 1] == "0"
    assert cli[cli.index("--workdir") + 1] == "/workspaces/cellx"


def test_options_built_directly_are_plannable():
    spec = plan(Options(patches_out="/p"), CELL, init=INIT)
    assert Mount("bind", "/p", PATCHES) in spec.mounts


@pytest.mark.parametrize("argv", [(), ("--host-cache-dir", "/c,d"), ("--instance", "b", "--uid", "9"),
                                  ("--host-cache", "--ai-config-rw"), ("--profile", "locked"),
                                  ("--profile", "locked", "--runtime", "runsc")])
def test_api_create_is_what_the_docker_sdk_would_send_for_sdk_kwargs(argv):
    """The engine posts api_create() itself (the SDK costs ~0.3 s to import); it must be the
    request the SDK builds from sdk_kwargs(). No daemon is contacted: only its builders run."""
    from docker import APIClient
    from docker.models.containers import _create_container_args

    spec = spec_for(*argv, labels={"team": "a=b"})
    query, body = spec.api_create()
    kwargs = {**spec.sdk_kwargs(), "version": "1.41"}
    platform, name = kwargs.pop("platform"), kwargs["name"]
    kwargs.pop("detach")
    sdk = APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    create_args = _create_container_args(kwargs)
    create_args.pop("name")  # the SDK sends name and platform as query parameters
    config = sdk.create_container_config(**create_args)
    assert query == {"name": name, "platform": platform}
    for key in ("Image", "Cmd", "Hostname", "User", "WorkingDir", "Labels", "Env"):
        assert body[key] == config[key], key
    for key in ("Init", "CapDrop", "SecurityOpt", "ReadonlyRootfs", "PidsLimit", "Memory", "MemorySwap"):
        assert body["HostConfig"][key] == config["HostConfig"][key], key
    assert body["HostConfig"].get("Runtime") == config["HostConfig"].get("Runtime")
    # The SDK leaves an empty Tmpfs out; the engine reads {} and no Tmpfs alike.
    assert body["HostConfig"]["Tmpfs"] == config["HostConfig"].get("Tmpfs", {})
    assert body["HostConfig"]["Mounts"] == [dict(m) for m in config["HostConfig"]["Mounts"]]
    binds = [m for m in body["HostConfig"]["Mounts"] if m["Type"] == "bind"]
    assert binds and all(m["BindOptions"] == {"NonRecursive": True} for m in binds)


def test_a_deep_checkouts_memory_dir_is_made_of_names_a_filesystem_takes() -> None:
    from devshell.spec import memory_dir

    deep = "/srv/" + "/".join(["d" * 100] * 4)
    parts = memory_dir(deep).split("/")
    assert all(len(p.encode()) <= 255 for p in parts)
    assert memory_dir(deep) != memory_dir(deep[:-1] + "e")


@pytest.mark.parametrize("network, runtime, in_force", [
    ("open", "default", "open"), ("none", "default", "none"), ("open", "runc", "open"),
    ("open", "runsc (gVisor)", "open"), ("open", "runsc (gVisor, no network)", "none"),
    ("none", "runsc (gVisor, no network)", "none"),
])
def test_the_network_in_force_is_none_under_a_runtime_without_one(network, runtime, in_force):
    assert network_in_force(network, runtime) == in_force


def test_a_gvisor_runtime_without_a_network_reads_as_such_in_its_label():
    # the label network_in_force reads is the one engine.Runtime writes
    assert RUNTIME_WITHOUT_NETWORK in str(Runtime("runsc", "gvisor", network=False, seccomp=True))
    assert RUNTIME_WITHOUT_NETWORK not in str(Runtime("runsc", "gvisor", network=True, seccomp=True))
