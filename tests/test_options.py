"""options.parse: argv + HostFacts -> Options, without Docker or the filesystem."""

from __future__ import annotations

import posixpath

import pytest

from devshell.cells import DEFAULT_CELL, NETWORK_MODES, PROFILES
from devshell.errors import DevshellError
from devshell.options import (
    DEFAULT_HOST_CACHE,
    MAX_INSTANCE,
    ROOT_FALLBACK_ID,
    HostFacts,
    Options,
    check_binds,
    default_patches_out,
    drops_root,
    parse,
    parser,
    state_dir,
    to_argv,
)

HOME = "/home/alice"
CWD = "/home/alice/proj"
HOST = HostFacts(cwd=CWD, home=HOME, uid=501, gid=20)
ROOT_HOST = HostFacts(cwd=CWD, home=HOME, uid=0, gid=0)
DEFAULT_CACHE_DIR = "/home/alice/.cache/devshell/host-cache"
# devshell's own drop dir for CWD: in the state dir, keyed by the checkout's path.
DROP_NAME = "-home-alice-proj.2af6b4a7"  # ai_key(CWD) + sha256(CWD)[:8]
DROP = f"/home/alice/.local/state/devshell/patches/{DROP_NAME}"


def refused(argv: list[str], host: HostFacts = HOST) -> DevshellError:
    with pytest.raises(DevshellError) as info:
        parse(argv, host)
    return info.value


def path_option(opts: Options, flag: str) -> str | None:
    """The resolved host path a path-taking flag produced."""
    if flag == "--cells-dir":
        return opts.cells_dirs[0]
    return {"--checkout": opts.checkout, "--patches-out": opts.patches_out,
            "--host-cache-dir": opts.host_cache, "--script": opts.script}[flag]


def elsewhere(flag: str) -> list[str]:
    """A checkout away from cwd, so that a path under cwd given to flag overlaps nothing."""
    return [] if flag == "--checkout" else ["--checkout", "/elsewhere"]


# --- defaults -------------------------------------------------------------------------------


def test_no_arguments_open_the_default_cell():
    assert parse([], HOST).cell == DEFAULT_CELL == "bookworm"


def test_checkout_defaults_to_cwd():
    assert parse([], HOST).checkout == CWD


def test_patches_dir_defaults_to_the_drop_dir_of_the_checkout():
    assert parse([], HOST).patches_out == DROP == HOST.drop_dir(CWD)
    assert parse(["--checkout", "/srv/x"], HOST).patches_out == (
        "/home/alice/.local/state/devshell/patches/-srv-x.c0fdb799")


def test_drop_dir_lives_in_the_hosts_state_dir():
    host = HOST._replace(state="/var/st/devshell")
    assert parse([], host).patches_out == f"/var/st/devshell/patches/{DROP_NAME}"


def test_defaults_ask_for_nothing_else():
    assert parse([], HOST) == Options(cell="bookworm", checkout=CWD, patches_out=DROP, uid=501, gid=20)


def test_dev_ids_default_to_the_hosts():
    opts = parse([], HostFacts(cwd=CWD, home=HOME, uid=1234, gid=4321))
    assert (opts.uid, opts.gid) == (1234, 4321)
    assert opts.notes == ()


# --- every flag -----------------------------------------------------------------------------


def test_every_flag_lands_in_its_option():
    opts = parse(
        ["runner-1001", "--script", "s.sh", "--as-root", "--host-cache-dir", "/c",
         "--checkout", "src", "--patches-out", "out", "--image", "img:1", "--instance", "two",
         "--uid", "7", "--gid", "8", "--cells-dir", "mine", "--json", "--ai-config-rw",
         "--profile", "standard", "--runtime", "runsc", "--network", "none"],
        HOST,
    )
    assert opts == Options(
        cell="runner-1001", script=f"{CWD}/s.sh", as_root=True, host_cache="/c",
        ai_config_ro=False, checkout=f"{CWD}/src", patches_out=f"{CWD}/out", image="img:1",
        instance="two", uid=7, gid=8, json=True, cells_dirs=(f"{CWD}/mine",), profile="standard",
        runtime="runsc", network="none",
    )


