"""Devshell's seccomp profile (devshell/seccomp.py) compiled to a BPF program, by the host's
libseccomp, for a runtime that does not apply the container's profile to `docker exec`.

gVisor 20221219 (Debian's runsc) filters the container's own process but runs every exec'd one
unfiltered, and a devshell session is a docker exec. There init installs this program on itself
(seccomp(2) through perl, which every Debian image has) before anything else runs, and the
session inherits it. Same rules as the profile the engine applies; what a JSON rule means is
what runc makes of it: a name the architecture lacks is skipped, and a rule whose action is the
default action adds nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import tempfile

from .errors import DevshellError

SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# Where the container finds it (in the locked image, which is the only kind that can use it:
# installing a filter without CAP_SYS_ADMIN needs no-new-privileges, which sudo cannot live with).
BPF_PATH = "/usr/local/libexec/devshell-seccomp.bpf"


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return SCMP_ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return _SCMP_ACT_ERRNO | ((1 if errno_ret is None else errno_ret) & 0xFFFF)
    raise ValueError(f"seccomp action {name} is not one devshell's profile uses")


def _library() -> ctypes.CDLL:
    found = ctypes.util.find_library("seccomp")
    if not found:
        raise DevshellError("libseccomp is not installed on this host: devshell cannot give a gVisor "
                            "session the seccomp filter gVisor leaves off docker exec",
                            "install libseccomp2 (apt-get install libseccomp2), or drop --runtime")
    lib = ctypes.CDLL(found, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def compile_profile(profile_json: str) -> bytes:
    """The BPF program (struct sock_filter[]) for the host's architecture."""
    doc = json.loads(profile_json)
    lib = _library()
    default = _action(doc["defaultAction"], doc.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise DevshellError("libseccomp could not start a filter", "check the host's libseccomp")
    try:
        for rule in doc["syscalls"]:
            action = _action(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(len(args), 1))(*[
                _ArgCmp(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in args])
            for name in rule["names"]:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue  # not a syscall of this architecture (runc skips it too)
                if lib.seccomp_rule_add_array(ctx, action, number, len(args), cmps) < 0:
                    raise DevshellError(f"libseccomp refused the rule for {name}",
                                        "check the host's libseccomp")
        with tempfile.TemporaryFile() as out:
            if lib.seccomp_export_bpf(ctx, out.fileno()) < 0:
                raise DevshellError("libseccomp could not export the filter", "check the host's libseccomp")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8 or len(program) // 8 > 4096:  # the kernel's BPF_MAXINSNS
        raise DevshellError("libseccomp exported no usable BPF program", "check the host's libseccomp")
    return program

