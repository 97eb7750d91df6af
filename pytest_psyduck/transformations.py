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
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager

import pytest

from pytest_psyduck.declarations import (
    _NAME,
    BASELINE,
    BASELINE_NAME,
    HOOK,
    INI,
    PROPERTY,
    RESERVED_NAMES,
    Selection,
    Transformation,
    describe_exception,
    parse_ini_line,
    parse_selection,
)
from pytest_psyduck.multiplying import (
    TransformationState,
    item_name,
    requested_names,
    variant_ids,
)
from pytest_psyduck.variants import VARIANT_KEY, Variant
from pytest_psyduck.variants import Function as VariantItem
from pytest_psyduck.variants import transformation_of as transformation_or_none
from pytest_psyduck.variants import variant_of as variant_or_none

__all__ = [
    "BASELINE",
    "BASELINE_NAME",
    "HOOK",
    "INI",
    "PROPERTY",
    "RESERVED_NAMES",
    "STATE_KEY",
    "VARIANT_KEY",
    "_NAME",
    "Selection",
    "Transformation",
    "TransformationState",
    "Variant",
    "describe_exception",
    "environment",
    "item_name",
    "parse_ini_line",
    "parse_selection",
    "requested_names",
    "transformation_of",
    "variant_ids",
    "variant_of",
]

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


def variant_of(item: pytest.Item) -> Variant:
    variant = variant_or_none(item)
    return variant if variant is not None else Variant(BASELINE, item.nodeid)


def transformation_of(item: pytest.Item) -> Transformation:
    transformation = transformation_or_none(item)
    return BASELINE if transformation is None else transformation


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    config.stash[STATE_KEY].check_selection()
    result = yield
    if config.option.keyword or config.option.markexpr:
        # Matching -k and -m made every variant's keywords and marks: forget them again.
        _shed(items)
    return result


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    # Made keywords refer back to their item: a cycle that outlives collection, which
    # runs without the cyclic collector (and the controller freezes what it collected).
    _shed(items)


def _shed(items: Iterable[pytest.Item]) -> None:
    for item in items:
        if type(item) is VariantItem:
            item.shed()


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
