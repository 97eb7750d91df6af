"""psyduck: run a pytest suite on a container farm and bring the results home."""

from pytest_psyduck.transformations import BASELINE, Transformation

__all__ = ["BASELINE", "Transformation"]
