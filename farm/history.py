"""The farm's own memory of test durations: an SQLite database under its state directory.

Durations otherwise live only in each user's pytest cache, so a fresh clone,
a CI checkout or a new colleague submits a run whose tests all look equally
long, and the hours-long ones start last.  The coordinator records every
result's duration here and fills in the estimate of each submitted test the
client has none for (:meth:`History.with_estimates`); a test the client has
timed keeps the client's estimate, which reflects its own latest changes.

Keys are (project, test id): *project* is the name of the client's project
directory (:func:`project_of`), the same for every clone, user and machine,
so that two projects' ``tests/test_app.py::test_ok`` do not share a duration.
Each test keeps its last :attr:`History.keep` durations; its estimate is their
median, which one run on a loaded host does not move.  Tests not seen for
``max_age_days`` are dropped.

Writes never touch the event loop: :meth:`History.record` only queues, and a
thread writes what has queued in one transaction at a time, after letting
results gather for :data:`GATHER` seconds: a run's results arrive one by one,
and a transaction (and a wake-up) per result would take CPU from the workers
on the farm's machine.  The file is a real
SQLite database in WAL mode, so reads (estimates, ``psyduck farm status``) go
on while it writes, and it survives restarts.  A file that cannot be used
(corrupt, locked by another process, unwritable) raises :class:`HistoryError`
when the farm starts, which then serves without history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from farm.manifest import RunManifest

log = logging.getLogger("psyduck.farm")

#: Seconds SQLite waits for another connection's lock before it gives up.
LOCK_TIMEOUT = 5.0
#: Results written in one transaction at most.
MAX_WRITE = 5000
#: Seconds the writer lets results gather before it writes them; :meth:`History.close`
#: writes at once.
GATHER = 1.0
#: Test ids looked up in one statement (SQLite allows 32,766 parameters).
LOOKUP_CHUNK = 500
#: Seconds between prunings of tests not seen for ``max_age_days``.
PRUNE_EVERY = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS durations (
    project TEXT NOT NULL,
    test TEXT NOT NULL,
    recent TEXT NOT NULL,
    estimate REAL NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (project, test)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slowest ON durations (estimate DESC);
CREATE INDEX IF NOT EXISTS last_seen ON durations (seen);
"""


class HistoryError(RuntimeError):
    """The history database cannot be used; the text names the file and why."""


def project_of(manifest: RunManifest) -> str:
    """The name of the run's project directory: one key for every clone of a project."""
    return os.path.basename(manifest.worker.project_root.rstrip("/")) or "/"


