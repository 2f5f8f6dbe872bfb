"""seccomp.profile: the structure of devshell's seccomp allowlist, without Docker.

What the rules do in a real container (runc 1.1.5, Docker 20.10) is checked by the container suite;
these tests pin the text those checks rely on.
"""

from __future__ import annotations

import errno
import hashlib
import json
from typing import Any

import pytest

from devshell import seccomp
from devshell.seccomp import ALLOWED, CAP_DROP, DENIED, MKNOD_ARG, MODE_ARG, profile

SETID = 0o6000
MODE_TAKING = set(MODE_ARG) | set(MKNOD_ARG)


def rules() -> list[dict[str, Any]]:
    doc = json.loads(profile())
    assert isinstance(doc, dict)
    result = doc["syscalls"]
    assert isinstance(result, list)
    return result


def allowing(name: str) -> list[dict[str, Any]]:
    return [r for r in rules() if name in r["names"] and r["action"] == "SCMP_ACT_ALLOW"]


def test_parses_as_a_docker_profile() -> None:
    doc = json.loads(profile())
    assert set(doc) == {"defaultAction", "defaultErrnoRet", "archMap", "syscalls"}
    assert doc["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ]
    for rule in doc["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet", "comment"}
        assert rule["names"] and all(isinstance(n, str) for n in rule["names"])
        assert rule["action"] in {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"}
        assert ("errnoRet" in rule) == (rule["action"] == "SCMP_ACT_ERRNO")


def test_default_is_an_errno_so_unknown_syscalls_are_refused() -> None:
    # An allowlist: fchmodat2 and whatever comes next are refused without being named. ENOSYS so that
    # callers fall back to the older, filtered syscall.
    doc = json.loads(profile())
    assert doc["defaultAction"] == "SCMP_ACT_ERRNO"
    assert doc["defaultErrnoRet"] == errno.ENOSYS
    assert not allowing("fchmodat2")


def test_denied_names_get_enosys_explicitly() -> None:
    # Docker 20.10 drops defaultErrnoRet; glibc only falls back from clone3 to clone on ENOSYS.
    explicit = [r for r in rules() if r["action"] == "SCMP_ACT_ERRNO" and r["errnoRet"] == errno.ENOSYS]
    named = {n for r in explicit for n in r["names"]}
    assert {"clone3", "openat2", "io_uring_setup", "io_uring_enter", "io_uring_register"} <= named
    assert named == set(DENIED)
    assert all(r["args"] == [] for r in explicit)


@pytest.mark.parametrize("name", DENIED)
def test_no_denied_name_is_allowed(name: str) -> None:
    assert not allowing(name)


def test_denied_covers_what_a_dev_container_never_needs() -> None:
    must = {
        "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
        "swapon", "swapoff", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick",
        "open_tree", "move_mount", "mount_setattr", "setns", "unshare", "clone3", "bpf", "perf_event_open",
        "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "openat2", "open_by_handle_at", "name_to_handle_at", "kcmp", "iopl", "ioperm",
        "acct", "quotactl", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "syslog",
        "vhangup", "lookup_dcookie", "nfsservctl", "uselib",
    }
    assert must <= set(DENIED)


def test_allowlist_has_no_duplicates_and_no_conditional_name() -> None:
    assert len(set(seccomp.ALLOWED)) == len(seccomp.ALLOWED)
    assert len(set(DENIED)) == len(DENIED)
    conditional = MODE_TAKING | {"clone", "personality"}
    assert not set(seccomp.ALLOWED) & (conditional | set(DENIED))


# Named as well as taken from MODE_TAKING, so that dropping one from MODE_ARG cannot hide it.
@pytest.mark.parametrize("name", sorted(MODE_TAKING | {"clone", "personality", "chmod", "fchmodat", "open",
                                                       "openat", "mkdir", "mknod"}))
def test_mode_taking_and_namespace_syscalls_are_never_allowed_unconditionally(name: str) -> None:
    found = allowing(name)
    assert found
    assert all(r["args"] for r in found)


def test_a_rule_never_tests_one_argument_twice() -> None:
    # runc turns several conditions on the same argument into separate rules, i.e. an OR.
    for rule in rules():
        indexes = [a["index"] for a in rule["args"]]
        assert len(indexes) == len(set(indexes)), rule


@pytest.mark.parametrize(("name", "index"), sorted(MODE_ARG.items()))
def test_mode_rules_allow_only_modes_without_setuid_or_setgid(name: str, index: int) -> None:
    assert [r["args"] for r in allowing(name)] == [
        [{"index": index, "value": SETID, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    ]


@pytest.mark.parametrize(("name", "index"), sorted(MKNOD_ARG.items()))
def test_mknod_allows_only_plain_regular_files(name: str, index: int) -> None:
    assert sorted(r["args"][0]["valueTwo"] for r in allowing(name)) == [0, 0o100000]
    for rule in allowing(name):
        assert rule["args"] == [
            {"index": index, "value": 0o176000, "valueTwo": rule["args"][0]["valueTwo"],
             "op": "SCMP_CMP_MASKED_EQ"}
        ]


def test_the_expected_mode_argument_positions() -> None:
    assert MODE_ARG == {"chmod": 1, "fchmod": 1, "fchmodat": 2, "open": 2, "openat": 3, "creat": 1,
                        "mkdir": 1, "mkdirat": 2}
    assert MKNOD_ARG == {"mknod": 1, "mknodat": 2}


def allowed_mode(name: str, mode: int) -> bool:
    """Evaluate the profile's allow rules for one mode argument, as libseccomp would."""
    return any(all(mode & a["value"] == a["valueTwo"] for a in r["args"]) for r in allowing(name))


@pytest.mark.parametrize("name", sorted(MODE_ARG))
@pytest.mark.parametrize(("mode", "ok"), [(0o644, True), (0o755, True), (0o1777, True), (0, True),
                                          (0o4755, False), (0o2755, False), (0o6755, False), (0o2000, False)])
def test_mode_decisions(name: str, mode: int, ok: bool) -> None:
    assert allowed_mode(name, mode) is ok


@pytest.mark.parametrize("name", sorted(MKNOD_ARG))
@pytest.mark.parametrize(("mode", "ok"), [(0o644, True), (0o100644, True), (0o010644, False),
                                          (0o020644, False), (0o060644, False), (0o140644, False),
                                          (0o104755, False), (0o4755, False), (0o102755, False)])
def test_mknod_decisions(name: str, mode: int, ok: bool) -> None:
    assert allowed_mode(name, mode) is ok


def test_refused_modes_say_eperm() -> None:
    refusals = [r for r in rules() if r["action"] == "SCMP_ACT_ERRNO" and r["errnoRet"] == errno.EPERM]
    assert {n for r in refusals for n in r["names"]} == MODE_TAKING
    for rule in refusals:  # an EPERM rule never matches a mode the allow rules accept
        arg = rule["args"][0]
        assert arg["valueTwo"] and arg["value"] & arg["valueTwo"] == arg["valueTwo"]


def test_clone_only_without_namespace_flags() -> None:
    assert [r["args"] for r in allowing("clone")] == [
        [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    ]


def test_personality_only_common_values() -> None:
    values = set()
    for rule in allowing("personality"):
        [arg] = rule["args"]
        assert arg["value"] == 0xFFFFFFFF and arg["op"] == "SCMP_CMP_MASKED_EQ"
        values.add(arg["valueTwo"])
    assert values == {0x0, 0x8, 0x20000, 0x20008, 0x40000, 0x40008, 0xFFFFFFFF}


def test_debuggers_and_everyday_syscalls_are_allowed() -> None:
    for name in ("ptrace", "process_vm_readv", "execve", "read", "write", "fchown", "setresuid", "capset",
                 "futex", "rseq", "statx", "getdents64", "wait4", "renameat2", "unlinkat"):
        assert any(r["args"] == [] for r in allowing(name)), name


def test_sockets_only_of_the_families_a_build_uses_compared_as_the_kernel_reads_them() -> None:
    rules = allowing("socket")
    # a 32-bit mask: the kernel reads the family as an int, so AF_VSOCK | 1 << 32 is vsock
    assert sorted(r["args"][0]["valueTwo"] for r in rules) == [1, 2, 10, 16]  # not 40, vsock
    assert all(r["args"] == [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": r["args"][0]["valueTwo"],
                              "op": "SCMP_CMP_MASKED_EQ"}] for r in rules), rules
    assert "socketcall" not in ALLOWED  # its family sits behind a pointer
    assert "socketpair" not in ALLOWED
    assert [r["args"] for r in allowing("socketpair")] == [
        [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]]  # AF_UNIX only


def test_deterministic() -> None:
    first = profile()
    assert profile() == first
    assert hashlib.sha256(profile().encode()).hexdigest() == hashlib.sha256(first.encode()).hexdigest()


def test_capabilities_dropped_alongside() -> None:
    assert CAP_DROP == ("MKNOD", "SETFCAP", "NET_RAW")
