"""Cells: named toolchain environments, defined as data in ``cells/*.yaml``.

A cell named NAME lives in ``NAME.yaml`` in one of the cell directories. Loading validates the
file against a schema; every error names the file, the key and what was expected. A file that
validated once is remembered by content hash, so re-entry pays for neither YAML nor jsonschema.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .errors import DevshellError
from .hostfs import read_regular

DEFAULT_CELL = "bookworm"
CELLS_PATH_ENV = "DEVSHELL_CELLS_PATH"
# Words the CLI keeps for subcommands: a cell may never be called one of these, so
# `devshell WORD` is never ambiguous.
RESERVED_NAMES = frozenset({"patches", "status", "down", "doctor", "cache", "net", "list", "help", "version",
                            "cells", "shell"})
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
PLATFORMS = ("linux/amd64", "linux/arm64")
# Mount points the launcher owns (spec.py binds them); a workspace may not sit on or under them.
PATCHES = "/patches"
CHECKOUT = "/checkout"
CACHE = "/cache"
RESERVED_MOUNTS = (PATCHES, CHECKOUT, CACHE)
# Trust profiles (docs/trust-model.md): standard gives dev passwordless sudo; locked never
# lets the session be root (no sudo, no-new-privileges, no capabilities, read-only root).
PROFILES = ("standard", "locked")
# What a devshell's network reaches (docs/trust-model.md): open is the engine's default
# network (anything the host reaches); allow is the names in the cell's network.allow, through
# its egress proxy (egress.py); none is loopback only.
NETWORK_MODES = ("open", "allow", "none")
DEFAULT_NETWORK = "open"
DEFAULT_PROFILE = "standard"
# Limits every devshell gets unless its cell says otherwise (`limits:`): enough for a parallel
# C++ build on a laptop, small enough that a fork bomb or a leak cannot take the host down.
# Memory is without swap (swap = memory), so a hog is killed at the limit, not paged out.
DEFAULT_PIDS_LIMIT = 4096
DEFAULT_MEMORY_LIMIT = 8 << 30
# Below these, init and a shell do not fit: a cell asking for less is a mistake.
MIN_PIDS_LIMIT = 64
MIN_MEMORY_LIMIT = 64 << 20
# Above these a number is a typo, and one past int64 would reach the engine only after the
# image was built (and, locked, baked): the kernel's highest pid_max, and 1 TiB.
MAX_PIDS_LIMIT = 1 << 22
MAX_MEMORY_LIMIT = 1 << 40
_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_CELL_BYTES = 1 << 20  # a cell file is a page of YAML; anything near this is not one
# A workspace is where the cell's volume is mounted: over a system directory (/etc, /usr, /tmp,
# /root, /home itself …) it would hide what the image put there. Only paths strictly below
# these roots are workspaces (and never dev's home: init owns /home/dev).
WORKSPACE_ROOTS = ("/home", "/workspaces", "/srv", "/opt")
DEV_HOME = "/home/dev"

# One directory name below the workspace, and an absolute path: the schemas' words for them
# (a build cache manifest names the same dirs: buildcache.py).
SUBDIR = {"type": "string", "pattern": r"^(?!\.\.?$)(?!.*/)[^\s]+$"}
ABSOLUTE_PATH = {"type": "string", "pattern": r"^/[^\s]*[^/\s]$"}
# The build cache's words a cell pins a seed with (buildcache.py uses the same): an entry's key,
# a sha256, and a git commit id (SHA-1's 40 hex digits or SHA-256's 64).
CACHE_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SHA256_PATTERN = "^[0-9a-f]{64}$"
COMMIT_PATTERN = "^[0-9a-f]{40}([0-9a-f]{24})?$"
# Where a seed or a source comes from: printable, no spaces (a URL or a path).
# Never one starting with '-': git inside takes the source's as an argument.
LOCATION = {"type": "string", "pattern": r"^(?!-)[\x21-\x7e]{1,2048}$"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["platform", "image", "workspace"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "description": {"type": "string"},
        "platform": {"enum": list(PLATFORMS)},
        "image": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "ref": {"type": "string", "minLength": 1},
                "recipe": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["debootstrap"],
                    "properties": {
                        "debootstrap": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["suite"],
                            "properties": {
                                "suite": {"type": "string", "pattern": r"^[a-z0-9-]+$"},
                                "variant": {"enum": ["minbase", "buildd", "fakechroot"]},
                                "include": {
                                    "type": "array",
                                    "items": {"type": "string", "pattern": r"^[a-z0-9.+-]+$"},
                                },
                                "mirror": {"type": "string", "pattern": r"^(https?|file)://"},
                            },
                        },
                        "run": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    },
                },
            },
        },
        "workspace": ABSOLUTE_PATH,
        "dirs": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"src": SUBDIR, "build": SUBDIR, "ccache": SUBDIR, "install": SUBDIR},
        },
        "env": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "setup": {"type": "string"},
        # How the cell's source builds, for the harness and bench (suites/test_warm_build.py):
        # shell commands run as dev in the src dir, and a source tree beside the cell file that
        # the harness and bench build (from a git repository they make of it).
        "build": {
            "type": "object",
            "additionalProperties": False,
            "required": ["configure", "compile", "install"],
            "properties": {"project": SUBDIR,
                           "configure": {"type": "string", "minLength": 1},
                           "compile": {"type": "string", "minLength": 1},
                           "install": {"type": "string", "minLength": 1}},
        },
        # A build cache entry a new volume is seeded from (seeding.py), pinned by its manifest.
        "seed": {
            "type": "object",
            "additionalProperties": False,
            "required": ["from", "key", "manifest_sha256"],
            "properties": {"from": LOCATION,
                           "key": {"type": "string", "pattern": CACHE_KEY_PATTERN},
                           "manifest_sha256": {"type": "string", "pattern": SHA256_PATTERN}},
        },
        # The source a seed's build came from, for an entry whose manifest names none.
        "source": {
            "type": "object",
            "additionalProperties": False,
            "required": ["repo", "commit"],
            "properties": {"repo": LOCATION, "commit": {"type": "string", "pattern": COMMIT_PATTERN}},
        },
        "profile": {"enum": list(PROFILES)},
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mode": {"enum": list(NETWORK_MODES)},
                           # host names, *.suffix, either with :port (egress.parse_rule)
                           "allow": {"type": "array", "items": {"type": "string"}}},
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "pids": {"type": "integer", "minimum": MIN_PIDS_LIMIT, "maximum": MAX_PIDS_LIMIT},
                # Bytes, or a number with k, m or g (1024-based), as docker run --memory takes.
                "memory": {"type": ["integer", "string"], "pattern": r"^[0-9]+[kmgKMG]?$"},
            },
        },
    },
}


class Recipe(NamedTuple):
    """How to build a cell's image offline: a debootstrap rootfs, then RUN layers."""

    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    mirror: str | None = None
    run: tuple[str, ...] = ()

    def base_key(self) -> dict[str, Any]:
        return {"suite": self.suite, "variant": self.variant,
                "include": sorted(self.include), "mirror": self.mirror}

    def base_hash(self) -> str:
        return _digest(self.base_key())

    def hash(self) -> str:
        return _digest({"base": self.base_key(), "run": list(self.run)})


