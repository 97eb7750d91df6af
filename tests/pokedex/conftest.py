"""Fixtures for the pokedex tests: real nodes on 127.0.0.1 with ephemeral ports.

Async tests are plain functions that call ``asyncio.run`` (no plugin needed); nodes for them
come from :func:`pokedex_testlib.nodes`. Tests that drive a node from synchronous code
(hypothesis, subprocesses) use ``threaded_node``/``shared_node``, served by an event loop in
a background thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pokedex_testlib import TOKEN, NodeProcess, ThreadedNode, free_port


@pytest.fixture
def threaded_node(tmp_path: Path) -> Iterator[ThreadedNode]:
    n = ThreadedNode(tmp_path / "data", token=TOKEN)
    yield n
    n.close()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedNode]:
    """One token-protected node for a whole module (hypothesis runs many examples)."""
    n = ThreadedNode(tmp_path_factory.mktemp("shared"), token=TOKEN)
    yield n
    n.close()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeProcess]:
    (tmp_path / "data").mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    p = NodeProcess(tmp_path / "data", free_port(), token_file)
    p.start()
    yield p
    p.stop()