@pytest.mark.parametrize("flag, field", [("--rm", "rm"), ("--verify", "verify"),
                                         ("--list", "list"), ("--as-root", "as_root"),
                                         ("--json", "json")])
def test_switch_sets_its_option(flag, field):
    assert getattr(parse([flag], HOST), field) is True
    assert getattr(parse([], HOST), field) is False


def test_flag_values_may_use_equals_form():
    opts = parse(["--checkout=src", "--patches-out=out", "--uid=7", "--instance=b"], HOST)
    assert (opts.checkout, opts.patches_out, opts.uid, opts.instance) == (
        f"{CWD}/src", f"{CWD}/out", 7, "b")


def test_ai_config_is_read_only_unless_ai_config_rw():
    assert parse([], HOST).ai_config_ro is True
    assert parse(["--ai-config-ro"], HOST).ai_config_ro is True
    assert parse(["--ai-config-rw"], HOST).ai_config_ro is False


def test_image_is_passed_verbatim_not_as_a_path():
    assert parse(["--image", "x/y:1"], HOST).image == "x/y:1"


@pytest.mark.parametrize("image", ["debian:bookworm", "img:1", "registry.example/x/y:2", "localhost:5000/a/b",
                                   "ghcr.io/catthehacker/ubuntu:act-24.04", "x/a__b-c.d", "[::1]:5000/x:y",
                                   "d@sha256:" + "a" * 64, "r.example:1/d:t@sha256:" + "0" * 64])
def test_image_references_in_dockers_grammar_are_taken(image):
    assert parse(["--image", image], HOST).image == image


@pytest.mark.parametrize("image, why", [
    ("../../x", "path component '..'"), ("./x:1", "path component '.'"), ("Ubuntu", "'Ubuntu'"),
    ("a:b:c", "'a:b'"), ("x@sha256:abc", "digest"), ("x@md5:" + "0" * 32, "digest"), ("/x", "''"),
    ("x/", "''"), ("a//b", "''"), ("x:", "tag ''"), ("x:-t", "tag '-t'"), ("x:" + "t" * 129, "tag"),
    ("reg.example:port/x", "registry"), ("a b", "'a b'"), ("a..b", "'a..b'"), ("x" * 256, "255"),
    ("é", "'é'"), ("-x", "'-x'"), ("x:t@", "digest"),
])
def test_invalid_image_references_are_refused_with_a_reason(image, why):
    message = str(refused([f"--image={image}"]))
    assert "is not an image reference" in message and why in message


def test_cells_dir_repeats_keep_their_order():
    opts = parse(["--cells-dir", "b", "--cells-dir", "/a", "--cells-dir", "~/c"], HOST)
    assert opts.cells_dirs == (f"{CWD}/b", "/a", f"{HOME}/c")


# --- host cache -----------------------------------------------------------------------------


def test_host_cache_is_off_by_default():
    assert parse([], HOST).host_cache is None


def test_host_cache_switch_uses_default_dir_under_host_home():
    assert DEFAULT_HOST_CACHE == "~/.cache/devshell/host-cache"
    assert parse(["--host-cache"], HOST).host_cache == DEFAULT_CACHE_DIR


def test_host_cache_dir_alone_enables_the_cache():
    assert parse(["--host-cache-dir", "/var/cache/dv"], HOST).host_cache == "/var/cache/dv"


@pytest.mark.parametrize("argv", [["--host-cache", "--host-cache-dir", "/c"],
                                  ["--host-cache-dir", "/c", "--host-cache"]])
def test_host_cache_dir_wins_over_host_cache_in_either_order(argv):
    assert parse(argv, HOST).host_cache == "/c"


@pytest.mark.parametrize("cell", ["bookworm", "runner-1001", "ubuntu-24.04"])
def test_host_cache_switch_never_swallows_the_cell(cell):
    opts = parse(["--host-cache", cell], HOST)
    assert (opts.cell, opts.host_cache) == (cell, DEFAULT_CACHE_DIR)


def test_cell_positional_may_sit_between_flags():
    assert parse(["--json", "runner-1001", "--host-cache"], HOST).cell == "runner-1001"


@pytest.mark.parametrize("cache", ["/", "/..", HOME, "~", "~/", "..", ".", CWD, "sub", DROP,
                                   f"{DROP}/x", "~/.local/state"])
