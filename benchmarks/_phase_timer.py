"""A pytest plugin for the benchmarks: records when collection ended and the session finished.

``finished_at`` is wall-clock time, for the benchmark to tell how long the
process took to exit after its session ended.
"""

import json
import os
import time

_marks = {}


def pytest_collection_finish(session):
    _marks["collected"] = time.perf_counter()


def pytest_sessionfinish(session):
    _marks["finished"] = time.perf_counter()
    path = os.environ.get("PSYDUCK_BENCH_TIMES")
    if path and "collected" in _marks and not hasattr(session.config, "workerinput"):
        with open(path, "w") as f:
            json.dump(
                {
                    "after_collection": _marks["finished"] - _marks["collected"],
                    "finished_at": time.time(),
                },
                f,
            )
