"""Class 6: the read-only AI configuration stays read-only, whatever an earlier session left.

A session with --ai-config-rw may write ai/ (skills, settings.json); the checkout's memory
(ai/memory/<repo>/<key>, mounted at /cache/ai/memory/<repo>/<key>) is writable in every session,
and ai/memory (every project's) is a read-only mount of its own in both modes.
Were a memory file a hard link to settings.json, or a skill a symlink into memory, the next
--ai-config-ro session could rewrite its own configuration through memory. So memory is its own
mount (link(2) does not cross mounts: EXDEV), and the launcher refuses a read-only launch over a
configuration with a second hard link or a symlink leading out of it, in one line, exit 2.
"""

from __future__ import annotations

import os

import pytest

from devshell.plugin import DEV_GID, DEV_UID
from devshell.spec import container_name

CLASS = "6 read-only AI config"
# Root through sudo exists under the standard profile only (locked has no sudo).
USERS = ["dev", pytest.param("root", marks=pytest.mark.standard_profile)]


def user_cache(host_cache_dir):
    """A host cache whose ai/ the user handed to dev's uid, with skills and settings.json."""
    cache = host_cache_dir("ai-cache")
    ai = cache / "ai"
    (ai / "skills" / "review").mkdir(parents=True)
    (ai / "skills" / "review" / "SKILL.md").write_text("# review\n")
    (ai / "settings.json").write_text('{"permissions": "ask"}\n')
    (ai / "memory").mkdir()
    for dirpath, dirnames, filenames in os.walk(ai):
        for name in [".", *dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), DEV_UID, DEV_GID)
    return cache


@pytest.fixture(scope="module")
def rw_shell(devshell_factory, host_cache_dir):
    return devshell_factory.open(host_cache=user_cache(host_cache_dir), ai_config_rw=True)


@pytest.mark.attack(CLASS, "hard link settings.json into memory from inside (--ai-config-rw)")
@pytest.mark.parametrize("user", USERS)
def test_a_hard_link_from_config_into_memory_cannot_be_made_inside(rw_shell, user, as_user, agent,
                                                                    memory_mount):
    memory, host_memory = memory_mount(rw_shell)
    result = agent(rw_shell, as_user(f"ln /cache/ai/settings.json {memory}/x", user))
    assert result.exit_code != 0
    assert "Invalid cross-device link" in result.stderr, result.stderr  # EXDEV: another mount
    assert not os.path.lexists(os.path.join(host_memory, "x"))
    assert os.stat(os.path.join(rw_shell.opts.host_cache, "ai", "settings.json")).st_nlink == 1


@pytest.mark.attack(CLASS, "hard link settings.json into ai/memory, beside every project's memory")
@pytest.mark.parametrize("user", USERS)
def test_every_projects_memory_is_a_read_only_mount_even_with_ai_config_rw(rw_shell, user, as_user,
                                                                             agent):
    """ai/memory holds every project's memory: a mount of its own (read-only) even where ai/ is
    writable, so it can be neither renamed nor linked into. Control: a link within one mount."""
    result = agent(rw_shell, as_user("ln /cache/ai/settings.json /cache/ai/memory/x", user))
    assert result.exit_code != 0
    assert not os.path.lexists(os.path.join(rw_shell.opts.host_cache, "ai", "memory", "x"))
    assert os.stat(os.path.join(rw_shell.opts.host_cache, "ai", "settings.json")).st_nlink == 1


@pytest.mark.control(CLASS, "hard link settings.json into memory from inside (--ai-config-rw)")
@pytest.mark.control(CLASS, "hard link settings.json into ai/memory, beside every project's memory")
@pytest.mark.parametrize("user", USERS)
def test_a_hard_link_within_one_mount_works(rw_shell, user, as_user):
    result = rw_shell.run(as_user(f"ln /cache/ai/settings.json /cache/ai/skills/link-{user} && "
                                  f"rm /cache/ai/skills/link-{user}", user))
    assert result.exit_code == 0, result.stderr


# name -> what an earlier session (or anyone with the host path) left in the host cache
LAYOUTS = {
    "memory file hard-linked to settings.json":
        lambda ai: os.link(ai / "settings.json", ai / "memory" / "x"),
    "skill symlink into ../memory":
        lambda ai: os.symlink("../../memory/evil.md", ai / "skills" / "review" / "EVIL.md"),
    "skills symlink to ../memory": lambda ai: os.symlink("../memory", ai / "skills" / "mem"),
    "skill symlink to an absolute path":
        lambda ai: os.symlink("/cache/ai/memory/n.md", ai / "skills" / "abs.md"),
}


@pytest.fixture
def left_behind(request, host_cache_dir, devshell_instance, devshell_cell, devshell_cells_path, tmp_path):
    cache = user_cache(host_cache_dir)
    LAYOUTS[request.param](cache / "ai")
    instance = devshell_instance()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho launched\n")
    argv = [devshell_cell.name, f"--checkout={checkout}", f"--patches-out={tmp_path / 'drop'}",
            f"--host-cache-dir={cache}", f"--instance={instance}",
            f"--uid={DEV_UID}", f"--gid={DEV_GID}", f"--script={script}",
            *[f"--cells-dir={d}" for d in devshell_cells_path[:-1]]]  # as the factory does
    return cache, argv, request.param, container_name(devshell_cell.name, instance)


@pytest.mark.attack(CLASS, "a read-only launch over a config linked into memory")
@pytest.mark.parametrize("left_behind", list(LAYOUTS), indirect=True)
def test_a_read_only_launch_over_a_linked_config_is_refused(left_behind, devshell_cli, devshell_engine,
                                                            host_tree):
    cache, argv, layout, name = left_behind
    before = host_tree(cache)
    done = devshell_cli(None, *argv)
    assert done.exit_code == 2, done.stdout + done.stderr
    assert "launched" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devshell: error:"), done.stderr
    assert ("hard link" if "hard" in layout else "symlink") in lines[0]
    assert host_tree(cache) == before
    assert devshell_engine.inspect(name) is None  # nothing was created


@pytest.mark.control(CLASS, "a read-only launch over a config linked into memory")
@pytest.mark.parametrize("left_behind", list(LAYOUTS), indirect=True)
def test_the_same_layout_launches_with_ai_config_rw(left_behind, devshell_cli):
    """The guard is the read-only launch's: with --ai-config-rw the same cache launches."""
    _, argv, _, _ = left_behind
    done = devshell_cli(None, *argv, "--ai-config-rw")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "launched\n"
