"""Content digests: the only names blobs ever have.

A digest is ``sha256:`` followed by exactly 64 lowercase hex characters. Everything that
arrives from the outside (URLs, manifests, CLI arguments) goes through :func:`parse` before it
is used for anything, in particular before it becomes part of a file path, so a malformed or
hostile name can never reach the disk layer.
"""

from __future__ import annotations

import hashlib
import re

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class DigestError(ValueError):
    """A string is not a well-formed digest, or content does not match its digest."""


def is_digest(value: object) -> bool:
    """True if ``value`` is a well-formed ``sha256:<64 lowercase hex>`` string."""
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def parse(value: object) -> str:
    """Return ``value`` unchanged if it is a well-formed digest, else raise :class:`DigestError`.

    Uppercase hex is refused rather than normalised: two spellings of one name would give
    two cache keys and two files.
    """
    if not is_digest(value):
        shown = repr(value)[:100]
        raise DigestError(f"not a digest (want sha256:<64 lowercase hex>): {shown}")
    assert isinstance(value, str)
    return value


def hex_part(digest: str) -> str:
    """The 64 hex characters of a validated digest."""
    return parse(digest).split(":", 1)[1]


def of_bytes(data: bytes) -> str:
    """The digest of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def of_file(path: str, bufsize: int = 4 << 20) -> str:
    """The digest of a file's content, read in ``bufsize`` pieces (never whole in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


class Hasher:
    """Incremental digest, for hashing a stream while it is written somewhere."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def digest(self) -> str:
        return f"{ALGORITHM}:{self._h.hexdigest()}"
