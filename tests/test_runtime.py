"""Runtimes as the engine's configuration describes them (engine.runtime_of), and devshell's
seccomp profile as the BPF program a locked devshell installs on its own sessions under gVisor
(seccomp_bpf.compile_profile, by the host's libseccomp). Pure: /info documents are written
here; the BPF is only compiled, never loaded."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from devshell.engine import Runtime, runtime_of
from devshell.errors import DevshellError
from devshell.seccomp import profile
from devshell.seccomp_bpf import SCMP_ACT_ALLOW, compile_profile

RUNSC = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}


def info(default: str = "runc", **runtimes: dict[str, Any]) -> dict[str, Any]:
    return {"DefaultRuntime": default, "Runtimes": {"runc": {"path": "runc"}, **runtimes}}


def test_the_default_runtime_is_the_engines_default() -> None:
    assert runtime_of(info(), "") == Runtime("runc", "runc", network=True, seccomp=True)


def test_gvisor_is_known_by_its_binary_whatever_it_is_called() -> None:
    found = runtime_of(info(sandbox=RUNSC), "sandbox")
    assert found.kind == "gvisor" and not found.network
    assert str(found) == "sandbox (gVisor, no network)"


def test_a_gvisor_default_runtime_is_gvisor_without_the_flag() -> None:
    assert runtime_of(info(default="runsc", runsc=RUNSC), "").kind == "gvisor"


def test_a_runtime_named_runsc_that_runs_runc_is_not_gvisor() -> None:
    assert runtime_of(info(runsc={"path": "/usr/bin/runc"}), "runsc").kind == "runc"


def test_gvisor_with_its_network_says_so() -> None:
    found = runtime_of(info(runsc={**RUNSC, "runtimeArgs": ["--oci-seccomp"]}), "runsc")
    assert found.network and str(found) == "runsc (gVisor)"


@pytest.mark.parametrize("args, network", [
    (["--network", "none", "--oci-seccomp"], False), (["--oci-seccomp", "--network=sandbox"], True),
    (["--oci-seccomp", "--network"], True), (["--oci-seccomp", "--debug", "none"], True),
])
def test_gvisor_without_a_network_is_read_in_either_spelling(args: list[str], network: bool) -> None:
    assert runtime_of(info(runsc={**RUNSC, "runtimeArgs": args}), "runsc").network is network


def test_gvisor_without_oci_seccomp_is_refused() -> None:
    with pytest.raises(DevshellError, match="without --oci-seccomp") as e:
        runtime_of(info(runsc={**RUNSC, "runtimeArgs": ["--network=none"]}), "runsc")
    assert "runtimeArgs" in e.value.fix


def test_an_unregistered_runtime_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(DevshellError, match=r"'kata' is not registered .*\(it has: runc, runsc\)"):
        runtime_of(info(runsc=RUNSC), "kata")


def _instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]


def test_the_profile_compiles_to_one_bpf_program_the_kernel_takes() -> None:
    program = compile_profile(profile())
    insns = _instructions(program)
    assert 0 < len(insns) <= 4096
    returns = {k for code, _, _, k in insns if code == 0x06}  # BPF_RET | BPF_K
    # Allowed calls, EPERM for a refused mode, ENOSYS (38) for what is left out, and a kill for
    # a foreign architecture: every action the profile names, and only those.
    assert SCMP_ACT_ALLOW in returns
    assert 0x00050000 | 1 in returns and 0x00050000 | 38 in returns
    assert returns <= {SCMP_ACT_ALLOW, 0x00050001, 0x00050000 | 38, 0, 0x80000000}


def test_the_program_changes_with_the_profile() -> None:
    import json

    doc = json.loads(profile())
    doc["syscalls"] = [r for r in doc["syscalls"] if r.get("comment") != "mode without setuid/setgid"]
    assert compile_profile(json.dumps(doc)) != compile_profile(profile())
