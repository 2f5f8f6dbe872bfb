"""A devshell is a testcontainers container: it joins a testcontainers Network under aliases
and reaches a service there by name (docs/fixtures.md's example, run by test_harness.py), and a
devshell whose egress is not open joins no network (none has no interface for one; allow goes out
only through its proxy, and a network with a route out would go around it)."""

from __future__ import annotations

import pytest
from testcontainers.core.network import Network

from devshell.errors import DevshellError


def made_for(engine, instance: str) -> list[str]:
    """Containers and volumes whose name carries this instance."""
    return ([c.name for c in engine.client.containers.list(all=True, filters={"name": instance})]
            + [v.name for v in engine.client.volumes.list(filters={"name": instance})])


@pytest.mark.parametrize("mode", ["none", "allow"])
def test_a_devshell_without_open_egress_never_joins_a_network(
        mode, devshell_factory, devshell_run_labels, devshell_instance, devshell_engine):
    instance = devshell_instance()
    with Network(docker_network_kw={"labels": devshell_run_labels}) as network:
        shell = devshell_factory.container(network=mode, instance=instance).with_network(network)
        with pytest.raises(DevshellError, match=f"egress is {mode} cannot join network"):
            shell.start()
        assert made_for(devshell_engine, instance) == []  # refused before anything was made


def test_control_an_open_devshell_joins_the_same_network(devshell_factory, devshell_run_labels):
    with Network(docker_network_kw={"labels": devshell_run_labels}) as network, \
            devshell_factory.container(network="open").with_network(network).with_network_aliases("shell") \
            as shell:
        attached = shell.get_wrapped_container().attrs["NetworkSettings"]["Networks"]
        assert "shell" in attached[network.name]["Aliases"]


def test_the_builder_calls_that_would_add_to_a_devshell_are_refused(devshell_factory):
    shell = devshell_factory.container()
    for call in (lambda: shell.with_volume_mapping("/", "/host"), lambda: shell.with_env("A", "1"),
                 lambda: shell.with_kwargs(privileged=True), lambda: shell.with_command("sh")):
        with pytest.raises(DevshellError, match="come from its cell"):
            call()
