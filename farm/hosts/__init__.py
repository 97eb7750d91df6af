"""Host kinds and the ``--psyduck-hosts`` / farm.toml host syntax.

``local:N`` — N worker processes here; ``docker[:N][?container_scope=run]`` — N
containers on the local Docker engine; ``ssh://user@host[:port][?slots=N&…]`` — a Docker engine
reached over SSH.  Docker and SSH builders import their modules lazily: the
docker SDK and paramiko load only when such a host is used.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from farm.hosts.base import Host
from farm.hosts.local import Launcher, LocalHost


class HostSpecError(ValueError):
    """A host specification that cannot be understood; the text says how to write it."""


def _count(value: str, spec: str) -> int:
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise HostSpecError(f"{spec!r}: the slot count must be a positive integer")
    return int(value)


def _local(spec: str, options: dict[str, Any]) -> Host:
    _, _, count = spec.partition(":")
    return LocalHost(_count(count, spec), launcher=options.get("launcher"))


def _docker(spec: str, options: dict[str, Any]) -> Host:
    from farm.hosts.docker import HOST_OPTIONS, DockerHost, host_options, local_engine

    head, _, query = spec.partition("?")
    _, _, count = head.partition(":")
    try:
        given = dict(urllib.parse.parse_qsl(query, strict_parsing=bool(query)))
        unknown = sorted(set(given) - {"container_scope"})
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} (known: container_scope)")
        chosen = host_options({**given, **options}, {**HOST_OPTIONS, "base_url": str})
        connect = local_engine(chosen.pop("base_url", None))
        return DockerHost(
            _count(count, spec) if count else None,
            connect,
            embedded=bool(options.get("embedded")),
            **chosen,
        )
    except ValueError as exc:
        raise HostSpecError(f"{spec!r}: {exc}") from exc


def _ssh(spec: str, options: dict[str, Any]) -> Host:
    from farm.hosts.ssh import ssh_host

    try:
        return ssh_host(spec, options)
    except ValueError as exc:
        raise HostSpecError(str(exc)) from exc


#: kind → builder(spec, options).  Options carry what a caller can supply:
#: ``launcher`` for local hosts of the embedded farm, ``embedded`` for its docker
#: and ssh hosts (see :func:`parse_hosts`).
HOST_KINDS: dict[str, Callable[[str, dict[str, Any]], Host]] = {
    "local": _local,
    "docker": _docker,
    "ssh": _ssh,
}


#: Host kinds whose workers start in fresh containers (worth starting ahead: ``Host.warm``).
CONTAINER_KINDS = frozenset({"docker", "ssh"})


def host_kind(spec: str) -> str:
    return spec.split("://", 1)[0] if "://" in spec else spec.split(":", 1)[0]


def names_container_hosts(text: str) -> bool:
    """Whether a comma-separated host list names a docker or ssh host."""
    return any(host_kind(spec.strip()) in CONTAINER_KINDS for spec in text.split(","))


def parse_hosts(
    text: str, *, launcher: Launcher | None = None, embedded: bool = False
) -> list[Host]:
    """Build hosts from a comma-separated list such as ``local:4``.

    *embedded*: the farm runs on the client's machine, as its user, and may use
    the client's paths (the embedded farm); a served farm never does.
    """
    hosts = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        builder = HOST_KINDS.get(host_kind(spec))
        if builder is None:
            kinds = ", ".join(sorted(HOST_KINDS))
            raise HostSpecError(f"{spec!r}: unknown host kind (known: {kinds})")
        hosts.append(builder(spec, {"launcher": launcher, "embedded": embedded}))
    if not hosts:
        raise HostSpecError("no hosts given")
    names = [h.name for h in hosts]
    for i, host in enumerate(hosts):
        if names.count(host.name) > 1:
            host.name = f"{host.name}-{i}"
    return hosts
