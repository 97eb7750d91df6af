"""Where plugins give up under pytest-xdist, psyduck brings their results home itself.

* **pytest-benchmark** disables itself on xdist workers (it cannot tell a
  worker's timings apart from its siblings' load) and so loses every result.
  psyduck's workers measure (each test has its worker to itself while it
  runs, as under plain pytest), send each benchmark's statistics in their
  ``workeroutput``, and the controller adds them to its own session: one
  results table, ``--benchmark-json``/``--benchmark-save`` written once, in
  the order plain pytest runs the tests.
* **syrupy** merges its workers' snapshot reports only where pytest-xdist is
  installed, and removes its write-lock sidecars (``*.lock``) only on a
  controller that knows xdist's ``-n``: psyduck merges them without xdist, and
  cleans up after its workers' locks.  When a worker's report is missing (it
  crashed, or ``-x`` cancelled the run), unused-snapshot detection is skipped
  with syrupy's own warning, as syrupy does for missing xdist reports: a
  ``--snapshot-update`` must never delete a snapshot a lost worker used.
* **pytest-rerunfailures** reruns a failed test inside its worker's protocol,
  but on anything it takes for an xdist worker (``config.workerinput`` is
  set) it reports reruns only if the pytest-xdist *distribution* is installed
  there, and with pytest-xdist loaded it opens its status database as a client
  of the controller's socket (``workerinput["sock_port"]``: a ``KeyError``
  without it, unreachable from a container).  That database serves only
  reruns of tests that crash their worker (xdist's ``pytest_handlecrashitem``,
  which psyduck does not call: a crash fails its test alone) and
  ``--max-suite-reruns`` (per worker under psyduck, said at start).  So every
  worker tells rerunfailures it is no xdist worker
  (:func:`rerun_as_plain_pytest`): it reruns and reports exactly as in plain
  pytest's single process, whatever the worker's environment has installed.

Both plugins set up in ``pytest_configure`` and finish in
``pytest_sessionfinish``, which a worker forked from the controller's session
never runs as a worker: with either active, local workers start fresh
(:func:`need_fresh_workers`).

These reach only into what the plugins keep on ``config`` (``_benchmarksession``,
``_syrupy``) or their module's ``is_master``, and do nothing when the plugin is
absent or has changed shape.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

#: The key of a worker's ``workeroutput`` that carries its benchmarks.
BENCHMARKS_KEY = "psyduck_benchmarks"
#: Modules whose xdist controller hooks a worker does without (:func:`rerun_as_plain_pytest`):
#: they need no fresh workers.
WORKER_SIDE_ONLY = frozenset({"pytest_rerunfailures"})


def rerun_as_plain_pytest(pluginmanager: pytest.PytestPluginManager) -> None:
    """In a worker process, before pytest-rerunfailures configures: it is not an xdist worker.

    Its module decides through ``is_master(config)`` alone; replaced in this
    process only (a worker's own interpreter, or a child forked to be one).
    """
    module = pluginmanager.get_plugin("rerunfailures")
    if module is not None and callable(getattr(module, "is_master", None)):
        module.is_master = _not_a_worker


def _not_a_worker(config: pytest.Config) -> bool:
    return True


def need_fresh_workers(config: pytest.Config) -> bool:
    """Whether pytest-benchmark or syrupy is active, needing workers configured as workers."""
    bench = getattr(config, "_benchmarksession", None)
    return getattr(config, "_syrupy", None) is not None or (
        bench is not None and not bench.disabled and not bench.skip
    )


class WorkerBridges:
    """In a fresh worker (registered before its configuration): keep pytest-benchmark
    measuring and hand its results over; let pytest-rerunfailures rerun as in plain pytest."""

    def __init__(self) -> None:
        self._only = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        rerun_as_plain_pytest(config.pluginmanager)
        # pytest-benchmark refuses --benchmark-only where it disables itself (an xdist
        # worker): held back until it is enabled again, below.
        if getattr(config.option, "benchmark_only", False):
            config.option.benchmark_only = False
            self._only = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        bench = getattr(session.config, "_benchmarksession", None)
        if bench is not None and getattr(bench, "xdist_warning", False):
            # Disabled only because it runs on an xdist worker: measure, never save here.
            bench.disabled = bench.xdist_warning = bench.xdist_benchmark_found = False
            bench.save = bench.autosave = bench.json = None
        if bench is not None and self._only:
            session.config.option.benchmark_only = bench.only = True

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session):
        bench = getattr(session.config, "_benchmarksession", None)
        output = getattr(session.config, "workeroutput", None)
        if bench is not None and output is not None and bench.benchmarks:
            output[BENCHMARKS_KEY] = [
                {**b.as_dict(include_data=True), "has_error": bool(b.has_error)}
                for b in bench.benchmarks
                if b
            ]
            bench.benchmarks = []  # the controller reports them, once
        return (yield)


class ControllerBridges:
    """In the user's process: take the workers' benchmarks, clean syrupy's lock files."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}
        #: Workers that came up, and those whose syrupy report came home.
        self._up: set[str] = set()
        self._reported: set[str] = set()
        #: Tests whose results were replayed: a worker may run more before the run
        #: stops at a failure (-x), which plain pytest never ran.
        self._logged: set[str] = set()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._order = {item.nodeid: i for i, item in enumerate(session.items)}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._logged.add(report.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self._up.add(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if output.get("syrupy_report") is not None:
            self._reported.add(node.gateway.id)
        snapshots = getattr(node.config, "_syrupy", None)
        if snapshots is not None and not _syrupy_merges_itself(node.config):
            if output.get("syrupy_report") is not None:
                snapshots.add_worker_report(output["syrupy_report"])
            if output.get("syrupy_write_sidecars"):
                snapshots.add_written_snapshot_locations(output["syrupy_write_sidecars"])
        bench = getattr(node.config, "_benchmarksession", None)
        found = output.get(BENCHMARKS_KEY)
        if bench is None or not found:
            return
        bench.benchmarks.extend(_metadata(data) for data in found)
        bench.benchmarks.sort(key=lambda b: self._order.get(b.fullname, len(self._order)))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session):
        bench = getattr(session.config, "_benchmarksession", None)
        if bench is not None:
            bench.benchmarks = [b for b in bench.benchmarks if b.fullname in self._logged]
        snapshots = getattr(session.config, "_syrupy", None)
        option = session.config.option
        missing = self._up - self._reported
        if snapshots is not None and missing and not getattr(option, "disable_unused_snapshots", 1):
            from syrupy.utils import warn_incomplete_worker_reports

            warn_incomplete_worker_reports(received=len(self._reported), expected=len(self._up))
            option.disable_unused_snapshots = True
        try:
            return (yield)
        finally:
            cleanup = getattr(snapshots, "_cleanup_write_sidecars", None)
            if cleanup is not None:
                cleanup()


def _syrupy_merges_itself(config: pytest.Config) -> bool:
    """syrupy registers its own ``pytest_testnodedown`` only when pytest-xdist is loaded."""
    return any(type(p).__name__ == "DeferXDist" for p in config.pluginmanager.get_plugins())


def _metadata(data: dict[str, Any]) -> Any:
    """A worker's benchmark as pytest-benchmark's own ``Metadata``, statistics and all."""
    from pytest_benchmark.stats import Metadata

    fixture = SimpleNamespace(
        name=data["name"],
        fullname=data["fullname"],
        group=data.get("group"),
        param=data.get("param"),
        params=data.get("params"),
        extra_info=data.get("extra_info") or {},
        cprofile_stats=None,
        has_error=data.get("has_error", False),
    )
    stats = data["stats"]
    metadata = Metadata(fixture, stats["iterations"], data.get("options") or {})
    metadata.stats.data = list(stats["data"])
    return metadata
