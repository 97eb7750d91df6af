"""Test transformations: every test also run under configuration variants.

A transformation (replication on, another storage engine, a CPU feature, a
seed) is declared once, by the ``pytest_psyduck_transformations`` hook in a
conftest or plugin or as an ini line ``NAME: KEY=VALUE …``, and multiplies
each test it applies to into a *variant*: a real pytest item whose node id is
built like parametrization (``test_join[replicated]``,
``test_sum[3-replicated]``), while the test as written, the *baseline*, keeps
its node id.

Variants are made during collection, as parametrization is, so that node-id
arguments, ``-k``, ``--lf`` and the farm's workers (which re-collect from the
same arguments, or are forked with the collected items) all see the same
items.  Which variants are made is decided by ``--psyduck-transform`` (all
with ``--psyduck``, none without, so that a plain local ``pytest`` stays
unchanged), widened by node ids named on the command line and by
``--lf``/``--ff`` failures, and narrowed by the ``psyduck`` mark and each
transformation's ``applies``.

A variant's ``env`` is set around its whole runtest protocol, fixtures
included.  Its ``args`` (a worker profile) and ``requires`` (host labels) are
the farm's business; run in-process, a variant whose ``args`` this process was
not started with, or whose ``requires`` this machine lacks, is skipped with a
reason that says how to run it.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import traceback
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, final

import pytest
from _pytest.python import CallSpec
from _pytest.unittest import TestCaseFunction

from pytest_psyduck.marks import NO_CHOICE, TransformationChoice, transformation_choice
from pytest_psyduck.roles import WORKER_PLUGIN_NAME
from pytest_psyduck.variants import Family

BASELINE_NAME = "baseline"
#: Names that mean something else on the command line and in marks.
RESERVED_NAMES = frozenset({BASELINE_NAME, "all", "none"})
#: A name must survive node ids, ``-k`` expressions, comma lists and ini lines.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
#: The ``user_properties`` entry (a junitxml property) naming a test case's transformation.
PROPERTY = "psyduck_transformation"
INI = "psyduck_transformations"
HOOK = "pytest_psyduck_transformations"


@final
@dataclass(frozen=True, init=False)
class Transformation:
    """A configuration variant that tests are also run under.

    * ``env``: environment variables set while a variant runs, from before its
      fixtures are set up until after they are torn down (``None`` unsets one);
    * ``args``: extra pytest arguments of the worker that runs the variant
      (``["-p", "my_plugin"]``, ``["-o", "key=value"]``);
    * ``requires``: host labels the variant needs, e.g. ``{"cpu": "avx2"}``;
    * ``applies``: ``(item) -> bool``, whether the variant exists for a test.
    """

    name: str
    env: Mapping[str, str | None] = field(hash=False)
    args: tuple[str, ...]
    requires: Mapping[str, str] = field(hash=False)
    applies: Callable[[pytest.Item], bool] | None = field(compare=False)
    description: str

    def __init__(
        self,
        name: str,
        env: Mapping[str, str | None] | None = None,
        args: Iterable[str] | None = None,
        requires: Mapping[str, str] | None = None,
        applies: Callable[[pytest.Item], bool] | None = None,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"transformation name {name!r}: use letters, digits and '_', '.', '+', '-' "
                "(not first), so that it works in node ids, -k and --psyduck-transform"
            )
        if applies is not None and not callable(applies):
            raise TypeError(f"transformation {name!r}: applies must be callable, got {applies!r}")
        if not isinstance(description, str):
            raise TypeError(f"transformation {name!r}: description must be a string")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "env", _env(name, env))
        object.__setattr__(self, "args", _args(name, args))
        object.__setattr__(self, "requires", _labels(name, requires))
        object.__setattr__(self, "applies", applies)
        object.__setattr__(self, "description", description)

    @property
    def is_baseline(self) -> bool:
        return self.name == BASELINE_NAME


def _env(name: str, env: Mapping[str, str | None] | None) -> dict[str, str | None]:
    if env is None:
        return {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, str | None)
        for k, v in env.items()
    ):
        raise TypeError(
            f"transformation {name!r}: env must map variable names to strings "
            f"(None unsets one), got {env!r}"
        )
    return dict(env)


def _args(name: str, args: Iterable[str] | None) -> tuple[str, ...]:
    if args is None:
        return ()
    listed = () if isinstance(args, str) else tuple(args)
    if (not listed and args) or not all(isinstance(a, str) for a in listed):
        raise TypeError(
            f"transformation {name!r}: args must be a list of argument strings "
            f"(e.g. shlex.split(...)), got {args!r}"
        )
    return listed


def _labels(name: str, requires: Mapping[str, str] | None) -> dict[str, str]:
    if requires is None:
        return {}
    if not isinstance(requires, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in requires.items()
    ):
        raise TypeError(
            f"transformation {name!r}: requires must map label names to strings, got {requires!r}"
        )
    return dict(requires)


#: What the ``psyduck_transformation`` fixture gives a test that runs as written.
BASELINE = Transformation(BASELINE_NAME, description="the test as written")


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


# -- declarations ------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The transformations ``--psyduck-transform`` asks for; ``names=None`` means all."""

    names: frozenset[str] | None

    def __contains__(self, name: str) -> bool:
        return self.names is None or name in self.names


