"""Reports and warnings to bytes and back, through pytest's own serialization hooks.

The worker encodes a finished test's reports with
``pytest_report_to_serializable``; the coordinator forwards the bytes untouched;
the user's process decodes them with ``pytest_report_from_serializable``.  msgpack
turns tuples into lists, so the few report fields that pytest's consumers
unpack or compare as tuples are restored here.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import msgpack
import pytest

from pytest_psyduck.subtests import restore_context

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
    longrepr = report.longrepr
    if hasattr(longrepr, "toterminal") and not hasattr(longrepr, "reprcrash"):
        data[_RENDERED] = True
    return data


def reports_to_payload(config: pytest.Config, reports: list[pytest.TestReport]) -> bytes:
    data = [_to_serializable(config, r) for r in reports]
    return msgpack.packb(data, use_bin_type=True, default=repr)


def payload_to_reports(config: pytest.Config, payload: bytes) -> list[pytest.TestReport]:
    reports = []
    for data in msgpack.unpackb(payload, raw=False):
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
