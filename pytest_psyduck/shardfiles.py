"""Making only the tests a worker's shard needs.

A worker in a fresh container runs a single shard, often one or two test
modules of a large suite; making the whole suite's items again costs every
container what collecting them cost the user: a module may hold tens of
thousands of parametrized tests that the user's ``-m``/``-k`` left out
(stress tests are the usual ones).  Such a worker learns its shard before it
collects (see :class:`~pytest_psyduck.worker.WorkerPlugin`) and then makes,
in the files it collects, only the test functions and classes the shard
names; a module holding none of its tests makes no items at all.

Every Python file is still *imported*, in plain pytest's order: importing a
test module may be what another module's tests depend on (click's pager
tests pass in plain pytest only because another test module imported
``click._termui_impl`` while pytest collected), so a worker that imported
its shard's modules alone would fail tests that pass in plain pytest and
under pytest-xdist.  Directories are walked, so every ``conftest.py`` is
loaded as in plain pytest; a named function is parametrized whole, so node
ids (parametrized ones with any characters included) are pytest's own; and
``--deselect``/``-k`` play no part: the worker runs exactly the node ids it
is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest


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
    """Makes no items outside a shard; registered in a worker that knows its shard.

    A module or class the shard's ids do not name as a parent but whose file
    the shard needs (ids relative to another directory, a plugin's own nodes)
    is collected whole.  Files other than Python modules are skipped when the
    shard does not need them: pytest imports nothing for them.  Files given on
    the command line are collected regardless (pytest does not ask
    ``pytest_ignore_collect`` about them).
    """

    def __init__(
        self, files: frozenset[str], children: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        self.files = files
        self.children = children or {}
        #: Module node id → whether the shard needs its file: asked once per module,
        #: not once for each name the module holds.
        self._modules: dict[str, bool] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: Any
    ) -> list[pytest.Item] | None:
        needed = self.children.get(collector.nodeid)
        if needed is None:
            return [] if self._outside(collector) else None
        return None if name in needed else []

    def _outside(self, collector: pytest.Module | pytest.Class) -> bool:
        """Whether *collector* is a module whose file the shard does not need."""
        if not isinstance(collector, pytest.Module):
            return False
        needed = self._modules.get(collector.nodeid)
        if needed is None:
            needed = self._modules[collector.nodeid] = self._needs(collector.path)
        return not needed

    @pytest.hookimpl(tryfirst=True)
    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path.suffix == ".py" or collection_path.is_dir():
            return None
        return not self._needs(collection_path) or None

    def _needs(self, path: Path) -> bool:
        return os.path.normpath(path) in self.files