class Seed(NamedTuple):
    """A cell's seed: the build cache entry KEY at FROM whose manifest hashes to manifest_sha256."""

    location: str  # the cell file's from: (a directory, file:// or http(s):// base)
    key: str
    manifest_sha256: str


class Source(NamedTuple):
    """A git repository and the one commit of it a seeded src dir is fetched at."""

    repo: str
    commit: str


class BuildSteps(NamedTuple):
    """A cell's build: (key build:) commands run as dev in its src dir; project, a source tree on the host."""

    configure: str
    compile: str
    install: str
    project: str | None = None

    def script(self, *, clean: bool, change: str | None = None) -> str:
        """The build as a script for the devshell (as dev): the source cloned from /checkout
        when src has none, the build dir emptied (clean), one line added to the file change,
        then configure, compile and install, ccache's statistics zeroed before the compile.
        It prints what read_report reads."""
        return "\n".join([
            "#!/bin/bash", "set -euo pipefail", 'cd "$DEVSHELL_SRC"',
            f"[ -e .git ] || git clone -q file://{CHECKOUT} .",
            'rm -rf "$DEVSHELL_BUILD"' if clean else "",
            # A definition, not a comment: ccache's preprocessor mode would hit a comment's change.
            f'echo "int devshell_changed_$(date +%s%N) = 1;" >> {change}' if change else "",
            f"{self.configure} >/dev/null", "ccache -z >/dev/null", "start=$(date +%s%N)",
            f"{self.compile} >/tmp/devshell-compile.log", "end=$(date +%s%N)", f"{self.install} >/dev/null",
            'echo "nanoseconds $((end - start))"',
            # CMake's and make's words for a compiled object; ninja prints CMake's
            "echo \"compiled $(grep -c -E 'Building (C|CXX) object' /tmp/devshell-compile.log || true)\"",
            "ccache --print-stats | grep -E '^(direct_cache_hit|preprocessed_cache_hit|cache_miss)\\s'",
            "echo \"commit $(git rev-parse HEAD)\"", ""])

    def repository(self, dest: str) -> str:
        """The project as a new git repository at dest (one commit; readable by every user, as
        a checkout dev reads must be): its commit id. For the harness and bench/run.py."""
        import shutil
        import subprocess

        if self.project is None:
            raise DevshellError("this cell's build: names no project",
                                "add build.project, or pass a checkout")
        shutil.copytree(self.project, dest)
        git = ["git", "-C", dest, "-c", "user.name=devshell", "-c", "user.email=devshell@localhost"]
        for argv in (["git", "init", "-q", dest], [*git, "add", "-A"],
                     [*git, "commit", "-qm", "the project"]):
            subprocess.run(argv, check=True, capture_output=True)
        for root, _, files in os.walk(dest):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        done = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    @staticmethod
    def read_report(stdout: str) -> dict[str, Any]:
        """What script() printed: seconds, compiled, hits, misses, hit_rate, commit."""
        found = dict(line.split(None, 1) for line in stdout.splitlines() if len(line.split(None, 1)) == 2)
        hits = int(found["direct_cache_hit"]) + int(found["preprocessed_cache_hit"])
        misses = int(found["cache_miss"])
        return {"seconds": int(found["nanoseconds"]) / 1e9, "compiled": int(found["compiled"]),
                "hits": hits, "misses": misses, "hit_rate": hits / max(1, hits + misses),
                "commit": found["commit"].strip()}


