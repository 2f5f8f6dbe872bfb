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
from typing import Any, NoReturn

from testcontainers.core.container import DockerContainer

from .egress import NO_HOST_ADDRESS
from .errors import DevshellError
from .launcher import Devshell

# docker_network_kw for a testcontainers Network that leads only to its members (internal, no
# address on the host): the only kind a devshell whose egress is not open may join.
CLOSED_NETWORK: dict[str, Any] = {"internal": True, "options": dict([NO_HOST_ADDRESS])}


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
        self._check_network(self._planned_network)
        self.devshell = shell = self._opener()
        try:
            # ... and again on the mode in force (a runtime without a network makes it none).
            self._check_network(shell.network)
            entered = shell.run("true")  # init and verify have run: a started devshell is ready
            if entered.exit_code:
                raise DevshellError(f"entering {shell.name} failed ({entered.exit_code}): "
                                    f"{entered.stderr.strip()}", f"devshell {shell.spec.cell} --verify")
            if self._network is not None:
                shell.engine.join_network(shell.name, self._network.name, list(self._network_aliases or []))
            self.image = shell.spec.image
            self._container = self.get_docker_client().client.containers.get(shell.name)
        except BaseException:
            self.stop()  # a start that fails leaves nothing it made, with or without `with`
            raise
        return self

    def _check_network(self, mode: str) -> None:
        if self._network is None or mode == "open":
            return
        engine = self.devshell.engine if self.devshell is not None else None
        if engine is None:
            from .engine import Engine

            engine = Engine.connect()
        if mode == "none" or not engine.network_is_closed(self._network.name):
            # A 'none' devshell has no interface to give a network; an 'allow' one reaches out
            # only through its proxy, which a network with a route out would go around.
            raise DevshellError(f"a devshell whose egress is {mode} cannot join network {self._network.name}"
                                + ("" if mode == "none" else ", which has a route out"),
                                "open it with network='open', or (egress allow) create the network "
                                "with docker_network_kw=devshell.container.CLOSED_NETWORK")

    def run(self, script: str) -> Any:
        """Enter as the CLI does and run script (Devshell.run): an ExecResult."""
        if self.devshell is None:
            raise DevshellError("the devshell is not started", "call start(), or use it in a with block")
        return self.devshell.run(script)

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container (and, as testcontainers does by default, its volume)."""
        if self.devshell is not None:
            self.devshell.engine.remove_container(self.devshell.name)
            if delete_volume:
                self.devshell.engine.remove_volume(self.devshell.spec.volume)
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
