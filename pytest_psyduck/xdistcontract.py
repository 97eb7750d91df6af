"""pytest-xdist's plugin contract under psyduck: ``workerinput`` out, ``workeroutput`` home.

Plugins written for pytest-xdist bring their workers' data home through it
(pytest-cov its coverage data, syrupy its snapshot report): on the controller
``pytest_configure_node(node)`` fills ``node.workerinput``, which the worker
finds as ``config.workerinput`` before its plugins configure; at the worker's
end its ``config.workeroutput`` comes back as ``node.workeroutput`` and the
controller calls ``pytest_testnodedown(node, error)``.  psyduck keeps it on
every host kind:

* The controller (:class:`XdistController`) calls ``pytest_xdist_setupnodes``
  and ``pytest_configure_node`` once, on a *prototype* node: psyduck's farm
  starts workers as it pleases, so their number and ids are unknown before
  the run.  The resulting ``workerinput`` travels to every worker in the run's
  environment (:data:`WORKERINPUT_VARIABLE`, msgpack, size-limited); each
  worker adds its own ``workerid``/``workercount`` and the run's ``testrunuid``.
* Each worker (``gw<N>``, unique in the run) gets a node of its own on the
  controller: ``pytest_testnodeready`` when it is ready, ``pytest_testnodedown``
  once it is down, with its ``workeroutput`` (its ``error`` is set when it
  crashed or was lost, or its farewell could not be sent).
* A worker's farewell (:func:`farewell_message`) goes out after every
  ``pytest_sessionfinish`` implementation ran, as pytest-xdist sends
  ``workerfinished``; with it go the files its tests wrote in a container's
  copy of the project (:mod:`pytest_psyduck.homecoming`).

Such plugins configure themselves in ``pytest_configure`` and finish in
``pytest_sessionfinish``, neither of which a worker forked from the
controller's session runs: when any plugin implements the controller hooks,
local workers start fresh (:meth:`XdistController.needs_fresh_workers`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import platform
import sys
import uuid
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from pytest_psyduck import homecoming, pluginbridges, xdisthooks
from pytest_psyduck.channel import Channel

#: Carries the controller's ``workerinput`` (base64 of msgpack) to every worker.
WORKERINPUT_VARIABLE = "PSYDUCK_WORKERINPUT"
#: Bytes of encoded ``workerinput`` at most: it travels in an environment variable.
MAX_WORKERINPUT_BYTES = 64 * 1024
#: Bytes of one worker's farewell at most (``workeroutput`` and files together).
MAX_FAREWELL_BYTES = 16 * 1024 * 1024
#: Bytes of a farewell left for the encoding of its files and the names of those left out.
FAREWELL_SLACK = 64 * 1024
#: The hooks whose implementations need workers configured as workers.
CONTROLLER_HOOKS = ("pytest_configure_node", "pytest_testnodedown")


def ensure_hookspecs(pluginmanager: pytest.PytestPluginManager) -> None:
    """Add xdist's controller hook specs unless pytest-xdist already did."""
    caller = getattr(pluginmanager.hook, "pytest_configure_node", None)
    if caller is None or caller.spec is None:
        pluginmanager.add_hookspecs(xdisthooks)


@functools.cache
def _platform() -> str:
    return platform.platform()  # reads the interpreter's binary: once per process


def worker_info() -> dict[str, Any]:
    """What pytest-xdist's workers report about themselves (``node.workerinfo``)."""
    return {
        "version": sys.version,
        "version_info": tuple(sys.version_info),
        "sysplatform": sys.platform,
        "platform": _platform(),
        "executable": sys.executable,
        "cwd": os.getcwd(),
    }


class Gateway:
    """The part of execnet's gateway that plugins read: ``id`` and ``_rinfo()``."""

    def __init__(self, worker_id: str, info: dict[str, Any]) -> None:
        self.id = worker_id
        self.info = info

    def _rinfo(self) -> SimpleNamespace:
        return SimpleNamespace(
            platform=self.info.get("sysplatform", sys.platform),
            version_info=tuple(self.info.get("version_info", sys.version_info)),
            executable=self.info.get("executable", ""),
            cwd=self.info.get("cwd", ""),
        )


