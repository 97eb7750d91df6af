"""The code that runs inside a worker's pytest: take shards, run items, stream reports.

A worker is an ordinary pytest session (started fresh by :mod:`workermain`, or
forked from the user's process after collection by :mod:`forking`) driven over
a :class:`~pytest_psyduck.channel.Channel`.  Worker messages:

* worker → host: ``ready``; ``started`` {id}; ``result`` {id, payload,
  duration, next}; ``warning`` {data}, ahead of its test's result; ``missing``
  {id, message}; ``idle`` (wants more work); ``timeout`` {id, stack, timeout}
  just before it kills itself; ``farewell`` {data} or {error} (its
  ``workeroutput`` and files, :mod:`pytest_psyduck.xdistcontract`), then ``done``,
  once its session finished.  A result's ``next`` names the test
  the worker starts right after it, which then sends no ``started`` of its own:
  one message a test instead of two, and the host still always knows which
  test is running.
  ``idle`` goes out as the last test but one of a shard starts, so that the
  next shard's round trip overlaps that test instead of following it.
* host → worker: ``run`` {tests: [{id, timeout}]}; ``drain`` (no more work:
  finish and exit); ``stop`` (the run stops: finish the running test, start no
  other, and end the session with the farewell — looked for between tests).

A worker started for a single shard (``shard_collection``: a container's)
sends ``ready`` before it collects, waits for its shard, and then makes only
the tests that shard needs (:mod:`pytest_psyduck.shardfiles`): its start-up
(interpreter, plugins, initial conftests) overlaps the slot's previous shard,
and it never makes the rest of the suite's items (it still imports every test
module, as plain pytest does).

The last test received is held back until more work or ``drain`` arrives, so
that it runs with the right ``nextitem`` and module/session fixtures are torn
down exactly when plain pytest would tear them down.

Reports are recorded rather than logged here (:mod:`pytest_psyduck.attempts`):
every report is logged once, in the user's process, which is what keeps
junitxml, the cache, IDE plugins and the terminal seeing each result exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import pytest

from pytest_psyduck.attempts import Recorder, RecordingRelay
from pytest_psyduck.channel import Channel, ChannelClosed
from pytest_psyduck.roles import WORKER_PLUGIN_NAME
from pytest_psyduck.serialize import reports_to_payload, warning_to_wire
from pytest_psyduck.shardfiles import ShardFilter, shard_children, shard_files
from pytest_psyduck.subtests import stamp_failed_subtests
from pytest_psyduck.teamcity import attach_comparison, watch_item
from pytest_psyduck.workerterminal import silence_reporting
from pytest_psyduck.xdistcontract import say_farewell

#: Exit status a worker uses when it kills itself over a test timeout.
TIMEOUT_EXIT_STATUS = 86
#: Characters of an internal error's report kept in a ``missing`` message.
MISSING_DETAIL_CHARS = 4000


class Watchdog:
    """Kills the worker when the current test outlives its timeout, after sending its stack."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._main = threading.main_thread().ident
        self._cond = threading.Condition()
        self._current: tuple[str, float, float] | None = None
        self._thread: threading.Thread | None = None

    def arm(self, test_id: str, timeout: float | None) -> None:
        if not timeout and self._current is None:
            return  # nothing to watch: do not wake the watchdog thread for every test
        if self._thread is None:
            # Started for the first timeout only: a test sees the threads plain
            # pytest has (pytest-timeout dumps the stack of every other thread).
            self._thread = threading.Thread(
                target=self._watch, name="psyduck-watchdog", daemon=True
            )
            self._thread.start()
        with self._cond:
            self._current = None if not timeout else (test_id, timeout, time.monotonic() + timeout)
            self._cond.notify()

    def disarm(self) -> None:
        self.arm("", None)

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._current is None:
                    self._cond.wait()
                    continue
                test_id, timeout, deadline = self._current
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                frame = sys._current_frames().get(self._main)  # type: ignore[arg-type]
                stack = "".join(traceback.format_stack(frame)) if frame else ""
                try:
                    self._channel.send(
                        {"t": "timeout", "id": test_id, "stack": stack, "timeout": timeout}
                    )
                finally:
                    os._exit(TIMEOUT_EXIT_STATUS)


