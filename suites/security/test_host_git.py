"""Class 1: host-side git never runs agent code.

The drop dir is agent-written. The agent makes it a git repository armed every way git runs a
configured command (fsmonitor, clean/smudge filters, a merge driver, textconv, an includeIf'd
config, hooks), each command leaving a marker file in a host directory. `devshell patches
list/check/apply` on the host must leave no marker; plain git in a copy of the same directory
leaves them (the control), so the arming is real.
"""

from __future__ import annotations

import os
import shutil

import pytest

from devshell.options import default_patches_out

CLASS = "1 host git"

HOOKS = ("pre-commit", "post-checkout", "post-index-change", "applypatch-msg", "pre-applypatch",
         "post-applypatch", "post-rewrite", "reference-transaction", "post-merge", "pre-auto-gc")


def arm(markers: str) -> str:
    """The agent's script: a real patch for the host, then /patches made a booby-trapped repo."""
    hooks = "\n".join(f"printf '#!/bin/sh\\ntouch {markers}/hook-{h}\\n' > .git/hooks/{h}; "
                      f"chmod +x .git/hooks/{h}" for h in HOOKS)
    return f"""
set -e
rm -rf /tmp/w && git clone -q /checkout /tmp/w && cd /tmp/w
git config user.name Agent && git config user.email agent@devshell.invalid
echo "a change" >> README && git commit -qam "Change README" && git format-patch -q -o /patches -1
cd /patches
git init -q -b main . && echo data > f && echo data > g
git -c user.name=A -c user.email=a@x add -A && git -c user.name=A -c user.email=a@x commit -qm planted
# armed only now, so nothing fires inside
cat >> .git/config <<'EOF'
[core]
	fsmonitor = touch {markers}/fsmonitor
[filter "x"]
	clean = touch {markers}/filter-clean && cat
	smudge = touch {markers}/filter-smudge && cat
[merge "evil"]
	driver = touch {markers}/merge-driver
[diff "evil"]
	textconv = touch {markers}/textconv && cat
[includeIf "gitdir:/"]
	path = evil.cfg
EOF
printf '[filter "y"]\\n\\tclean = touch {markers}/include && cat\\n' > .git/evil.cfg
printf '* filter=x merge=evil diff=evil\\ng filter=y\\n' > .git/info/attributes
{hooks}
"""


@pytest.fixture(scope="module")
def world(devshell_factory, make_repo, tmp_path_factory):
    """A host checkout (a real repository), devshell's default drop dir for it under a private
    XDG_STATE_HOME, and a devshell binding both."""
    base = tmp_path_factory.mktemp("host-git")
    base.chmod(0o755)
    checkout = make_repo(base / "checkout")
    state = base / "state"
    env = {"XDG_STATE_HOME": str(state)}
    drop = default_patches_out(os.path.realpath(checkout), os.path.expanduser("~"), env)
    shell = devshell_factory.open(checkout=checkout, patches_out=drop, host_cache=False)
    return shell, checkout, drop, env


@pytest.fixture
def armed(world, tmp_path):
    shell, checkout, drop, env = world
    markers = tmp_path / "markers"
    markers.mkdir()
    # An empty drop dir first, emptied by root through a plain exec of the harness's (applied/ of
    # an earlier test is the host's, not dev's to remove; the locked profile has no sudo).
    emptied = shell.exec(["find", "/patches", "-mindepth", "1", "-delete"])
    assert emptied.exit_code == 0, emptied.stderr
    result = shell.run(arm(str(markers)))
    assert result.exit_code == 0, result.stderr
    with open(os.path.join(drop, ".git", "config")) as f:
        assert "fsmonitor" in f.read()  # the trap is on the host, armed
    assert [p for p in os.listdir(drop) if p.endswith(".patch")]
    return shell, checkout, drop, env, markers


# (arguments, cwd: "checkout" or "drop", what the output must show: the patch was read)
ATTEMPTS = {
    "patches list": (["list", "--patches-dir", "{drop}"], "checkout", "Change README"),
    "patches check": (["check", "--patches-dir", "{drop}"], "checkout", "0001-Change-README.patch"),
    "patches apply": (["apply", "--patches-dir", "{drop}"], "checkout", None),
    # past the leftover refusal, so that git am really runs next to the armed repository
    "patches apply --ignore-leftovers": (["apply", "--ignore-leftovers", "--patches-dir", "{drop}"],
                                         "checkout", "applied 1 patch"),
    "patches list, default drop dir": (["list"], "checkout", "Change README"),
    "patches list run from inside the drop dir": (["list", "--patches-dir", "{drop}"], "drop", None),
    "patches check --repo <drop dir>": (["check", "--patches-dir", "{drop}", "--repo", "{drop}"],
                                        "checkout", None),
}


