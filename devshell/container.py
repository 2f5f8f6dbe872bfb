"""A devshell where testcontainers expects a container.

`DevshellContainer` is a testcontainers `DockerContainer` whose start() opens a devshell through
the launcher (image, volume, container, the cell's profile, limits and egress) and enters it once,
instead of `docker run`-ing an image. So it sits in a `with` block, joins a testcontainers
`Network` under aliases, and answers get_wrapped_container(), exec() and get_logs() like any other
container. What a devshell is made of comes from its cell alone: the builder calls that would add
mounts, environment, ports or a command are refused, not ignored.

Imported only by code that asks for it (the plugin's `devshell_factory.container()`): the CLI
never loads testcontainers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from testcontainers.core.container import DockerContainer

from .engine import ExecResult
from .errors import DevshellError
from .launcher import Devshell


class DevshellContainer(DockerContainer):
    """A devshell as a testcontainers container. Make one with `devshell_factory.container(...)`
    (the same arguments as `open()`); `start()` or `with` opens it."""

    def __init__(self, opener: Callable[[], Devshell], *, planned_network: str, image: str) -> None:
        super().__init__(image)
        self._opener = opener
        self._planned_network = planned_network
        self.devshell: Devshell | None = None

    def start(self) -> DevshellContainer:
        # Refused before anything is made, on the mode the launch will plan ...
        self._network_to_join(self._planned_network)
        self.devshell = shell = self._opener()
        try:
            # ... and again on the mode in force (a runtime without a network makes it none).
            network_id = self._network_to_join(shell.network)
            shell.enter()  # a started devshell is ready: init and verify have run
            if network_id is not None:
                shell.engine.join_network(shell.name, network_id, list(self._network_aliases or []))
            self.image = shell.spec.image
            self._container = self.get_docker_client().client.containers.get(shell.name)
        except BaseException:
            self.stop()  # a start that fails leaves nothing it made, with or without `with`
            raise
        return self

    def _network_to_join(self, mode: str) -> str | None:
        """The network to join, None for none. Only an open devshell joins one: a 'none' devshell
        has no interface to give it, and an 'allow' one reaches out only through its proxy, on
        its egress network alone (every launch holds it to that); any network with a route out
        would go around the proxy, and one without would be taken for tampering at re-entry."""
        if self._network is None:
            return None
        if mode != "open":
            raise DevshellError(f"a devshell whose egress is {mode} cannot join network {self._network.name}",
                                "open it with network='open' to put it on a network with other containers")
        return str(self._network.name)

    def run(self, script: str) -> ExecResult:
        """Enter as the CLI does and run script (Devshell.run): an ExecResult."""
        if self.devshell is None:
            raise DevshellError("the devshell is not started", "call start(), or use it in a with block")
        return self.devshell.run(script)

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container start() made (and, as testcontainers does by default, the volume
        it made): one it found running (an instance=, a reused devshell) is another's, and stays."""
        shell = self.devshell
        if shell is not None and shell.outcome.state != "reused":
            shell.engine.remove_container(shell.name)
            if delete_volume and shell.volume_created:
                shell.engine.remove_volume(shell.spec.volume)
        self._container = None


def _refused(method: str) -> Callable[..., NoReturn]:
    def refuse(self: DevshellContainer, *args: object, **kwargs: object) -> NoReturn:
        raise DevshellError(f"DevshellContainer.{method}: a devshell's mounts, environment, ports and "
                            "command come from its cell", "put it in the cell file")
    return refuse


for _method in ("with_env", "with_envs", "with_env_file", "with_bind_ports", "with_exposed_ports",
                "with_kwargs", "with_command", "with_name", "with_volume_mapping", "with_tmpfs_mount",
                "with_copy_into_container", "maybe_emulate_amd64"):
    if hasattr(DockerContainer, _method):
        setattr(DevshellContainer, _method, _refused(_method))
