"""With a host cache, AI state (skills, settings, per-project memory) lives on the host at
/cache/ai and is linked into ~/.claude for the four directories a session may start in."""

import os
import shlex

import pytest
from batch import exit_codes

from devshell.plugin import DEV_GID, DEV_UID

# Root inside is a premise of the standard profile only: under locked sudo is not there.
USERS = ["dev", pytest.param("root via sudo", marks=pytest.mark.standard_profile)]


def memory_dir(shell):
    env = dict(shell.spec.env)
    return f"/cache/ai/memory/{env['DEVSHELL_AI_REPO']}/{env['DEVSHELL_AI_REPO_ENCODED']}"


def test_skills_link_resolves_to_the_cache(devshell):
    result = devshell.run("readlink -e ~/.claude/skills")
    assert result.stdout.strip() == "/cache/ai/skills"


@pytest.mark.parametrize("start", ["/patches", "/checkout", "workspace", "/home/dev"])
def test_memory_link_resolves_for_each_start_directory(devshell, start):
    start = devshell.spec.workspace if start == "workspace" else start
    key = start.replace("/", "-")
    result = devshell.run(f"readlink -e ~/.claude/projects/{key}/memory")
    assert result.stdout.strip() == memory_dir(devshell)


def host_memory(shell, name):
    env = dict(shell.spec.env)
    return (f"{shell.opts.host_cache}/ai/memory/{env['DEVSHELL_AI_REPO']}/"
            f"{env['DEVSHELL_AI_REPO_ENCODED']}/{name}")


@pytest.mark.parametrize("start", ["/patches", "/checkout", "workspace", "/home/dev"])
def test_memory_written_from_each_start_directory_lands_in_the_host_cache(devshell, start):
    start = devshell.spec.workspace if start == "workspace" else start
    name = f"note{start.replace('/', '-')}.md"
    key = start.replace("/", "-")
    assert devshell.run(f"cd {start} && echo remembered > ~/.claude/projects/{key}/memory/{name}"
                        ).exit_code == 0
    with open(host_memory(devshell, name)) as f:
        assert f.read() == "remembered\n"


def test_memory_survives_rm_recreation_and_volume_removal(devshell_factory, devshell_cli):
    shell = devshell_factory.open()
    assert shell.run("echo kept > ~/.claude/projects/-patches/memory/m.md").exit_code == 0
    assert devshell_cli(shell, "--rm").exit_code == 0
    assert shell.engine.remove_volume(shell.spec.volume)
    again = devshell_factory.open(checkout=shell.opts.checkout, patches_out=shell.opts.patches_out,
                                  host_cache=shell.opts.host_cache,
                                  instance=shell.opts.instance)
    assert again.outcome.state == "fresh"
    assert again.run("cat ~/.claude/projects/-patches/memory/m.md").stdout == "kept\n"


SEEDED_SETTINGS = '{"theme": "dark"}\n'


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("seeded-cache")
    cache.chmod(0o755)  # dev must pass through it to reach memory; pytest makes it 0700
    (cache / "ai" / "skills" / "review").mkdir(parents=True)
    (cache / "ai" / "skills" / "review" / "SKILL.md").write_text("# review\n")
    (cache / "ai" / "settings.json").write_text(SEEDED_SETTINGS)
    return cache


@pytest.fixture(scope="module")
def seeded_shell(devshell_factory, seeded_cache):
    """A devshell on the seeded cache, shared by the tests that try to change its configuration
    (which must fail) and write only their own memory."""
    return devshell_factory.open(host_cache=seeded_cache)


# Attempts on the AI configuration, each of which must fail inside by default.
CONFIG_ATTEMPTS = ("touch ~/.claude/skills/planted", "rm ~/.claude/skills/review/SKILL.md",
                   "cp /dev/null ~/.claude/settings.json", "mv /cache/ai /cache/ai.old",
                   "rm /cache/ai/settings.json && echo {} > /cache/ai/settings.json",
                   "rm -rf /cache/ai/skills && ln -s / /cache/ai/skills")