@pytest.mark.attack(CLASS, "devshell patches on an armed drop dir runs no planted command")
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_devshell_patches_never_runs_a_command_the_agent_planted(armed, attempt, devshell_patches,
                                                                  host_tree):
    _, checkout, drop, env, markers = armed
    args, where, shows = ATTEMPTS[attempt]
    hooks_before = host_tree(os.path.join(checkout, ".git", "hooks"))
    config_before = host_tree(os.path.join(checkout, ".git", "config"))
    # From inside the drop dir, as the `devshell` command: `python -m` would put that agent-
    # written cwd first on sys.path (see the planted-module test below).
    done = devshell_patches(*[a.format(drop=drop) for a in args],
                            cwd=checkout if where == "checkout" else drop, env=env, script=where == "drop")
    print(done.returncode, done.stdout, done.stderr)
    assert sorted(os.listdir(markers)) == [], f"host git ran the agent's code: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    # The user's own repository gained no hook or config either.
    assert host_tree(os.path.join(checkout, ".git", "hooks")) == hooks_before
    assert host_tree(os.path.join(checkout, ".git", "config")) == config_before
    if shows:  # not vacuous: the patch was read (or applied)
        assert shows in done.stdout, done.stdout + done.stderr


@pytest.mark.control(CLASS, "plain git status / git add in a copy of the armed drop dir")
def test_plain_git_in_a_copy_of_the_drop_dir_runs_the_planted_commands(armed, tmp_path, host_git):
    """The guard absent: the user's own git, pointed at (a copy of) the drop dir."""
    _, _, drop, _, markers = armed
    copy = tmp_path / "copy"
    shutil.copytree(drop, copy, symlinks=True)
    control = tmp_path / "control-markers"
    control.mkdir()
    for dirpath, _, filenames in os.walk(copy / ".git"):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    data = f.read()
                if str(markers).encode() in data:
                    with open(path, "wb") as f:
                        f.write(data.replace(str(markers).encode(), str(control).encode()))
    (copy / "f").write_text("changed\n")
    host_git(copy, "status", check=False)
    host_git(copy, "add", "-A", check=False)
    host_git(copy, "diff", "--cached", check=False)
    ran = set(os.listdir(control))
    assert {"fsmonitor", "filter-clean", "include", "textconv", "hook-post-index-change"} <= ran, ran
    assert os.listdir(markers) == []  # and the real marker dir saw none of it


def plant_module(markers) -> str:
    """The agent's other trap: a `devshell` package at the top of the drop dir, which Python
    imports first for `python -m devshell` run there (the cwd leads sys.path)."""
    body = f'open("{markers}/python-import", "w").close()\\n'
    return (f"mkdir -p /patches/devshell && printf '{body}' > /patches/devshell/__init__.py"
            " && cp /patches/devshell/__init__.py /patches/devshell/__main__.py")


@pytest.mark.attack(CLASS, "a devshell/ package planted in the drop dir, `devshell patches` run there")
def test_the_devshell_command_run_in_the_drop_dir_imports_no_agent_module(armed, devshell_patches):
    shell, checkout, drop, env, markers = armed
    assert shell.run(plant_module(markers)).exit_code == 0
    done = devshell_patches("list", "--patches-dir", drop, "--repo", checkout, cwd=drop, env=env,
                            script=True)
    assert os.listdir(markers) == [], "the host imported the agent's module"
    assert "Change README" in done.stdout, done.stdout + done.stderr  # devshell's own code ran


@pytest.mark.control(CLASS, "a devshell/ package planted in the drop dir, `devshell patches` run there")
def test_python_m_devshell_in_a_copy_of_the_drop_dir_imports_the_agents_module(armed, tmp_path,
                                                                              devshell_patches):
    """The guard absent (the `devshell` command keeps the cwd off sys.path; `python -m` does
    not): in a copy of the drop dir, the planted package is what runs. Users should run the
    command, never `python -m devshell`, inside a drop dir."""
    shell, checkout, drop, env, markers = armed
    assert shell.run(plant_module(markers)).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(drop, "devshell"), copy / "devshell")
    control = tmp_path / "control-markers"
    control.mkdir()
    for name in ("__init__.py", "__main__.py"):
        path = copy / "devshell" / name
        path.write_text(path.read_text().replace(str(markers), str(control)))
    devshell_patches("list", "--repo", checkout, cwd=copy, env=env)
    assert os.listdir(control) == ["python-import"]
    assert os.listdir(markers) == []
