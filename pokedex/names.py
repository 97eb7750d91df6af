"""Validation of every other name that comes from outside: refs, repositories, tags, paths.

Pure functions; the server calls them before a name touches the disk, the tree module calls
:func:`check_relpath` on every manifest entry. Each raises :class:`NameError_` with a message
meant for the HTTP reply body.
"""

from __future__ import annotations

import re

MAX_REF_LEN = 255
MAX_PATH_LEN = 4096
MAX_COMPONENT_LEN = 255

# Ref names: slash-separated components of safe characters. ':' is allowed so the registry can
# name tags "<repo>:<tag>" unambiguously (repositories never contain ':', tags never '/').
_REF_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*")
# OCI distribution spec grammar for repository names and tags.
_REPO_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class NameError_(ValueError):
    """A name or path from outside is malformed or unsafe."""


def check_ref(name: object) -> str:
    """Validate a ref name such as ``snapshots/main`` and return it."""
    if not isinstance(name, str) or not name or len(name) > MAX_REF_LEN:
        raise NameError_(f"ref name must be 1..{MAX_REF_LEN} characters")
    for part in name.split("/"):
        if not _REF_COMPONENT.fullmatch(part) or part in (".", ".."):
            raise NameError_(
                f"bad ref name {name[:80]!r}: components must match [A-Za-z0-9_][A-Za-z0-9._:-]*"
            )
    return name


def check_repository(name: object) -> str:
    """Validate an OCI repository name such as ``library/alpine``."""
    if not isinstance(name, str) or not 0 < len(name) <= 200 or not _REPO_RE.fullmatch(name):
        raise NameError_(f"invalid repository name {str(name)[:80]!r}")
    return name


def check_tag(tag: object) -> str:
    """Validate an OCI tag such as ``v1.2``."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise NameError_(f"invalid tag {str(tag)[:80]!r}")
    return tag


def check_relpath(path: object) -> str:
    """Validate a relative POSIX path that will be joined under a destination directory.

    Refused: empty, absolute, ``.``/``..``/empty components (no ``a//b``), NUL bytes,
    backslashes (ambiguous on some hosts), over-long paths or components.
    """
    if not isinstance(path, str) or not path:
        raise NameError_("path must be a non-empty string")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_LEN:
        raise NameError_("path too long")
    if "\x00" in path or "\\" in path:
        raise NameError_(f"path contains NUL or backslash: {path[:80]!r}")
    if path.startswith("/"):
        raise NameError_(f"absolute path not allowed: {path[:80]!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise NameError_(f"path has an empty, '.' or '..' component: {path[:80]!r}")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_LEN:
            raise NameError_("path component too long")
    return path
