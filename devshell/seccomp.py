"""Devshell's seccomp profile: an allowlist that never lets a file gain setuid/setgid bits.

The agent (root through sudo, or the `dev` user) writes into host-bound directories such as /patches
and /cache/ai/memory. A setuid or setgid file, a device node or a FIFO left there could let another
local host user become root or hang a host tool. CAP_MKNOD and CAP_SETFCAP are dropped (CAP_DROP), but
the owner of a file may set its setuid bit without any capability, so the syscalls that take a mode
are only allowed when the mode carries no S_ISUID/S_ISGID (and mknod only for regular files).

It is an allowlist because a denylist is bypassed by every syscall the runtime's libseccomp does not
know: fchmodat2 (452, Linux 6.6) sets modes like fchmodat, and libseccomp 2.5.4 has no name for it.
Anything not allowed fails with ENOSYS, as if the kernel lacked it; callers already handle that
(glibc falls back from clone3 to clone, from fchmodat2 to fchmodat; openat2 users to openat; io_uring
users to epoll), and every fallback lands on a syscall that this profile filters. Docker 20.10 drops
defaultErrnoRet, so there a syscall gets ENOSYS only from DENIED's explicit rule or, when it is newer
than every syscall named here, from runc's ENOSYS stub; any other unlisted one gets EPERM (still
refused). A refused mode gets EPERM on purpose: the syscall exists, the policy says no, and
"Operation not permitted" tells the agent so.

`profile()` returns the JSON text that `docker run --security-opt seccomp=FILE` reads and that the
Engine API takes inline as `HostConfig.SecurityOpt: ["seccomp=<json>"]`. Names a runtime does not
know on an architecture are skipped by it, so one list serves x86_64, x86, x32, aarch64 and arm.
"""

from __future__ import annotations

import errno
import functools
import json

# Dropped alongside the profile. MKNOD: no device nodes even if a mknod mode slipped through.
# SETFCAP: file capabilities (the security.capability xattr) are setuid by another name, and
# setxattr's value sits behind a pointer that seccomp cannot read.
# NET_RAW: raw and packet sockets would let root inside spoof ARP and IP for the other
# containers on the engine's bridge; ping keeps working through ICMP datagram sockets.
CAP_DROP: tuple[str, ...] = ("MKNOD", "SETFCAP", "NET_RAW")

# socket(2)'s families a build needs: local sockets, IPv4, IPv6, and netlink (getaddrinfo and
# `ip` ask the kernel's routing tables through it). AF_PACKET would need CAP_NET_RAW anyway.
SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
S_ISUID = 0o4000
S_ISGID = 0o2000
S_IFMT = 0o170000
S_IFREG = 0o100000
S_IFIFO = 0o010000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
S_IFSOCK = 0o140000

# clone(2) flags that create namespaces; clone is allowed only with none of them (arg 0 on every
# architecture listed here; only s390 swaps the arguments).
CLONE_NEW_MASK = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

# personality(2) values a dev container uses: PER_LINUX, PER_LINUX32, UNAME26 (with either),
# ADDR_NO_RANDOMIZE (gdb and `setarch -R` turn ASLR off for the debuggee; the kernel clears it on a
# setuid exec) and 0xffffffff, which only queries. Others (READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, foreign
# execution domains) only help exploits.
PERSONALITY_VALUES: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0x40000, 0x40008, 0xFFFFFFFF)

# The syscalls that take a file mode, and which argument holds it. Allowed only when the mode has
# neither S_ISUID nor S_ISGID. For open/openat the mode only matters with O_CREAT or O_TMPFILE; glibc,
# musl, Go and Rust pass 0 or 0o666 otherwise, so reads are never refused. mkdir cannot set these bits
# (the kernel masks them) but is filtered too so that the rule is the same for every mode argument.
MODE_ARG: dict[str, int] = {
    "chmod": 1,
    "fchmod": 1,
    "fchmodat": 2,
    "open": 2,
    "openat": 3,
    "creat": 1,
    "mkdir": 1,
    "mkdirat": 2,
}

# mknod creates only regular files (type 0 means regular): no FIFO, socket, character or block node.
# `mkfifo` therefore fails inside; make 4.3 (bookworm) uses a pipe jobserver and make 4.4 falls back
# to one when mkfifo fails. Sockets made by bind(2) cannot be refused here (the path is behind a
# pointer): host tools must still treat any non-regular file in a drop directory as hostile.
MKNOD_ARG: dict[str, int] = {"mknod": 1, "mknodat": 2}