class Cell(NamedTuple):
    name: str
    source: str
    platform: str
    workspace: str
    src: str
    build: str
    ccache: str
    image_ref: str | None = None
    # The install tree a build cache carries (buildcache.py): a workspace subdir, like src.
    install: str = ""
    recipe: Recipe | None = None
    env: tuple[tuple[str, str], ...] = ()
    setup: str | None = None
    description: str = ""
    profile: str = DEFAULT_PROFILE
    network: str = DEFAULT_NETWORK
    # What --network allow lets through (egress.Rule), whatever the cell's own mode.
    allow: tuple[Any, ...] = ()
    pids_limit: int = DEFAULT_PIDS_LIMIT
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    seed: Seed | None = None
    source_pin: Source | None = None
    build_steps: BuildSteps | None = None

    @property
    def built_tag(self) -> str | None:
        """The tag an offline build of this cell's recipe gets: changes iff the recipe does."""
        if self.recipe is None:
            return None
        return f"devshell/{self.name}:{self.recipe.hash()[:16]}"

    @property
    def image(self) -> str:
        """The image a container of this cell runs: the pulled reference, else the build."""
        return self.image_ref or self.built_tag or ""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def cache_dir() -> str:
    """devshell's per-user cache: validated cells, build locks."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "devshell")


def shipped_cells_dir() -> str:
    """The cells that come with devshell: inside the wheel, or at the repository root."""
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "cells")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "cells")


def search_path(cells_dirs: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> list[str]:
    """Directories searched for cells, first match wins: --cells-dir, the env var, shipped.
    A --cells-dir must be a directory: a typo silently ignored would open a shipped cell of
    the same name instead of the user's. (DEVSHELL_CELLS_PATH is a path list, like PATH:
    entries that are not there are skipped.)"""
    for d in cells_dirs:
        if not os.path.isdir(d):
            why = "is not a directory" if os.path.exists(d) else "does not exist"
            raise DevshellError(f"--cells-dir {d} {why}", "pass a directory that holds NAME.yaml cell files")
    environ = os.environ if environ is None else environ
    from_env = [p for p in environ.get(CELLS_PATH_ENV, "").split(os.pathsep) if p]
    return [*cells_dirs, *from_env, shipped_cells_dir()]


def _yaml_files(d: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(d) if f.endswith(".yaml"))
    except OSError:
        return []


def find(name: str, path: Iterable[str]) -> Cell:
    dirs = list(path)
    if not _matches(NAME_PATTERN, name):  # a name, never a path: '../x' or '/tmp/x' find nothing
        raise DevshellError(f"{name!r} is not a cell name (lowercase letters, digits, '.', '_', '-')",
                            "see devshell --list")
    for d in dirs:
        f = os.path.join(d, f"{name}.yaml")
        if os.path.lexists(f):  # a directory or dangling link by that name is an error, not a miss
            return load(f)
    available = sorted({f[: -len(".yaml")] for d in dirs for f in _yaml_files(d)})
    raise DevshellError(
        f"no cell named {name!r} (searched {', '.join(dirs)})",
        f"pick one of {', '.join(available) or 'none found'}, or add --cells-dir DIR",
    )


def available(path: Iterable[str], problems: list[DevshellError] | None = None) -> list[Cell]:
    """Every cell on the search path, shadowed names resolved like find(). Given a problems
    list, a file that does not load is named there and skipped, so one broken file does not
    hide every other cell; without one, it is an error."""
    seen: dict[str, Cell | None] = {}
    for d in path:
        for f in _yaml_files(d):
            if f[: -len(".yaml")] in seen:
                continue
            try:
                seen[f[: -len(".yaml")]] = load(os.path.join(d, f))
            except DevshellError as e:
                if problems is None:
                    raise
                problems.append(e)
                # Still shadows a same-named cell further on: find() would stop at this file too.
                seen[f[: -len(".yaml")]] = None
    return [cell for cell in seen.values() if cell is not None]


# Raise when the checks beyond the schema (parse_yaml, build) change: a remembered cell was
# validated by the rules of its day, and must meet today's.
CHECKS_VERSION = 5
_SCHEMA_ID = hashlib.sha256(json.dumps([SCHEMA, CHECKS_VERSION], sort_keys=True).encode()).hexdigest()[:12]


def load(path: str) -> Cell:
    stem = os.path.basename(path)[: -len(".yaml")]
    # Only a regular file of a sane size is a cell file: a FIFO would block the read, and a
    # link to /dev/zero would fill memory.
    try:
        raw = read_regular(path, MAX_CELL_BYTES)
    except OSError as e:
        raise DevshellError(f"{path}: cannot read cell file ({e.strerror})", "check the path") from None
    if raw is None:
        raise DevshellError(f"{path} is not a regular file", "a cell is a NAME.yaml file")
    if len(raw) > MAX_CELL_BYTES:
        raise DevshellError(f"{path} is larger than {MAX_CELL_BYTES // 1024} KiB: no cell file is",
                            "check that it is the cell file you meant")
    remembered = os.path.join(cache_dir(), "cells",
                              f"{hashlib.sha256(raw).hexdigest()[:32]}-{_SCHEMA_ID}.json")
    try:
        with open(remembered, encoding="utf-8") as f:
            return build(json.load(f), source=path, stem=stem)
    except (OSError, ValueError):
        pass
    data = parse_yaml(raw, path)
    cell = parse(data, source=path, stem=stem)
    try:  # only what validated is remembered; a cache we cannot write is no error
        if not os.path.isdir(os.path.dirname(os.path.dirname(cache_dir()))):
            return cell  # never make a home (or XDG_CACHE_HOME's parent) that is not there
        os.makedirs(os.path.dirname(remembered), exist_ok=True)
        with open(remembered + ".tmp", "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(remembered + ".tmp", remembered)
    except OSError:
        pass
    return cell


def parse_yaml(raw: bytes, path: str) -> Any:
    """YAML as a cell means it: a key given twice is an error (PyYAML keeps the last one
    silently), and every key is text (an `env` of `{1: a}` is no variable name)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[object] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise DevshellError(f"{path}: line {line}: key {key!r} is not text",
                                        "quote it, or fix the cell file")
                if key in seen:
                    raise DevshellError(f"{path}: line {line}: key {key!r} is given twice",
                                        "keep one of them")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        data = yaml.load(raw, Loader=StrictLoader)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise DevshellError(f"{path}:{line} is not valid YAML", "fix the syntax") from None
    except RecursionError:  # PyYAML recurses per nesting level; no cell nests that deep
        raise DevshellError(f"{path}: nested too deeply to be a cell file", "fix the cell file") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of keys"
        raise DevshellError(f"{path}: the cell file is {what}",
                            "write it as 'key: value' lines (platform, image, workspace, …)")
    return data


