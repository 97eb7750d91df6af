"""Collecting only the files a worker's shard needs.

A worker in a fresh container runs a single shard, often one or two test
modules of a large suite; collecting the whole suite again costs every
container the CPU of importing every test module.  Such a worker learns its
shard before it collects (see :class:`~pytest_psyduck.worker.WorkerPlugin`)
and then skips every *file* that holds none of the shard's tests, and in the
files it collects every test function and class the shard does not name: a
module may hold tens of thousands of parametrized tests that the user's
``-m``/``-k`` left out (stress tests are the usual ones), and making their
items would cost the container what collecting them cost the user.
Directories are still walked, so every ``conftest.py`` is loaded as in
plain pytest (a conftest's hooks may apply to tests outside its directory),
a named function is parametrized whole, so node ids (parametrized ones with
any characters included) are pytest's own, and ``--deselect``/``-k`` play no
part: the worker runs exactly the node ids it is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

#: Module files pytest imports for a directory's own sake (package setup), never skipped.
PACKAGE_FILES = frozenset({"__init__.py", "conftest.py"})


def shard_files(test_ids: Iterable[str], rootpath: Path) -> frozenset[str] | None:
    """The normalized absolute paths of the files holding *test_ids*, or None for "all".

    A node id starts with its file's path relative to *rootpath*, up to the
    first ``::``.  None when any id does not name an existing file (a plugin's
    items with ids of their own, a file gone since the client collected): the
    worker then collects everything, as it did before, and reports what it
    cannot find as ``missing``.
    """
    files = set()
    for test_id in test_ids:
        path = os.path.normpath(os.path.join(rootpath, test_id.split("::", 1)[0]))
        if not os.path.isfile(path):
            return None
        files.add(path)
    return frozenset(files)


def shard_children(test_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """``{node id of a module or class: names of its members the shard needs}``.

    ``sub/test_a.py::TestX::test_y[p::q]`` needs ``TestX`` in ``sub/test_a.py``
    and ``test_y`` in ``sub/test_a.py::TestX``.  A Python name holds no ``[``,
    so a parametrized id's parameters (which may hold ``::``) end at the first
    ``[`` after the file's path.
    """
    children: dict[str, set[str]] = {}
    for test_id in test_ids:
        file, _, rest = test_id.partition("::")
        parent = file
        for name in rest.partition("[")[0].split("::") if rest else ():
            children.setdefault(parent, set()).add(name)
            parent = f"{parent}::{name}"
    return {parent: frozenset(names) for parent, names in children.items()}


class ShardFilter:
    """Skips collecting files, test functions and classes outside a shard; registered
    in a worker that knows its shard.

    Files given on the command line are collected regardless (pytest does not
    ask ``pytest_ignore_collect`` about them).  A module or class the shard's
    ids do not name as a parent (ids relative to another directory, a
    plugin's own nodes) is collected whole.
    """

    def __init__(
        self, files: frozenset[str], children: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.files = files
        self.children = children or {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: Any
    ) -> list[pytest.Item] | None:
        needed = self.children.get(collector.nodeid)
        if needed is None or name in needed:
            return None
        return []

    @pytest.hookimpl(tryfirst=True)
    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path.name in PACKAGE_FILES or collection_path.is_dir():
            return None
        return os.path.normpath(collection_path) not in self.files or None
