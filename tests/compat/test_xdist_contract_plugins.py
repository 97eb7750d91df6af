"""pytest-cov, syrupy, pytest-benchmark and hypothesis under ``--psyduck`` as under plain pytest.

Each runs a small realistic project plain and under ``--psyduck`` — forked and
fresh local workers, two containers, and two containers behind a real sshd —
and compares what the user gets:
exit code, summary line and the plugin's own output (coverage table and XML,
snapshot summary and files, benchmark table rows and JSON, the example
database).  These plugins bring their workers' data home through
pytest-xdist's contract (:mod:`pytest_psyduck.xdistcontract`) or psyduck's
bridges (:mod:`pytest_psyduck.pluginbridges`), and files written in containers
through :mod:`pytest_psyduck.homecoming`.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compat.xdistlib import (
    CONTAINERS,
    WITH_SSH,
    compat_image,
    over_ssh,
    plugin_env,
    psyduck_args,
    run,
    section,
    summary,
)
from tests.conftest import run_pytest
from tests.farm_hosts.conftest import client_key, docker_image, known_hosts, sshd  # noqa: F401

LIBRARY = {
    "pytest.ini": "[pytest]\n",
    "mylib/__init__.py": "",
    "mylib/shapes.py": """
import math


def area(kind, *dims):
    if kind == "square":
        (side,) = dims
        return side * side
    if kind == "rect":
        width, height = dims
        return width * height
    if kind == "circle":
        (radius,) = dims
        return math.pi * radius * radius
    if kind == "triangle":
        a, b, c = dims
        s = (a + b + c) / 2
        return math.sqrt(s * (s - a) * (s - b) * (s - c))
    raise ValueError(f"unknown shape {kind!r}")


def perimeter(kind, *dims):
    if kind == "square":
        return 4 * dims[0]
    if kind == "rect":
        return 2 * (dims[0] + dims[1])
    if kind == "circle":
        return 2 * math.pi * dims[0]
    raise ValueError(f"unknown shape {kind!r}")


def scale(kind, dims, factor):
    if factor <= 0:
        raise ValueError("factor must be positive")
    return kind, tuple(d * factor for d in dims)
""",
    "mylib/text.py": """
def slug(text):
    out = []
    for ch in text.lower():
        if ch.isalnum():
            out.append(ch)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")


def words(text):
    return [w for w in text.split() if w]


def initials(name):
    parts = words(name)
    if not parts:
        return ""
    return "".join(p[0].upper() for p in parts)


def reverse_words(text):
    return " ".join(reversed(words(text)))
""",
}

COV_TESTS = {
    "tests/__init__.py": "",
    "tests/test_shapes.py": """
import math

import pytest

from mylib.shapes import area, perimeter


@pytest.mark.parametrize("n", range(10))
def test_square(n):
    assert area("square", n) == n * n


@pytest.mark.parametrize("n", range(6))
def test_rect(n):
    assert area("rect", n, 2) == 2 * n


def test_circle():
    assert area("circle", 1) == pytest.approx(math.pi)


def test_unknown_shape():
    with pytest.raises(ValueError):
        area("hexagon", 1)


@pytest.mark.parametrize("n", range(6))
def test_perimeter(n):
    assert perimeter("square", n) == 4 * n
""",
    "tests/test_text.py": """
import pytest

from mylib.text import initials, slug, words


@pytest.mark.parametrize(
    "text,expected", [("Hello World", "hello-world"), ("a  b", "a-b"), ("--x--", "x")] * 3
)
def test_slug(text, expected):
    assert slug(text) == expected


def test_words():
    assert words(" a b ") == ["a", "b"]


@pytest.mark.parametrize("name", ["Ada Lovelace", "Alan Turing", "Grace Hopper"])
def test_initials(name):
    assert len(initials(name)) == 2
""",
}

SNAPSHOT_TESTS = {
    "tests/__init__.py": "",
    "tests/test_render.py": """
import pytest

from mylib.shapes import area, perimeter
from mylib.text import slug


def describe(kind, *dims):
    return {"kind": kind, "area": round(area(kind, *dims), 3), "slug": slug(kind + " shape")}


@pytest.mark.parametrize("n", range(1, 9))
def test_square(n, snapshot):
    assert describe("square", n) == snapshot


