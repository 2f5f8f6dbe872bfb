"""Class 8: sockets of a family no build needs cannot be made.

vsock (AF_VSOCK, 40) reaches the hypervisor's services when the host is a virtual machine, and
no container network stands in its way. devshell's seccomp allowlist permits socket(2) only for
the families of devshell.seccomp.SOCKET_FAMILIES, compared as the kernel reads the argument (an
int): seccomp sees all 64 bits, so a filter comparing them lets AF_VSOCK | 1 << 32 through,
which the kernel then takes for AF_VSOCK.

A refused call gets the filter's errno (EPERM or ENOSYS); one the filter let through gets a
socket or the kernel's own answer (EAFNOSUPPORT where the host has no vsock), so the test holds
whether or not this host has vsock. The control makes the same calls in a plain `docker run`
of the same image, under the engine's default seccomp profile, whose rule compares 64 bits.
"""

from __future__ import annotations

import errno
import platform
import shlex

import pytest

CLASS = "8 sockets"
USERS = ["dev", pytest.param("root", marks=pytest.mark.standard_profile)]
FILTERED = {errno.EPERM, errno.ENOSYS}

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")

# family name -> the value passed to socket(2) (x86_64: 41) as perl's syscall() passes it, a long
CALLS = {"AF_VSOCK": 40, "AF_VSOCK | 1 << 32": 40 | 1 << 32, "AF_VSOCK | 1 << 63": 40 | 1 << 63}

# One line per call: its name and the errno it failed with, or 0 where it returned a socket.
PROBE = "perl -e " + shlex.quote(
    "for my $c (" + ", ".join(f"['{name}', {value}]" for name, value in CALLS.items()) + ") {"
    " my $fd = syscall(41, $c->[1], 1, 0);"
    " print \"$c->[0]: \", ($fd >= 0 ? 0 : $! + 0), \"\\n\"; }")


def outcomes(stdout: str) -> dict[str, int]:
    found = dict(line.rsplit(": ", 1) for line in stdout.splitlines())
    assert sorted(found) == sorted(CALLS), stdout
    return {name: int(value) for name, value in found.items()}


@pytest.mark.attack(CLASS, "socket(AF_VSOCK), also with high bits set")
@pytest.mark.parametrize("user", USERS)
def test_a_vsock_socket_is_refused_by_the_filter(devshell_factory, agent, as_user, user):
    shell = devshell_factory()
    result = agent(shell, as_user(PROBE, user))
    assert result.exit_code == 0, result.stderr
    got = outcomes(result.stdout)
    assert all(code in FILTERED for code in got.values()), got
    # and the families a build uses still work, high bits or not (the kernel reads an int)
    inet = agent(shell, "perl -e 'print map { syscall(41, $_, 1, 0) >= 0 ? 1 : 0 } 2, 2 | 1 << 32'")
    assert inet.stdout == "11", inet


@pytest.mark.control(CLASS, "socket(AF_VSOCK), also with high bits set")
def test_the_engines_default_profile_lets_a_high_bit_vsock_through(devshell_factory, plain_docker):
    # The engine's own profile refuses AF_VSOCK by a 64-bit comparison; with a high bit set, the
    # call reaches the kernel (a socket, or EAFNOSUPPORT on a host without vsock).
    shell = devshell_factory()
    done = plain_docker(shell, PROBE, "--user", "1000:1000")
    assert done.returncode == 0, done.stderr
    got = outcomes(done.stdout)
    assert got["AF_VSOCK | 1 << 32"] not in FILTERED, got
