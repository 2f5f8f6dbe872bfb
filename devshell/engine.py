"""Engine: the one module with side effects on the Docker engine.

Images, volumes, containers, exec and copy-in all go through here. Every operation is idempotent
and reports what it did.

Speed: re-entering a running devshell asks the engine one question (inspect the container) and
then hands over to `docker exec`; creating one takes five plain requests. Those go straight to
the Engine API over a raw socket, because importing the docker SDK costs ~0.3 s (requests,
urllib3) and http.client ~60 ms. The SDK does what is not a plain request (builds, pulls,
captured exec, listing) and, like every other heavy module here, is imported on first use.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NamedTuple

from .cells import Cell, Recipe, cache_dir
from .egress import NO_HOST_ADDRESS, PROXY_PORT, PROXY_RECIPE, ROLE_PROXY, EgressSpec, proxy_image
from .errors import DevshellError, for_terminal
from .labels import CELL, MAKER, MANAGED, PROFILE, ROLE, RUNTIME, owner_of
from .spec import (
    BAKE_COMMAND,
    LABEL_CELL,
    LABEL_HASH,
    LABEL_IDENTITY,
    NEVER_REUSED,
    RUNTIME_WITHOUT_NETWORK,
    WORKSPACE_ENV,
    ContainerSpec,
    ExecSpec,
    differences,
)

if TYPE_CHECKING:
    import docker

DEFAULT_HOST = "unix:///var/run/docker.sock"
STOP_GRACE = 5.0  # seconds the docker CLI has to end after a signal stopped its session inside
STOP_CALL_TIMEOUT = 3.0  # seconds each of the stop's two engine requests may take
WATCH_INTERVAL = 0.5  # seconds between looks at a watched container during a session (gVisor)
USAGE_TIMEOUT = 10.0  # seconds status waits for du inside a container
PING_TIMEOUT = 5.0  # seconds an engine may take to answer /_ping
CALL_TIMEOUT = 120.0  # ... and any other call (a create on a loaded machine takes a while)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")  # escapes and control characters
# How docker's answer begins, and what it says, when the runtime binary itself failed to start
# an exec's process (runsc, now and then, under load; its path is the daemon's).
RUNTIME_EXEC_FAILED = (b"OCI runtime exec failed: ", b"runsc did not terminate successfully")
REMOVE_WORKERS = 8  # removals a sweep asks the engine for at once
BUILD_FAILURE_LINES = 20  # of a failing recipe step's own output, shown before the one-line error

Progress = Callable[[str], None]
_DEBOOTSTRAP_MILESTONES = ("I: Retrieving Release", "I: Installing core", "I: Configuring the base",
                           "I: Base", "E:", "W: Failure")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def stderr_progress(line: str) -> None:
    print(f"devshell: {line}", file=sys.stderr, flush=True)


def host_platform() -> str:
    machine = os.uname().machine.lower()
    return f"linux/{_ARCH.get(machine, machine)}"


class Outcome(NamedTuple):
    """What ensure_container did: fresh, reused (maybe started) or recreated, and why."""

    state: str
    why: str = ""

    @property
    def started(self) -> bool:
        """The engine (re)started the container: it bound its host paths just now."""
        return self != Outcome("reused")

    def __str__(self) -> str:
        return f"{self.state} ({self.why})" if self.why else self.state


class Runtime(NamedTuple):
    """An engine runtime as its daemon.json configuration describes it, not by its name alone:
    "gvisor" when its binary is runsc, whatever it is called."""

    name: str
    kind: str  # gvisor, runc or other
    network: bool  # containers under it can reach a network
    seccomp: bool  # it applies the container's seccomp profile

    def __str__(self) -> str:
        if self.kind == "gvisor":
            return f"{self.name} (gVisor{'' if self.network else ', ' + RUNTIME_WITHOUT_NETWORK})"
        return self.name


class ExecResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


class Engine:
    """One Docker engine (DOCKER_HOST, else the local socket). Construct with connect()."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        self._client: docker.DockerClient | None = None

    @classmethod
    def connect(cls) -> Engine:
        engine = cls()
        # A short bound here: an engine that accepts and never answers is said in seconds,
        # and every later call has its own (longer) bound.
        engine._request("GET", "/_ping", timeout=PING_TIMEOUT)
        return engine

    @property
    def client(self) -> docker.DockerClient:
        """The docker SDK client, created (and imported) on first use."""
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                self._client = docker.from_env(timeout=120)
                self._client.ping()
            except DockerException as e:
                raise self._unreachable(e) from None
        return self._client

    def _unreachable(self, e: BaseException) -> DevshellError:
        return DevshellError(f"no Docker engine answers at {self.host} ({_reason(e)})",
                             "start the Docker daemon, or point DOCKER_HOST at one")

    def _silent(self, method: str, path: str, timeout: float) -> DevshellError:
        return DevshellError(f"the Docker engine at {self.host} did not answer {method} {path.split('?')[0]} "
                             f"within {timeout:.0f} s", "check the daemon (docker info)")

    def _socket(self) -> str | None:
        return self.host.removeprefix("unix://") if self.host.startswith("unix://") else None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json",
                 timeout: float = CALL_TIMEOUT) -> tuple[int, bytes]:
        """One Engine API call. Over a local socket: HTTP/1.0 by hand, where the engine answers
        once, plainly (never chunked), and closes, so reading to EOF is the whole answer.
        Elsewhere (tcp, ssh, TLS) the SDK's session carries the same request."""
        headers = {"Host": "docker", "Content-Type": content_type} if body is not None else {"Host": "docker"}
        sock_path = self._socket()
        if sock_path is None:
            from docker.errors import DockerException

            api = self.client.api
            import requests

            try:
                r = api.request(method, f"{api.base_url}{path}", data=body, headers=headers, timeout=timeout)
            except requests.Timeout:
                raise self._silent(method, path, timeout) from None
            except (DockerException, requests.RequestException) as e:
                raise self._unreachable(e) from None
            return r.status_code, r.content
        import socket

        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        chunks = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(sock_path)
                s.sendall(f"{method} {path} HTTP/1.0\r\n{head}\r\n".encode() + (body or b""))
                while chunk := s.recv(1 << 16):
                    chunks.append(chunk)
        except TimeoutError:
            raise self._silent(method, path, timeout) from None
        except OSError as e:
            raise self._unreachable(e) from None
        answer, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            return int(answer.split(b" ", 2)[1]), payload
        except (IndexError, ValueError):
            raise self._unreachable(ValueError("not an HTTP answer")) from None

    def _call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 204),
              missing: tuple[int, ...] = (), raw: bytes | None = None,
              content_type: str = "application/json", timeout: float = CALL_TIMEOUT) -> Any:
        """_request with JSON in and out: the decoded answer, None for a status in `missing`,
        an EngineError (with the engine's own message) for anything else not in `ok`."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        status, payload = self._request(method, path, data, content_type, timeout)
        if status in missing:
            return None
        if status not in ok:
            try:
                message = json.loads(payload).get("message", "")
            except ValueError:
                message = payload[:200].decode(errors="replace")
            raise EngineError(status, message)
        return json.loads(payload) if payload.strip() else {}

    # --- images ---------------------------------------------------------------------------

    def image_platform(self, ref: str) -> str | None:
        """The local image's os/arch (linux/amd64), or None when there is no such image."""
        info = self._call("GET", f"/images/{_q(ref)}/json", missing=(404,))
        if info is None:
            return None
        arch = info.get("Architecture") or "amd64"
        return f"{info.get('Os') or 'linux'}/{_ARCH.get(arch, arch)}"

    def image_present(self, ref: str, platform: str | None = None) -> bool:
        """ref is here (for platform, when given: an amd64 image is no arm64 cell's image)."""
        found = self.image_platform(ref)
        return found is not None and (platform is None or found == platform)

    def try_pull(self, ref: str, platform: str) -> str | None:
        """Pull ref; None on success, else why it failed (no registry is a normal case)."""
        from docker.errors import DockerException

        try:
            self.client.images.pull(ref, platform=platform)
        except DockerException as e:
            return _reason(e)
        return None

    def ensure_image(self, cell: Cell, override: str | None, progress: Progress) -> str:
        """The image for this cell, present locally: found, pulled, or built from its recipe."""
        if override:
            return self._present_or_pulled(override, cell.platform, None, progress)
        if cell.image_ref and self.image_present(cell.image_ref, cell.platform):
            return cell.image_ref
        if cell.recipe is None:
            assert cell.image_ref
            return self._present_or_pulled(cell.image_ref, cell.platform, cell.name, progress)
        tag = cell.built_tag
        assert tag
        if self.image_present(tag, cell.platform):
            return tag
        if cell.image_ref and self.try_pull(cell.image_ref, cell.platform) is None:
            return cell.image_ref
        with _lock(f"build-{tag.replace('/', '_').replace(':', '_')}", BUILD_LOCK_TIMEOUT):
            if not self.image_present(tag, cell.platform):  # another process may have built it meanwhile
                self.build(cell, tag, progress)
        return tag

    def _present_or_pulled(self, ref: str, platform: str, cell: str | None,
                           progress: Progress) -> str:
        here = self.image_platform(ref)
        if here == platform:
            return ref
        why = self.try_pull(ref, platform)
        if why is None:
            progress(f"pulled {ref}")
            return ref
        whose = f"cell {cell}'s image" if cell else "image"
        if here is not None:
            raise DevshellError(f"{whose} {ref} is here for {here} only, and the cell is {platform} "
                                f"(a pull failed: {why})",
                                f"docker load the {platform} image, or pass --image IMAGE")
        raise DevshellError(
            f"{whose} {ref} is not present and cannot be pulled ({why})",
            "docker load it from a machine that has it, or pass --image IMAGE",
        )

    def build(self, cell: Cell, tag: str, progress: Progress) -> None:
        assert cell.recipe is not None
        if cell.platform != host_platform():
            raise DevshellError(
                f"cell {cell.name} is {cell.platform}, this host builds {host_platform()} only",
                "docker load the image built on a matching machine",
            )
        self._build_recipe(cell.recipe, cell.platform, tag, progress)

    def _build_recipe(self, recipe: Recipe, platform: str, tag: str, progress: Progress) -> None:
        import time

        arch = platform.split("/")[1]
        base = f"devshell/base-{recipe.suite}:{recipe.base_hash()[:16]}"
        started = time.monotonic()
        if not self.image_present(base):
            self._debootstrap(recipe, arch, base, progress)
        if recipe.run:
            self._layer(base, recipe, tag, progress)
        else:
            self.client.images.get(base).tag(tag)
        progress(f"built {tag} in {time.monotonic() - started:.0f} s")

    def _debootstrap(self, recipe: Recipe, arch: str, tag: str, progress: Progress) -> None:
        import shutil
        import subprocess
        import tempfile
        from pathlib import Path

        if shutil.which("debootstrap") is None:
            raise DevshellError("building the base image needs debootstrap, which is not installed",
                                "apt-get install debootstrap (or docker load the image)")
        if os.geteuid() != 0:
            raise DevshellError("building the base image with debootstrap needs root",
                                "run once as root (sudo), or docker load the image")
        progress(f"building {tag}: debootstrap {recipe.suite} (about a minute, once per machine)")
        with tempfile.TemporaryDirectory(prefix="devshell-rootfs-", dir="/var/tmp") as root:
            cmd = ["debootstrap", f"--variant={recipe.variant}", f"--arch={arch}"]
            if recipe.include:
                cmd.append(f"--include={','.join(recipe.include)}")
            cmd += [recipe.suite, root] + ([recipe.mirror] if recipe.mirror else [])
            _stream(cmd, progress, keep=lambda line: line.startswith(_DEBOOTSTRAP_MILESTONES))
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in Path(root, junk).glob("*"):
                    if f.is_file():
                        f.unlink()
            progress(f"importing rootfs as {tag}")
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", root, "-c", "."],
                                   stdout=subprocess.PIPE)
            try:
                imp = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout,
                                     capture_output=True, text=True)
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
            if imp.returncode or tar.returncode:
                raise DevshellError(f"docker import of {tag} failed: {imp.stderr.strip()}",
                                    "check disk space and the Docker daemon")

    def _layer(self, base: str, recipe: Recipe, tag: str, progress: Progress) -> None:
        import io

        from docker.errors import DockerException

        lines = [f"FROM {base}"] + [f"RUN {json.dumps(['/bin/sh', '-ec', r])}" for r in recipe.run]
        progress(f"building {tag} on {base}")
        # What the step running now printed: shown only when it fails (apt's own words say why;
        # the exit code alone does not), so a good build stays a line per step.
        said: collections.deque[str] = collections.deque(maxlen=BUILD_FAILURE_LINES)
        try:
            for chunk in self.client.api.build(fileobj=io.BytesIO("\n".join(lines).encode()),
                                               tag=tag, rm=True, forcerm=True, decode=True):
                if "error" in chunk:
                    for line in said:
                        progress(f"  | {for_terminal(line)}")
                    raise DevshellError(f"building {tag} failed: {for_terminal(chunk['error'].strip())}",
                                        "fix the cell's image.recipe.run steps (the failing step's "
                                        "last output is above)")
                for text in chunk.get("stream", "").splitlines():
                    text = _ANSI.sub("", text).rstrip()  # the builder colours a step's stderr
                    if text.startswith("Step "):
                        progress(f"  {text}")
                        said.clear()
                    elif text.strip() and not text.startswith((" ---> ", "Removing intermediate")):
                        said.append(text)
        except DockerException as e:
            raise DevshellError(f"building {tag} failed ({_reason(e)})", "check the Docker daemon") from None

    # --- egress (--network allow): the devshell's network and its proxy --------------------

    def ensure_proxy_image(self, progress: Progress) -> str:
        """The egress proxy's image (egress.PROXY_RECIPE), built offline once per machine."""
        tag = proxy_image()
        if self.image_present(tag):
            return tag
        with _lock(f"build-{tag.replace('/', '_').replace(':', '_')}", BUILD_LOCK_TIMEOUT):
            if not self.image_present(tag):
                self._build_recipe(PROXY_RECIPE, host_platform(), tag, progress)
        return tag

    def egress_network(self, name: str, cell: str) -> dict[str, Any] | None:
        """The egress network's inspect document, or None; refused unless devshell made it as
        one (labels) and the engine holds it to what one is: internal, no host address, no IPv6.
        A network that is not all of these would give the devshell more than asked for."""
        info: dict[str, Any] | None = self._call("GET", f"/networks/{_q(name)}", missing=(404,))
        if info is None:
            return None
        found = info.get("Labels") or {}
        if owner_of(found, cell) != "devshell" or found.get(ROLE) != ROLE_PROXY:
            raise DevshellError(f"network {name} was not made by devshell for cell {cell}'s egress",
                                f"see docker network inspect {name}; remove it if it is not needed")
        key, value = NO_HOST_ADDRESS
        options = info.get("Options") or {}
        if not info.get("Internal") or options.get(key) != value or info.get("EnableIPv6"):
            raise DevshellError(f"network {name} is not internal, has an address on the host or IPv6: "
                                "the egress policy cannot hold on it",
                                f"devshell down {cell} (it goes with the devshell), then launch again")
        return info

    def join_network(self, container: str, network: str, aliases: list[str]) -> None:
        """Connect a running container to a network under aliases (other members' names for it)."""
        try:
            self._call("POST", f"/networks/{_q(network)}/connect",
                       {"Container": container, "EndpointConfig": {"Aliases": aliases}})
        except EngineError as e:
            raise DevshellError(f"{container} cannot join network {network} ({e.reason})",
                                f"see docker network inspect {network}") from None

    def ensure_egress_network(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        cell = body["Labels"][CELL]
        info = self.egress_network(name, cell)
        if info is None:
            try:
                self._call("POST", "/networks/create", body)
            except EngineError as e:
                if e.status != 409:  # 409: another launch made it meanwhile
                    raise DevshellError(f"cannot create network {name} ({e.reason})",
                                        "check the Docker daemon (docker network ls)") from None
            info = self.egress_network(name, cell)
        if info is None or not (info.get("IPAM") or {}).get("Config"):
            raise DevshellError(f"network {name} has no subnet",
                                f"docker network rm {name}, then launch again")
        return info

    def ensure_proxy(self, spec: EgressSpec, *, again: bool = True) -> str:
        """A running proxy for spec: reused (same hash), started, or (re)created. Returns what
        was done: reused, started, created or recreated."""
        info = self.inspect(spec.name)
        state = "created"
        if info is not None:
            found = info["Config"].get("Labels") or {}
            _check_owner("container", spec.name, found, spec.cell)
            if found.get(ROLE) != ROLE_PROXY:
                raise DevshellError(f"container {spec.name} is not an egress proxy",
                                    f"see docker inspect {spec.name}")
            status = info["State"]["Status"]
            if found.get(LABEL_HASH) == spec.hash() and status not in NEVER_REUSED:
                if info["State"]["Running"] and not info["State"]["Paused"]:
                    return "reused"
                if info["State"]["Paused"]:
                    self._call("POST", f"/containers/{info['Id']}/unpause", ok=(204, 304))
                else:
                    self.start(info["Id"])
                    self._wait_listening(info["Id"], spec)
                return "started"
            self._stop_proxy(info["Id"])
            self._call("DELETE", f"/containers/{info['Id']}?force=1", missing=(404,))
            state = "recreated"
        try:
            cid = self._call("POST", f"/containers/create?{_query({'name': spec.name})}",
                             spec.api_create())["Id"]
        except EngineError as e:
            if e.status == 409 and again:  # another launch made it meanwhile: judge theirs
                return self.ensure_proxy(spec, again=False)
            raise DevshellError(f"cannot create the egress proxy {spec.name} ({e.reason})",
                                "check the Docker daemon") from None
        try:
            # Its second network, the way out: the engine's default bridge.
            self._call("POST", "/networks/bridge/connect", {"Container": cid})
            self.start(cid)
        except EngineError as e:
            self.remove_container(cid)
            raise DevshellError(f"cannot start the egress proxy {spec.name} ({e.reason}); the devshell "
                                "is not started with more network than asked",
                                "check the Docker daemon and its default bridge") from None
        self._wait_listening(cid, spec)
        return state

    def _wait_listening(self, container: str, spec: EgressSpec, bound: float = 10.0) -> None:
        """Until squid listens (about half a second after its start): a request made sooner
        would fail. Asked from the host, at the proxy's address on the default bridge (the
        devshell's side has no host address); only for a local engine, whose bridge this host
        routes to. A proxy that stopped meanwhile (squid refused its configuration or its log)
        stops the launch, with squid's last words; one still starting when the bound is up is
        left to the session's verify, which waits too and fails the session if it never answers."""
        import socket
        import time

        deadline = time.monotonic() + bound
        while True:
            info = self.inspect(container) or {}
            if not info.get("State", {}).get("Running"):
                _, logs = self._request("GET", f"/containers/{container}/logs?stdout=1&stderr=1&tail=30")
                lines = _log_lines(logs)
                why = [line for line in lines if "FATAL" in line] or lines[-1:] or ["no output"]
                raise DevshellError(f"the egress proxy {spec.name} stopped as it started ({why[0]}); "
                                    "nothing gets out, and no session starts",
                                    f"see docker logs {spec.name}; then devshell down {spec.cell} and "
                                    "launch again")
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            address = networks.get("bridge", {}).get("IPAddress")
            if not address or not self.host.startswith("unix://") or time.monotonic() > deadline:
                return
            try:
                with socket.create_connection((address, PROXY_PORT), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)

    def _stop_proxy(self, container: str) -> None:
        """Stop before removing: squid logs a request when it ends, so a tunnel still open
        reaches the log only if squid is let close it (SIGTERM; shutdown_lifetime is 0)."""
        self._call("POST", f"/containers/{container}/stop?t=3", ok=(204, 304), missing=(404,))

    def remove_egress(self, name: str, cell: str) -> bool:
        """The proxy and network of a devshell (down): only what devshell made for cell."""
        info = self.inspect(name)
        gone = False
        if info is not None and owner_of(info["Config"].get("Labels"), cell) == "devshell":
            self._stop_proxy(info["Id"])
            gone = self.remove_container(info["Id"])
        net: dict[str, Any] | None = self._call("GET", f"/networks/{_q(name)}", missing=(404,))
        if net is not None and owner_of(net.get("Labels"), cell) == "devshell":
            self._call("DELETE", f"/networks/{net['Id']}", ok=(204,), missing=(404, 409))
        return gone

    def archive(self, container: str, path: str) -> Iterator[bytes] | None:
        """A tar stream of path in the container (the engine's archive API: nothing is bound or
        unpacked here), or None when there is no such path."""
        from docker.errors import DockerException, NotFound

        try:
            stream, _ = self.client.api.get_archive(container, path, chunk_size=1 << 20)
        except NotFound:
            return None
        except DockerException as e:
            raise DevshellError(f"cannot read {path} in {container} ({_reason(e)})",
                                "check the container's state") from None
        chunks: Iterator[bytes] = iter(stream)
        return chunks

    def read_file(self, container: str, path: str, limit: int) -> bytes | None:
        """The content of the regular file path in the container (running or not), at most
        limit bytes of it; None when it is missing, not a regular file, or larger."""
        import io
        import tarfile

        chunks = self.archive(container, path)
        if chunks is None:
            return None
        data = b""
        try:
            for chunk in chunks:  # a file of limit bytes is a tar of a few blocks more
                data += chunk
                if len(data) > limit + 4 * tarfile.BLOCKSIZE + 1024:
                    return None
        finally:
            close = getattr(chunks, "close", None)  # the engine's stream, when left early
            if close is not None:
                close()
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                member = tar.next()
                if member is None or not member.isreg() or member.size > limit:
                    return None
                reader = tar.extractfile(member)
                return reader.read(limit) if reader is not None else None
        except tarfile.TarError:
            return None

    def exec_stdin(self, container: str, argv: list[str], chunks: Iterable[bytes], *,
                   user: str) -> ExecResult:
        """Run argv in the container as user with chunks streamed to its stdin (through the docker
        CLI, which streams both ways); its output, the last 64 KiB of each stream, kept."""
        import subprocess
        import threading

        proc = subprocess.Popen(["docker", "exec", "-i", "--user", user, container, *argv],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        kept: dict[int, bytes] = {}

        def drain(stream: Any) -> None:  # read as it comes: a full pipe would stop the command
            tail = b""
            while chunk := stream.read(1 << 16):
                tail = (tail + chunk)[-(1 << 16):]
            kept[id(stream)] = tail

        readers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
        for reader in readers:
            reader.start()
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # it stopped reading: its exit code and stderr say why
        except BaseException:
            proc.kill()
            raise
        finally:
            with suppress(BrokenPipeError):
                proc.stdin.close()
            code = proc.wait()
            for reader in readers:
                reader.join()
        return ExecResult(code, kept.get(id(proc.stdout), b"").decode(errors="replace"),
                          kept.get(id(proc.stderr), b"").decode(errors="replace"))

    # --- runtimes and the locked image -----------------------------------------------------

    def runtime(self, name: str) -> Runtime:
        """The runtime a container would run under (name, or the engine's default for ""),
        from the engine's own configuration (runtime_of)."""
        return runtime_of(self._call("GET", "/info"), name)

    def ensure_baked(self, spec: ContainerSpec, progress: Progress) -> str:
        """The locked image for spec (ContainerSpec.baked_image): init --bake, once, in a
        writable container of the cell's image under the default runtime, committed."""
        base = self._call("GET", f"/images/{_q(spec.image)}/json", missing=(404,))
        if base is None:
            raise DevshellError(f"image {spec.image} is not present", "docker load it, or pass --image IMAGE")
        tag = spec.baked_image(base["Id"])
        if self.image_present(tag):
            return tag
        with _lock(f"bake-{tag.rsplit(':', 1)[1]}", BUILD_LOCK_TIMEOUT):
            if self.image_present(tag):  # another launch baked it while we waited
                return tag
            progress(f"baking {tag}: {spec.image} with dev, its home link and no sudo (locked profile)")
            self._bake(spec, base["Id"], tag)
        return tag

    def _bake(self, spec: ContainerSpec, base_id: str, tag: str) -> None:
        owned = {MANAGED: "1", LABEL_CELL: spec.cell, MAKER: this_maker()}
        body = {"Image": base_id, "Cmd": list(BAKE_COMMAND), "User": "0", "Labels": owned,
                "Env": [f"{k}={v}" for k, v in spec.bake_env().items()],
                "HostConfig": {"Init": True}}
        cid = self._call("POST", "/containers/create", body)["Id"]
        from .seccomp_bpf import BPF_PATH, compile_profile

        try:
            # With the profile as BPF, for a runtime that leaves docker exec unfiltered (gVisor):
            # init installs it on itself there (devshell/seccomp_bpf.py).
            self._call("PUT", f"/containers/{cid}/archive?path=%2F",
                       raw=_tar((*spec.files, (BPF_PATH, compile_profile(spec.seccomp)))),
                       content_type="application/x-tar")
            self.start(cid)
            # The cell's setup may install packages: as long as a build may take.
            code = self._call("POST", f"/containers/{cid}/wait", timeout=BUILD_LOCK_TIMEOUT)["StatusCode"]
            if code != 0:
                _, logs = self._request("GET", f"/containers/{cid}/logs?stdout=1&stderr=1&tail=3")
                last = _log_lines(logs)[-1:] or ["no output"]
                raise DevshellError(f"baking the locked image from {spec.image} failed (exit {code}): "
                                    f"{last[0]}",
                                    "fix the cell's setup script or image; the standard profile does "
                                    "not need this step")
            repo, _, version = tag.partition(":")
            # The container's config, with devshell's labels on the image (doctor finds it).
            self._call("POST", f"/commit?{_query({'container': cid, 'repo': repo, 'tag': version})}",
                       {"Labels": {MANAGED: "1", LABEL_CELL: spec.cell}})
        except EngineError as e:
            raise DevshellError(f"baking the locked image from {spec.image} failed ({e.reason})",
                                "check the image and the Docker daemon") from None
        finally:
            self.remove_container(cid)

    # --- volumes --------------------------------------------------------------------------

    def volume_info(self, name: str) -> dict[str, Any] | None:
        """The volume's inspect document (name, labels, mountpoint), or None."""
        found: dict[str, Any] | None = self._call("GET", f"/volumes/{_q(name)}", missing=(404,))
        return found

    def volume_own(self, name: str, cell: str) -> dict[str, Any] | None:
        """volume_info(), refusing a volume devshell did not make for this cell (as inspect_own):
        never adopted, since init would chown another cell's (or somebody's own) files to dev."""
        info = self.volume_info(name)
        if info is not None:
            _check_owner("volume", name, info.get("Labels"), cell)
        return info

    def ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        """Create the volume if missing; True if it was created. Never adopts another cell's."""
        if self.volume_own(name, labels[LABEL_CELL]) is not None:
            return False
        # The engine answers a create of an existing name with that volume: another launch
        # (another user's, outside our lock) may have made it meanwhile. Ours only if our mark.
        made = self._call("POST", "/volumes/create",
                          {"Name": name, "Labels": {**labels, MANAGED: "1", MAKER: this_maker()}})
        return (made.get("Labels") or {}).get(MAKER) == this_maker()

    def refuse_foreign(self, name: str, cell: str) -> None:
        """Refuse now, before anything is made on the host, what ensure_volume and
        ensure_container would refuse later: a container or volume named name that devshell
        did not make for cell."""
        self.inspect_own(name, cell)
        self.volume_own(name, cell)

    def volume_present(self, name: str) -> bool:
        return self.volume_info(name) is not None

    def remove_volume(self, name: str) -> bool:
        return self._call("DELETE", f"/volumes/{_q(name)}?force=1", missing=(404,)) is not None

    # --- containers -----------------------------------------------------------------------

    def inspect(self, name: str) -> dict[str, Any] | None:
        """The container's inspect document, or None. The one call on the warm path."""
        found: dict[str, Any] | None = self._call("GET", f"/containers/{_q(name)}/json", missing=(404,))
        return found

    def inspect_own(self, name: str, cell: str) -> dict[str, Any] | None:
        """inspect(), refusing a container of that name that devshell did not create, or that
        another cell owns (cell 'a' with --instance 'b-c' and cell 'a-b' with 'c' share a name):
        such a container is never reused, verified, replaced or removed."""
        info = self.inspect(name)
        if info is not None:
            _check_owner("container", name, info["Config"].get("Labels"), cell)
        return info

    def ensure_container(self, spec: ContainerSpec, *, image: str | None = None,
                         runtime: Runtime | None = None) -> Outcome:
        """A running container for spec: reuse one with the same hash, else (re)create it
        (from image when given: the locked profile's baked image)."""
        info = self.inspect_own(spec.name, spec.cell)
        why = ""
        if info is not None:
            labels = info["Config"].get("Labels") or {}
            state = info["State"]
            if state["Status"] == "created" and maker_alive(labels.get(MAKER, "")):
                # another launch is between create and start
                return self._made_meanwhile(spec, image, runtime)
            if state["Status"] in NEVER_REUSED:
                # Never started, and its maker is gone: a launch died between create and start
                # (copy-in included), so init may be missing. Nothing ran in it: nothing is lost.
                why = NEVER_REUSED[state["Status"]]
            elif labels.get(LABEL_HASH) == spec.hash():
                if state.get("Paused"):
                    self._call("POST", f"/containers/{_q(spec.name)}/unpause", ok=(204, 304))
                    return Outcome("reused", "unpaused")
                if state["Running"]:
                    return Outcome("reused")
                self.start(spec.name)
                return Outcome("reused", "started")
            else:
                old = json.loads(labels.get(LABEL_IDENTITY, "{}"))
                why = "changed: " + ", ".join(differences(old, spec.identity()) or ["spec"])
            # By id: the one judged here, never a newer one another launch made meanwhile.
            try:
                self._call("DELETE", f"/containers/{info['Id']}?force=1")
            except EngineError as e:
                if e.status not in (404, 409):  # gone, or being removed: another launch is at it
                    raise
                return self._made_meanwhile(spec, image, runtime)
        if not self._create(spec, image, runtime):
            return self._made_meanwhile(spec, image, runtime)
        return Outcome("recreated", why) if info is not None else Outcome("fresh")

    def _made_meanwhile(self, spec: ContainerSpec, image: str | None, runtime: Runtime | None) -> Outcome:
        """The name was taken between inspect and create: another launch (another user's, whose
        lock is not ours) is making this devshell. Wait for it to start the container, bounded."""
        import time

        deadline = time.monotonic() + CALL_TIMEOUT
        while time.monotonic() < deadline:
            info = self.inspect_own(spec.name, spec.cell)
            if info is None or (info["State"]["Status"] == "created"
                                and not maker_alive((info["Config"].get("Labels") or {}).get(MAKER, ""))):
                # the other launch gave up or died: ours to make
                return self.ensure_container(spec, image=image, runtime=runtime)
            if info["State"]["Status"] != "created":
                if (info["Config"].get("Labels") or {}).get(LABEL_HASH) != spec.hash():
                    raise DevshellError(f"another launch made {spec.name} with other flags meanwhile",
                                        "launch again (it is replaced), or pass another --instance")
                return self.ensure_container(spec, image=image, runtime=runtime)
            time.sleep(0.2)
        raise DevshellError(f"another launch has been making {spec.name} for {CALL_TIMEOUT:.0f} s",
                            f"look for a stuck devshell process, then docker rm -f {spec.name}")

    def _create(self, spec: ContainerSpec, image: str | None, runtime: Runtime | None) -> bool:
        """Create, copy init in, start. False: the name was taken meanwhile (nothing done)."""
        query, config = spec.api_create()
        config["Labels"] = {**config["Labels"], MANAGED: "1", MAKER: this_maker(), PROFILE: spec.profile,
                            RUNTIME: str(runtime) if runtime else spec.runtime or "default"}
        if image is not None:
            config["Image"] = image
        try:
            created = self._call("POST", f"/containers/create?{_query(query)}", config)
        except EngineError as e:
            if e.status == 409:
                return False
            if e.status == 404:
                raise DevshellError(f"image {spec.image} is not present",
                                    "docker load it, or pass --image IMAGE") from None
            raise DevshellError(f"cannot create container {spec.name} ({e.reason})",
                                "check the image and the Docker daemon") from None
        cid = created["Id"]
        try:  # init and setup go in before the first start (a read-only root has them baked in)
            if not spec.locked:
                self._call("PUT", f"/containers/{cid}/archive?path=%2F", raw=_tar(spec.files),
                           content_type="application/x-tar")
            self.start(cid)
        except EngineError as e:
            self.remove_container(cid)
            if e.status in (404, 409):  # removed or being removed under us: not the image's fault
                raise DevshellError(f"another launch replaced {spec.name} while this one was making it",
                                    "launch again") from None
            raise DevshellError(f"cannot start container {spec.name} ({e.reason})",
                                f"check that {spec.image} runs on {spec.platform}") from None
        return True

    def start(self, name: str) -> None:
        self._call("POST", f"/containers/{_q(name)}/start", ok=(204, 304))

    def remove_container(self, name: str) -> bool:
        return self._call("DELETE", f"/containers/{_q(name)}?force=1", missing=(404,)) is not None

    def labelled(self, label: str) -> list[dict[str, str]]:
        """Labels of every container, volume and network carrying label, from one list call each:
        what other processes remove meanwhile must not turn into errors."""
        containers = self.client.api.containers(all=True, filters={"label": label})
        volumes = self.client.api.volumes(filters={"label": label}).get("Volumes") or []
        networks = self.client.api.networks(filters={"label": label})
        return [x.get("Labels") or {} for x in [*containers, *volumes, *networks]]

    def remove_all(self, filters: dict[str, str], keep: Collection[str] = ()) -> list[str]:
        """Remove every container, then every volume and network, matching docker filters (label, name),
        but for those named in keep.
        Idempotent: what another process removed meanwhile counts as removed. What the engine
        will not remove yet (409: a container's removal in progress, a volume a container still
        holds; 500 twice: its storage driver failed) is left and named in the list returned, for
        the caller to say: an error there would fail whatever called, and silence would leave it
        unseen."""
        from concurrent.futures import ThreadPoolExecutor

        left: list[str] = []

        def remove(path: str, name: str) -> None:
            if name in keep:
                return
            for attempt in range(2):
                try:
                    self._call("DELETE", path)
                    return
                except EngineError as e:
                    # 500: the storage driver's own failure, now and then, e.g. fuse-overlayfs's
                    # "failed to remove root filesystem: ... directory not empty" while the
                    # container's last files are released; the next try usually finds them gone.
                    if e.status == 500 and attempt == 0:
                        continue
                    if e.status in (403, 409, 500):  # 403: a network something (kept, foreign) holds
                        left.append(name)
                    elif e.status != 404:
                        raise
                    return

        matching = json.dumps({k: [v] for k, v in filters.items()})
        containers = self._call("GET", f"/containers/json?{_query({'all': '1', 'filters': matching})}")
        # Side by side: the engine stops and removes each on its own, and a test run's sweep of
        # a hundred devshells one at a time took half a minute. Containers first: a volume or
        # network still held by one would not go.
        with ThreadPoolExecutor(max_workers=REMOVE_WORKERS) as pool:
            list(pool.map(lambda c: remove(f"/containers/{c['Id']}?force=1",
                                           (c.get("Names") or [c["Id"]])[0].lstrip("/")), containers))
            query = _query({"filters": matching})
            volumes = self._call("GET", f"/volumes?{query}").get("Volumes") or []
            list(pool.map(lambda v: remove(f"/volumes/{_q(v['Name'])}?force=1", v["Name"]), volumes))
            # ... and the egress networks, once their devshell and proxy are gone
            networks = self._call("GET", f"/networks?{query}")
            list(pool.map(lambda n: remove(f"/networks/{n['Id']}", n["Name"]), networks))
        return left

    @contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        """The container's processes paused while the block runs (nothing if it is not running):
        what the host does to the directories it binds cannot be raced from inside."""
        try:
            self._call("POST", f"/containers/{_q(name)}/pause", ok=(204,))
        except EngineError as e:
            if e.status not in (404, 409):  # none, or not running: nothing inside to race
                raise
            yield
            return
        try:
            yield
        finally:
            self._call("POST", f"/containers/{_q(name)}/unpause", ok=(204, 304))

    # --- exec -----------------------------------------------------------------------------

    def exec(self, name: str, argv: list[str], *, user: str = "0",
             workdir: str | None = None) -> ExecResult:
        """Run argv in the container and capture its output (not for interactive use)."""
        from docker.errors import DockerException

        first: ExecResult | None = None
        while True:
            try:
                result = self.client.api.exec_create(name, argv, user=user, workdir=workdir)
                out, err = self.client.api.exec_start(result["Id"], demux=True)
                inspected = self.client.api.exec_inspect(result["Id"])
            except DockerException as e:
                if first is not None:  # the second try found the container going: the first stands
                    return first
                raise DevshellError(f"cannot exec in {name} ({_reason(e)})",
                                    "check the container's state") from None
            out, err = out or b"", err or b""
            answer = ExecResult(int(inspected["ExitCode"]), out.decode(errors="replace"),
                                err.decode(errors="replace"))
            # gVisor under load: now and then `runsc exec` itself fails (exit 128) and docker
            # answers 126 in its own words, with no process started (pid 0: never a process
            # inside that printed them). Once more, then: the runtime's hiccup, not an answer.
            failed_to_start = (answer.exit_code == 126 and not inspected.get("Pid") and not err
                               and out.startswith(RUNTIME_EXEC_FAILED[0]) and RUNTIME_EXEC_FAILED[1] in out)
            if first is not None or not failed_to_start:
                return answer
            first = answer

    def run_captured(self, ex: ExecSpec) -> ExecResult:
        """The same `docker exec` as session(), with output captured (harness use)."""
        import subprocess

        with subprocess.Popen(ex.cli(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) as proc:
            watching = self._watch(ex, proc.pid)
            try:
                out, err = proc.communicate()
            finally:
                watching.set()
        return ExecResult(proc.returncode, out, err)

    def _watch(self, ex: ExecSpec, pid: int) -> Any:
        """With ex.watch: a thread that kills the docker CLI at pid once the container is no
        longer running (a gVisor sandbox killed at a limit leaves its execs waiting forever).
        Returns the event that ends the watch: set it when the exec is over."""
        import signal
        import threading

        over = threading.Event()
        if not ex.watch:
            return over
        # A pidfd, taken while the CLI cannot have been reaped yet: the main thread may reap it
        # while an inspect is under way, and a bare pid could by then name another process.
        # (A kernel before 5.3 has none: the bare pid, and that small window, it is.)
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            pidfd = None

        def kill() -> None:
            with suppress(ProcessLookupError):
                if pidfd is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)

        def watch() -> None:
            try:
                while not over.wait(WATCH_INTERVAL):
                    try:
                        info = self.inspect(ex.container)
                    except DevshellError:
                        continue  # a slow engine is no stopped container
                    if info is None or not info["State"]["Running"]:
                        kill()
                        return
            finally:
                if pidfd is not None:
                    os.close(pidfd)

        threading.Thread(target=watch, daemon=True, name=f"watch-{ex.container}").start()
        return over

    def session(self, ex: ExecSpec) -> int:
        """Hand the terminal to a `docker exec`: the CLI does TTY and stdin right, but a signal
        that ends it leaves what it started running inside. So a signal that ends the session
        (SIGTERM, SIGHUP; SIGINT and SIGQUIT unless a terminal inside owns ^C and ^\\) also
        stops the session's processes inside, and the exit status says which signal it was
        (128 + its number). A second signal does not wait for that: the CLI goes at once.
        posix_spawn, not subprocess: the warm path should not pay for importing it."""
        import signal

        ending = [signal.SIGTERM, signal.SIGHUP] + ([] if ex.tty else [signal.SIGINT, signal.SIGQUIT])
        caught: list[int] = []
        child = [0]  # the docker CLI's pid while it is ours to signal (0 once reaped)
        waiting = [False]  # raising is only safe inside the try below

        def on_signal(signum: int, _frame: object) -> None:
            # Only record and leave the wait: the stop, which asks the engine, runs below, where
            # its own bounds hold and a second signal can still cut it short.
            caught.append(signum)
            if len(caught) == 1 and waiting[0]:
                waiting[0] = False
                raise _SessionEnding
            if len(caught) > 1 and child[0]:
                with suppress(ProcessLookupError):
                    os.kill(child[0], signal.SIGKILL)

        # The docker CLI puts a terminal in raw mode and restores it as it ends; one we had to
        # kill cannot, so the terminal's settings are kept here and put back.
        terminal = _terminal_settings() if ex.tty else None

        # The ending signals are held back while handlers go in and out and while the CLI is
        # spawned: the handler's exception is only ever raised inside the try below, and only
        # once there is a child to wait for (or none will come).
        signal.pthread_sigmask(signal.SIG_BLOCK, ending)
        old = {sig: signal.signal(sig, on_signal) for sig in ending}
        if ex.tty:  # ^C and ^\ belong to the shell inside
            for sig in (signal.SIGINT, signal.SIGQUIT):
                old[sig] = signal.signal(sig, signal.SIG_IGN)
        status = None
        watching = None
        try:
            try:
                child[0] = os.posix_spawnp("docker", ex.cli(), os.environ,
                                           setsigdef=[signal.SIGINT, signal.SIGQUIT], setsigmask=[])
                watching = self._watch(ex, child[0])
                waiting[0] = True
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, ending)
            status = os.waitpid(child[0], 0)[1]
            waiting[0], child[0] = False, 0
        except _SessionEnding:
            signal_name = signal.Signals(caught[0]).name.removeprefix("SIG")
            self._stop_session(ex, signal_name)
            if child[0]:
                status = self._wait_session(child[0], grace=STOP_GRACE)
                child[0] = 0
            # Once more now that the CLI is gone: a signal that came before the exec had
            # started inside found nothing to stop the first time. (Not after a second
            # signal: that one asked for no more waiting.)
            if len(caught) == 1:
                self._stop_session(ex, "KILL")
        except FileNotFoundError:
            raise DevshellError("the docker CLI is not on PATH", "install docker's client") from None
        finally:
            waiting[0] = False
            if watching is not None:
                watching.set()
            signal.pthread_sigmask(signal.SIG_BLOCK, ending)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, ending)
            if terminal is not None:
                _restore_terminal(terminal)
        if caught:
            return 128 + caught[0]
        assert status is not None
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code

    @staticmethod
    def _wait_session(pid: int, grace: float) -> int:
        """The docker CLI's wait status, after a signal: it has grace seconds to see the session
        end inside, then it is ended too, so a signal never leaves devshell hanging. (Already
        reaped, when the signal came just as it ended: 0.)"""
        import signal
        import time

        deadline = time.monotonic() + grace
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    return os.waitpid(pid, 0)[1]
                time.sleep(0.05)
        except ChildProcessError:
            return 0

    def _stop_session(self, ex: ExecSpec, signal_name: str) -> None:
        """Start `init --stop` inside, detached: it signals every process of the session. Each
        request is bounded to STOP_CALL_TIMEOUT: a stalled engine delays the exit that much,
        not the engine's usual two minutes."""
        if not ex.session_id:
            return
        try:
            created = self._call("POST", f"/containers/{_q(ex.container)}/exec",
                                 {"Cmd": ex.stop_argv(signal_name), "User": "0"}, timeout=STOP_CALL_TIMEOUT)
            self._call("POST", f"/exec/{created['Id']}/start", {"Detach": True}, timeout=STOP_CALL_TIMEOUT)
        except DevshellError as e:  # the container is gone or stopped: so is the session
            print(f"devshell: could not stop the session inside {ex.container}: {e.message}",
                  file=sys.stderr)

    # --- lifecycle ------------------------------------------------------------------------
    # Reads for `devshell status`, `down` and `doctor` (devshell/lifecycle.py): none of these
    # creates, starts, changes or removes anything.

    def list_containers(self, label: str | None = None) -> list[dict[str, Any]]:
        """Every container, running or not (with label: only those carrying it)."""
        query = {"all": "1", **({"filters": json.dumps({"label": [label]})} if label else {})}
        found: list[dict[str, Any]] = self._call("GET", f"/containers/json?{_query(query)}")
        return found

    def list_images(self, reference: str) -> list[dict[str, Any]]:
        """Every image whose name matches reference (e.g. a repository: all its tags)."""
        query = _query({"filters": json.dumps({"reference": [reference]})})
        found: list[dict[str, Any]] = self._call("GET", f"/images/json?{query}")
        return found

    def list_volumes(self, label: str | None = None) -> list[dict[str, Any]]:
        """Every volume (with label: only those carrying it)."""
        query = f"?{_query({'filters': json.dumps({'label': [label]})})}" if label else ""
        found: list[dict[str, Any]] = self._call("GET", f"/volumes{query}").get("Volumes") or []
        return found

    def containers_using(self, volume: str) -> list[dict[str, Any]]:
        """Every container (running or not) that mounts the volume."""
        query = _query({"all": "1", "filters": json.dumps({"volume": [volume]})})
        found: list[dict[str, Any]] = self._call("GET", f"/containers/json?{query}")
        return found

    def volume_usage(self, container: str) -> int | None:
        """Bytes in a running devshell's volume, measured inside it (du over its workspace),
        or None when it is not running or du does not answer within USAGE_TIMEOUT (bounded
        here, on the host: the container's own `timeout` could be anything). Only for a
        container devshell made (callers check): it runs a program in it. The number comes
        from inside, so it is informational. (GET /system/df measures every container and
        volume on the engine, one walk at a time: minutes on a busy engine.)"""

        info = self.inspect(container)
        if not info or not info["State"]["Running"] or info["State"].get("Paused"):
            return None
        env = dict(e.partition("=")[::2] for e in info["Config"].get("Env") or [])
        workspace = env.get(WORKSPACE_ENV)
        if not workspace:
            return None
        import re

        out = self.bounded_exec(info["Id"], ["du", "-sxB1", workspace])
        found = re.match(rb"(\d{1,20})\t", out)
        return int(found[1]) if found else None

    def exec_mtime(self, container: str, path: str) -> str | None:
        """When path in a running container was last modified (RFC 3339, UTC), asked of find
        inside: for files on a tmpfs, which the engine's archive API (path_mtime) cannot see.
        Same terms as volume_usage: only in a container devshell made, bounded, informational."""
        import re
        import time

        out = self.bounded_exec(container, ["find", path, "-maxdepth", "0", "-printf", "%T@\\n"])
        found = re.match(rb"(\d{1,12})(\.\d+)?\n", out)
        if not found:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(found[1])))

    def bounded_exec(self, container: str, argv: list[str], *, limit: int = 64, user: str = "0") -> bytes:
        """What argv prints (as user, root by default) in the container, read on the host's
        terms: at most limit bytes, within USAGE_TIMEOUT, then the docker CLI is killed (what
        runs inside is the agent's to replace: it may hang or flood). b"" when it cannot run."""
        return _bounded_output(["docker", "exec", "--user", user, container, *argv], limit)

    def logs_tail(self, name: str, lines: int, *, limit: int = 64 * 1024) -> str:
        """The last lines of a container's output (stdout and stderr), read on the same terms
        as bounded_exec: root inside writes them, as many and as long as it likes."""
        out = _bounded_output(["docker", "logs", "--tail", str(lines), name], limit, stderr=True)
        return out.decode(errors="replace")

    def version(self) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", "/version")
        return found

    def system_info(self) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", "/info")
        return found

    def path_mtime(self, container: str, path: str) -> str | None:
        """When path in the container (running or not) was last modified, as the engine's stat
        of it says (RFC 3339), or None if it is missing or the engine will not say. HEAD on
        the archive endpoint: the stat travels in a response header and no file content is
        read, since what the container holds is hostile input. _request keeps no headers, so
        this one request goes through the SDK's session."""
        import base64

        api = self.client.api
        try:
            answer = api.head(f"{api.base_url}/containers/{_q(container)}/archive",
                              params={"path": path}, timeout=30)
        except OSError:  # requests' errors are OSErrors: an optional detail, not a failure
            return None
        header = answer.headers.get("X-Docker-Container-Path-Stat", "")
        if answer.status_code != 200 or not header or len(header) > 8192:
            return None
        try:
            mtime = json.loads(base64.b64decode(header)).get("mtime")
        except ValueError:
            return None
        return mtime if isinstance(mtime, str) else None