@pytest.mark.parametrize("n", range(1, 7))
def test_rect(n, snapshot):
    assert describe("rect", n, n + 1) == snapshot


def test_perimeters(snapshot):
    assert [perimeter("square", n) for n in range(5)] == snapshot


def test_text(snapshot):
    assert slug("Snapshots Stay Put") == snapshot


def test_no_snapshot():
    assert area("square", 2) == 4
""",
    "tests/test_more.py": """
from mylib.text import initials


def test_initials(snapshot):
    assert [initials(n) for n in ("Ada Lovelace", "Alan Turing")] == snapshot


def test_two_snapshots(snapshot):
    assert initials("Grace Hopper") == snapshot
    assert initials("Barbara Liskov") == snapshot
""",
}

BENCHMARK_TESTS = {
    "tests/__init__.py": "",
    "tests/test_speed.py": """
import pytest

from mylib.shapes import area
from mylib.text import slug


@pytest.mark.parametrize("n", [1, 10, 100])
def test_area(benchmark, n):
    assert benchmark(area, "square", n) == n * n


def test_slug(benchmark):
    assert benchmark(slug, "Hello Benchmark World") == "hello-benchmark-world"


@pytest.mark.benchmark(group="text")
def test_slug_long(benchmark):
    benchmark(slug, "word " * 50)


def test_not_a_benchmark():
    assert slug("x") == "x"
""",
}
#: Short measurements: the rows and names are compared, not the timings.
BENCHMARK_ARGS = (
    "--benchmark-max-time=0.005",
    "--benchmark-min-rounds=3",
    "--benchmark-warmup=off",
)

HYPOTHESIS_TESTS = {
    "tests/__init__.py": "",
    "tests/test_properties.py": """
from hypothesis import given, settings, strategies as st

from mylib.text import reverse_words, slug, words


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="ab -", max_size=12))
def test_slug_has_no_edges(text):
    assert not slug(text).startswith("-")


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="ab ", max_size=12))
def test_reverse_twice(text):
    assert reverse_words(reverse_words(text)) == " ".join(words(text))


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="abc", max_size=8))
def test_short_words_only(text):
    assert len(text) < 4
""",
}


def _hosts(host: str) -> tuple[str, ...]:
    """The arguments for *host*; the compat image is built only when a docker case runs."""
    if host == "docker":
        return psyduck_args(host, compat_image())
    return psyduck_args(host)


@pytest.fixture
def hosts_of(request: pytest.FixtureRequest) -> Callable[[str], tuple[str, ...]]:
    """``hosts_of(host)``: the session's arguments for *host*, an sshd started for ``ssh``."""
    known: dict[str, tuple[str, ...]] = {}

    def args(host: str) -> tuple[str, ...]:
        if host not in known:
            known[host] = over_ssh(request) if host == "ssh" else _hosts(host)
        return known[host]

    return args


#: With ``CI`` set (as in CI, and passed on to containers) hypothesis loads its own
#: "ci" profile, which turns the example database off; the hypothesis suites here are
#: about that database, so they keep it as a project would that wants it in CI.
HYPOTHESIS_DATABASE = {
    "conftest.py": """
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile(
    "with-database", database=DirectoryBasedExampleDatabase(".hypothesis/examples")
)
settings.load_profile("with-database")
""",
}


def _project(suite, tests: dict[str, str]) -> Path:
    return suite({**LIBRARY, **tests})


def _twin(path: Path, name: str) -> Path:
    """A copy of the project next to it, for a run that changes its files."""
    twin = path.parent / f"{path.name}-{name}"
    shutil.copytree(path, twin)
    return twin


def _coverage_table(output: str) -> list[str]:
    return section(output, r"^Name\s+Stmts", r"^TOTAL\s")


