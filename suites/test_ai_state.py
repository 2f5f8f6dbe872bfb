"""With a host cache, AI state (skills, settings, per-project memory) lives on the host at
/cache/ai and is linked into ~/.claude for the three directories a session may start in."""

import pytest


def memory_dir(shell):
    env = dict(shell.spec.env)
    return f"/cache/ai/memory/{env['DEVSHELL_AI_REPO']}/{env['DEVSHELL_AI_REPO_ENCODED']}"


def test_skills_link_resolves_to_the_cache(devshell):
    result = devshell.run("readlink -e ~/.claude/skills")
    assert result.stdout.strip() == "/cache/ai/skills"


@pytest.mark.parametrize("start", ["/patches", "workspace", "/home/dev"])
def test_memory_link_resolves_for_each_start_directory(devshell, start):
    start = devshell.spec.workspace if start == "workspace" else start
    key = start.replace("/", "-")
    result = devshell.run(f"readlink -e ~/.claude/projects/{key}/memory")
    assert result.stdout.strip() == memory_dir(devshell)


def test_memory_written_inside_lands_in_the_host_cache(devshell):
    assert devshell.run("echo remembered > ~/.claude/projects/-patches/memory/note.md").exit_code == 0
    env = dict(devshell.spec.env)
    host = (f"{devshell.opts.host_cache}/ai/memory/{env['DEVSHELL_AI_REPO']}/"
            f"{env['DEVSHELL_AI_REPO_ENCODED']}/note.md")
    with open(host) as f:
        assert f.read() == "remembered\n"


def test_settings_link_resolves_when_the_cache_has_settings(devshell_factory, tmp_path):
    cache = tmp_path / "cache"
    (cache / "ai").mkdir(parents=True)
    (cache / "ai" / "settings.json").write_text('{"theme": "dark"}\n')
    shell = devshell_factory(host_cache=cache)
    assert shell.run("cat ~/.claude/settings.json").stdout == '{"theme": "dark"}\n'