# Allowed unconditionally. Kernel ABI names; a name unknown on an architecture is skipped there.
ALLOWED: tuple[str, ...] = (
    # files and directories (the mode-taking ones are in MODE_ARG / MKNOD_ARG)
    "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd", "chroot",
    "close", "close_range", "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock",
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "llseek", "sendfile", "sendfile64", "copy_file_range", "splice", "tee", "vmsplice",
    "truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate", "fadvise64", "fadvise64_64",
    "arm_fadvise64_64", "readahead", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "sync_file_range2", "arm_sync_file_range",
    "stat", "lstat", "fstat", "stat64", "lstat64", "fstat64", "newfstatat", "fstatat64", "statx",
    "statfs", "fstatfs", "statfs64", "fstatfs64", "getdents", "getdents64",
    "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "unlink", "unlinkat", "rmdir",
    "rename", "renameat", "renameat2", "umask",
    "chown", "fchown", "lchown", "fchownat", "chown32", "fchown32", "lchown32",
    "utime", "utimes", "futimesat", "utimensat", "utimensat_time64",
    # xattrs: security.capability needs CAP_SETFCAP (dropped), ACLs cannot add setuid bits
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "getxattrat", "setxattrat", "listxattrat", "removexattrat",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "ioctl", "memfd_create",
    # memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages", "membarrier",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "mbind", "get_mempolicy", "set_mempolicy",
    "set_mempolicy_home_node", "cachestat", "map_shadow_stack", "mseal",
    # processes and threads (clone is conditional; clone3 is left out: ENOSYS makes glibc use clone)
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid",
    "kill", "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp",
    "getsid", "setsid", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
    "arch_prctl", "set_thread_area", "get_thread_area", "set_tls", "cacheflush", "breakpoint",
    "prctl", "capget", "capset", "seccomp", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self", "uretprobe",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_madvise", "process_mrelease",
    # Debuggers (gdb, strace, py-spy) need ptrace and process_vm_*. The tracee stays under this same
    # filter (filters are inherited and cannot be removed) and since Linux 4.8 the filter runs again
    # after a tracer rewrites a syscall, so a tracer cannot smuggle a refused call through.
    "ptrace", "process_vm_readv", "process_vm_writev",
    "getpriority", "setpriority", "nice", "ioprio_get", "ioprio_set",
    "sched_yield", "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_getaffinity", "sched_setattr",
    "sched_getattr", "getcpu",
    "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage", "times", "sysinfo", "uname",
    # credentials (sudo, su, setpriv; a container's root may change its ids)
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid",
    "getuid32", "geteuid32", "getgid32", "getegid32", "getresuid32", "getresgid32", "getgroups32",
    "setuid32", "setgid32", "setreuid32", "setregid32", "setresuid32", "setresgid32", "setgroups32",
    "setfsuid32", "setfsgid32",
    # signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack",
    "sigaction", "signal", "sigprocmask", "sigreturn", "sigpending", "sigsuspend", "pause",
    "signalfd", "signalfd4", "restart_syscall",
    # time (reading and sleeping only)
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "alarm", "getitimer", "setitimer",
    "timer_create", "timer_settime", "timer_settime64", "timer_gettime", "timer_gettime64",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime", "timerfd_settime64",
    "timerfd_gettime", "timerfd_gettime64",
    # waiting, polling, synchronising
    "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "pipe", "pipe2",
    "futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    # Linux AIO (libaio, databases): its operations read and write only, unlike io_uring's
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64",
    # System V and POSIX IPC
    "ipc", "semget", "semop", "semtimedop", "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt",
    "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedsend_time64", "mq_timedreceive", "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    # network
    "bind", "listen", "accept", "accept4", "connect",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown", "send", "sendto", "sendmsg",
    "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
    "getrandom",
)

