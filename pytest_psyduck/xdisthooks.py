"""pytest-xdist's controller hooks, for psyduck to call when pytest-xdist is not installed.

Plugins that bring their workers' data home (pytest-cov, syrupy) implement
these as ``optionalhook``; psyduck calls them as pytest-xdist's controller
does (:mod:`pytest_psyduck.xdistcontract`).  With pytest-xdist installed its
own specs (``xdist.newhooks``) are used instead: the signatures are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest


@pytest.hookspec()
def pytest_xdist_setupnodes(config: pytest.Config, specs: Sequence[Any]) -> None:
    """Called before any remote node is set up."""


@pytest.hookspec()
def pytest_configure_node(node: Any) -> None:
    """Configure node information before it gets instantiated."""


@pytest.hookspec()
def pytest_testnodeready(node: Any) -> None:
    """Test Node is ready to operate."""


@pytest.hookspec()
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """Test Node is down."""
