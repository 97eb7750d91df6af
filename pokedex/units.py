"""Human-readable sizes and durations, for the command line and farm.toml.

Pure functions. They live in pokedex, the bottom of the dependency chain (plugin → farm →
pokedex), so that every size is read alike: ``pokedex serve --max-bytes 10G``,
``[pokedex] max_bytes = "10G"``, a farm host's ``memory = "64G"`` and a test's
``@pytest.mark.psyduck(memory="2G")`` all come through here.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``500M``, ``10G``, ``1.5GiB`` (binary units).

    Raises ValueError, with the accepted forms in the message, for anything else, zero or
    negative.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        if not match:
            raise ValueError(f"not a size: {str(value)[:40]!r} (use bytes, or e.g. 500M, 10G)")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {str(value)[:40]!r}")
    return size


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string such as ``90``, ``30s``, ``15m``, ``24h``, ``7d``.

    Raises ValueError for anything else or a negative number; zero is allowed.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(
                f"not a duration: {str(value)[:40]!r} (use seconds, or e.g. 30m, 24h, 7d)"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"a duration must be a finite number >= 0, got {str(value)[:40]!r}")
    return seconds


def format_size(size: int) -> str:
    """``size`` bytes for people: ``512 B``, ``3.2 MiB``, ``1.0 GiB``."""
    if abs(size) < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
