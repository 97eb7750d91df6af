"""What the user's pytest options and marks ask of the farm's scheduler.

Plain pytest runs the tests one after another in collection order; some
suites and options depend on that.  The manifest carries two flags the
scheduler honours (``TestSpec.pinned`` and ``TestSpec.first``), set here:

* ``@pytest.mark.xdist_group(name=...)``: the group's tests share state and run
  in order on one process under plain pytest (and ``--dist loadgroup`` under
  pytest-xdist), so they are always pinned together as ``xdist_group:<name>``,
  across modules;
* ``--psyduck-dist loadfile`` pins every module's tests together, and so does
  syrupy's ``--snapshot-update``;
* ``--ff`` dispatches the previous failures first, and ``--sw`` the test it
  resumes at, so that ``-x`` or stepwise stop as early as plain pytest does
  (the replay shows results in collection order then: :mod:`pytest_psyduck.replay`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

#: ``--psyduck-dist`` modes.  ``loadgroup`` is pytest-xdist's name for what
#: ``load`` always does here (xdist groups are honoured in every mode).
DIST_MODES = ("load", "loadfile", "loadgroup")
#: Options under which a module's tests rewrite one file together: syrupy's updates
#: rewrite a module's whole snapshot file, so two workers sharing a module would each
#: bring home a file lacking the other's updates.  Their modules run whole (``loadfile``).
WHOLE_MODULE_WRITERS = ("update_snapshots", "update_new_snapshots_only")
XDIST_GROUP_MARK = "xdist_group"
XDIST_GROUP_PREFIX = "xdist_group:"


@dataclass(frozen=True)
class Placement:
    """A test's group in the manifest, and whether the scheduler must keep it whole."""

    group: str
    pinned: bool = False


def dist_mode(config: pytest.Config) -> str:
    """``--psyduck-dist``, else ini ``psyduck_dist``, else ``load``; anything else is a
    usage error."""
    mode = config.getoption("psyduck_dist", None) or config.getini("psyduck_dist") or "load"
    if mode not in DIST_MODES:
        raise pytest.UsageError(f"psyduck_dist = {mode!r}: must be one of {', '.join(DIST_MODES)}")
    if any(getattr(config.option, name, False) for name in WHOLE_MODULE_WRITERS):
        return "loadfile"
    return mode


def xdist_group(item: pytest.Item) -> str | None:
    """The item's xdist group name, exactly as pytest-xdist's ``loadgroup`` forms it.

    Every ``xdist_group`` mark on the test, its class and module counts: the
    names (``name=`` or the first argument, ``default`` without either) are
    joined, sorted, with ``_``.
    """
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers(XDIST_GROUP_MARK)
    }
    return "_".join(sorted(names)) if names else None


def placement(item: pytest.Item, module: str, mode: str) -> Placement:
    """Where *item* goes: its xdist group (pinned), its module pinned under
    ``loadfile``, else its module, which the scheduler may split."""
    group = xdist_group(item)
    if group is not None:
        return Placement(XDIST_GROUP_PREFIX + group, pinned=True)
    return Placement(module, pinned=mode == "loadfile")


def dispatched_first(config: pytest.Config, items: list[pytest.Item]) -> frozenset[str]:
    """Node ids plain pytest runs first: ``--ff``'s previous failures, ``--sw``'s resumed test.

    Read from pytest's own plugins after they reordered or deselected the items,
    so the set is exactly what they chose.
    """
    first: set[str] = set()
    lfplugin = config.pluginmanager.get_plugin("lfplugin")
    if config.getoption("failedfirst", False) and lfplugin is not None:
        failed = {str(nodeid) for nodeid in getattr(lfplugin, "lastfailed", {})}
        first.update(item.nodeid for item in items if item.nodeid in failed)
    stepwise = config.pluginmanager.get_plugin("stepwiseplugin")
    info = getattr(stepwise, "cached_info", None)
    resumed = getattr(info, "last_failed", None)
    if resumed is not None and items and items[0].nodeid == str(resumed):
        first.add(items[0].nodeid)
    return frozenset(first)