# Left out on purpose. They also get an explicit ENOSYS rule, because Docker 20.10 drops
# defaultErrnoRet (its default action then returns EPERM) and glibc falls back from clone3 to clone,
# like other callers from openat2 and io_uring, only on ENOSYS: with EPERM, pthread_create fails.
DENIED: tuple[str, ...] = (
    # Modes behind a pointer or beyond this filter: openat2's struct open_how, io_uring's operations
    # (they open, mkdir and mknod with any mode), fchmodat2 (unknown to libseccomp 2.5.4 anyway).
    "openat2", "fchmodat2", "io_uring_setup", "io_uring_enter", "io_uring_register",
    # namespaces and the mount API: a dev container needs neither, both are large attack surfaces
    "clone3", "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "fsopen", "fsmount",
    "fsconfig", "fspick", "open_tree", "open_tree_attr", "move_mount", "mount_setattr", "statmount",
    "listmount",
    # the kernel itself: modules, kexec, reboot, swap, BPF, perf, keyrings, userfaultfd
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "userfaultfd",
    # file handles bypass path permissions; kcmp leaks kernel pointer order
    "open_by_handle_at", "name_to_handle_at", "kcmp",
    # hardware, accounting, quotas, the host's clock and log, ttys, hostnames
    "iopl", "ioperm", "modify_ldt", "vm86", "vm86old", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex", "clock_adjtime",
    "clock_adjtime64", "syslog", "vhangup", "sethostname", "setdomainname",
    "fanotify_init", "fanotify_mark", "memfd_secret", "migrate_pages", "move_pages",
    # obsolete or never implemented
    "lookup_dcookie", "nfsservctl", "uselib", "_sysctl", "sysfs", "ustat", "afs_syscall", "getpmsg",
    "putpmsg", "security", "tuxcall", "vserver", "epoll_ctl_old", "epoll_wait_old", "bdflush", "break",
    "ftime", "gtty", "stty", "idle", "lock", "mpx", "prof", "profil", "ulimit", "sgetmask", "ssetmask",
    "oldstat", "oldfstat", "oldlstat", "olduname", "oldolduname", "readdir",
)

ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
)

Rule = dict[str, object]


def _masked(index: int, mask: int, value: int) -> dict[str, object]:
    """One argument condition: (arg[index] & mask) == value."""
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _allow(names: list[str], comment: str, *args: dict[str, object]) -> Rule:
    return {"names": names, "action": "SCMP_ACT_ALLOW", "args": list(args), "comment": comment}


def _refuse(names: list[str], comment: str, *args: dict[str, object]) -> Rule:
    # Only for the message: without these rules a refused mode would fall through to ENOSYS.
    return {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM, "args": list(args),
            "comment": comment}


def _rules() -> list[Rule]:
    rules: list[Rule] = [_allow(list(ALLOWED), "the allowlist")]
    # Redundant where defaultErrnoRet is honoured (runc then skips it), needed where it is not.
    rules.append({"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS, "args": [],
                  "comment": "left out: as if the kernel lacked them"})
    rules.append(_allow(["clone"], "threads and processes, not namespaces", _masked(0, CLONE_NEW_MASK, 0)))
    # Sockets of the families a build uses, and no other: vsock, for one, reaches the
    # hypervisor's services when the host is a VM, whatever the container's network. Compared
    # through a 32-bit mask because the kernel reads the family as an int while seccomp sees
    # all 64 bits: a plain `!= AF_VSOCK` lets AF_VSOCK | 1 << 32 through.
    # (socketcall, i386's multiplexer, is left out: its family sits behind a pointer.)
    rules.extend(_allow(["socket"], f"address family {name}", _masked(0, 0xFFFFFFFF, family))
                 for name, family in SOCKET_FAMILIES.items())
    # socketpair(2) creates its sockets before it asks the family for a pair: only AF_UNIX has
    # pairs, and any other family would run that family's create code in the host kernel.
    rules.append(_allow(["socketpair"], "address family AF_UNIX",
                        _masked(0, 0xFFFFFFFF, SOCKET_FAMILIES["AF_UNIX"])))
    rules.extend(_allow(["personality"], "common personality", _masked(0, 0xFFFFFFFF, value))
                 for value in PERSONALITY_VALUES)
    for name, index in MODE_ARG.items():
        rules.append(_allow([name], "mode without setuid/setgid", _masked(index, S_ISUID | S_ISGID, 0)))
        rules.extend(_refuse([name], "setuid/setgid mode", _masked(index, bit, bit))
                     for bit in (S_ISUID, S_ISGID))
    special = S_IFMT | S_ISUID | S_ISGID
    for name, index in MKNOD_ARG.items():
        rules.extend(_allow([name], "regular file without setuid/setgid", _masked(index, special, value))
                     for value in (0, S_IFREG))
        rules.extend(_refuse([name], "setuid/setgid mode", _masked(index, bit, bit))
                     for bit in (S_ISUID, S_ISGID))
        rules.extend(_refuse([name], "FIFO, socket or device node", _masked(index, S_IFMT, kind))
                     for kind in (S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK))
    return rules


@functools.cache
def profile() -> str:
    """The seccomp profile as JSON text; the same text on every call (it is part of a container's spec)."""
    document = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "archMap": [{"architecture": arch, "subArchitectures": list(subs)} for arch, subs in ARCH_MAP],
        "syscalls": _rules(),
    }
    return json.dumps(document, separators=(",", ":"))
