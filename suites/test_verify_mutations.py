"""--verify catches each broken promise by name, and init repairs it.

Each test breaks exactly one element of the promised state in a live devshell that --verify
passes, then asserts that --verify exits non-zero naming that element, that init repairs it, and
that --verify passes again: so the table runs on one devshell, repaired in place between rows.
"""

from __future__ import annotations

import pytest

from devshell.engine import ExecResult
from devshell.spec import INIT_PATH

# element -> shell (as root) that breaks exactly it. $WS, $MEM and $H are set by break_verify_repair().
MUTATIONS = {
    "dev missing": ("dev-user", "userdel dev"),
    "dev with the wrong uid": ("dev-uid", "usermod -u 1234 dev"),
    "dev with the wrong gid": ("dev-gid", "groupadd -g 1235 other && usermod -g 1235 dev"),
    "dev group at the wrong gid": ("dev-group", "groupmod -g 1236 dev"),
    "home missing": ("dev-home", "rm -rf /home/dev"),
    "home not dev's": ("dev-home", "chown root:root /home/dev"),
    "home elsewhere": ("dev-home", "usermod -d /home/elsewhere dev"),
    "extra dev-named account": ("dev-unique", "echo 'dev:x:2000:2000::/home/dev2:/bin/sh' >> /etc/passwd"),
    "second account at dev's uid": ("dev-unique", "useradd -o -u $DEVSHELL_DEV_UID -M intruder"),
    "checkout not trusted by git": ("checkout-trusted", "sed -i '/checkout/d' /etc/gitconfig"),
    "sudoers entry removed": ("sudoers", "rm /etc/sudoers.d/devshell"),
    "sudoers entry world-readable": ("sudoers", "chmod 0644 /etc/sudoers.d/devshell"),
    "sudoers entry weakened": ("sudoers", "echo 'dev ALL=(ALL) ALL' > /etc/sudoers.d/devshell"),
    "sudoers.d not included": ("sudoers", "sed -i '/includedir/d' /etc/sudoers"),
    "workspace owned by root": ("workspace-owner", "chown root:root $WS"),
    "build dir missing": ("workspace-dirs", "rm -rf $DEVSHELL_BUILD"),
    "skills link dangling": ("skills-link", "ln -sfn /nonexistent $H/.claude/skills"),
    "skills link missing": ("skills-link", "rm $H/.claude/skills"),
    "settings link missing while settings.json exists": ("settings-link", "rm $H/.claude/settings.json"),
    "memory link for /patches removed": ("memory-link:patches", "rm $H/.claude/projects/-patches/memory"),
    "memory link for /checkout removed": ("memory-link:checkout", "rm $H/.claude/projects/-checkout/memory"),
    "memory link for the workspace removed": (
        "memory-link:workspace", "rm $H/.claude/projects/$(echo $WS | tr / -)/memory"),
    "memory link for home removed": ("memory-link:home", "rm $H/.claude/projects/-home-dev/memory"),
}

# Those that write the root filesystem (accounts, /etc, dev's home itself): under locked it is
# read-only, so none of them can be planted, and there is no sudoers entry to break
# (test_profiles.py checks that it is absent). The rest live in the volume or the binds.
ROOT_FS = {"dev missing", "dev with the wrong uid", "dev with the wrong gid", "dev group at the wrong gid",
           "home missing", "home elsewhere", "extra dev-named account", "second account at dev's uid",
           "checkout not trusted by git", "sudoers entry removed", "sudoers entry world-readable",
           "sudoers entry weakened", "sudoers.d not included"}

# Host directories init never repairs: it does not change the owner or mode of a host directory
# it did not create. verify still names them, so the session fails loudly instead of half-working.
HOST_MUTATIONS = {
    "patches not writable by dev": ("patches-writable", "chown root:root /patches && chmod 0700 /patches"),
    "memory not writable by dev": ("memory-dir", "chown root:root $MEM && chmod 0755 $MEM"),
}

def open_live(devshell_factory, base):
    base.chmod(0o755)
    cache = base / "cache"
    (cache / "ai").mkdir(parents=True)
    (cache / "ai" / "settings.json").write_text("{}\n")
    shell = devshell_factory.open(host_cache=cache)
    assert shell.run("true").exit_code == 0
    assert shell.verify().exit_code == 0, shell.verify().stdout
    return shell


