"""``farm.toml``: what ``psyduck farm serve`` runs and ``psyduck hosts check`` inspects.

Example::

    [farm]
    listen = "0.0.0.0:7400"
    token_file = "/etc/psyduck/token"     # held by the admin "default"
    tokens_file = "/etc/psyduck/tokens"   # named tokens (farm.tokens); reread on SIGHUP
    heartbeat = 15                  # seconds between pings of a client's event stream
    state_dir = "/var/lib/psyduck"  # default: $XDG_STATE_HOME/psyduck
    spool_max_bytes = "1G"          # a run's events waiting on disk for its client, at most

    [history]                       # test durations, to schedule runs the client never timed
    # path = "<state_dir>/history.sqlite3"
    keep = 10                       # durations per test (its estimate: their median)
    max_age_days = 30               # tests not seen for longer are dropped
    # enabled = false

    [[hosts]]
    url = "docker"                  # the local engine
    slots = 4

    [[hosts]]
    url = "ssh://ci@build-7:22"     # a Docker engine over SSH
    slots = 16
    labels = { cpu = "avx2" }

    [pokedex]                       # where clients ship snapshots; either
    data = "/var/lib/psyduck/pokedex"   # run a node inside the farm (farm tokens), or
    max_bytes = "50G"                   # its disk budget: past it, old unused blobs go
    # urls = ["http://store-1:7500"]    # use a cluster, with token_file = "…"
    # anonymous_reads = true            # the farm's node: reads without a token

Parsing is pure; building hosts goes through :data:`farm.hosts.HOST_KINDS`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.hosts import HOST_KINDS, HostSpecError, host_kind
from farm.hosts.base import Host
from farm.protocol import HEARTBEAT
from farm.spool import DISK_BYTES
from farm.tokens import Holder, TokensError, merge_default, parse_tokens

DEFAULT_LISTEN = "127.0.0.1:7400"
_HOST_FIELDS = {"url", "slots", "labels", "name"}


class ConfigError(ValueError):
    """farm.toml cannot be used; the text names the file and the field."""


@dataclass(frozen=True)
class HostConfig:
    url: str
    slots: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PokedexConfig:
    """Either a node the farm runs itself (*data*, *listen*) or an existing cluster (*urls*)."""

    urls: tuple[str, ...] = ()
    token_file: str | None = None
    data: str | None = None
    listen: tuple[str, int] = ("127.0.0.1", 0)
    max_bytes: int | None = None
    #: The farm's own node serves reads without a token (writes always need one).
    anonymous_reads: bool = False


@dataclass(frozen=True)
class HistoryConfig:
    """``[history]``: the farm's database of test durations (:mod:`farm.history`)."""

    #: None: not kept (``enabled = false``).
    path: str | None
    #: Durations kept per test; its estimate is their median.
    keep: int = 10
    #: Tests not seen for this many days are dropped.
    max_age_days: float = 30.0


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/psyduck``, else ``~/.local/state/psyduck``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "psyduck")


@dataclass(frozen=True)
class FarmConfig:
    listen: tuple[str, int]
    token_file: str | None
    hosts: tuple[HostConfig, ...]
    pokedex: PokedexConfig | None = None
    tokens_file: str | None = None
    #: Seconds between the pings of each client's event stream; a client whose
    #: network side does not answer within half of it is taken for gone.
    heartbeat: float = HEARTBEAT
    history: HistoryConfig = field(
        default_factory=lambda: HistoryConfig(os.path.join(default_state_dir(), "history.sqlite3"))
    )
    #: Where the farm keeps what outlives a run or must not sit in memory: the duration
    #: history, and the events a slow client has not taken yet (``spool/``).
    state_dir: str = field(default_factory=lambda: default_state_dir())
    #: Bytes of a run's events waiting for its client under ``state_dir/spool`` past which
    #: the run gets no new shards until its client has caught up (:mod:`farm.spool`).
    spool_max_bytes: int = DISK_BYTES


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen = {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _host(entry: Any, index: int) -> HostConfig:
    where = f"hosts[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise ConfigError(f'{where}: each host needs url = "docker" | "local" | "ssh://user@host"')
    if host_kind(entry["url"]) not in HOST_KINDS:
        raise ConfigError(f"{where}: unknown host kind in {entry['url']!r}")
    slots = entry.get("slots")
    if slots is not None and (not isinstance(slots, int) or isinstance(slots, bool) or slots < 1):
        raise ConfigError(f"{where}.slots: must be a positive integer")
    labels = entry.get("labels", {})
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}.labels: must be a table of strings")
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name: must be a string")
    return HostConfig(
        url=entry["url"],
        slots=slots,
        labels={str(k): str(v) for k, v in labels.items()},
        name=name,
        options={k: v for k, v in entry.items() if k not in _HOST_FIELDS},
    )


def _pokedex(table: Any) -> PokedexConfig | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("[pokedex] must be a table")
    urls = table.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError("[pokedex] urls must be a list of URLs")
    data = table.get("data")
    if bool(urls) == bool(data):
        raise ConfigError("[pokedex] needs exactly one of data = DIR (run a node) or urls = [...]")
    anonymous_reads = table.get("anonymous_reads", False)
    if not isinstance(anonymous_reads, bool):
        raise ConfigError("[pokedex] anonymous_reads must be true or false")
    if anonymous_reads and not data:
        raise ConfigError("[pokedex] anonymous_reads applies to the farm's own node (data = DIR)")
    return PokedexConfig(
        urls=tuple(urls),
        token_file=table.get("token_file"),
        data=data,
        listen=parse_listen(str(table.get("listen", "127.0.0.1:0"))),
        max_bytes=_max_bytes(table.get("max_bytes"), bool(data)),
        anonymous_reads=anonymous_reads,
    )


