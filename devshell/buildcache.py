"""The build cache format: one key, three files (docs/design.md "Build caches").

    <key>.tar.zst            the install tree (the cell's dirs.install), zstd-compressed tar
    <key>.ccache.tar.zst     the ccache directory (optional: without it a seeded ccache is cold)
    <key>.manifest.json      what the two are: cell, workspace, source, ccache settings, sha256s

Pure: names, the manifest's schema, and its making and reading. `devshell cache pack` (cache.py)
writes entries; the manifest's own sha256 is what a cell pins when it seeds from one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .cells import ABSOLUTE_PATH, COMMIT_PATTERN, LOCATION, SHA256_PATTERN, SUBDIR
from .cells import CACHE_KEY_PATTERN as KEY_PATTERN
from .errors import DevshellError

FORMAT = 1
INSTALL_SUFFIX = ".tar.zst"
CCACHE_SUFFIX = ".ccache.tar.zst"
MANIFEST_SUFFIX = ".manifest.json"
# pack's default --max-size (its archives' uncompressed bytes, both trees together), and the
# most a seed unpacks of each tree: an entry pack made within the default always seeds.
MAX_TREE_GIB = 64
MAX_MANIFEST_BYTES = 64 << 10  # a manifest is a few hundred bytes; anything near this is not one
_SHA256 = {"type": "string", "pattern": SHA256_PATTERN}
_ARCHIVE = {
    "type": "object", "additionalProperties": False, "required": ["file", "sha256", "size"],
    "properties": {"file": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*\.tar\.zst$"},
                   "sha256": _SHA256, "size": {"type": "integer", "minimum": 0}},
}
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "key", "cell", "platform", "workspace", "install", "ccache", "source",
                 "archives"],
    "properties": {
        "format": {"const": FORMAT},
        "key": {"type": "string", "pattern": KEY_PATTERN},
        "cell": {"type": "string"},
        "platform": {"type": "string"},
        # Where the tree was built: a seed must land at the same path, or ccache's keys (and
        # every absolute path in the install tree) would not match.
        "workspace": ABSOLUTE_PATH,
        "install": SUBDIR,
        "ccache": {"type": "object", "additionalProperties": False, "required": ["dir", "settings"],
                   "properties": {"dir": SUBDIR,
                                  "settings": {"type": "object",
                                               "additionalProperties": {"type": "string"}}}},
        "source": {"type": "object", "additionalProperties": False, "required": ["repo", "commit"],
                   "properties": {"repo": {"type": ["string", "null"], "pattern": LOCATION["pattern"]},
                                  "commit": {"type": ["string", "null"],
                                             "pattern": COMMIT_PATTERN}}},
        "archives": {"type": "object", "additionalProperties": False, "required": ["install", "ccache"],
                     "properties": {"install": _ARCHIVE, "ccache": {"oneOf": [_ARCHIVE, {"type": "null"}]}}},
    },
}


def check_key(key: str) -> str:
    if not re.fullmatch(KEY_PATTERN, key or ""):
        raise DevshellError(f"{key!r} is not a build cache key", "use letters, digits, '.', '_' and '-' "
                            "(at most 128), starting with a letter or digit")
    return key


def names(key: str) -> tuple[str, str, str]:
    """The entry's three file names: install archive, ccache archive, manifest."""
    return key + INSTALL_SUFFIX, key + CCACHE_SUFFIX, key + MANIFEST_SUFFIX


def default_key(cell: str, commit: str | None) -> str:
    """A key that says what the entry is: the cell and the source commit it was built from."""
    return f"{cell}-{commit[:12] if commit else 'unversioned'}"


def manifest(*, key: str, cell: str, platform: str, workspace: str, install: str, ccache_dir: str,
             ccache_settings: dict[str, str], repo: str | None, commit: str | None,
             install_archive: dict[str, Any], ccache_archive: dict[str, Any] | None) -> dict[str, Any]:
    doc = {
        "format": FORMAT, "key": key, "cell": cell, "platform": platform, "workspace": workspace,
        "install": install, "ccache": {"dir": ccache_dir, "settings": dict(sorted(ccache_settings.items()))},
        "source": {"repo": repo, "commit": commit},
        "archives": {"install": install_archive, "ccache": ccache_archive},
    }
    check(doc, "the manifest devshell made")
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    """The manifest's bytes: stable (sorted keys), so its sha256 is the entry's identity."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def check(doc: Any, where: str) -> dict[str, Any]:
    """doc if it is a manifest; DevshellError naming where and the first problem otherwise."""
    import jsonschema

    try:
        jsonschema.validate(doc, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path) or "(top)"
        raise DevshellError(f"{where} is not a build cache manifest: {path}: {e.message[:200]}",
                            "point at an entry that devshell cache pack made") from None
    assert isinstance(doc, dict)
    archives, (install, ccache, _) = doc["archives"], names(doc["key"])
    if archives["install"]["file"] != install or (archives["ccache"] or {"file": ccache})["file"] != ccache:
        raise DevshellError(f"{where} names archives that are not its key's",
                            "point at an entry that devshell cache pack made")
    return doc


def loads(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise DevshellError(f"{where} is larger than {MAX_MANIFEST_BYTES >> 10} KiB: not a manifest",
                            "point at an entry that devshell cache pack made")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise DevshellError(f"{where} is not JSON ({e})",
                            "point at an entry that devshell cache pack made") from None
    return check(doc, where)