class WorkerNode:
    """One worker as xdist's controller hooks see it (pytest-xdist's ``WorkerController``)."""

    def __init__(self, config: pytest.Config, worker_id: str, workerinput: dict[str, Any]) -> None:
        self.config = config
        self.gateway = Gateway(worker_id, worker_info())
        self.workerinput = workerinput
        self.workeroutput: dict[str, Any] = {}
        self.workerinfo = self.gateway.info
        #: psyduck never rsyncs: no roots (pytest-cov reads them).
        self.nodemanager = SimpleNamespace(roots=[])
        self.shutting_down = False

    def __repr__(self) -> str:
        return f"<WorkerNode {self.gateway.id}>"


class XdistController:
    """The controller's side: configures the prototype node, then one node per worker."""

    def __init__(self, config: pytest.Config, root: Path) -> None:
        self.config = config
        #: The project directory that files written by container workers land in.
        self.root = root
        self.prototype = WorkerNode(
            config,
            "psyduck",
            {"workercount": 0, "testrunuid": uuid.uuid4().hex, "mainargv": list(sys.argv)},
        )
        self.nodes: dict[str, WorkerNode] = {}

    def needs_fresh_workers(self) -> bool:
        """Whether a plugin (not psyduck's own) implements the controller hooks: then
        forked workers won't do."""
        hook = self.config.pluginmanager.hook
        for name in CONTROLLER_HOOKS:
            caller = getattr(hook, name, None)
            impls = caller.get_hookimpls() if caller is not None else []
            if any(_needs_worker_configuration(impl.plugin, impl.plugin_name) for impl in impls):
                return True
        return False

    def wants_farewells(self) -> bool:
        """Whether workers hand something home at their end: ``workeroutput`` a plugin
        takes, or files written in a container.  Then a session stopping at a failure
        lets running workers finish and say farewell (:func:`pytest_psyduck.remote.run`)."""
        return (
            self.needs_fresh_workers()
            or pluginbridges.need_fresh_workers(self.config)
            or homecoming.may_come_home(self.config)
        )

    def worker_environment(self) -> dict[str, str]:
        """Call the set-up hooks on the prototype node; its ``workerinput`` as a variable."""
        hook = self.config.hook
        hook.pytest_xdist_setupnodes(config=self.config, specs=[])
        hook.pytest_configure_node(node=self.prototype)
        return {WORKERINPUT_VARIABLE: encode_workerinput(self.prototype.workerinput)}

    def handle(self, event: dict[str, Any]) -> None:
        """A ``worker_ready`` or ``worker_down`` event of the run."""
        worker_id = str(event["worker"])
        node = self.nodes.get(worker_id)
        if node is None:
            workerinput = {**self.prototype.workerinput, "workerid": worker_id}
            node = self.nodes[worker_id] = WorkerNode(self.config, worker_id, workerinput)
        if event["t"] == "worker_ready":
            self.config.hook.pytest_testnodeready(node=node)
            return
        error = event.get("error")
        farewell = _unpack_farewell(event.get("data"))
        if isinstance(farewell, str):
            error = error or farewell
        elif farewell:
            node.workeroutput = farewell.get("output") or {}
            info = farewell.get("info")
            if isinstance(info, dict):
                node.workerinfo = node.gateway.info = info
            self._bring_files_home(worker_id, farewell)
        node.shutting_down = True
        self.config.hook.pytest_testnodedown(node=node, error=error)

    def _bring_files_home(self, worker_id: str, farewell: dict[str, Any]) -> None:
        files = farewell.get("files")
        problems = homecoming.bring_home(self.root, files if isinstance(files, dict) else {})
        if (notice := homecoming.left_out_notice(farewell)) is not None:
            problems.append(notice)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for problem in problems:
            if reporter is not None:
                if reporter._tw.width_of_current_line:  # after -q's progress letters
                    reporter._tw.line()
                reporter.write_line(f"psyduck: {worker_id}: {problem}", yellow=True)


