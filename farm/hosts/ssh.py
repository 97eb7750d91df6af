"""SSH hosts: a remote Docker engine reached over one SSH connection (paramiko).

``ssh://user@host[:port][?slots=N&key=PATH&known_hosts=PATH&accept_new_host_keys=1]``
is a :class:`~farm.hosts.docker.DockerHost` whose engine connection is an SSH
transport: every Docker API request, attach stream and the event stream is a
channel running ``docker system dial-stdio`` on the remote side, all multiplexed
over one authenticated, kept-alive TCP connection.

The docker SDK's own SSH adapter loads only the system known_hosts and offers
no keep-alive or accept-new choice, so this module makes the paramiko
connection itself, the way OpenSSH would with ``StrictHostKeyChecking yes``
(or ``accept-new`` when opted in), and hands the connected client to the
SDK's adapter.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import paramiko
from docker.transport import SSHHTTPAdapter

from farm.hosts.base import HostError
from farm.hosts.docker import API_TIMEOUT, API_VERSION, HOST_OPTIONS, DockerHost, host_options

#: Seconds between SSH keep-alive messages on an idle connection.
KEEPALIVE_SECONDS = 10
CONNECT_TIMEOUT = 10.0
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: The one key under which the SSH adapter pools its connections to the engine.
POOL_KEY = "http+docker://ssh"


class HostKeyRefused(HostError):
    """The server's host key is unknown or differs from the recorded one."""


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect; parsed from an ``ssh://`` spec or farm.toml fields."""

    host: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    accept_new_host_keys: bool = False

    @property
    def known_hosts_path(self) -> Path:
        return Path(os.path.expanduser(self.known_hosts))

    @property
    def display(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"


_TRUE = {"1", "true", "yes", "on"}


def parse_ssh_spec(spec: str) -> tuple[SshTarget, int | None]:
    """``ssh://user@host:port?slots=N&key=…&known_hosts=…&accept_new_host_keys=1``.

    Returns the target and the slot count (None: as many as the engine has CPUs).
    A ``container_scope`` parameter is the host's, read by :func:`ssh_host`.
    """
    url = urllib.parse.urlsplit(spec)
    if url.scheme != "ssh" or not url.hostname:
        raise ValueError(f"{spec!r}: write ssh://user@host[:port][?slots=N]")
    query = dict(urllib.parse.parse_qsl(url.query, strict_parsing=bool(url.query)))
    unknown = set(query) - {
        "slots",
        "key",
        "known_hosts",
        "accept_new_host_keys",
        "container_scope",
    }
    if unknown:
        raise ValueError(f"{spec!r}: unknown option(s) {', '.join(sorted(unknown))}")
    slots = query.get("slots")
    if slots is not None and (not slots.isdigit() or int(slots) < 1):
        raise ValueError(f"{spec!r}: slots must be a positive integer")
    target = SshTarget(
        host=url.hostname,
        user=url.username,
        port=url.port or 22,
        key_file=query.get("key"),
        known_hosts=query.get("known_hosts", DEFAULT_KNOWN_HOSTS),
        accept_new_host_keys=query.get("accept_new_host_keys", "").lower() in _TRUE,
    )
    return target, int(slots) if slots else None


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH records a host under in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys with a clear message, or record them when opted in."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        path = self.target.known_hosts_path
        if not self.target.accept_new_host_keys:
            raise HostKeyRefused(
                f"host key of {hostname} is not known: {key.get_name()} {key.fingerprint}. "
                f"Check the fingerprint with the host's owner, then add it to {path} "
                f"(ssh-keyscan -p {self.target.port} {self.target.host} >> {path}) or allow "
                "recording new keys with accept_new_host_keys"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def open_ssh(target: SshTarget) -> paramiko.SSHClient:
    """An authenticated SSH connection with host keys checked and keep-alives on."""
    client = paramiko.SSHClient()
    if target.known_hosts_path.exists():
        client.load_host_keys(str(target.known_hosts_path))
    client.set_missing_host_key_policy(_KnownHostsPolicy(target))
    key_file = os.path.expanduser(target.key_file) if target.key_file else None
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=key_file,
            look_for_keys=key_file is None,
            allow_agent=key_file is None,
            timeout=CONNECT_TIMEOUT,
            banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT,
            channel_timeout=CONNECT_TIMEOUT,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRefused(
            f"host key of {known_hosts_name(target.host, target.port)} CHANGED: "
            f"{target.known_hosts_path} has {exc.expected_key.get_name()} "
            f"{exc.expected_key.fingerprint}, the server offered {exc.key.get_name()} "
            f"{exc.key.fingerprint}. Someone may be intercepting the connection; refusing. "
            "If the host was reinstalled, remove its old entry from known_hosts"
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostError(f"ssh {target.display}: authentication failed: {exc}") from exc
    except (paramiko.SSHException, OSError) as exc:
        client.close()
        if isinstance(exc, HostKeyRefused):
            raise
        raise HostError(f"ssh {target.display}: cannot connect: {exc}") from exc
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(KEEPALIVE_SECONDS)
    return client


class _ConnectedAdapter(SSHHTTPAdapter):
    """The SDK's SSH adapter over a client this module already connected and checked."""

    def __init__(self, client: paramiko.SSHClient, pool: int) -> None:
        self._connected = client
        super().__init__("ssh://", timeout=API_TIMEOUT, max_pool_size=pool)

    def _create_paramiko_client(self, base_url: str) -> None:
        self.ssh_client = self._connected
        self.ssh_params = {}

    def _connect(self) -> None:
        """Already connected: a broken connection is replaced by a new engine, not here."""

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        """One connection pool for every request.

        The SDK keys its pools by the whole URL, so every container's own
        requests (start, kill, update, …) found an empty pool and opened a new
        SSH channel running a new ``docker system dial-stdio`` on the remote
        side: ~0.1 s, and a process, for each.  All requests go to the same
        engine, so they share kept-alive channels.  Attach streams are hijacked
        and never return to the pool.
        """
        return super().get_connection(POOL_KEY, proxies)


def ssh_engine(target: SshTarget, pool: int = 16):
    """A ``connect`` function for :class:`DockerHost` reaching the engine through *target*."""

    def connect() -> docker.APIClient:
        client = open_ssh(target)
        # Built for a local socket it never uses (no request is made before the
        # adapter is swapped), then pointed at the SSH adapter the way the SDK
        # itself wires ``ssh://`` base URLs.
        api = docker.APIClient(
            base_url="unix:///var/run/docker.sock", version=API_VERSION, timeout=API_TIMEOUT
        )
        api.adapters.pop("http+docker://").close()
        adapter = _ConnectedAdapter(client, pool)
        api.mount("http+docker://ssh", adapter)
        api._custom_adapter = adapter
        api.base_url = "http+docker://ssh"
        return api

    return connect


#: farm.toml fields of an ssh host, on top of the docker ones.
SSH_OPTIONS = {"key": str, "known_hosts": str, "accept_new_host_keys": bool}


def ssh_host(spec: str, options: dict[str, Any] | None = None) -> DockerHost:
    """``ssh://…`` → a DockerHost on the remote engine (slots default to its CPU count).

    The engine does not share the coordinator's disk, so the host ships
    psyduck's packages and the run's code in volumes (``remote``), not binds.

    farm.toml fields (``key``, ``known_hosts``, ``accept_new_host_keys`` and the
    docker host fields) override the spec's query parameters.
    """
    target, slots = parse_ssh_spec(spec)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(spec).query))
    if "container_scope" in query:
        options = {"container_scope": query["container_scope"], **(options or {})}
    chosen = host_options(options or {}, {**HOST_OPTIONS, **SSH_OPTIONS})
    ssh = {name: chosen.pop(name) for name in list(chosen) if name in SSH_OPTIONS}
    if "key" in ssh:
        ssh["key_file"] = ssh.pop("key")
    target = replace(target, **ssh)
    return DockerHost(
        slots,
        ssh_engine(target),
        name=f"ssh:{target.display}",
        labels={"kind": "ssh"},
        remote=True,
        embedded=bool((options or {}).get("embedded")),
        **chosen,
    )
