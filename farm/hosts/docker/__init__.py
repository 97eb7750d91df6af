"""Docker hosts: every shard in its own ephemeral, locked-down container on a Docker engine.

:class:`DockerHost` is one class for every engine; only the way to reach the
engine differs (``connect``): the local socket for ``docker:N``, an SSH
transport for ``ssh://…`` (:mod:`farm.hosts.ssh`).  One module per concern:

* :mod:`~farm.hosts.docker.options` — the farm.toml fields of docker and ssh hosts;
* :mod:`~farm.hosts.docker.engine` — the engine connection and its event pump;
* :mod:`~farm.hosts.docker.worker` — a worker in a container (:class:`DockerWorker`);
* :mod:`~farm.hosts.docker.images` — test images, pulled from pokedex when missing;
* :mod:`~farm.hosts.docker.volumes` — payload volumes for engines on other machines;
* :mod:`~farm.hosts.docker.pythonvolumes` — the image's Python installation in
  read-only volumes on the engine's own disk, so imports skip its storage driver;
* :mod:`~farm.hosts.docker.spares` — when a slot's spare container starts;
* :mod:`~farm.hosts.docker.host` — :class:`DockerHost`, which puts them together.
"""

from farm.hosts.docker.engine import API_TIMEOUT, API_VERSION, Engine, local_engine
from farm.hosts.docker.host import DockerHost
from farm.hosts.docker.images import PULL_USER, registry_address
from farm.hosts.docker.options import HOST_OPTIONS, host_options
from farm.hosts.docker.volumes import payload_tar
from farm.hosts.docker.worker import StreamDemux, exit_info

__all__ = [
    "API_TIMEOUT",
    "API_VERSION",
    "HOST_OPTIONS",
    "PULL_USER",
    "DockerHost",
    "Engine",
    "StreamDemux",
    "exit_info",
    "host_options",
    "local_engine",
    "payload_tar",
    "registry_address",
]