def test_host_cache_refused_when_root_home_checkout_or_patches_dir(cache):
    assert "as the host cache dir" in str(refused(["--host-cache-dir", cache]))


# --- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir", "--script",
                                  "--cells-dir"])
def test_relative_paths_are_anchored_at_cwd(flag):
    assert path_option(parse([flag, "sub/dir", *elsewhere(flag)], HOST), flag) == f"{CWD}/sub/dir"


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir", "--script",
                                  "--cells-dir"])
def test_tilde_expands_against_host_home(flag):
    assert path_option(parse([flag, "~/x"], HOST), flag) == f"{HOME}/x"


def test_tilde_expansion_uses_host_home_not_the_real_one():
    host = HostFacts(cwd="/w", home="/Users/v", uid=501, gid=20)
    assert parse(["--patches-out", "~/p"], host).patches_out == "/Users/v/p"


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out"])
def test_tilde_user_is_not_expanded(flag):
    """Only a bare ~ or ~/ prefix means the host's home; ~bob is an ordinary relative name."""
    assert path_option(parse([flag, "~bob/x", *elsewhere(flag)], HOST), flag) == f"{CWD}/~bob/x"


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir"])
@pytest.mark.parametrize("given, expected", [("out/", f"{CWD}/out"), ("./a/../b", f"{CWD}/b"),
                                             ("/srv//x/", "/srv/x"), ("../x", f"{HOME}/x")])
def test_paths_are_normalized_lexically(flag, given, expected):
    assert path_option(parse([flag, given, *elsewhere(flag)], HOST), flag) == posixpath.normpath(expected)


def test_home_with_trailing_slash_expands_cleanly():
    host = HostFacts(cwd="/w", home="/home/bob/", uid=501, gid=20)
    assert parse(["--patches-out", "~/p"], host).patches_out == "/home/bob/p"


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out"])
def test_paths_with_spaces_and_unicode_are_kept(flag):
    assert path_option(parse([flag, "my proj/ünï", *elsewhere(flag)], HOST), flag) == (
        f"{CWD}/my proj/ünï")


@pytest.mark.parametrize("path", [HOME, f"{HOME}/", "~", "~/", "..", "../proj/..", "/", "/..",
                                  "../../.."])
@pytest.mark.parametrize("flag, what", [("--patches-out", "as the patches dir"),
                                        ("--checkout", "as the checkout")])
def test_home_or_root_is_refused_as_checkout_or_patches_dir(flag, what, path):
    assert what in str(refused([flag, path]))


@pytest.mark.parametrize("cwd", ["/", HOME, f"{HOME}/"])
def test_default_checkout_is_refused_when_cwd_is_home_or_root(cwd):
    error = refused([], HostFacts(cwd=cwd, home=HOME, uid=501, gid=20))
    assert "as the checkout" in str(error)
    assert "--checkout" in error.fix


@pytest.mark.parametrize("patches", [".", CWD, "sub", "sub/deeper", "..", "/home/alice/"])
def test_patches_dir_overlapping_the_checkout_is_refused(patches):
    """Agent-written files never land in the read-only checkout, nor the checkout in /patches."""
    error = refused(["--patches-out", patches])
    assert "as the patches dir" in str(error)
    assert "--patches-out" in error.fix


@pytest.mark.parametrize("checkout", ["~/.local", "~/.local/state/devshell",
                                      "~/.local/state/devshell/patches"])
def test_checkout_holding_its_default_drop_dir_is_refused(checkout):
    assert "overlaps the checkout" in str(refused(["--checkout", checkout]))


@pytest.mark.parametrize("argv", [["--patches-out", "/p", "--host-cache-dir", "/p/c"],
                                  ["--patches-out", "/p/q", "--host-cache-dir", "/p"],
                                  ["--patches-out", "/p", "--host-cache-dir", "/p/"]])
def test_patches_dir_overlapping_the_host_cache_is_refused(argv):
    assert "overlaps the patches dir" in str(refused(argv))


def test_neighbours_with_a_common_prefix_do_not_overlap():
    opts = parse(["--checkout", "/p", "--patches-out", "/pp", "--host-cache-dir", "/p-c"], HOST)
    assert (opts.checkout, opts.patches_out, opts.host_cache) == ("/p", "/pp", "/p-c")