class History:
    """Recent durations per (project, test); :meth:`close` once the farm stops."""

    def __init__(self, path: str | os.PathLike[str], keep: int = 10, max_age_days: float = 30.0):
        self.path = Path(path)
        self.keep = keep
        self.max_age_days = max_age_days
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.execute("BEGIN IMMEDIATE")  # proves the file writable now, not at the first run
                self._prune(db)
                db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"{self.path}: {exc}") from exc
        self._pending: queue.Queue[tuple[str, str, float, float] | None] = queue.Queue()
        self._closing = threading.Event()
        self._pruned = time.monotonic()
        self._writer = threading.Thread(target=self._write, name="psyduck-history", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
        db.execute(
            "PRAGMA synchronous=NORMAL"
        )  # WAL: a crash loses the last writes, never the file
        return db

    # -- writing ---------------------------------------------------------------
    def record(self, project: str, test: str, seconds: Any) -> None:
        """Queue one result's duration; never blocks (the writer thread stores it)."""
        if isinstance(seconds, int | float) and seconds >= 0:
            self._pending.put((project, test, float(seconds), time.time()))

    def _write(self) -> None:
        db = self._connect()
        try:
            while (first := self._pending.get()) is not None:
                self._closing.wait(GATHER)
                batch = [first]
                while len(batch) < MAX_WRITE:
                    try:
                        item = self._pending.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        self._store(db, batch)
                        return
                    batch.append(item)
                self._store(db, batch)
        finally:
            db.close()

    def _store(self, db: sqlite3.Connection, batch: list[tuple[str, str, float, float]]) -> None:
        try:
            self._merge(db, batch)
            if time.monotonic() - self._pruned > PRUNE_EVERY:
                self._pruned = time.monotonic()
                db.execute("BEGIN IMMEDIATE")
                self._prune(db)
                db.commit()
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.rollback()
            log.warning(
                "duration history %s: %d result(s) not recorded: %s", self.path, len(batch), exc
            )

    def _merge(self, db: sqlite3.Connection, batch: list[tuple[str, str, float, float]]) -> None:
        """Add each duration to its test's recent ones, in one transaction."""
        added: dict[str, dict[str, tuple[list[float], float]]] = {}
        for project, test, seconds, at in batch:
            durations, _ = added.setdefault(project, {}).get(test, ([], 0.0))
            durations.append(seconds)
            added[project][test] = (durations, at)
        db.execute("BEGIN IMMEDIATE")
        for project, tests in added.items():
            known = _recent(db, project, list(tests))
            rows = []
            for test, (durations, at) in tests.items():
                recent = [*_parse(known.get(test, "")), *durations][-self.keep :]
                rows.append((project, test, _format(recent), statistics.median(recent), at))
            db.executemany("INSERT OR REPLACE INTO durations VALUES (?, ?, ?, ?, ?)", rows)
        db.commit()

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop tests not seen for ``max_age_days`` (inside the caller's transaction)."""
        db.execute(
            "DELETE FROM durations WHERE seen < ?", (time.time() - self.max_age_days * 86400,)
        )

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._closing.set()
        self._pending.put(None)
        self._writer.join(timeout=60)

    # -- reading ---------------------------------------------------------------
    def estimates(self, project: str) -> dict[str, float]:
        """test id → estimated seconds, for every test of *project* the farm has timed."""
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(
                "SELECT test, estimate FROM durations WHERE project = ?", (project,)
            ).fetchall()
        return dict(rows)

    def with_estimates(self, manifest: RunManifest) -> tuple[RunManifest, int]:
        """*manifest* with the farm's estimate for each test the client sent none for, and
        how many it filled in.  Reads every test of the project: call it off the event loop."""
        try:
            known = self.estimates(project_of(manifest))
        except sqlite3.Error as exc:
            log.warning("duration history %s: no estimates for this run: %s", self.path, exc)
            return manifest, 0
        filled = 0
        tests = []
        for test in manifest.tests:
            if test.estimate <= 0 and test.id in known:
                test = dataclasses.replace(test, estimate=known[test.id])
                filled += 1
            tests.append(test)
        if not filled:
            return manifest, 0
        return dataclasses.replace(manifest, tests=tuple(tests)), filled

    def slowest(self, count: int = 10) -> list[dict[str, Any]]:
        """The *count* tests with the longest estimates, longest first."""
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(
                "SELECT project, test, estimate, recent FROM durations "
                "ORDER BY estimate DESC LIMIT ?",
                (count,),
            ).fetchall()
        return [
            {"project": p, "test": t, "estimate": e, "runs": len(_parse(r))} for p, t, e, r in rows
        ]


def _recent(db: sqlite3.Connection, project: str, tests: list[str]) -> dict[str, str]:
    """test id → its stored recent durations, for those of *tests* the database has."""
    found: dict[str, str] = {}
    for start in range(0, len(tests), LOOKUP_CHUNK):
        chunk = tests[start : start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(
            db.execute(
                f"SELECT test, recent FROM durations WHERE project = ? AND test IN ({marks})",
                (project, *chunk),
            ).fetchall()
        )
    return found


def _parse(text: str) -> list[float]:
    return [float(value) for value in text.split(",") if value]


def _format(durations: list[float]) -> str:
    return ",".join(f"{value:.6g}" for value in durations)
