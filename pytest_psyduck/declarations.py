"""What a transformation is, and how one is declared and chosen.

A :class:`Transformation` is a frozen, validated value: its name must
survive node ids, ``-k`` expressions, comma lists and ini lines, so a bad
declaration fails at once with a message naming it rather than as an odd
node id later.  ``--psyduck-transform`` values and ini lines are parsed here
too, into the same values, so every source of a transformation is checked
alike.
"""

from __future__ import annotations

import re
import shlex
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import final

import pytest

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


def check_name(name: str, source: str, sources: Mapping[str, str]) -> None:
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