def this_maker() -> str:
    """This process, as the MAKER label names it: host:pid."""
    return f"{os.uname().nodename}:{os.getpid()}"


def maker_alive(maker: str) -> bool:
    """The launch a MAKER label names may still be at work: its process lives on this host,
    or it is on another host (whose processes this one cannot see; the wait is bounded)."""
    host, _, pid = maker.partition(":")
    if not pid.isdigit():
        return False
    return host != os.uname().nodename or (int(pid) != os.getpid() and pid_alive(int(pid)))


def pid_alive(pid: int) -> bool:
    """A process of that pid exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _terminal_settings() -> list[Any] | None:
    """stdin's terminal settings (termios), or None where there are none to keep."""
    import termios

    try:
        return termios.tcgetattr(0)
    except (OSError, termios.error):
        return None


def _restore_terminal(settings: list[Any]) -> None:
    import termios

    with suppress(OSError, termios.error):
        termios.tcsetattr(0, termios.TCSADRAIN, settings)


def require_docker_cli() -> None:
    """Sessions are handed to the docker CLI: find it before anything is created or replaced,
    not after. A plain PATH scan (shutil costs the warm path an import)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.access(os.path.join(d, "docker"), os.X_OK):
            return
    raise DevshellError("the docker CLI is not on PATH (devshell hands every session to it)",
                        "install docker's client, or add its directory to PATH")


def _check_owner(kind: str, name: str, labels: dict[str, str] | None, cell: str) -> None:
    """An object with devshell's name is ours to act on only if devshell made it for this cell."""
    owner = owner_of(labels, cell)
    if owner == "foreign":
        raise DevshellError(f"a {kind} named {name} exists that devshell did not create",
                            f"leave it be: rename or remove the {kind} yourself, or pass --instance")
    if owner == "other-cell":
        raise DevshellError(f"{kind} {name} belongs to cell {(labels or {}).get(LABEL_CELL)}, not {cell}",
                            "pass another --instance, or act on it as that cell")