def config_attempts(user, ai="/cache/ai", claude="/home/dev/.claude"):
    """Each attempt as user (dev, or root through sudo), aimed at ai and the links in claude."""
    sudo = "sudo -n " if user != "dev" else ""
    return {a: f"{sudo}sh -c {shlex.quote(a.replace('~/.claude', claude).replace('/cache/ai', ai))}"
            for a in CONFIG_ATTEMPTS}


@pytest.mark.parametrize("user", USERS)
def test_ai_config_is_read_only_inside_by_default(seeded_shell, seeded_cache, user):
    shell = seeded_shell
    codes = exit_codes(shell, config_attempts(user))
    assert [a for a, code in codes.items() if code == 0] == [], f"succeeded as {user}"
    assert shell.run("cat ~/.claude/skills/review/SKILL.md").stdout == "# review\n"
    assert (seeded_cache / "ai" / "settings.json").read_text() == SEEDED_SETTINGS
    assert shell.run("echo ok > ~/.claude/projects/-patches/memory/w.md").exit_code == 0


@pytest.mark.parametrize("user", USERS)
def test_control_the_attempts_work_on_a_writable_copy(seeded_shell, user):
    """The control: each attempt above succeeds against a copy of the configuration dev owns
    (made anew for each, with links in the copy as ~/.claude has), so only the read-only
    binding makes them fail."""
    copy = "/tmp/ai-copy"
    make = (f"{{ rm -rf {copy} {copy}.old && cp -r /cache/ai {copy} && mkdir -p {copy}/claude"
            f" && ln -s {copy}/skills {copy}/claude/skills"
            f" && ln -s {copy}/settings.json {copy}/claude/settings.json; }} || exit 99\n")
    attempts = {a: make + script for a, script in config_attempts(user, copy, f"{copy}/claude").items()}
    codes = exit_codes(seeded_shell, attempts)
    assert [a for a, code in codes.items() if code != 0] == [], f"failed as {user} on a writable copy"


def test_ai_config_rw_lets_the_agent_change_skills_and_settings(devshell_factory, tmp_path):
    cache = tmp_path / "cache"
    (cache / "ai" / "skills").mkdir(parents=True)
    (cache / "ai" / "settings.json").write_text("{}\n")
    # The user hands the configuration to dev's uid; devshell never changes a host file's owner.
    for path in (cache / "ai", cache / "ai" / "skills", cache / "ai" / "settings.json"):
        os.chown(path, DEV_UID, DEV_GID)
    shell = devshell_factory.open(host_cache=cache, ai_config_rw=True)
    result = shell.run("echo new > ~/.claude/skills/s.md && echo '{\"a\": 1}' > ~/.claude/settings.json")
    assert result.exit_code == 0, result.stderr
    assert (cache / "ai" / "skills" / "s.md").read_text() == "new\n"
    assert (cache / "ai" / "settings.json").read_text() == '{"a": 1}\n'



def test_settings_link_resolves_when_the_cache_has_settings(seeded_shell):
    assert seeded_shell.run("cat ~/.claude/settings.json").stdout == SEEDED_SETTINGS


def test_the_host_cache_keeps_its_owner_and_mode(devshell_factory, seeded_cache):
    def owners():
        return {str(p): (p.lstat().st_uid, p.lstat().st_mode)
                for p in [seeded_cache, *seeded_cache.rglob("*")] if "memory" not in p.parts}
    before = owners()
    shell = devshell_factory.open(host_cache=seeded_cache)
    assert shell.run("true").exit_code == 0
    assert owners() == before


@pytest.mark.parametrize("user", USERS)
def test_only_this_checkouts_memory_is_writable(seeded_shell, seeded_cache, user):
    other = seeded_cache / "ai" / "memory" / "other" / "-srv-other"
    other.mkdir(parents=True, exist_ok=True)
    shell = seeded_shell
    sudo = "sudo -n " if user != "dev" else ""
    result = shell.run(f"{sudo}touch /cache/ai/memory/other/-srv-other/planted")
    assert result.exit_code != 0, f"another project's memory was writable as {user}"
    assert not (other / "planted").exists()
    assert shell.run(f"{sudo}touch {memory_dir(shell)}/mine").exit_code == 0
