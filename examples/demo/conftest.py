"""Shared fixtures of the demo suite."""

import pytest


@pytest.fixture(scope="module")
def inventory():
    """An expensive module-scoped resource: psyduck keeps a module's tests together."""
    return {"apples": 3, "pears": 0}


@pytest.fixture
def basket(tmp_path):
    path = tmp_path / "basket.txt"
    path.write_text("apple\npear\n")
    return path
