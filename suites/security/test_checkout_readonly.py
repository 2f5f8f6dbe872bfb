"""Class 2: the agent cannot write the user's checkout, bound read-only at /checkout, as dev or
(under the standard profile) as root through sudo.

The checkout here belongs to dev's uid (1000), as it does when the host user and dev share a
uid: then plain permissions would let dev do everything, and only the read-only bind stands in
the way. The control runs each attempt on a writable copy (cp -a /checkout /tmp/copy) as the
same user, where it works.
"""

from __future__ import annotations

import os

import pytest

from devshell.plugin import DEV_GID, DEV_UID

CLASS = "2 checkout read-only"
# Root through sudo exists under the standard profile only (locked has no sudo).
USERS = ["dev", pytest.param("root", marks=pytest.mark.standard_profile)]

# Run with git trusting any repository: a refusal must come from the bind, not from git.
TRUST = "export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'; "

ATTEMPTS = {
    "create a file": "touch /checkout/planted",
    "plant a symlink (ln -s /etc /checkout/tools/etc)": "ln -s /etc /checkout/tools/etc",
    "replace a dir with a symlink": "rm -rf /checkout/tools && ln -s /etc /checkout/tools",
    "nest a .git": "git init -q /checkout/src",
    "set core.fsmonitor in .git/config": "git -C /checkout config core.fsmonitor 'touch /tmp/pwned'",
    "plant a hook": "printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > /checkout/.git/hooks/post-checkout",
    "append to a source file": "echo 'system(\"x\");' >> /checkout/src/main.c",
    "chmod a file": "chmod 0777 /checkout/README",
    "chmod the top dir": "chmod 0777 /checkout",
    "chown a file": f"chown {DEV_UID + 1}:{DEV_GID + 1} /checkout/README || "
                    f"chown {DEV_UID}:{DEV_GID} /checkout/README",
    "rm a file": "rm /checkout/README",
    "mv a file": "mv /checkout/README /checkout/README.old",
    "touch a file's mtime": "touch -d 2000-01-01 /checkout/README",
}


@pytest.fixture(scope="module")
def world(devshell_factory, make_repo, tmp_path_factory):
    base = tmp_path_factory.mktemp("checkout-ro")
    base.chmod(0o755)
    checkout = make_repo(base / "checkout", owner=(DEV_UID, DEV_GID))
    shell = devshell_factory.open(checkout=checkout, host_cache=False)
    return shell, checkout


@pytest.mark.attack(CLASS, "write the checkout")
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_the_checkout_cannot_be_written_from_inside(world, attempt, user, as_user, host_tree, agent):
    shell, checkout = world
    before = host_tree(checkout)
    result = agent(shell, TRUST + as_user(ATTEMPTS[attempt], user))
    assert result.exit_code != 0, f"{attempt} as {user} succeeded"
    assert host_tree(checkout) == before  # content, owner and mode of every entry


@pytest.mark.control(CLASS, "write the checkout")
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_each_write_works_on_a_writable_copy(world, attempt, user, as_user):
    shell, _ = world
    copy = f"/tmp/copy-{user}"  # each user its own: root's leftovers are not dev's to remove
    command = ATTEMPTS[attempt].replace("/checkout", copy)
    result = shell.run(TRUST + as_user(f"rm -rf {copy} && cp -a /checkout {copy} && {command}", user))
    assert result.exit_code == 0, result.stderr


@pytest.mark.attack(CLASS, "all attempts, then the checkout's top dir")
def test_the_checkout_is_unchanged_after_every_attempt(world, as_user, agent_users):
    shell, checkout = world
    # Made here, not left to the single attempts: xdist may run those on another worker.
    for attempt in ATTEMPTS.values():
        for user in agent_users:
            shell.run(TRUST + as_user(attempt, user))
    st = os.lstat(checkout)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (DEV_UID, DEV_GID, 0o755)
    assert not os.path.lexists(os.path.join(checkout, "planted"))
    assert not os.path.lexists(os.path.join(checkout, "src", ".git"))
    tools = os.path.join(checkout, "tools")
    assert os.path.isdir(tools) and not os.path.islink(tools)
    with open(os.path.join(checkout, "README")) as f:
        assert f.read() == "hello\n"
