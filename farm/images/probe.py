"""The engine side of the image check: one throw-away container that reports on its image.

:mod:`farm.images.check` holds what the probe prints and how that is judged;
this module only creates, starts, waits for and removes the container
(:func:`run_one_off`, which serves psyduck's other one-off containers too), so
the docker SDK loads only on farms with container hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions

from farm.images.check import PROBE_MARKER, parse_probe_output

if TYPE_CHECKING:
    from farm.hosts.docker.engine import Engine

#: Label naming the host a probe container checks for.  Probes carry the farm's
#: label too (so the reaper removes any left behind), but not the host label of
#: workers: nothing that lists a host's workers mistakes a probe for one.
LABEL_PROBE = "psyduck.probe"
#: Seconds the probe container may take from start to exit (it imports pytest).
PROBE_TIMEOUT = 120.0
#: Bytes of the probe's output read back: its JSON line, or an error's tail.
PROBE_OUTPUT_LIMIT = 64 * 1024

#: Runs in the probe container; prints one JSON line and exits 0.
PROBE_SCRIPT = """\
import json, sys
facts = {"python": "%d.%d.%d" % sys.version_info[:3]}
try:
    import pytest
    facts["pytest"] = pytest.__version__
except BaseException as exc:
    facts["pytest_error"] = "%s: %s" % (type(exc).__name__, exc)
else:
    try:
        import msgpack, farm.protocol, pytest_psyduck.plugin, pytest_psyduck.workermain
        import pytest_psyduck.transformations
    except BaseException as exc:
        facts["inject_error"] = "%s: %s" % (type(exc).__name__, exc)
print(MARKER + json.dumps(facts))
""".replace("MARKER", repr(PROBE_MARKER))


def describe_start_failure(python: str, explanation: str) -> str:
    """The engine refused to start the probe: most often the interpreter is not there."""
    if "executable file not found" in explanation or "no such file or directory" in explanation:
        return f"it has no {python} (the engine said: {explanation})"
    return f"a container of it does not start: {explanation}"


def sealed_host_config(api: docker.APIClient, binds: Any = None) -> dict[str, Any]:
    """A one-off container's host config: no network, no capabilities, a read-only root.

    For the short containers psyduck runs to look inside an image (this probe, the
    listing of its Python's directories), which read and print and need nothing else.
    """
    return api.create_host_config(
        binds=binds,
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs={"/tmp": "rw,mode=1777"},
        log_config={"type": "json-file", "config": {}},
    )


def wait_exit(api: docker.APIClient, container: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """Wait for a helper container to exit: its exit status, or None if it ran past
    *timeout* seconds."""
    try:
        result = api.wait(container, timeout=timeout)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        return None
    return int(result.get("StatusCode", -1))


async def run_one_off(
    engine: Engine,
    image: str,
    command: list[str],
    *,
    timeout: float,
    overdue: str,
    start_failed: Callable[[str], str] | None = None,
    **create: Any,
) -> tuple[int, bytes]:
    """Run a one-off container of *image* (no network; *create* adds the rest of its
    config) to its end: its exit status and its output's last
    :data:`PROBE_OUTPUT_LIMIT` bytes.  The container is removed however it ends.

    ValueError(*overdue*) when it runs past *timeout* seconds, and
    ValueError(``start_failed(the engine's words)``) when the engine cannot start
    it and *start_failed* is given; any other refusal of the engine is raised.
    """
    from farm.hosts.docker.engine import explanation

    api = engine.api
    created = await engine.call(
        api.create_container,
        image,
        command,
        network_disabled=True,
        use_config_proxy=False,
        **create,
    )
    container = created["Id"]
    try:
        try:
            await engine.call(api.start, container)
        except docker.errors.APIError as exc:
            if start_failed is None:
                raise
            raise ValueError(start_failed(explanation(exc))) from exc
        status = await engine.call(wait_exit, api, container, timeout, deadline=timeout + 10)
        if status is None:
            raise ValueError(overdue)
        logs = await engine.call(api.logs, container, stdout=True, stderr=True)
        return status, logs[-PROBE_OUTPUT_LIMIT:]
    finally:
        await remove_one_off(engine, container)


async def remove_one_off(engine: Engine, container: str) -> None:
    """Remove a one-off container however it ended; one already gone, or gone with its
    engine, is left to the reaper (it carries the farm's label)."""
    from farm.hosts.docker.engine import EngineLost

    try:
        await engine.call(engine.api.remove_container, container, force=True)
    except (docker.errors.APIError, EngineLost):
        pass


async def probe_image(
    engine: Engine,
    image: str,
    python: str,
    binds: dict[str, dict[str, str]],
    host: str,
    pythonpath: str,
) -> dict[str, Any]:
    """Run :data:`PROBE_SCRIPT` in a throw-away container of *image*; its facts.

    *binds* mount psyduck's packages where workers find them (*pythonpath*: the
    image's own, extended as for workers);
    *host* names the host it checks for, in the container's labels.
    ValueError says why the image could not answer (no interpreter, it crashed).
    """
    from farm.hosts.containers import FARM_ID, LABEL_FARM

    _, output = await run_one_off(
        engine,
        image,
        [python, "-c", PROBE_SCRIPT],
        timeout=PROBE_TIMEOUT,
        overdue=f"its Python did not finish psyduck's check in {PROBE_TIMEOUT:.0f} s",
        start_failed=lambda words: describe_start_failure(python, words),
        environment={"PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"},
        entrypoint=[],
        labels={LABEL_FARM: FARM_ID, LABEL_PROBE: host},
        host_config=sealed_host_config(engine.api, binds),
    )
    return parse_probe_output(output.decode("utf-8", "replace"))