class _SessionEnding(Exception):
    """Raised by the session's signal handler to leave an unbounded wait."""


class EngineError(DevshellError):
    """The engine answered with an error status; reason is its own words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"the Docker engine answered {status}: {reason}", "check the daemon (docker info)")
        self.status, self.reason = status, reason


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


def _q(name: str) -> str:
    """A name or image reference in a URL path (a tag's '/' and ':' stay: the engine's router
    takes them). Container names need no quoting, and the warm path no urllib import."""
    if _PLAIN.issuperset(name):
        return name
    from urllib.parse import quote

    return quote(name, safe="/:@")


def _bounded_output(argv: list[str], limit: int, *, stderr: bool = False) -> bytes:
    """What a docker CLI command prints, at most limit bytes, within USAGE_TIMEOUT; then it is
    killed. b"" when it cannot run."""
    import selectors
    import subprocess
    import time

    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL)
    except OSError:
        return b""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + USAGE_TIMEOUT
    try:  # the CLI goes with us, a ^C or a signal-turned-exit included (lifecycle.main)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while len(out) < limit and (left := deadline - time.monotonic()) > 0 and sel.select(left):
                chunk = os.read(proc.stdout.fileno(), limit - len(out))
                if not chunk:
                    break
                out += chunk
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return out


def _query(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def runtime_of(info: dict[str, Any], name: str) -> Runtime:
    """The runtime called name ("" for the default) as the engine's /info describes it: by its
    configuration, not its name alone (gVisor when its binary is runsc, whatever it is called).
    DevshellError for one that is not registered, or that would silently drop a guard (gVisor
    without --oci-seccomp ignores the container's seccomp profile)."""
    registered = info.get("Runtimes") or {}
    chosen = name or info.get("DefaultRuntime") or "runc"
    if chosen not in registered:
        raise DevshellError(f"runtime {chosen!r} is not registered with the Docker engine (it has: "
                            f"{', '.join(sorted(registered)) or 'none'})",
                            "register it under \"runtimes\" in /etc/docker/daemon.json and reload "
                            "the daemon (kill -HUP), or drop --runtime")
    config = registered[chosen] or {}
    binary = os.path.basename(str(config.get("path") or chosen))
    args = [str(a) for a in config.get("runtimeArgs") or []]
    if binary == "runsc":
        if "--oci-seccomp" not in args:
            raise DevshellError(f"runtime {chosen!r} is gVisor without --oci-seccomp: it would ignore "
                                "devshell's seccomp profile (no setuid bits, no FIFOs)",
                                "add \"--oci-seccomp\" to its runtimeArgs in daemon.json and reload "
                                "the daemon (kill -HUP)")
        # --network=none, or --network none as two arguments (runsc takes both)
        pairs = zip(args, [*args[1:], ""], strict=True)
        none = any(a == "--network=none" or (a == "--network" and b == "none") for a, b in pairs)
        return Runtime(chosen, "gvisor", network=not none, seccomp=True)
    return Runtime(chosen, "runc" if binary.startswith("runc") else "other", True, True)


def _log_lines(stream: bytes) -> list[str]:
    """The lines of a container's log as the engine sends it without a TTY: frames of an
    8-byte header (stream, 3 zero bytes, big-endian length) and a payload."""
    out = b""
    while len(stream) >= 8:
        size = int.from_bytes(stream[4:8], "big")
        out, stream = out + stream[8:8 + size], stream[8 + size:]
    return [line for line in out.decode(errors="replace").splitlines() if line.strip()]


def _tar(files: tuple[tuple[str, str | bytes], ...]) -> bytes:
    import io
    import tarfile
    import time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, content in files:
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path.lstrip("/"))
            # Programs are executable; data (the BPF filter) is only readable.
            mode = 0o755 if isinstance(content, str) else 0o644
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _stream(cmd: list[str], progress: Progress, keep: Callable[[str], bool]) -> None:
    """Run cmd, passing the lines keep() selects to progress; fail with its last lines."""
    import subprocess

    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-4:], line]
            if keep(line):
                progress(f"  {line}")
    if proc.returncode:
        raise DevshellError(f"{cmd[0]} failed (exit {proc.returncode}): {' | '.join(tail)}",
                            "check the network to the Debian mirror and the cell's recipe")