class Repaired:
    """One devshell (per worker) for the whole mutation table: each mutation is undone in place
    by init, and the next starts only from a devshell that --verify passed after the last
    repair, so no mutation's promise depends on a fresh one. One left broken is replaced."""

    def __init__(self, open_one):
        self.open_one, self.shell = open_one, None

    def get(self):
        if self.shell is None:
            self.shell = self.open_one()
        return self.shell

    def left_broken(self):
        self.shell = None

    def verified(self, shell):
        self.shell = shell


@pytest.fixture(scope="module")
def repaired(devshell_factory, tmp_path_factory):
    return Repaired(lambda: open_live(devshell_factory, tmp_path_factory.mktemp("mutations")))


@pytest.fixture
def live(devshell_factory, tmp_path):
    """A devshell of the test's own: for a mutation init does not undo."""
    return open_live(devshell_factory, tmp_path)


SEPARATOR = "--- init ran ---"


def break_verify_repair(shell, command: str) -> tuple[ExecResult, ExecResult]:
    """As root: break it, --verify, init, --verify again; one exec for the four steps (an exec
    each was most of this table's time). The two verify results, exit code and stdout."""
    env = dict(shell.spec.env)
    mem = f"/cache/ai/memory/{env['DEVSHELL_AI_REPO']}/{env['DEVSHELL_AI_REPO_ENCODED']}"
    verify = f'v=$({INIT_PATH} --verify); echo "$?"; printf "%s\\n" "$v"'
    # The break's own output goes to stderr (stdout is the two verify results), and its status
    # is read after the subshell: `( set -e; ... ) || ...` would turn set -e off inside it.
    script = (f'WS="$DEVSHELL_WORKSPACE" MEM="{mem}" H=/home/dev\n'
              f'( set -e; {command} ) >&2; broke=$?\n'
              f'[ "$broke" = 0 ] || {{ echo "could not break it: exit $broke" >&2; exit 97; }}\n'
              f'{verify}; echo "{SEPARATOR}"\n{INIT_PATH} >/dev/null 2>&1\n{verify}\n')
    result = shell.exec(["bash", "-c", script])
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    broken, repaired = (verify_result(part) for part in result.stdout.split(SEPARATOR))
    return broken, repaired


def verify_result(printed: str) -> ExecResult:
    code, _, stdout = printed.strip("\n").partition("\n")
    return ExecResult(int(code), stdout, "")


@pytest.mark.parametrize("mutation", [pytest.param(m, marks=pytest.mark.standard_profile) if m in ROOT_FS
                                      else m for m in MUTATIONS])
def test_verify_names_the_broken_element_and_init_repairs_it(repaired, mutation, record_property):
    element, command = MUTATIONS[mutation]
    shell = repaired.get()
    repaired.left_broken()  # until its repair is verified: a row that fails midway leaves it so
    broken, fixed = break_verify_repair(shell, command)
    if fixed.exit_code == 0:
        repaired.verified(shell)
    caught = broken.exit_code != 0 and f"FAIL {element}" in named_failures(broken)
    # conftest.py prints these rows as the mutation table (they reach it from xdist workers too).
    record_property("mutation", (mutation, element, caught, fixed.exit_code == 0))
    assert caught, f"verify missed {element}: exit {broken.exit_code}, {broken.stdout!r}"
    assert fixed.exit_code == 0, f"init did not repair {element}: {fixed.stdout!r}"


def named_failures(result):
    return [line.split(":", 1)[0] if not line.startswith("FAIL memory-link:")
            else line.rsplit(":", 1)[0] for line in result.stdout.splitlines()]


@pytest.mark.parametrize("mutation", list(HOST_MUTATIONS))
def test_verify_names_a_broken_host_directory_and_init_leaves_its_owner(live, mutation):
    element, command = HOST_MUTATIONS[mutation]
    broken, after_init = break_verify_repair(live, command)
    assert broken.exit_code != 0 and f"FAIL {element}" in named_failures(broken), broken.stdout
    assert f"FAIL {element}" in named_failures(after_init), "init changed a host directory's owner"