@pytest.mark.parametrize("host", WITH_SSH)
def test_pytest_cov_reports_plain_pytests_total(suite, host, hosts_of):
    path = _project(suite, COV_TESTS)
    args = ("--cov=mylib", "--cov-report=term-missing", "--cov-report=xml")
    plain = run(path, *args)
    plain_xml = ET.parse(path / "coverage.xml").getroot()
    (path / "coverage.xml").unlink()
    farm = run(path, *args, *hosts_of(host))
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "37 passed"
    assert "cov_master_host" not in farm.stdout + farm.stderr
    assert _coverage_table(farm.stdout) == _coverage_table(plain.stdout), farm.stdout
    assert re.search(r"^TOTAL\s+\d+\s+\d+\s+7\d%", farm.stdout, re.M), farm.stdout
    farm_xml = ET.parse(path / "coverage.xml").getroot()
    for attribute in ("lines-valid", "lines-covered", "line-rate"):
        assert farm_xml.get(attribute) == plain_xml.get(attribute), attribute
    # The workers' data files were combined into .coverage, as plain pytest leaves it.
    assert sorted(p.name for p in path.glob(".coverage*")) == [".coverage"]


@pytest.mark.parametrize("host", WITH_SSH)
def test_syrupy_passes_and_updates_as_plain_pytest(suite, host, hosts_of):
    path = _project(suite, SNAPSHOT_TESTS)
    created = run(path, "--snapshot-update")
    assert created.returncode == 0, created.stdout
    snapshots = sorted(p.relative_to(path) for p in path.rglob("__snapshots__/*"))
    assert len(snapshots) == 2
    committed = {p: (path / p).read_bytes() for p in snapshots}

    plain = run(path)
    farm = run(path, *hosts_of(host))
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "19 passed"
    assert _syrupy_report(plain.stdout) == _syrupy_report(farm.stdout) == "19 snapshots passed."

    # A new case and a changed one: --snapshot-update writes them and keeps the rest.
    for project in (path, plain_twin := _twin(path, "plain")):
        test = project / "tests" / "test_render.py"
        test.write_text(
            test.read_text()
            .replace("range(1, 9)", "range(1, 10)")
            .replace('"Snapshots Stay Put"', '"Snapshots Moved"')
        )
    updated_plain = run(plain_twin, "--snapshot-update")
    updated = run(path, "--snapshot-update", *hosts_of(host))
    assert updated.returncode == updated_plain.returncode == 0, updated.stdout
    assert summary(updated.stdout) == summary(updated_plain.stdout)
    report = "18 snapshots passed. 1 snapshot generated. 1 snapshot updated."
    assert _syrupy_report(updated_plain.stdout) == _syrupy_report(updated.stdout) == report
    for snapshot in snapshots:
        assert (path / snapshot).read_bytes() == (plain_twin / snapshot).read_bytes()
        assert (path / snapshot).read_bytes() != committed[snapshot] or "more" in str(snapshot)
    leftovers = [p.name for p in path.rglob("__snapshots__/*") if p.suffix in (".lock", ".tmp")]
    assert leftovers == []


def test_syrupy_merges_workers_reports_without_pytest_xdist(suite):
    """syrupy merges worker reports only with xdist loaded; psyduck's bridge does it then."""
    path = _project(suite, SNAPSHOT_TESTS)
    assert run(path, "--snapshot-update").returncode == 0
    farm = run(path, "-p", "no:xdist", "--psyduck")
    assert farm.returncode == 0, farm.stdout + farm.stderr
    assert _syrupy_report(farm.stdout) == "19 snapshots passed."
    assert not [p for p in path.rglob("__snapshots__/*") if p.suffix == ".lock"]


def test_syrupy_update_never_deletes_snapshots_a_lost_worker_used(suite):
    """A worker that crashes takes its report with it: unused detection is skipped."""
    path = _project(suite, SNAPSHOT_TESTS)
    assert run(path, "--snapshot-update").returncode == 0
    committed = {p: p.read_bytes() for p in path.rglob("__snapshots__/*")}
    (path / "tests" / "test_crash.py").write_text(
        "import os\n\ndef test_crash():\n    os._exit(3)\n"
    )
    farm = run(path, "--snapshot-update", "--psyduck", "--psyduck-hosts=local:1")
    assert farm.returncode == 1, farm.stdout + farm.stderr
    assert "unused snapshot detection skipped" in farm.stderr, farm.stdout + farm.stderr
    assert {p: p.read_bytes() for p in path.rglob("__snapshots__/*")} == committed


def _syrupy_report(output: str) -> str:
    """syrupy's summary: the line after its ``snapshot report summary`` heading."""
    return section(output, "snapshot report summary", r"^\d+ snapshots? ")[-1]


