"""Hooks that psyduck adds to pytest (registered by the plugin's ``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin.  A suite that must also run
with ``-p no:psyduck`` marks its implementations
``@pytest.hookimpl(optionalhook=True)``, as with any plugin's own hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_psyduck.transformations import Transformation


@pytest.hookspec
def pytest_psyduck_transformations(config: pytest.Config) -> Iterable[Transformation] | None:
    """Declare test transformations: configuration variants every test is also run under.

    Return a list of :class:`pytest_psyduck.Transformation`.  The results of all
    implementations that apply to a test's directory are concatenated (a
    conftest's transformations apply to the tests below it, like its
    fixtures), together with the ``psyduck_transformations`` ini lines.  Names
    must be unique among them; a clash is a usage error naming both sources.

    Each implementation is called on its own, once per distinct set of
    applicable conftests, so it should be cheap and free of side effects.
    """