class WorkerPlugin:
    """Registered in a worker's pytest under the name ``psyduck-worker``."""

    __name__ = WORKER_PLUGIN_NAME

    def __init__(
        self,
        channel: Channel,
        workerinput: dict[str, Any],
        shard_collection: bool = False,
        farewell_at_session_end: bool = False,
    ) -> None:
        self.channel = channel
        self.workerinput = workerinput
        #: A fresh worker says farewell when its session ends (xdistcontract.Farewell);
        #: a forked one, whose session is the controller's, as soon as it is drained.
        self.farewell_at_session_end = farewell_at_session_end
        #: Learn the shard before collecting, and collect only its files.
        self.shard_collection = shard_collection
        #: Messages received before serving began; None stands for a closed channel.
        self.inbox: deque[dict[str, Any] | None] = deque()
        self.ready_sent = False
        self.serving = False
        #: What ended the session before it served (pytest's INTERNALERROR report).
        self.internal_error = ""
        self.items: dict[str, pytest.Item] = {}
        self.collect_errors: list[str] = []
        #: Records the reports of the test running now (None between tests).
        self._recorder: Recorder | None = None
        #: The test that starts as soon as the current one is reported, if any.
        self.following: str | None = None
        #: The ``result`` message of the test that just ran, not yet sent.
        self.result: dict[str, Any] | None = None

    # -- configuration ------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        # Set before any pytest_configure: pytest's junitxml, cacheprovider and
        # stepwise stay passive under this attribute (the pytest-xdist worker
        # contract), so a worker never writes the user's junit file or cache.
        config.workerinput = self.workerinput  # type: ignore[attr-defined]
        config.workeroutput = {}  # type: ignore[attr-defined]

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        silence_reporting(config)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection(self, session: pytest.Session):
        if self.shard_collection:
            shard = self.await_first_shard()
            files = shard_files(shard, session.config.rootpath)
            if files is not None:
                session.config.pluginmanager.register(
                    ShardFilter(files, shard_children(shard)), "psyduck-shard-filter"
                )
        return (yield)

    def await_first_shard(self) -> list[str]:
        """Say ``ready``, then wait for the first message: the ids of the shard to collect.

        A ``drain`` (or a hang-up) instead means there is no shard: nothing is collected.
        """
        self.send_ready(collected=None)
        try:
            message = self.channel.recv()
        except ChannelClosed:
            message = None
        self.inbox.append(message)
        if message is None or message["t"] != "run":
            return []
        return [test["id"] for test in message["tests"]]

    def send_ready(self, collected: int | None) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.channel.send({"t": "ready", "pid": os.getpid(), "collected": collected})

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]):
        # Remember every item before -k/-m/--lf deselect: the coordinator names
        # exactly what to run, and selection already happened in the user's process.
        self.items = {item.nodeid: item for item in items}
        return (yield)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}:\n{report.longreprtext}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        self.serving = True
        serve(session, self)
        return True

    def pytest_internalerror(self, excrepr: object) -> None:
        self.internal_error = str(excrepr)

    def pytest_sessionfinish(self) -> None:
        # A shard received before collecting, whose session ended before serving
        # (collection raised): its tests are reported missing, with the reason,
        # rather than left to be handed to the next worker, which would fail alike.
        first = self.inbox[0] if self.inbox and not self.serving else None
        if first is None or first["t"] != "run":
            return
        message = "the worker could not collect its shard"
        if self.internal_error:
            last_line = self.internal_error.strip().splitlines()[-1].strip()
            message += f" ({last_line}):\n" + self.internal_error[-MISSING_DETAIL_CHARS:]
        with contextlib.suppress(OSError):  # the host hung up: it accounts for the shard
            for test in first["tests"]:
                self.channel.send({"t": "missing", "id": test["id"], "message": message})

    # -- per test ----------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        """Around the whole protocol chain — pytest's, or a plugin's such as
        pytest-rerunfailures' — recording what it logs (:mod:`pytest_psyduck.attempts`).

        The result is sent by serve() once the whole hook has returned: pytest's
        warnings plugin records the test's warnings only on its way out, and they
        must reach the farm before the result that may end the run.
        """
        started = time.perf_counter()
        self._recorder = recorder = Recorder(functools.partial(stamp_failed_subtests, item))
        session = item.session
        hooks_at = session.gethookproxy
        session.gethookproxy = lambda path: RecordingRelay(hooks_at(path), recorder)  # type: ignore[method-assign]
        watch_item(item)
        try:
            return (yield)
        finally:
            del session.gethookproxy
            self._recorder = None
            attach_comparison(item, recorder.reports)
            # Built even if a wrapper raised on its way out (pytest.exit() after
            # its yield, say): the test ran, and its result must not be lost.
            self.result = {
                "t": "result",
                "id": item.nodeid,
                "payload": reports_to_payload(item.config, recorder.reports),
                "duration": time.perf_counter() - started,
                "next": self.following,
            }

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Reports a test logs through the session's hooks rather than its own
        # node's (which record them) are part of its result too.
        if self._recorder is not None:
            self._recorder.add(report)

    def pytest_warning_recorded(self, warning_message, when: str, nodeid: str, location) -> None:
        if when == "runtest":
            self.channel.send(
                {"t": "warning", "data": warning_to_wire(warning_message, when, nodeid)}
            )


def die_with_parent() -> None:
    """Ask Linux to kill this worker when its host process dies, so none is left behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(session: pytest.Session, plugin: WorkerPlugin) -> None:
    """Run shards from the channel until told to drain."""
    channel = plugin.channel
    items = plugin.items or {item.nodeid: item for item in session.items}
    watchdog = Watchdog(channel)
    plugin.send_ready(collected=len(items))
    queue: deque[dict[str, Any]] = deque()

    announced: str | None = None  # named as ``next`` by the last result sent
    shards = 0  # ``run`` messages received
    stopping = False  # the host said ``stop`` (or hung up)

    def receive() -> dict[str, Any] | None:
        if plugin.inbox:
            return plugin.inbox.popleft()
        try:
            return channel.recv()
        except ChannelClosed:
            return None

    def stop_requested() -> bool:
        """Whether a ``stop`` came, looking at what arrived without waiting for more.

        Other messages (the next shard, ``drain``) are kept for the serving loop.
        """
        nonlocal stopping
        while not stopping and channel.pending():
            try:
                message: dict[str, Any] | None = channel.recv()
            except ChannelClosed:
                message = None
            if message is None or message["t"] == "stop":
                stopping = True
            else:
                plugin.inbox.append(message)
        return stopping

    def run_one(test: dict[str, Any], next_test: dict[str, Any] | None, keep: int) -> None:
        """Run *test*; the test after it starts at once if more than *keep* remain queued."""
        nonlocal announced
        item = items.get(test["id"])
        if item is None:
            message = "the worker did not collect this test"
            if plugin.shard_collection and shards > 1:
                message += " (it collected only the tests of its first shard)"
            if plugin.collect_errors:
                message += "; collection errors on the worker:\n" + "\n".join(plugin.collect_errors)
            channel.send({"t": "missing", "id": test["id"], "message": message})
            announced = None
            return
        nextitem = items.get(next_test["id"]) if next_test else None
        if announced != test["id"]:
            channel.send({"t": "started", "id": test["id"]})
        plugin.following = announced = (
            next_test["id"]
            if next_test is not None and next_test["id"] in items and len(queue) > keep
            else None
        )
        watchdog.arm(test["id"], test.get("timeout"))
        try:
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        finally:
            watchdog.disarm()
            # What the test printed uncaptured (-s) goes out before its result: a
            # block-buffered stdout would otherwise hold it until the worker exits.
            sys.stdout.flush()
            sys.stderr.flush()
            # Even when a wrapper raised on its way out (pytest.exit() after its
            # yield, say): the test ran, and its result must not be lost.
            result, plugin.result = plugin.result, None
            if result is not None:
                if stop_requested():
                    result["next"] = None  # it will not start
                channel.send(result)

    while not stopping:
        message = receive()
        if message is None:
            return
        if message["t"] == "run":
            shards += 1
            queue.extend(message["tests"])
            if len(queue) == 1:
                channel.send({"t": "idle"})  # nothing to run before the next shard
            while len(queue) > 1 and not stop_requested():
                if len(queue) == 2:
                    # Ask for more while the last test but one runs: the answer is
                    # here by the time the held-back last test needs its successor.
                    channel.send({"t": "idle"})
                run_one(queue.popleft(), queue[0], keep=1)
        elif message["t"] == "drain":
            while queue and not stop_requested():
                run_one(queue.popleft(), queue[0] if queue else None, keep=0)
            break
        elif message["t"] == "stop":
            stopping = True
    if plugin.farewell_at_session_end:
        return  # the session's end tears down what is still set up, then says farewell
    try:
        if stopping:
            # A forked worker's session never ends as a session: the fixtures kept up
            # for tests that will not run come down here, as pytest's runner does last.
            session._setupstate.teardown_exact(None)
    finally:
        say_farewell(channel, session.config)