def parse_selection(value: str | None, distributed: bool) -> Selection:
    """``NAME[,NAME…]``, ``all`` or ``none``; by default all with ``--psyduck``, none without.

    The default keeps a plain local ``pytest`` exactly as fast and as
    unchanged as without psyduck, while a farm run covers the whole matrix.
    """
    if value is None:
        value = "all" if distributed else "none"
    words = [word.strip() for word in value.split(",")]
    if words == ["all"]:
        return Selection(None)
    if words == ["none"]:
        return Selection(frozenset())
    bad = [word for word in words if not _NAME.fullmatch(word) or word in RESERVED_NAMES]
    if bad:
        raise pytest.UsageError(
            f"--psyduck-transform {value!r}: expected NAME[,NAME...], 'all' or 'none' "
            f"(bad: {', '.join(map(repr, bad))})"
        )
    return Selection(frozenset(words))


def parse_ini_line(line: str) -> Transformation:
    """``NAME: KEY=VALUE KEY='a value' …`` (shell quoting) → an env-only transformation."""
    name, colon, rest = line.partition(":")
    try:
        if not colon:
            raise ValueError("expected 'NAME: KEY=VALUE KEY=VALUE ...'")
        env: dict[str, str | None] = {}
        for word in shlex.split(rest):
            key, equals, value = word.partition("=")
            if not equals or not key:
                raise ValueError(f"{word!r} is not KEY=VALUE")
            if key in env:
                raise ValueError(f"{key} is set twice")
            env[key] = value
        return Transformation(name.strip(), env=env, description=f"{INI}: {line}")
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{INI}: bad line {line!r}: {exc}") from exc