@pytest.mark.parametrize("action", ["--rm", "--verify", "--list"])
def test_actions_that_bind_nothing_check_no_paths(action):
    opts = parse([action, "--patches-out", "."], HostFacts(cwd="/", home=HOME, uid=501, gid=20))
    assert (opts.checkout, opts.patches_out) == ("/", "/")


def test_check_binds_accepts_separate_directories():
    check_binds("/src/p", "/st/drop", "/c", HOME)
    check_binds("/src/p", "/st/drop", None, HOME)


@pytest.mark.parametrize("checkout, patches, cache", [
    ("/", "/d", None), ("/s", "/", None), ("/s", "/d", "/"),
    (HOME, "/d", None), ("/s", "/home", None), ("/s", "/d", "/home/"),
    ("/s", "/s", None), ("/s", "/s/d", None), ("/s/x", "/s", None),
    ("/s", "/d", "/s/c"), ("/s", "/d", "/d"), ("/s", "/d/p", "/d"),
])
def test_check_binds_refuses_root_home_and_overlaps(checkout, patches, cache):
    with pytest.raises(DevshellError):
        check_binds(checkout, patches, cache, HOME)


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x01", "\x1b", "\x1f", "\x7f"])
@pytest.mark.parametrize("flag, what", [("--checkout", "as the checkout"),
                                        ("--patches-out", "as the patches dir"),
                                        ("--host-cache-dir", "as the host cache dir")])
def test_a_control_character_in_a_bound_dir_is_refused(flag, what, char):
    """A bound dir's path reaches init in the environment, and the checkout's name becomes a
    mount point below /cache/ai/memory: no line break, escape or DEL in either."""
    error = refused([flag, f"/srv/a{char}b", *elsewhere(flag)])
    assert what in str(error) and "control character" in str(error)


@pytest.mark.parametrize("char", [" ", "~", "\x80", "\u00a0", "é", ",", '"'])
def test_printable_and_non_ascii_characters_in_a_bound_dir_are_kept(char):
    opts = parse(["--checkout", f"/s/a{char}", "--patches-out", f"/o/a{char}",
                  "--host-cache-dir", f"/c/a{char}"], HOST)
    assert (opts.checkout, opts.patches_out, opts.host_cache) == (
        f"/s/a{char}", f"/o/a{char}", f"/c/a{char}")


def test_a_control_character_in_the_cwd_or_the_state_dir_is_refused_too():
    """The defaults are checked like given paths: the checkout is cwd, the drop dir below the
    state dir."""
    assert "as the checkout" in str(refused([], HOST._replace(cwd="/srv/a\nb")))
    assert "as the patches dir" in str(refused([], HOST._replace(state="/st\x1b/devshell")))


@pytest.mark.parametrize("action", ["--rm", "--verify", "--list"])
def test_actions_that_bind_nothing_accept_a_control_character(action):
    opts = parse([action, "--patches-out", "/o\n"], HOST)
    assert opts.patches_out == "/o\n"


def test_check_binds_refuses_a_control_character_in_each_path():
    for args in [("/s\n", "/d", None), ("/s", "/d\x7f", None), ("/s", "/d", "/c\t")]:
        with pytest.raises(DevshellError, match="control character"):
            check_binds(*args, HOME)


# --- state and drop dirs --------------------------------------------------------------------


def test_state_dir_follows_xdg_state_home():
    assert state_dir(HOME, {}) == f"{HOME}/.local/state/devshell"
    assert state_dir(HOME, {"XDG_STATE_HOME": ""}) == f"{HOME}/.local/state/devshell"
    assert state_dir(HOME, {"XDG_STATE_HOME": "/x/st"}) == "/x/st/devshell"


def test_relative_xdg_state_home_is_ignored():
    """The XDG spec: a relative XDG_STATE_HOME is invalid. Honoured, it would make the drop dir
    relative to wherever devshell happens to run."""
    assert state_dir(HOME, {"XDG_STATE_HOME": "st"}) == f"{HOME}/.local/state/devshell"


def test_every_default_drop_dir_is_one_entry_of_drops_root():
    for env in ({}, {"XDG_STATE_HOME": "/x/st"}):
        drop = default_patches_out(CWD, HOME, env)
        assert posixpath.dirname(drop) == drops_root(HOME, env) == posixpath.join(
            state_dir(HOME, env), "patches")
        assert posixpath.basename(drop) == DROP_NAME