LAUNCH_LOCK_TIMEOUT = 600.0  # seconds: longer than any launch that is still making progress
BUILD_LOCK_TIMEOUT = 3600.0  # ... and any build (debootstrap over a slow mirror, recipe steps)


@contextmanager
def _lock(name: str, timeout: float) -> Iterator[None]:
    """A per-user lock (flock: a killed holder lets go with its last descriptor), so parallel
    runs (xdist workers, two terminals) build an image once and make a devshell once."""
    from filelock import FileLock, Timeout

    d = os.path.join(cache_dir(), "locks")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise DevshellError(f"cannot make devshell's lock dir {d} ({e.strerror})",
                            "point XDG_CACHE_HOME (or HOME) at a directory you can write") from None
    path = os.path.join(d, f"{name}.lock")
    try:
        with FileLock(path, timeout=timeout):
            yield
    except Timeout:
        raise DevshellError(f"another devshell process has held {path} for {timeout:.0f} s",
                            "let it finish, or stop the devshell process that is stuck") from None


def launch_lock(name: str) -> contextlib.AbstractContextManager[None]:
    """Held while one launch makes (or replaces) devshell `name`'s volume and container: four
    first launches at once end on one container, not on a 409 and a volume removed under
    another launch's feet."""
    return _lock(f"launch-{name}", LAUNCH_LOCK_TIMEOUT)


def _reason(e: BaseException) -> str:
    """One short line from a docker error, without the request and retry noise."""
    import re

    explanation = getattr(e, "explanation", None)
    text = str(explanation or e).strip()
    known = re.search(r"No such file or directory|Connection refused|Permission denied|timed out", text)
    if known:
        return known.group(0)
    lines = text.splitlines()
    return lines[0] if lines else type(e).__name__
