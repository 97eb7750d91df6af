"""What a project declares it needs: pyproject dependencies, extras, groups, requirements files.

The test image holds a project's dependencies, never the project itself (its
code arrives with each run), so these readers return requirement strings for
pip, exactly as declared.  They are pure: a pyproject is passed in parsed, and
requirements files are read through a callable, so nesting, comments and
options are testable without a disk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from farm.images.recipe import normalize


class RequirementsError(ValueError):
    """The project's declared dependencies cannot be read; the text says where and why."""


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequirementsError(f"{where} must be a list of requirement strings")
    return list(value)


def project_name(pyproject: Mapping[str, Any], fallback: str) -> str:
    """``[project] name``, else *fallback* (the project directory's name)."""
    name = pyproject.get("project", {}).get("name")
    return name if isinstance(name, str) and name else fallback


def project_dependencies(
    pyproject: Mapping[str, Any], extras: Iterable[str] = (), groups: Iterable[str] = ()
) -> list[str]:
    """``[project.dependencies]``, the chosen extras and dependency groups (PEP 735).

    An unknown extra or group is an error naming the known ones; a group's
    ``{include-group = NAME}`` entries are expanded, and a cycle is an error.
    """
    project = pyproject.get("project", {})
    found = _strings(project.get("dependencies", []), "[project] dependencies")
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            known = ", ".join(sorted(optional)) or "none"
            raise RequirementsError(
                f"no extra {extra!r} in [project.optional-dependencies] (known: {known})"
            )
        found += _strings(optional[extra], f"[project.optional-dependencies] {extra}")
    table = pyproject.get("dependency-groups", {})
    for group in groups:
        found += _group(table, group, ())
    return found


def _group(table: Mapping[str, Any], name: str, seen: tuple[str, ...]) -> list[str]:
    if name in seen:
        raise RequirementsError(
            f"[dependency-groups] include a cycle: {' -> '.join((*seen, name))}"
        )
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise RequirementsError(f"no dependency group {name!r} (known: {known})")
    entries = table[name]
    if not isinstance(entries, list):
        raise RequirementsError(f"[dependency-groups] {name} must be a list")
    found: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            found.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"include-group"}:
            found += _group(table, str(entry["include-group"]), (*seen, name))
        else:
            raise RequirementsError(
                f"[dependency-groups] {name}: {entry!r} is neither a requirement string "
                "nor {include-group = NAME}"
            )
    return found


#: Options of a requirements file that only say where pip looks: the build
#: machine's own pip configuration decides that instead.
_SKIPPED_OPTIONS = (
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--no-index",
    "--pre",
    "--prefer-binary",
    "--trusted-host",
    "--only-binary",
    "--no-binary",
    "--use-feature",
)
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s+|=)(.+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMENT = re.compile(r"(^|\s+)#.*$")


def requirements_lines(text: str) -> list[str]:
    """Logical lines of a requirements file: continuations joined, comments and blanks gone."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = _COMMENT.sub("", pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    line = _COMMENT.sub("", pending).strip()
    if line:
        lines.append(line)
    return lines


@dataclass
class Requirements:
    """What requirements files ask for: requirements, and constraints (``-c`` files)."""

    requirements: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)


def read_requirements(
    path: str,
    read: Callable[[str], str],
    found: Requirements | None = None,
    *,
    constraining: bool = False,
    _seen: tuple[str, ...] = (),
) -> Requirements:
    """What the file *path* (read with *read*) asks for, ``-r`` and ``-c`` files included.

    Lines of a constraint file (``-c``), and of every file it includes, are
    constraints: pins of what else is installed, not things to install.  Index
    and binary options are skipped (the build machine's pip configuration
    applies); an editable (``-e``) or any other option is an error, since the
    image holds dependencies, not projects under development.  Results are
    added to *found* when given.
    """
    found = Requirements() if found is None else found
    if path in _seen:
        raise RequirementsError(
            f"requirements files include a cycle: {' -> '.join((*_seen, path))}"
        )
    try:
        text = read(path)
    except OSError as exc:
        where = f" (included from {_seen[-1]})" if _seen else ""
        raise RequirementsError(f"cannot read {path}{where}: {exc}") from exc
    for line in requirements_lines(text):
        include = _INCLUDE.match(line)
        if include:
            target = str(PurePosixPath(path).parent / include.group(2).strip())
            nested = constraining or include.group(1) in ("-c", "--constraint")
            read_requirements(target, read, found, constraining=nested, _seen=(*_seen, path))
        elif line.startswith(_SKIPPED_OPTIONS):
            continue
        elif line.startswith("-"):
            raise RequirementsError(
                f"{path}: {line!r} is not supported in an image's requirements "
                "(only requirements, -r/-c and index options)"
            )
        else:
            (found.constraints if constraining else found.requirements).append(line)
    return found


def requirement_name(line: str) -> str:
    """The normalized project name a requirement or constraint line is about."""
    match = _NAME.match(line.strip())
    return normalize(match.group(0)) if match else ""


def merged_constraints(project: Iterable[str], environment: Iterable[str]) -> list[str]:
    """The project's constraints, then the environment's pins of every other project:
    a version the project's constraint files choose wins over the one installed here."""
    project = list(project)
    pinned = {requirement_name(line) for line in project}
    return [*project, *(pin for pin in environment if requirement_name(pin) not in pinned)]