def test_checkouts_whose_keys_collide_get_their_own_drop_dirs():
    assert HOST.drop_dir("/a-b") != HOST.drop_dir("/a/b")


def test_default_patches_out_agrees_with_the_hosts_drop_dir():
    assert default_patches_out(CWD, HOME, {}) == HOST.drop_dir(CWD) == DROP
    host = HOST._replace(state=state_dir(HOME, {"XDG_STATE_HOME": "/x/st"}))
    assert default_patches_out(CWD, HOME, {"XDG_STATE_HOME": "/x/st"}) == host.drop_dir(CWD)


def test_current_host_reads_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert HostFacts.current().state == f"{tmp_path}/devshell"
    monkeypatch.delenv("XDG_STATE_HOME")
    host = HostFacts.current()
    assert host.state == posixpath.join(host.home, ".local", "state", "devshell")


# --- uid / gid ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--uid", "0"], ["--gid", "0"], ["--uid", "0", "--gid", "0"],
                                  ["--uid=00"]])
def test_explicit_uid_or_gid_0_is_refused(argv):
    assert "--as-root" in str(refused(argv))


def test_host_uid_0_never_makes_dev_root():
    opts = parse([], ROOT_HOST)
    assert (opts.uid, opts.gid) == (ROOT_FALLBACK_ID, ROOT_FALLBACK_ID) == (1000, 1000)


def test_host_uid_0_mapping_is_noted():
    assert "1000" in " ".join(parse([], ROOT_HOST).notes)


def test_only_the_id_that_was_0_is_mapped():
    opts = parse([], HostFacts(cwd=CWD, home=HOME, uid=0, gid=20))
    assert (opts.uid, opts.gid) == (1000, 20)
    assert opts.notes


def test_root_host_defaults_equal_explicit_ids_but_for_the_note():
    assert parse([], ROOT_HOST)._replace(notes=()) == parse(["--uid", "1000", "--gid", "1000"], ROOT_HOST)


def test_explicit_uid_and_gid_win_over_the_host():
    opts = parse(["--uid", "2000", "--gid", "3000"], ROOT_HOST)
    assert (opts.uid, opts.gid) == (2000, 3000)
    assert opts.notes == ()


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "0x10", str(2**31 - 1), str(2**40)])
def test_bad_uid_raises_devshell_error(value):
    refused([f"--uid={value}"])


def test_bad_gid_raises_devshell_error():
    refused(["--gid", "x"])


def test_largest_id_is_accepted():
    assert parse(["--uid", str(2**31 - 2)], HOST).uid == 2**31 - 2


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--nope"], ["-x"], ["bookworm", "extra"], ["--patches-out"],
                                  ["--rm=yes"]])
def test_malformed_argv_raises_devshell_error(argv):
    refused(argv)


def test_devshell_error_points_at_help():
    assert refused(["--nope"]).fix == "see devshell --help"


@pytest.mark.parametrize("argv", [["--host-c"], ["--host-cache-d", "/c"], ["--patches", "x"],
                                  ["--as"], ["--ver"], ["--inst", "a"], ["--cells", "d"]])
def test_abbreviated_flags_are_refused(argv):
    refused(argv)


def test_script_with_rm_is_refused():
    assert "cannot be combined" in str(refused(["--script", "s.sh", "--rm"]))


@pytest.mark.parametrize("argv", [["--rm", "--verify"], ["--list", "--rm"],
                                  ["--verify", "--script", "s"], ["--list", "--script", "s"]])
def test_two_actions_are_refused(argv):
    refused(argv)


def test_list_with_a_cell_is_refused():
    assert "--list takes no cell" in str(refused(["bookworm", "--list"]))


def test_list_without_a_cell_is_fine():
    assert parse(["--list", "--json"], HOST).list


@pytest.mark.parametrize("name", ["a", "ci-2", "x.y_z", "A9", "n" * 40])
def test_simple_instance_names_are_accepted(name):
    assert parse(["--instance", name], HOST).instance == name


