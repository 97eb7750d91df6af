"""psyduck: run a pytest suite on a container farm and bring the results home."""

from typing import TYPE_CHECKING, Any

__all__ = ["BASELINE", "Transformation"]

if TYPE_CHECKING:
    from pytest_psyduck.transformations import BASELINE, Transformation


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: pytest imports the package
    # to load the plugin, before the plugin can exempt psyduck's modules from
    # assertion rewriting (plugin.pytest_addhooks).
    if name in __all__:
        from pytest_psyduck import transformations

        return getattr(transformations, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