def describe_exception(exc: BaseException) -> str:
    """``ValueError: boom (at conftest.py:12)``: enough to find a user's bug, minus our frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


# -- the environment ---------------------------------------------------------------


@contextmanager
def environment(
    env: Mapping[str, str | None], environ: MutableMapping[str, str] = os.environ
) -> Iterator[None]:
    """Set *env* in *environ* (``None`` unsets) and restore exactly the touched keys afterwards."""
    saved = {key: environ.get(key) for key in env}
    try:
        _assign(environ, env)
        yield
    finally:
        _assign(environ, saved)


def _assign(environ: MutableMapping[str, str], values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value


# -- items -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """What an item runs under, and the node id of the test as written."""

    transformation: Transformation
    base_nodeid: str


VARIANT_KEY = pytest.StashKey[Variant]()


def variant_of(item: pytest.Item) -> Variant:
    variant = item.stash.get(VARIANT_KEY, None)
    return variant if variant is not None else Variant(BASELINE, item.nodeid)


def transformation_of(item: pytest.Item) -> Transformation:
    return variant_of(item).transformation


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


def _check_name(name: str, source: str, sources: Mapping[str, str]) -> None:
    """A new name must be neither reserved nor in *sources* (name → who declared it)."""
    if name in RESERVED_NAMES:
        raise pytest.UsageError(
            f"transformation {name!r} from {source}: the name is reserved "
            f"({', '.join(sorted(RESERVED_NAMES))})"
        )
    if name in sources:
        raise pytest.UsageError(
            f"transformation {name!r} is declared twice: by {sources[name]} and by {source}"
        )


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
            _check_name(
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
        self._properties: dict[str, tuple[str, str]] = {}

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
                _check_name(transformation.name, source, sources)
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
        family = []
        exclusions = self.exclusions.setdefault(item.nodeid, {}) if choice.excluded else {}
        if BASELINE_NAME in choice.excluded:
            exclusions[BASELINE_NAME] = choice.excluded[BASELINE_NAME]
        else:
            if self.selection.names != frozenset():
                item.user_properties.append((PROPERTY, BASELINE_NAME))
            family.append(item)
        callspec = getattr(item, "callspec", None)
        ids = tuple(callspec._idlist) if callspec is not None else ()
        # Variants of a parametrized test share its callspec's parameters, as
        # each parametrized item shares its own; those of a plain test share
        # one empty set of them.
        callspec = callspec or CallSpec()
        shared: Family | None = None
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
            shared = shared or Family(item)
            family.append(self._variant(shared, transformation, callspec, new_ids, new_name))
        return family

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
        self,
        family: Family,
        transformation: Transformation,
        callspec: CallSpec,
        ids: tuple[str, ...],
        name: str,
    ) -> pytest.Function:
        # A variant is built as parametrization builds items: same function,
        # same fixture closure, one more id; pytest derives its node id from it.
        variant = family.variant(name, replace(callspec, _idlist=ids))
        variant.stash[VARIANT_KEY] = Variant(transformation, family.item.nodeid)
        variant.user_properties.append(self._property(transformation.name))
        if self.local:
            if transformation.name not in self._local_skips:
                self._local_skips[transformation.name] = self._cannot_run_here(transformation)
            reason = self._local_skips[transformation.name]
            if reason:
                variant.add_marker(pytest.mark.skip(reason=reason))
        return variant

    def _property(self, name: str) -> tuple[str, str]:
        """The junitxml property naming *name*: one tuple shared by all its variants."""
        found = self._properties.get(name)
        if found is None:
            found = self._properties[name] = (PROPERTY, name)
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


STATE_KEY = pytest.StashKey[TransformationState]()


# -- hooks (this module is registered as the plugin ``psyduck-transformations``) --


def pytest_configure(config: pytest.Config) -> None:
    config.stash[STATE_KEY] = TransformationState(config)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection(session: pytest.Session):
    # Collection that makes variants allocates a dozen small objects per
    # variant, none of them garbage; the cyclic collector's passes over them
    # cost a third of collecting a large matrix.  Cycles that do become
    # garbage meanwhile are collected once collection is over.
    if session.config.stash[STATE_KEY].selection.names == frozenset() or not gc.isenabled():
        return (yield)
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_make_collect_report(collector: pytest.Collector):
    # Innermost wrapper: variants are in the result before --lf filters it and
    # before the session matches node-id arguments against it.
    report = yield
    if report.passed and any(isinstance(node, pytest.Item) for node in report.result):
        report.result = collector.config.stash[STATE_KEY].multiply(collector, report.result)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config) -> None:
    config.stash[STATE_KEY].check_selection()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item):
    # Outermost, so the variant's environment covers every fixture and every
    # other plugin's view of the test, in-process and in a farm worker alike.
    env = transformation_of(item).env
    if not env:
        return (yield)
    with environment(env):
        return (yield)


@pytest.fixture
def psyduck_transformation(request: pytest.FixtureRequest) -> Transformation:
    """The :class:`Transformation` this test runs under; ``BASELINE`` when it runs as written."""
    return transformation_of(request.node)