@pytest.mark.parametrize("name", ["", "a/b", "a b", "ü", "n" * 41, "a:b", "a$b"])
def test_unsafe_instance_names_are_refused(name):
    assert "--instance" in str(refused([f"--instance={name}"]))


# --- trust profile and runtime --------------------------------------------------------------


def test_profile_and_runtime_default_to_the_cells_and_the_engines():
    opts = parse([], HOST)
    assert (opts.profile, opts.runtime) == (None, None)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("equals", [False, True])
def test_each_profile_is_taken(profile, equals):
    argv = [f"--profile={profile}"] if equals else ["--profile", profile]
    assert parse(argv, HOST).profile == profile


@pytest.mark.parametrize("value", ["root", "Locked", "standard,locked", "lock", " locked", "--", ""])
def test_a_profile_outside_the_choices_is_refused(value):
    error = refused([f"--profile={value}"])
    assert "--profile" in str(error)
    assert error.fix == "see devshell --help"


@pytest.mark.parametrize("argv", [["--profile", "locked", "--profile", "locked"],
                                  ["--profile", "standard", "--profile=locked"],
                                  ["--runtime", "runsc", "--runtime", "runc"],
                                  ["--runtime=runsc", "--runtime=runsc"]])
def test_profile_and_runtime_given_twice_are_refused(argv):
    assert "given twice" in str(refused(argv))


@pytest.mark.parametrize("argv", [["--as-root", "--profile", "locked"], ["--profile=locked", "--as-root"],
                                  ["bookworm", "--profile", "locked", "--script", "s.sh", "--as-root"]])
def test_as_root_with_profile_locked_is_refused_in_any_order(argv):
    error = refused(argv)
    assert "--as-root" in str(error) and "locked" in str(error)
    assert error.fix == "drop one of them"


def test_as_root_with_profile_standard_is_taken():
    opts = parse(["--as-root", "--profile", "standard"], HOST)
    assert (opts.as_root, opts.profile) == (True, "standard")


@pytest.mark.parametrize("name", ["runsc", "runc", "io.containerd.runc.v2", "runsc-debug", "kata_1", "r",
                                  "9", "r" * 64])
def test_runtime_names_are_taken(name):
    assert parse(["--runtime", name], HOST).runtime == name


@pytest.mark.parametrize("name", ["a b", "-runsc", ".runsc", "_x", "run/sc", "../runsc", "r" * 65, "rünsc",
                                  "runsc\n", "x;y", "a:b", "$X"])
def test_bad_runtime_names_are_refused(name):
    error = refused([f"--runtime={name}"])
    assert "is not a runtime name" in str(error)
    assert "runsc" in (error.fix or "")


@pytest.mark.parametrize("argv", [["--profile", "locked"], ["--profile", "standard", "--as-root"],
                                  ["--runtime", "runsc"],
                                  ["--profile", "locked", "--runtime", "io.containerd.runsc.v1", "--verify"]])
def test_to_argv_round_trips_profile_and_runtime(argv):
    opts = parse(argv, HOST)
    assert parse(to_argv(opts), HOST) == opts


def test_to_argv_leaves_an_unset_profile_and_runtime_unset():
    """None means the cell's profile and the engine's runtime: to_argv must not pin either."""
    flags = to_argv(parse([], HOST))
    assert not [f for f in flags if f.startswith(("--profile", "--runtime"))]


# --- to_argv: harnesses re-enter with it ---------------------------------------------------


def test_to_argv_round_trips_every_flag():
    opts = parse(["runner-1001", "--script", "s.sh", "--as-root", "--host-cache", "--patches-out",
                  "a b/ü", "--checkout", "/s,r c", "--image", "img:1", "--instance", "two", "--uid",
                  "7", "--gid", "8", "--cells-dir", "x", "--cells-dir", "/y", "--json",
                  "--ai-config-rw", "--profile", "standard", "--runtime", "runsc"], HOST)
    assert parse(to_argv(opts), HOST) == opts


def test_to_argv_round_trips_the_default_drop_dir():
    opts = parse(["--checkout", "/srv/x"], HOST)
    assert parse(to_argv(opts), HOST) == opts


def test_to_argv_round_trips_the_defaults_for_a_root_host():
    opts = parse([], ROOT_HOST)
    # notes say where values came from (the root host), not what they are
    assert parse(to_argv(opts), ROOT_HOST) == opts._replace(notes=())