def _needs_worker_configuration(plugin: object, name: str) -> bool:
    """Whether a controller hook's implementation expects workers configured as workers:
    not psyduck's own, nor one a worker does without (:data:`pluginbridges.WORKER_SIDE_ONLY`)."""
    module = getattr(plugin, "__module__", None) or getattr(plugin, "__name__", "")
    return not name.startswith("psyduck") and module not in pluginbridges.WORKER_SIDE_ONLY


def _unpack_farewell(data: Any) -> dict[str, Any] | str | None:
    """A worker's farewell data as sent; a string says why it cannot be read."""
    if not data:
        return None
    try:
        farewell = msgpack.unpackb(data, strict_map_key=False)
    except (TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
        return f"its farewell cannot be read ({exc})"
    if not isinstance(farewell, dict):
        return "its farewell is not a map"
    return farewell


def encode_workerinput(workerinput: dict[str, Any]) -> str:
    """*workerinput* for the environment; a usage error names what cannot travel."""
    try:
        packed = msgpack.packb(workerinput)
    except (TypeError, ValueError, OverflowError) as exc:
        raise pytest.UsageError(
            f"psyduck: a plugin's pytest_configure_node put into node.workerinput "
            f"what cannot be sent to workers ({exc}); keys: {sorted(workerinput)}"
        ) from exc
    if len(packed) > MAX_WORKERINPUT_BYTES:
        raise pytest.UsageError(
            f"psyduck: node.workerinput is {len(packed):,} bytes, over the limit of "
            f"{MAX_WORKERINPUT_BYTES:,}; keys: {sorted(workerinput)}"
        )
    return base64.b64encode(packed).decode("ascii")


def worker_input(worker_id: str, workercount: int, run_id: str) -> dict[str, Any]:
    """This worker's ``config.workerinput``: the controller's, with its own id and count.

    Also sets ``PYTEST_XDIST_TESTRUNUID`` as pytest-xdist's workers do.
    """
    encoded = os.environ.get(WORKERINPUT_VARIABLE, "")
    prototype: dict[str, Any] = {}
    if encoded and len(encoded) <= 2 * MAX_WORKERINPUT_BYTES:
        with suppress(binascii.Error, ValueError, msgpack.ExtraData, msgpack.FormatError):
            decoded = msgpack.unpackb(base64.b64decode(encoded), strict_map_key=False)
            prototype = decoded if isinstance(decoded, dict) else {}
    workerinput = {
        **prototype,
        "workerid": worker_id,
        "workercount": workercount,
        "testrunuid": prototype.get("testrunuid") or run_id,
    }
    os.environ["PYTEST_XDIST_TESTRUNUID"] = str(workerinput["testrunuid"])
    return workerinput


def farewell_message(config: pytest.Config) -> dict[str, Any]:
    """The worker's ``farewell``: its ``workeroutput``, info and files written, or an error."""
    payload: dict[str, Any] = {
        "output": getattr(config, "workeroutput", {}),
        "info": worker_info(),
    }
    try:
        room = MAX_FAREWELL_BYTES - len(msgpack.packb(payload)) - FAREWELL_SLACK
        payload.update(homecoming.farewell_files(os.environ, room))
        data = msgpack.packb(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        return {"t": "farewell", "error": f"its workeroutput cannot be sent ({exc})"}
    if len(data) > MAX_FAREWELL_BYTES:
        return {
            "t": "farewell",
            "error": f"its workeroutput and files ({len(data):,} bytes) are over "
            f"psyduck's limit of {MAX_FAREWELL_BYTES:,} bytes",
        }
    return {"t": "farewell", "data": data}


def say_farewell(channel: Channel, config: pytest.Config) -> None:
    """Send the farewell, then ``done``; a host that hung up already accounts for us."""
    with suppress(OSError):
        channel.send(farewell_message(config))
        channel.send({"t": "done"})


class Farewell:
    """In a fresh worker: says farewell once every ``pytest_sessionfinish`` has run."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int):
        output = getattr(session.config, "workeroutput", None)
        if output is not None:  # what pytest-xdist's workers add
            output["exitstatus"] = int(exitstatus)
            output["shouldfail"] = session.shouldfail
            output["shouldstop"] = session.shouldstop
        try:
            return (yield)
        finally:
            say_farewell(self.channel, session.config)
