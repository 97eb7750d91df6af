"""Reports and warnings to bytes and back, through pytest's own serialization hooks.

The worker encodes a finished test's reports with
``pytest_report_to_serializable``; the coordinator forwards the bytes untouched;
the user's process decodes them with ``pytest_report_from_serializable``.  msgpack
turns tuples into lists, so the few report fields that pytest's consumers
unpack or compare as tuples are restored here.  ``record_property`` takes any
value: in ``user_properties`` tuples travel as tuples (junitxml writes
``str(value)``, and ``(1, 2)`` is not ``[1, 2]``), maps keep keys of any
msgpack type, and any other object arrives as its ``str()``, which is all a
reporter can make of it in plain pytest too.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import msgpack
import pytest

from pytest_psyduck.subtests import restore_context

#: The msgpack extension type of a tuple inside a ``user_properties`` value.
_TUPLE = 1
#: What msgpack carries as it is in a ``user_properties`` value.
_PLAIN = (str, int, float, bool, bytes, type(None))

#: Marks a longrepr that was a terminal representation without a crash line
#: (doctest failures, for one); pytest serializes those as plain text.
_RENDERED = "psyduck_rendered_longrepr"


class RenderedRepr:
    """Text of a terminal representation that has no crash message.

    A plain ``str`` longrepr would make the short summary append its first
    line, which plain pytest does not do for such failures.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def toterminal(self, tw) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def _to_serializable(config: pytest.Config, report: pytest.TestReport) -> dict[str, Any]:
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    if data.get("user_properties"):
        data["user_properties"] = [
            [name, _property_to_wire(value)] for name, value in data["user_properties"]
        ]
    longrepr = report.longrepr
    if hasattr(longrepr, "toterminal") and not hasattr(longrepr, "reprcrash"):
        data[_RENDERED] = True
    return data


def _property_to_wire(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple):
        items = [_property_to_wire(item) for item in value]
        return msgpack.ExtType(_TUPLE, msgpack.packb(items, use_bin_type=True))
    if isinstance(value, list):
        return [_property_to_wire(item) for item in value]
    if isinstance(value, dict):
        return {_property_to_wire(k): _property_to_wire(v) for k, v in value.items()}
    return str(value)


def _ext_from_wire(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack(data))
    return msgpack.ExtType(code, data)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_from_wire)


def reports_to_payload(config: pytest.Config, reports: list[pytest.TestReport]) -> bytes:
    data = [_to_serializable(config, r) for r in reports]
    return msgpack.packb(data, use_bin_type=True, default=repr)


def payload_to_reports(config: pytest.Config, payload: bytes) -> list[pytest.TestReport]:
    reports = []
    for data in _unpack(payload):
        rendered = data.pop(_RENDERED, False)
        report = config.hook.pytest_report_from_serializable(config=config, data=data)
        restore_context(report, data)
        if rendered and isinstance(report.longrepr, str):
            report.longrepr = RenderedRepr(report.longrepr)
        report.location = tuple(report.location)
        report.sections = [tuple(s) for s in report.sections]
        report.user_properties = [tuple(p) for p in report.user_properties]
        if isinstance(report.longrepr, list):
            report.longrepr = tuple(report.longrepr)
        reports.append(report)
    return reports


def warning_to_wire(message: warnings.WarningMessage, when: str, nodeid: str) -> dict[str, Any]:
    category = message.category
    return {
        "message": str(message.message),
        "category": f"{category.__module__}:{category.__qualname__}",
        "filename": str(message.filename),
        "lineno": message.lineno,
        "line": message.line,
        "when": when,
        "nodeid": nodeid,
    }


def _category(name: str) -> type[Warning]:
    """The warning class named ``module:qualname``, or UserWarning if it cannot be imported here."""
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return UserWarning
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else UserWarning


def warning_from_wire(data: dict[str, Any]) -> warnings.WarningMessage:
    category = _category(data["category"])
    try:
        message: Warning | str = category(data["message"])
    except Exception:
        message = data["message"]
    return warnings.WarningMessage(
        message=message,
        category=category,
        filename=data["filename"],
        lineno=data["lineno"],
        line=data["line"],
    )