# --- edge cases once broken ---------------------------------------------------------------


def test_to_argv_round_trips_an_instance_starting_with_a_dash():
    opts = parse(["--instance=-x"], HOST)
    assert parse(to_argv(opts), HOST) == opts


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir"])
def test_double_slash_root_is_refused(flag):
    refused([flag, "//"])


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir"])
def test_double_slash_home_is_refused(flag):
    refused([flag, "/" + HOME])


@pytest.mark.parametrize("flag", ["--checkout", "--patches-out", "--host-cache-dir", "--script",
                                  "--image", "--uid", "--cells-dir"])
def test_double_dash_flag_value_is_taken_literally_or_refused(flag):
    """`--flag=--` must never be silently dropped, turned into [], or crash with a traceback."""
    try:
        opts = parse([f"{flag}=--", *elsewhere(flag)], HOST)
    except DevshellError:
        return
    values = [opts.checkout, opts.patches_out, opts.host_cache, opts.script, opts.image,
              opts.instance, opts.uid, *opts.cells_dirs]
    assert any(v == "--" or (isinstance(v, str) and v.endswith("/--")) for v in values)


def test_drop_dir_is_normalized_like_every_other_path():
    """The overlap checks are lexical: an XDG_STATE_HOME spelled with '..' or '//' must not
    hide a drop dir inside the checkout."""
    host = HOST._replace(state="//home/alice/x/../proj//.st/devshell")
    assert host.drop_dir(CWD) == f"{CWD}/.st/devshell/patches/{DROP_NAME}"
    assert "overlaps the checkout" in str(refused([], host))


@pytest.mark.parametrize("columns", ["abc", "-3", "", "0", "1e3", "99999999999999999999"])
def test_any_columns_value_builds_the_parser(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    """COLUMNS is the terminal's to set: a value that is not a width never fails a command."""
    monkeypatch.setenv("COLUMNS", columns)
    assert parse(["--list"], HOST).list
    assert "usage: devshell" in parser().format_help()


def test_an_over_long_instance_says_the_limit() -> None:
    with pytest.raises(DevshellError, match=f"1 to {MAX_INSTANCE} letters"):
        parse(["--instance", "x" * (MAX_INSTANCE + 1)], HOST)
    assert parse(["--instance", "x" * MAX_INSTANCE], HOST).instance == "x" * MAX_INSTANCE


@pytest.mark.parametrize("word", ["status", "down", "doctor", "cache", "net"])
def test_lifecycle_words_are_reserved_for_subcommands(word: str) -> None:
    from devshell.cells import RESERVED_NAMES

    assert word in RESERVED_NAMES


def test_a_deep_checkout_still_gets_a_drop_dir_name_a_filesystem_takes() -> None:
    deep = "/srv/" + "/".join(["d" * 100] * 4)
    other = deep[:-1] + "e"
    for checkout in (deep, other):
        name = posixpath.basename(HOST.drop_dir(checkout))
        assert len(name.encode()) <= 255
    assert HOST.drop_dir(deep) != HOST.drop_dir(other)


def test_a_path_that_is_not_utf8_is_refused() -> None:
    bad = "/srv/bad\udcffname"
    with pytest.raises(DevshellError, match="not valid UTF-8"):
        parse(["--checkout", bad], HOST)


# --- network mode -------------------------------------------------------------------------


def test_network_defaults_to_the_cells():
    assert parse([], HOST).network is None


@pytest.mark.parametrize("mode", NETWORK_MODES)
@pytest.mark.parametrize("equals", [False, True])
def test_each_network_mode_is_taken(mode, equals):
    argv = [f"--network={mode}"] if equals else ["--network", mode]
    assert parse(argv, HOST).network == mode


@pytest.mark.parametrize("value", ["bridge", "host", "None", "open,none", "container:x", " none", "--", ""])
def test_a_network_outside_the_modes_is_refused(value):
    # the engine's own modes (host, container:…) are never passed through
    error = refused([f"--network={value}"])
    assert "--network" in str(error)
    assert error.fix == "see devshell --help"


def test_network_given_twice_is_refused():
    assert "given twice" in str(refused(["--network", "none", "--network=open"]))