def parse(data: Any, *, source: str, stem: str) -> Cell:
    """Validate one cell document. Pure: unit tests feed it dicts."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise DevshellError(f"{source}: key {key!r}: {_expected(error)}", "edit the cell file")
    return build(data, source=source, stem=stem)


def build(data: dict[str, Any], *, source: str, stem: str) -> Cell:
    """A Cell from a schema-valid document, with the checks a schema cannot express."""

    def bad(key: str, why: str) -> DevshellError:
        return DevshellError(f"{source}: key {key!r}: {why}", "edit the cell file")

    name = data.get("name", stem)
    if name != stem:
        raise bad("name", f"expected {stem!r} (the file name), got {name!r}")
    if not _matches(NAME_PATTERN, name):
        raise bad("name", "expected lowercase letters, digits, '.', '_' or '-' (file name)")
    if name in RESERVED_NAMES:
        raise bad("name", f"{name!r} is reserved for a devshell subcommand; rename the cell")
    workspace = posixpath.normpath(data["workspace"])
    if workspace == DEV_HOME or workspace.startswith(DEV_HOME + "/") or any(
        workspace == m or workspace.startswith(m + "/") for m in RESERVED_MOUNTS
    ):
        raise bad("workspace", f"{workspace} collides with a path devshell owns")
    if not any(workspace.startswith(root + "/") for root in WORKSPACE_ROOTS):
        roots = ", ".join(f"{r}/" for r in WORKSPACE_ROOTS)
        raise bad("workspace", f"{workspace} is not strictly below {roots} (a volume mounted over "
                  "a system directory hides what the image put there)")
    image = data["image"]
    recipe = None
    if "recipe" in image:
        r = image["recipe"]
        d = r["debootstrap"]
        recipe = Recipe(suite=d["suite"], variant=d.get("variant", "minbase"),
                        include=tuple(d.get("include", ())), mirror=d.get("mirror"),
                        run=tuple(r.get("run", ())))
    dirs = data.get("dirs", {})
    env = tuple(sorted((k, _env_str(v)) for k, v in data.get("env", {}).items()))
    reserved_env = [k for k, _ in env if k.startswith("DEVSHELL_") or k in ("HOME", "CCACHE_BASEDIR")]
    if reserved_env:
        raise bad(f"env.{reserved_env[0]}", "HOME, CCACHE_BASEDIR and DEVSHELL_* belong to the launcher "
                  "(CCACHE_BASEDIR is the workspace)")
    limits = data.get("limits", {})
    memory = memory_bytes(limits.get("memory", DEFAULT_MEMORY_LIMIT))
    if memory < MIN_MEMORY_LIMIT:
        raise bad("limits.memory", f"{memory} bytes is below {MIN_MEMORY_LIMIT >> 20} MiB, "
                  "too little for init and a shell")
    if memory > MAX_MEMORY_LIMIT:
        raise bad("limits.memory", f"{memory} bytes is above {MAX_MEMORY_LIMIT >> 30} GiB, more than "
                  "any host devshell runs on (a typo?)")
    from .egress import parse_rule  # egress builds on cells (its recipe): imported here

    allow = []
    for n, entry in enumerate(data.get("network", {}).get("allow", [])):
        try:
            allow.append(parse_rule(entry))
        except ValueError as e:
            raise bad(f"network.allow.{n}", str(e)) from None
    seed = data.get("seed")
    if seed and "://" not in seed["from"] and not os.path.isabs(os.path.expanduser(seed["from"])):
        # a relative directory is the cell file's, as build.project is: never the caller's cwd
        seed = {**seed, "from": os.path.join(os.path.dirname(os.path.abspath(source)), seed["from"])}
    source_pin = data.get("source")
    build_ = data.get("build")
    project = None
    if build_ and "project" in build_:
        project = os.path.join(os.path.dirname(os.path.abspath(source)), build_["project"])
    return Cell(
        name=name,
        source=source,
        platform=data["platform"],
        workspace=workspace,
        src=posixpath.join(workspace, dirs.get("src", "src")),
        build=posixpath.join(workspace, dirs.get("build", "build")),
        ccache=posixpath.join(workspace, dirs.get("ccache", "ccache")),
        install=posixpath.join(workspace, dirs.get("install", "install")),
        image_ref=image.get("ref"),
        recipe=recipe,
        env=env,
        setup=data.get("setup"),
        description=data.get("description", ""),
        profile=data.get("profile", DEFAULT_PROFILE),
        network=data.get("network", {}).get("mode", DEFAULT_NETWORK),
        allow=tuple(allow),
        pids_limit=int(limits.get("pids", DEFAULT_PIDS_LIMIT)),
        memory_limit=memory,
        seed=Seed(seed["from"], seed["key"], seed["manifest_sha256"]) if seed else None,
        source_pin=Source(source_pin["repo"], source_pin["commit"]) if source_pin else None,
        build_steps=(BuildSteps(build_["configure"], build_["compile"], build_["install"], project)
                     if build_ else None),
    )


def memory_bytes(value: int | float | str) -> int:
    """A memory size as docker takes it (bytes, or a number with k, m or g) in bytes."""
    if not isinstance(value, str):
        # The schema's integer is JSON Schema's: 1073741824.0 (a float to YAML) is one too,
        # and the engine takes only an int.
        return int(value)
    text = value.strip().lower()
    unit = text[-1] if text[-1:] in _MEMORY_UNITS and not text[-1:].isdigit() else ""
    return int(text[: len(text) - len(unit)]) * _MEMORY_UNITS[unit]


def _env_str(v: object) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _matches(pattern: str, s: str) -> bool:
    import re

    return re.fullmatch(pattern, s) is not None


def _expected(error: Any) -> str:
    """Turn a jsonschema error into 'expected …, got …' that a person can act on."""
    v = error.validator
    if v == "required":
        return f"missing: {error.message.split(' is a required')[0]}"
    if v == "additionalProperties":
        return f"unknown key ({error.message.split('(')[-1].rstrip(')')})"
    if v == "enum":
        return f"expected one of {', '.join(map(str, error.validator_value))}, got {error.instance!r}"
    if v == "type":
        return f"expected {error.validator_value}, got {type(error.instance).__name__}"
    if v == "pattern":
        return f"expected a value matching {error.validator_value}, got {error.instance!r}"
    return str(error.message)


def seeded_copy(cell: Cell, directory: str, source: str, key: str, manifest_sha256: str) -> str:
    """The cell's file again, in directory (made if missing), with this seed: block and without
    build.project (a path beside the original): the directory, for --cells-dir. For the harness
    and bench/run.py, which seed from entries they have just packed."""
    import yaml

    with open(cell.source, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["seed"] = {"from": source, "key": key, "manifest_sha256": manifest_sha256}
    doc.get("build", {}).pop("project", None)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{cell.name}.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f)
    return directory
