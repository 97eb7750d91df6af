"""A fresh worker's ``--junitxml`` state: what the junit fixtures consult to decide their warnings.

pytest's junitxml plugin creates its ``LogXML`` only outside workers (``config.workerinput``,
the pytest-xdist contract): the user's pytest writes the file.  But the fixtures
``record_property``, ``record_xml_attribute`` and ``record_testsuite_property``
read it to decide their warnings — ``record_property`` under ``junit_family =
xunit2`` warns that it is incompatible — and run in the worker.  A worker forked
from the user's session inherits its ``LogXML``; a fresh one (``--psyduck-spawn=exec``,
every container) would have none, and the warnings summary would lack the warning.
So a fresh worker gets a ``LogXML`` built from the same options, kept in the stash
only: never registered as a plugin, it writes nothing, and it is taken out again
before junitxml's own ``pytest_unconfigure`` (which unregisters whatever it finds).
"""

from __future__ import annotations

import pytest
from _pytest.junitxml import LogXML, xml_key

#: Set on a config whose stand-in ``LogXML`` this module made.
_OURS = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    xmlpath = config.option.xmlpath
    if not xmlpath or config.stash.get(xml_key, None) is not None:
        return
    config.stash[xml_key] = LogXML(
        xmlpath,
        config.option.junitprefix,
        config.getini("junit_suite_name"),
        config.getini("junit_logging"),
        config.getini("junit_duration_report"),
        config.getini("junit_family"),
        config.getini("junit_log_passing_tests"),
    )
    config.stash[_OURS] = True


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_OURS, False):
        del config.stash[xml_key]
        del config.stash[_OURS]
