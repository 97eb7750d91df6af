"""The farm.toml fields of docker and ssh hosts, checked before a host is built."""

from __future__ import annotations

from typing import Any

#: farm.toml fields (beyond url/slots/labels/name) a docker or ssh host understands.
HOST_OPTIONS = {
    "image": str,
    "python": str,
    "copy_code": bool,
    "memory": (int, str),
    "cpus": (int, float),
    "cache_dir": str,
    "container_scope": str,
    "python_volumes": bool,
}


#: Options a host builder receives from its caller, not from farm.toml or the spec.
CALLER_OPTIONS = frozenset({"launcher", "embedded"})


def host_options(options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Check farm.toml host fields against *allowed* (name → type); sizes become bytes."""
    chosen = {k: v for k, v in options.items() if v is not None and k not in CALLER_OPTIONS}
    for key, value in chosen.items():
        kind = allowed.get(key)
        if kind is None:
            raise ValueError(f"unknown host option {key!r} (known: {', '.join(sorted(allowed))})")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"host option {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(chosen.get("memory"), str):
        from pokedex.units import parse_size  # the same sizes as the psyduck mark

        chosen["memory"] = parse_size(chosen["memory"])
    return chosen
