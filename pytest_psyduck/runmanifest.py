"""Turning the collected items into the farm's run manifest.

The manifest carries node ids (the farm treats them as opaque), the module
each test belongs to (so the scheduler keeps a module's fixtures on one
worker), the recorded duration, the test's mark hints, and the command that
starts a worker: the user's own pytest arguments, so a worker collects
exactly what the user's process collected, the invoker's variables it passes
(:mod:`pytest_psyduck.passenv`), and the packages a worker needs that a test
image need not have, so that the farm never imports psyduck's plugin to find them.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping

import pytest

from farm.manifest import RunManifest, TestSpec, WorkerSpec
from farm.packages import WORKER_PACKAGES, package_dirs
from pytest_psyduck.durations import DurationHistory
from pytest_psyduck.images import run_image
from pytest_psyduck.marks import Hints, hints_for
from pytest_psyduck.passenv import pass_env_patterns, passed_environment
from pytest_psyduck.scheduling import Placement, dispatched_first, dist_mode, placement
from pytest_psyduck.transformations import Transformation, transformation_of
from pytest_psyduck.variants import own_markers_of

WORKER_MODULE = "pytest_psyduck.workermain"


def group_of(item: pytest.Item) -> str:
    """Tests of one module share module- and class-scoped fixtures."""
    return item.nodeid.split("::", 1)[0]


def test_spec(
    item: pytest.Item,
    transformation: Transformation,
    history: DurationHistory,
    hints: Hints,
    place: Placement,
    first: bool = False,
) -> TestSpec:
    """A variant adds its transformation's host requirements, and its profile if it has args.

    *hints* are the test's mark hints; *place* is its group (its module unless
    :mod:`pytest_psyduck.scheduling` says otherwise); *first* dispatches it before the rest.
    """
    return TestSpec(
        id=item.nodeid,
        group=place.group,
        estimate=history.estimate(item.nodeid),
        timeout=hints.timeout,
        requires=_requires(item, transformation),
        cpus=hints.cpus,
        memory=hints.memory,
        profile=transformation.name if transformation.args else "",
        pinned=place.pinned,
        first=first,
    )


def _requires(item: pytest.Item, transformation: Transformation) -> Mapping[str, str]:
    """The item's own requirements and its transformation's (that one mapping, if alone)."""
    own = getattr(item, "psyduck_requires", None)
    return {**own, **transformation.requires} if own else transformation.requires


def _marks_key(item: pytest.Item) -> tuple[int, ...]:
    """Items with equal keys have the same marks: the same parent, and the same own marks.

    A test's variants share its mark objects (unless a plugin gave one a mark of
    its own), so the marks are read once per test, not once per variant, and a
    variant's own list of them is not made for this.
    """
    return (id(item.parent), *map(id, own_markers_of(item)))


def project_root(config: pytest.Config) -> str:
    """The directory holding the rootdir and the invocation dir: what a snapshot ships."""
    return os.path.commonpath([str(config.rootpath), str(config.invocation_params.dir)])


def build_manifest(
    items: list[pytest.Item], config: pytest.Config, history: DurationHistory
) -> RunManifest:
    default_timeout = config.getoption("psyduck_timeout") or _ini_timeout(config)
    mode = dist_mode(config)
    first = dispatched_first(config, items)
    tests = []
    # One worker profile per transformation with args: its workers start with those arguments.
    profiles = {}
    read: dict[tuple[int, ...], tuple[Hints, Placement]] = {}
    for item in items:
        transformation = transformation_of(item)
        if transformation.args:
            profiles[transformation.name] = transformation.args
        key = _marks_key(item)
        marked = read.get(key)
        if marked is None:
            marked = read[key] = (
                hints_for(item, default_timeout),
                placement(item, group_of(item), mode),
            )
        spec = test_spec(
            item, transformation, history, *marked, bool(first) and item.nodeid in first
        )
        tests.append(spec)
    return RunManifest(
        tests=tuple(tests),
        worker=worker_spec(config),
        name=f"{getpass.getuser()}@{socket.gethostname()}:{config.rootpath.name}",
        image=run_image(config),
        profiles=profiles,
    )


def worker_spec(config: pytest.Config) -> WorkerSpec:
    """How the run's workers start: this command line, directory and passed environment."""
    return WorkerSpec(
        argv=(WORKER_MODULE, *config.invocation_params.args),
        cwd=str(config.invocation_params.dir),
        root=project_root(config),
        env=passed_environment(os.environ, pass_env_patterns(config)),
        inject=package_dirs(WORKER_PACKAGES),
    )


def _ini_timeout(config: pytest.Config) -> float | None:
    value = config.getini("psyduck_timeout")
    try:
        return float(value) if value else None
    except ValueError as exc:
        raise pytest.UsageError(f"psyduck_timeout = {value!r} is not a number of seconds") from exc
