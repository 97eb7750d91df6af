"""Multiplying collected tests into their variants, as parametrization does.

:class:`TransformationState` gathers the transformations that apply below
each collector (ini lines, conftests', plugins'), checks marks' names, and
turns each test function a collector made into its family: the baseline
(unless excluded) followed by one variant per chosen transformation, named
like a parametrized item (``test_join[replicated]``, ``test_sum[3-replicated]``).
Which variants are made is decided by ``--psyduck-transform``, widened by node
ids named on the command line and by ``--lf``/``--ff`` failures, and narrowed by
the ``psyduck`` mark and each transformation's ``applies``.  The items
themselves are :mod:`pytest_psyduck.variants`' business.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import pytest
from _pytest.unittest import TestCaseFunction

from pytest_psyduck.declarations import (
    BASELINE_NAME,
    HOOK,
    INI,
    PROPERTY,
    Transformation,
    check_name,
    describe_exception,
    parse_ini_line,
    parse_selection,
)
from pytest_psyduck.marks import NO_CHOICE, TransformationChoice, transformation_choice
from pytest_psyduck.roles import WORKER_PLUGIN_NAME
from pytest_psyduck.variants import Family

# -- names -------------------------------------------------------------------------


def item_name(originalname: str, ids: Sequence[str]) -> str:
    """The name pytest gives an item: ``test_join``, or ``test_sum[3-replicated]`` with ids."""
    return f"{originalname}[{'-'.join(ids)}]" if ids else originalname


def variant_ids(
    originalname: str, ids: Sequence[str], transformation: str, taken: Collection[str]
) -> tuple[str, ...]:
    """The parametrization ids of a variant: the test's own ids, then the transformation's name.

    If a sibling already has that name (a parametrize id may itself read
    ``3-replicated``), a counter is appended to the transformation's part, as
    pytest does for duplicate parametrize ids; the baseline never changes.
    """
    token = transformation
    sep = "_" if transformation[-1].isdigit() else ""
    counter = 0
    while item_name(originalname, (*ids, token)) in taken:
        token = f"{transformation}{sep}{counter}"
        counter += 1
    return (*ids, token)


def requested_names(args: Iterable[str]) -> frozenset[str]:
    """Parametrized item names that node-id arguments ask for, split as pytest splits them."""
    names = set()
    for arg in args:
        base, bracket, rest = arg.partition("[")
        _, *parts = base.split("::")
        if parts and bracket:
            names.add(parts[-1] + bracket + rest)
    return frozenset(names)


# -- multiplying ------------------------------------------------------------------


def _multipliable(node: pytest.Item | pytest.Collector) -> bool:
    # unittest's items look their method up by item name, which a variant changes.
    return isinstance(node, pytest.Function) and not isinstance(node, TestCaseFunction)


def _contains(args: Sequence[str], part: Sequence[str]) -> bool:
    n = len(part)
    return any(tuple(args[i : i + n]) == tuple(part) for i in range(len(args) - n + 1))


@cache
def _local_labels() -> Mapping[str, str]:
    """The labels a local host on this machine advertises (imported late: few runs need it)."""
    from farm.hosts.local import local_labels

    return local_labels()


def _unmet(requires: Mapping[str, str]) -> dict[str, str]:
    from farm.scheduler import placeable

    labels = _local_labels()
    return {key: value for key, value in requires.items() if not placeable({key: value}, labels)}


class TransformationState:
    """Per-run declarations and choices, kept in ``config.stash``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.selection = parse_selection(
            config.getoption("psyduck_transform"), bool(config.getoption("psyduck"))
        )
        self.ini_source = f"{INI} in {config.inipath.name if config.inipath else 'the ini options'}"
        self.ini: dict[str, Transformation] = {}
        for line in config.getini(INI):
            transformation = parse_ini_line(line)
            check_name(
                transformation.name, self.ini_source, dict.fromkeys(self.ini, self.ini_source)
            )
            self.ini[transformation.name] = transformation
        self.requested_names = requested_names(config.args)
        self.requested_ids = self._last_failed_ids()
        #: Running here, not on a farm: variants this process cannot honour are skipped.
        self.local = not config.getoption("psyduck") and not config.pluginmanager.has_plugin(
            WORKER_PLUGIN_NAME
        )
        #: Every transformation seen in this collection, by name.
        self.declared: dict[str, Transformation] = dict(self.ini)
        #: base node id → {excluded transformation: the mark's reason}
        self.exclusions: dict[str, dict[str, str]] = {}
        self._by_impls: dict[tuple[int, ...], dict[str, Transformation]] = {}
        #: transformation name → why this process cannot run its variants (None: it can)
        self._local_skips: dict[str, str | None] = {}
        self._properties: dict[str, tuple[tuple[str, str]]] = {}

    def _last_failed_ids(self) -> frozenset[str]:
        """Variant ids ``--lf``/``--ff`` must find collected even when not selected."""
        cache_ = getattr(self.config, "cache", None)
        if cache_ is None or not (
            self.config.getoption("lf", False) or self.config.getoption("failedfirst", False)
        ):
            return frozenset()
        return frozenset(k for k in cache_.get("cache/lastfailed", {}) if k.endswith("]"))

    # -- declarations ----------------------------------------------------------------
    def declared_for(self, collector: pytest.Collector) -> dict[str, Transformation]:
        """The transformations below *collector*: ini lines, its conftests' and plugins'."""
        impls = collector.ihook.pytest_psyduck_transformations.get_hookimpls()
        key = tuple(id(impl.plugin) for impl in impls)
        found = self._by_impls.get(key)
        if found is None:
            found = self._by_impls[key] = self._gather(impls)
            for name, transformation in found.items():
                self.declared.setdefault(name, transformation)
        return found

    def _gather(self, impls: Sequence[Any]) -> dict[str, Transformation]:
        # Each implementation is called on its own, not through the hook, so a
        # duplicate name can be blamed on both of its sources.
        found = dict(self.ini)
        sources = dict.fromkeys(self.ini, self.ini_source)
        kwargs = {"config": self.config}
        for impl in reversed(impls):  # pluggy's order: last registered first
            source = self._source(impl)
            try:
                returned = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                raise pytest.UsageError(
                    f"{HOOK} in {source} raised {describe_exception(exc)}"
                ) from exc
            if returned is None:
                continue
            listed = (
                list(returned)
                if isinstance(returned, Iterable) and not isinstance(returned, str | Mapping)
                else None
            )
            if listed is None or not all(isinstance(t, Transformation) for t in listed):
                raise pytest.UsageError(
                    f"{HOOK} in {source} must return a list of pytest_psyduck.Transformation, "
                    f"got {returned!r}"
                )
            for transformation in listed:
                check_name(transformation.name, source, sources)
                found[transformation.name] = transformation
                sources[transformation.name] = source
        return found

    def _source(self, impl: Any) -> str:
        path = getattr(impl.plugin, "__file__", None)
        if path is None:
            return f"plugin {impl.plugin_name!r}"
        relative = os.path.relpath(path, self.config.rootpath)
        return relative if not relative.startswith("..") else path

    def check_selection(self) -> None:
        """Names on the command line must be declared somewhere in this collection."""
        unknown = sorted((self.selection.names or frozenset()) - self.declared.keys())
        if unknown:
            raise pytest.UsageError(
                f"--psyduck-transform: unknown transformation(s) {', '.join(unknown)}; "
                f"declared: {', '.join(self.declared) or 'none'}"
            )

    # -- multiplying -----------------------------------------------------------------
    def multiply(self, collector: pytest.Collector, nodes: list[Any]) -> list[Any]:
        """*nodes*, each test function followed by its variants (baseline unless excluded)."""
        declared = self.declared_for(collector)
        if not declared:
            return nodes
        taken = {node.name for node in nodes}
        result: list[Any] = []
        for node in nodes:
            # The session's own report lists the items that node-id arguments
            # matched; only the collector that made an item multiplies it.
            if node.parent is collector and _multipliable(node):
                result.extend(self._family(node, declared, taken))
            else:
                result.append(node)
        return result

    def _family(
        self, item: pytest.Function, declared: Mapping[str, Transformation], taken: set[str]
    ) -> list[pytest.Function]:
        choice = transformation_choice(item)
        if choice is not NO_CHOICE:
            self._check_marked_names(item, choice, declared)
        members = []
        exclusions = self.exclusions.setdefault(item.nodeid, {}) if choice.excluded else {}
        if BASELINE_NAME in choice.excluded:
            exclusions[BASELINE_NAME] = choice.excluded[BASELINE_NAME]
        else:
            if self.selection.names != frozenset():
                item.user_properties.append((PROPERTY, BASELINE_NAME))
            members.append(item)
        callspec = getattr(item, "callspec", None)
        ids = tuple(callspec._idlist) if callspec is not None else ()
        family: Family | None = None
        for transformation in declared.values():
            name = transformation.name
            if choice.only is not None and name not in choice.only:
                continue
            new_ids = variant_ids(item.originalname, ids, name, taken)
            new_name = item_name(item.originalname, new_ids)
            if not (
                name in self.selection
                or new_name in self.requested_names
                or f"{item.parent.nodeid}::{new_name}" in self.requested_ids
            ):
                continue
            if name in choice.excluded:
                exclusions[name] = choice.excluded[name]
                continue
            if transformation.applies is not None and not self._applies(transformation, item):
                continue
            taken.add(new_name)
            family = family or Family(item)
            members.append(self._variant(family, transformation, new_ids[-1]))
        return members

    @staticmethod
    def _check_marked_names(
        item: pytest.Item, choice: TransformationChoice, declared: Mapping[str, Transformation]
    ) -> None:
        named = (choice.only or frozenset()) | choice.excluded.keys()
        unknown = sorted(named - declared.keys() - {BASELINE_NAME})
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.psyduck names unknown transformation(s) "
                f"{', '.join(unknown)}; declared here: {', '.join(declared)}"
            )

    @staticmethod
    def _applies(transformation: Transformation, item: pytest.Item) -> bool:
        assert transformation.applies is not None
        try:
            return bool(transformation.applies(item))
        except Exception as exc:
            raise pytest.UsageError(
                f"transformation {transformation.name!r}: applies({item.nodeid}) raised "
                f"{describe_exception(exc)}"
            ) from exc

    def _variant(
        self, family: Family, transformation: Transformation, token: str
    ) -> pytest.Function:
        # A variant is built as parametrization builds items: same function,
        # same fixture closure, one more id; pytest derives its node id from it.
        variant = family.variant(token, transformation, self._property(transformation.name))
        if self.local:
            if transformation.name not in self._local_skips:
                self._local_skips[transformation.name] = self._cannot_run_here(transformation)
            reason = self._local_skips[transformation.name]
            if reason:
                variant.add_marker(pytest.mark.skip(reason=reason))
        return variant

    def _property(self, name: str) -> tuple[tuple[str, str]]:
        """The ``user_properties`` of *name*'s variants: one tuple shared by all of them."""
        found = self._properties.get(name)
        if found is None:
            found = self._properties[name] = ((PROPERTY, name),)
        return found

    def _cannot_run_here(self, transformation: Transformation) -> str | None:
        name, args = transformation.name, transformation.args
        if args and not _contains(self.config.invocation_params.args, args):
            return (
                f"psyduck: {name!r} runs in a worker started with {shlex.join(args)}; "
                "run it with --psyduck, or add those arguments"
            )
        unmet = _unmet(transformation.requires)
        if unmet:
            needs = ", ".join(f"{key}={value}" for key, value in unmet.items())
            return (
                f"psyduck: {name!r} requires {needs}, which this machine lacks; "
                "run it on a farm with --psyduck"
            )
        return None
