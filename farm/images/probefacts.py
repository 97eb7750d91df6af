"""Probe facts kept on disk: what one image said once, it says again.

The embedded farm lives for one ``pytest --psyduck`` session, so an image check
remembered only in memory would start a probe container in every session
(create, start, import pytest, remove), before any test can start.  What the
probe reports depends only on the image (by id, not by name), the engine it ran
on (by the engine's ID), the Python command, the ``PYTHONPATH`` given, and the
content of psyduck's packages mounted for it; with all of those the same, its
facts are the same.  So the facts (never the verdict: the client's expectation
is judged afresh each time) are kept in one small JSON file per host, under
the host's cache directory.

The packages' content is named by the size and modification time of each of
their files, as ``make`` and pytest's own bytecode cache judge freshness: an
edited psyduck checks the image again.  A file that cannot be read or parsed
is an empty cache, never an error; the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Entries kept per host; the oldest are forgotten first.
ENTRIES_KEPT = 64
FILE_NAME = "probe-facts.json"


def packages_stamp(module_dirs: Mapping[str, str]) -> str:
    """A digest of the packages' names, places, and every file's size and mtime."""
    digest = hashlib.sha256()
    for name, directory in sorted(module_dirs.items()):
        digest.update(f"{name}\0{directory}\0".encode())
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for file in sorted(files):
                path = os.path.join(root, file)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def facts_key(
    engine_id: str, image_id: str, python: str, pythonpath: str, module_dirs: Mapping[str, str]
) -> str:
    """What a probe's facts depend on, as one string."""
    return "\0".join((engine_id, image_id, python, pythonpath, packages_stamp(module_dirs)))


class ProbeFacts:
    """One host's remembered probe facts, in ``DIRECTORY/probe-facts.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME

    def _load(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        facts = self._load().get(key)
        return facts if isinstance(facts, dict) else None

    def put(self, key: str, facts: dict[str, Any]) -> None:
        """Remember *facts*; a cache that cannot be written only costs the next probe."""
        entries = self._load()
        entries.pop(key, None)
        entries[key] = facts
        kept = dict(list(entries.items())[-ENTRIES_KEPT:])
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".probe-facts-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(kept, out)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
