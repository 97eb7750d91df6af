"""The ``@pytest.mark.psyduck(...)`` mark: per-test hints for the farm.

``timeout`` (seconds), ``cpus`` (a float), ``memory`` (bytes or a size such as
``"512M"``/``"2G"``) travel in the run manifest; the closest mark wins, so a
test's own mark overrides its class's and module's.

``transformations=[...]`` limits a test to those transformations (the closest
mark wins; ``[]`` means the test as written only); ``exclude=[...]`` removes
transformations, ``"baseline"`` removing the test as written, with an optional
``reason``.  Exclusions accumulate from the test, its class and its module.
See :mod:`pytest_psyduck.transformations`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from pokedex.units import parse_size  # the sizes farm.toml and pokedex take

MARK = "psyduck"
MARK_HELP = (
    "psyduck(timeout=SECONDS, cpus=N, memory='512M', transformations=[...], exclude=[...], "
    "reason='...'): hints for running this test on a psyduck farm; transformations=[NAMES] "
    "limits the test to those transformations, exclude=[NAMES] removes some ('baseline' is "
    "the test as written), reason says why"
)


@dataclass(frozen=True)
class Hints:
    timeout: float | None = None
    cpus: float | None = None
    memory: int | None = None


def hints_for(item: pytest.Item, default_timeout: float | None) -> Hints:
    """The item's farm hints, each from the closest mark that gives it; a malformed
    mark is a usage error naming the test."""
    found: dict[str, Any] = {}
    for mark in item.iter_markers(MARK):
        for key in ("timeout", "cpus", "memory"):
            if key in mark.kwargs:
                found.setdefault(key, mark.kwargs[key])
    timeout, cpus, memory = found.get("timeout"), found.get("cpus"), found.get("memory")
    try:
        return Hints(
            timeout=float(timeout) if timeout is not None else default_timeout,
            cpus=float(cpus) if cpus is not None else None,
            memory=parse_size(memory) if memory is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: bad @pytest.mark.psyduck argument: {exc}") from exc


@dataclass(frozen=True)
class TransformationChoice:
    """What a test's marks say about its transformations.

    ``only`` is the closest ``transformations=[...]`` (None: every declared
    one); ``excluded`` maps each excluded name to its mark's reason.
    """

    only: frozenset[str] | None = None
    excluded: Mapping[str, str] = field(default_factory=dict)


NO_CHOICE = TransformationChoice()


def _names(item: pytest.Item, key: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.psyduck({key}=...) must be a list of transformation "
            f"names, got {value!r}"
        )
    if not all(isinstance(name, str) for name in value):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.psyduck({key}=...) must list names as strings, "
            f"got {value!r}"
        )
    return frozenset(value)


def transformation_choice(item: pytest.Item) -> TransformationChoice:
    """The item's transformation marks; a malformed one is a usage error naming the test."""
    only: frozenset[str] | None = None
    excluded: dict[str, str] = {}
    marked = False
    for mark in item.iter_markers(MARK):  # closest first
        if only is None and "transformations" in mark.kwargs:
            only = _names(item, "transformations", mark.kwargs["transformations"])
            marked = True
        reason = mark.kwargs.get("reason")
        if reason is not None and (not isinstance(reason, str) or "exclude" not in mark.kwargs):
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.psyduck(reason=...) must be a string explaining "
                f"exclude=[...], got {reason!r}"
                + ("" if "exclude" in mark.kwargs else " without exclude")
            )
        if "exclude" in mark.kwargs:
            for name in _names(item, "exclude", mark.kwargs["exclude"]):
                excluded.setdefault(name, reason or "")
            marked = True
    return TransformationChoice(only, excluded) if marked else NO_CHOICE