def _max_bytes(value: Any, runs_node: bool) -> int | None:
    """``[pokedex] max_bytes``: the disk budget of the node the farm runs (``data = DIR``)."""
    if value is None:
        return None
    if not runs_node:
        raise ConfigError("[pokedex] max_bytes applies to the node the farm runs (data = DIR)")
    from pokedex.units import parse_size  # the farm imports pokedex only when it uses it

    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"[pokedex] max_bytes: {exc}") from None


def _seconds(table: dict[str, Any], key: str, default: float) -> float:
    """``[farm] KEY``: a positive number of seconds."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigError(f"[farm] {key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _spool_max_bytes(value: Any) -> int:
    """``[farm] spool_max_bytes``: a size (``"1G"``, ``"512MiB"``) or a number of bytes."""
    from pokedex.units import parse_size

    try:
        return parse_size(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[farm] spool_max_bytes: {exc}") from None


def _state_dir(value: Any) -> str:
    if value is None:
        return default_state_dir()
    if not isinstance(value, str) or not value:
        raise ConfigError("[farm] state_dir must be a path")
    return value


def _history(table: Any, state_dir: str) -> HistoryConfig:
    if not isinstance(table, dict):
        raise ConfigError("[history] must be a table")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("[history] enabled must be true or false")
    path = table.get("path", os.path.join(state_dir, "history.sqlite3"))
    if not isinstance(path, str):
        raise ConfigError("[history] path must be a path")
    keep = table.get("keep", 10)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 1000:
        raise ConfigError(f"[history] keep must be a whole number from 1 to 1000, got {keep!r}")
    days = table.get("max_age_days", 30)
    if isinstance(days, bool) or not isinstance(days, int | float) or not days > 0:
        raise ConfigError(f"[history] max_age_days must be a positive number, got {days!r}")
    return HistoryConfig(path if enabled else None, keep, float(days))


def parse_config(data: dict[str, Any]) -> FarmConfig:
    farm = data.get("farm", {})
    if not isinstance(farm, dict):
        raise ConfigError("[farm] must be a table")
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError("no [[hosts]] entries: a farm needs at least one host")
    token_file = farm.get("token_file")
    if token_file is not None and not isinstance(token_file, str):
        raise ConfigError("[farm] token_file must be a path")
    tokens_file = farm.get("tokens_file")
    if tokens_file is not None and not isinstance(tokens_file, str):
        raise ConfigError("[farm] tokens_file must be a path")
    return FarmConfig(
        listen=parse_listen(str(farm.get("listen", DEFAULT_LISTEN))),
        heartbeat=_seconds(farm, "heartbeat", HEARTBEAT),
        history=_history(data.get("history", {}), _state_dir(farm.get("state_dir"))),
        state_dir=_state_dir(farm.get("state_dir")),
        spool_max_bytes=_spool_max_bytes(farm.get("spool_max_bytes", DISK_BYTES)),
        token_file=token_file,
        hosts=tuple(_host(entry, i) for i, entry in enumerate(hosts)),
        pokedex=_pokedex(data.get("pokedex")),
        tokens_file=tokens_file,
    )


def load_config(path: str | os.PathLike[str]) -> FarmConfig:
    try:
        with open(path, "rb") as f:
            return parse_config(tomllib.load(f))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def build_host(config: HostConfig) -> Host:
    """Build one host; the table's slots, labels and name override the kind's defaults."""
    spec = config.url
    if config.slots is not None and host_kind(spec) in ("local", "docker") and ":" not in spec:
        spec = f"{spec}:{config.slots}"
    try:
        host = HOST_KINDS[host_kind(spec)](spec, dict(config.options))
    except HostSpecError as exc:
        raise ConfigError(str(exc)) from exc
    if config.slots is not None:
        host.slots = config.slots
    host.labels = {**host.labels, **config.labels}
    if config.name:
        host.name = config.name
    return host


def read_token(token_file: str | None) -> str:
    """The service token: from *token_file*, else ``PSYDUCK_TOKEN``; never empty."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token_file {token_file}: {exc.strerror}") from exc
    else:
        token = os.environ.get("PSYDUCK_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            "no token: give a token file or set PSYDUCK_TOKEN (the farm never runs open)"
        )
    return token


def read_tokens_file(path: str) -> dict[str, Holder]:
    """token → holder from the ``tokens_file`` at *path* (see :mod:`farm.tokens`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"tokens_file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"tokens_file {path}: not UTF-8 text") from exc
    try:
        return parse_tokens(text, f"tokens_file {path}")
    except TokensError as exc:
        raise ConfigError(str(exc)) from exc


def single_token(config: FarmConfig) -> str | None:
    """The single token (``token_file``, else ``PSYDUCK_TOKEN``): required without a
    ``tokens_file``, optional with one."""
    if config.token_file or not config.tokens_file or os.environ.get("PSYDUCK_TOKEN", "").strip():
        return read_token(config.token_file)
    return None


def load_tokens(config: FarmConfig, single: str | None) -> dict[str, Holder]:
    """Everyone a served farm lets in: the ``tokens_file``'s names and the *single* token."""
    named = read_tokens_file(config.tokens_file) if config.tokens_file else {}
    try:
        return merge_default(named, single)
    except TokensError as exc:
        raise ConfigError(str(exc)) from exc
