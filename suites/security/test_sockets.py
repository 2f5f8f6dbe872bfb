"""Class 8: sockets of a family no build needs cannot be made, by socket(2) or socketpair(2).

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

# call -> (syscall number on x86_64, address family as perl's syscall() passes it: a long).
# socketpair(2) (53) makes its sockets before it asks the family for a pair, so a family
# without pairs still runs its create code there: refused too. (Families other than vsock
# the kernel may not have; the filter's errno says the filter refused them either way.)
CALLS = {
    "socket(AF_VSOCK)": (41, 40), "socket(AF_VSOCK | 1 << 32)": (41, 40 | 1 << 32),
    "socket(AF_VSOCK | 1 << 63)": (41, 40 | 1 << 63), "socketpair(AF_VSOCK)": (53, 40),
    "socketpair(AF_VSOCK | 1 << 32)": (53, 40 | 1 << 32), "socket(AF_PACKET)": (41, 17),
    "socket(AF_TIPC)": (41, 30), "socket(AF_ALG)": (41, 38),
}

# One line per call: its name and the errno it failed with, or 0 where it made a socket.
# (socketpair's type is SOCK_DGRAM here, so AF_VSOCK's create code accepts it.)
PROBE = "perl -e " + shlex.quote(
    "my $sv = pack('i2', -1, -1);"
    " for my $c (" + ", ".join(f"['{name}', {nr}, {family}]" for name, (nr, family) in CALLS.items()) + ") {"
    " my $r = $c->[1] == 53 ? syscall(53, $c->[2], 2, 0, $sv) : syscall(41, $c->[2], 1, 0);"
    " print \"$c->[0]: \", ($r >= 0 ? 0 : $! + 0), \"\\n\"; }")


def outcomes(stdout: str) -> dict[str, int]:
    found = dict(line.rsplit(": ", 1) for line in stdout.splitlines())
    assert sorted(found) == sorted(CALLS), stdout
    return {name: int(value) for name, value in found.items()}


@pytest.mark.attack(CLASS, "sockets of other families (vsock, packet, tipc, alg), high bits set or not")
@pytest.mark.parametrize("user", USERS)
def test_a_vsock_socket_is_refused_by_the_filter(devshell_factory, agent, as_user, user):
    shell = devshell_factory.open()
    result = agent(shell, as_user(PROBE, user))
    assert result.exit_code == 0, result.stderr
    got = outcomes(result.stdout)
    assert all(code in FILTERED for code in got.values()), got
    # and the families a build uses still work, high bits or not (the kernel reads an int)
    inet = agent(shell, "perl -e 'print map { syscall(41, $_, 1, 0) >= 0 ? 1 : 0 } 2, 2 | 1 << 32'")
    assert inet.stdout == "11", inet
    pair = agent(shell, "perl -e 'my $sv = pack(q(i2), -1, -1); print syscall(53, 1, 1, 0, $sv) ? 0 : 1'")
    assert pair.stdout == "1", pair  # AF_UNIX pairs, which pipelines and build tools use


@pytest.mark.control(CLASS, "sockets of other families (vsock, packet, tipc, alg), high bits set or not")
def test_the_engines_default_profile_lets_a_high_bit_vsock_through(devshell_factory, plain_docker):
    # The engine's own profile refuses AF_VSOCK by a 64-bit comparison and lets socketpair
    # through whatever the family: both calls reach the kernel (a socket, or the kernel's own
    # EAFNOSUPPORT or EOPNOTSUPP, never the filter's errno).
    shell = devshell_factory.open()
    done = plain_docker(shell, PROBE, "--user", "1000:1000")
    assert done.returncode == 0, done.stderr
    got = outcomes(done.stdout)
    assert got["socket(AF_VSOCK | 1 << 32)"] not in FILTERED, got
    assert got["socketpair(AF_VSOCK)"] not in FILTERED, got