def _benchmark_rows(output: str) -> list[str]:
    """The names in the results tables, in their order."""
    return re.findall(r"^(test_\S+)\s+[\d,.]+\s", output, re.M)


@pytest.mark.parametrize("host", WITH_SSH)
def test_pytest_benchmark_shows_one_table_and_writes_json(suite, host, hosts_of):
    path = _project(suite, BENCHMARK_TESTS)
    plain = run(path, *BENCHMARK_ARGS, "--benchmark-json=plain.json")
    farm = run(path, *BENCHMARK_ARGS, "--benchmark-json=farm.json", *hosts_of(host))
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "6 passed"
    assert "no benchmarks have been run" not in farm.stdout + farm.stderr
    assert "benchmark 'text': 1 tests" in farm.stdout, farm.stdout
    assert sorted(_benchmark_rows(farm.stdout)) == sorted(_benchmark_rows(plain.stdout))
    assert len(_benchmark_rows(plain.stdout)) == 5

    def names(file: str) -> list[str]:
        return [b["fullname"] for b in json.loads((path / file).read_text())["benchmarks"]]

    assert names("farm.json") == names("plain.json")
    stats = json.loads((path / "farm.json").read_text())["benchmarks"][0]["stats"]
    assert stats["rounds"] >= 3 and len(stats["data"]) == stats["rounds"]


def test_pytest_benchmark_only_runs_as_plain_pytest(suite):
    """pytest-benchmark refuses --benchmark-only on xdist workers; psyduck's run them."""
    path = _project(suite, BENCHMARK_TESTS)
    plain = run(path, *BENCHMARK_ARGS, "--benchmark-only")
    farm = run(path, *BENCHMARK_ARGS, "--benchmark-only", "--psyduck")
    assert farm.returncode == plain.returncode == 0, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "5 passed, 1 skipped"
    assert sorted(_benchmark_rows(farm.stdout)) == sorted(_benchmark_rows(plain.stdout))


@pytest.mark.parametrize("host", CONTAINERS)
def test_hypothesis_replays_a_saved_failing_example_in_containers(suite, host, hosts_of):
    """Plain pytest replays the failing example saved in ``.hypothesis/`` first: so must a
    container, even when its own search would never find it."""
    path = _project(
        suite,
        {
            **HYPOTHESIS_DATABASE,
            "tests/test_rare.py": """
import os

from hypothesis import given, settings, strategies as st


@settings(max_examples=int(os.environ.get("EXAMPLES", "1")), deadline=None)
@given(st.integers(min_value=0, max_value=10**6))
def test_rare(n):
    assert n < 1000
""",
        },
    )
    quiet = ("-W", "ignore::DeprecationWarning")
    found = run_pytest(
        path, "-p", "no:cacheprovider", *quiet, env={**plugin_env(), "EXAMPLES": "500"}
    )
    assert found.returncode == 1, found.stdout
    plain = run(path, *quiet)
    farm = run(path, *quiet, *hosts_of(host))
    assert farm.returncode == plain.returncode == 1, farm.stdout + farm.stderr
    assert "n=1000" in plain.stdout
    assert "n=1000" in farm.stdout, farm.stdout


@pytest.mark.parametrize("host", CONTAINERS)
def test_hypothesis_examples_come_home_from_containers(suite, host, hosts_of):
    path = _project(suite, {**HYPOTHESIS_DATABASE, **HYPOTHESIS_TESTS})
    kept = path / ".hypothesis" / "examples" / "0123456789abcdef" / "fedcba9876543210"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an example from an earlier run")
    # hypothesis's explain phase imports libcst where installed, whose deprecation
    # warnings depend on the machine, not on psyduck: the image has no libcst.
    quiet = ("-W", "ignore::DeprecationWarning")
    plain = run(_twin(path, "plain"), *quiet)
    farm = run(path, *quiet, *hosts_of(host))
    assert farm.returncode == plain.returncode == 1, farm.stdout + farm.stderr
    assert summary(farm.stdout) == summary(plain.stdout) == "1 failed, 2 passed"
    examples = path / ".hypothesis" / "examples"
    # The failing example was saved by a container's worker, and nothing was deleted.
    assert kept.read_bytes() == b"an example from an earlier run"
    assert len([p for p in examples.rglob("*") if p.is_file()]) > 1
    assert not list(path.rglob("*.psyduck-partial"))
