"""The suite the transformation benchmarks share: trivial tests, each under N env-only variants.

``transformations.py``, ``variants.py`` and ``replay_memory.py`` all measure what a
variant costs; they write the same conftest so their figures compare.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_transformations(root: Path, transformations: int) -> None:
    """A ``conftest.py`` at *root* declaring *transformations* variants ``t0``…, env only."""
    (root / "conftest.py").write_text(
        textwrap.dedent(f"""
        from pytest_psyduck import Transformation

        def pytest_psyduck_transformations(config):
            return [
                Transformation(f"t{{i}}", env={{"SETTING": str(i)}})
                for i in range({transformations})
            ]
        """)
    )


def write_suite(root: Path, tests: int, transformations: int, modules: int) -> None:
    """*tests* passing tests spread over *modules* modules, under *transformations*."""
    per_module = tests // modules
    for m in range(modules):
        body = "\n".join(f"def test_{t}():\n    assert {t} >= 0\n" for t in range(per_module))
        (root / f"test_m{m}.py").write_text(body)
    write_transformations(root, transformations)
