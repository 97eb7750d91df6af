"""Test transformations end to end: real pytest processes, in-process and on the embedded farm.

Every session runs through ``pytester.runpytest_subprocess``, so each is a
separate process with psyduck loaded from its entry point, exactly as a user
runs it.  Results are read from the ``--junitxml`` file the user's process
writes: it names every test case that ran and carries its transformation.
"""

from __future__ import annotations

import re
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

pytest_plugins = ["pytester"]

FARM = ("--psyduck", "--psyduck-hosts", "local:2")
#: A session that takes longer than this is hung, not slow.
TIMEOUT = 120

CONFTEST = """
import os

import pytest

from pytest_psyduck import Transformation


def pytest_psyduck_transformations(config):
    return [
        Transformation("replicated", env={"DB_REPLICAS": "3"}, description="three replicas"),
        Transformation(
            "vectorized", env={"DB_ENGINE": "vector"}, applies=lambda item: "sum" in item.name
        ),
    ]


@pytest.fixture
def replicas():
    # Set up after the variant's environment is in place.
    return int(os.environ.get("DB_REPLICAS", "1"))
"""

TESTS = """
import os

import pytest


def test_join(replicas, psyduck_transformation):
    assert replicas == (3 if psyduck_transformation.name == "replicated" else 1)


@pytest.mark.parametrize("n", [1, 3])
def test_sum(n):
    assert not (n == 3 and os.environ.get("DB_REPLICAS") == "3"), "passes as written only"


def test_env(psyduck_transformation):
    # Runs after other variants: their environment must be gone, its own present.
    for key in ("DB_REPLICAS", "DB_ENGINE"):
        assert os.environ.get(key) == psyduck_transformation.env.get(key)


class TestMarks:
    @pytest.mark.psyduck(exclude=["replicated"], reason="single node only")
    def test_excluded(self):
        pass

    @pytest.mark.psyduck(transformations=["replicated"], exclude=["baseline"], reason="replicas")
    def test_only_replicated(self, psyduck_transformation):
        assert psyduck_transformation.name == "replicated"
"""

BASELINE_IDS = {
    "test_join",
    "test_sum[1]",
    "test_sum[3]",
    "test_env",
    "TestMarks::test_excluded",
}
VARIANT_IDS = {
    "test_join[replicated]",
    "test_sum[1-replicated]",
    "test_sum[3-replicated]",
    "test_sum[1-vectorized]",
    "test_sum[3-vectorized]",
    "test_env[replicated]",
    "TestMarks::test_only_replicated[replicated]",
}


JUNIT_OUTCOMES = {"failure": "failed", "error": "error", "skipped": "skipped"}


@dataclass
class Case:
    outcome: str
    transformation: str | None


@dataclass
class Run:
    result: pytest.RunResult
    cases: dict[str, Case]

    @property
    def output(self) -> str:
        return self.result.stdout.str() + self.result.stderr.str()

    def ran(self, outcome: str | None = None) -> set[str]:
        return {k for k, c in self.cases.items() if outcome is None or c.outcome == outcome}


def run(pytester: pytest.Pytester, *args: str) -> Run:
    """One real pytest process; its junit file tells which tests ran and how."""
    junit = pytester.path / f"junit-{len(list(pytester.path.glob('junit-*.xml')))}.xml"
    result = pytester.runpytest_subprocess(*args, f"--junitxml={junit}", timeout=TIMEOUT)
    cases = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = next(
                (
                    outcome
                    for kind, outcome in JUNIT_OUTCOMES.items()
                    if case.find(kind) is not None
                ),
                "passed",
            )
            prop = case.find("properties/property[@name='psyduck_transformation']")
            classname = case.get("classname", "").split(".")[1:]
            name = "::".join([*classname, case.get("name", "")])
            cases[name] = Case(outcome, None if prop is None else prop.get("value"))
    return Run(result, cases)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_q=TESTS)
    return pytester


def matrix_row(output: str, name: str) -> tuple[int, ...]:
    """passed, failed, skipped, excluded of a row of the transformation matrix."""
    match = re.search(rf"^{name}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+\.\d+s$", output, re.M)
    assert match, f"no matrix row for {name} in:\n{output}"
    return tuple(int(g) for g in match.groups())


def test_plain_pytest_is_unchanged(suite: pytest.Pytester) -> None:
    session = run(suite, "-p", "no:cacheprovider")
    assert session.result.ret == 0
    assert session.ran("passed") == BASELINE_IDS
    assert all(case.transformation is None for case in session.cases.values())
    assert "transformation matrix" not in session.output


@pytest.mark.parametrize("where", ["in-process", "farm-fork", "farm-exec"])
def test_every_variant_runs_and_is_reported(suite: pytest.Pytester, where: str) -> None:
    args = {
        "in-process": ("--psyduck-transform", "all"),
        "farm-fork": FARM,
        "farm-exec": (*FARM, "--psyduck-spawn", "exec"),
    }[where]
    session = run(suite, "-p", "no:cacheprovider", *args)
    assert session.result.ret == 1
    assert session.ran() == BASELINE_IDS | VARIANT_IDS
    assert session.ran("failed") == {"test_sum[3-replicated]"}
    assert session.cases["test_sum[3-replicated]"].transformation == "replicated"
    assert session.cases["test_sum[1-vectorized]"].transformation == "vectorized"
    assert session.cases["test_join"].transformation == "baseline"
    output = session.output
    assert output.index("short test summary info") < output.index("transformation matrix")
    assert "failing only under some transformations:" in output
    assert re.search(
        r"^  test_q.py::test_sum\[3\]  failed: replicated  passed: baseline, vectorized$",
        output,
        re.M,
    )
    assert matrix_row(output, "baseline") == (5, 0, 0, 1)
    assert matrix_row(output, "replicated") == (4, 1, 0, 1)
    assert matrix_row(output, "vectorized") == (2, 0, 0, 0)
    assert "  replicated: 1 test: single node only\n" in output
    assert "  baseline: 1 test: replicas\n" in output


def test_selecting_transformations_and_k(suite: pytest.Pytester) -> None:
    session = run(suite, "-p", "no:cacheprovider", "--psyduck-transform", "vectorized")
    assert session.ran("passed") == BASELINE_IDS | {
        "test_sum[1-vectorized]",
        "test_sum[3-vectorized]",
    }

    session = run(suite, "-p", "no:cacheprovider", *FARM, "-k", "replicated")
    assert session.ran() == {i for i in VARIANT_IDS if "replicated" in i}

    session = run(suite, "-p", "no:cacheprovider", *FARM, "--psyduck-transform", "none")
    assert session.ran("passed") == BASELINE_IDS
    assert "transformation matrix" not in session.output


@pytest.mark.parametrize("farm", [False, True], ids=["in-process", "farm"])
def test_a_variant_node_id_runs_exactly_that_variant(suite: pytest.Pytester, farm: bool) -> None:
    wanted = ["test_sum[3-replicated]", "TestMarks::test_only_replicated[replicated]"]
    args = [f"test_q.py::{name}" for name in wanted]
    session = run(suite, "-p", "no:cacheprovider", *(FARM if farm else ()), *args)
    assert session.ran() == set(wanted)
    assert session.ran("failed") == {"test_sum[3-replicated]"}


def test_last_failed_reruns_exactly_the_failed_variants(suite: pytest.Pytester) -> None:
    first = run(suite, *FARM)
    assert first.ran("failed") == {"test_sum[3-replicated]"}
    for args in [("--lf",), ("--lf", *FARM)]:
        again = run(suite, *args)
        assert again.ran() == {"test_sum[3-replicated]"}, args
    # --ff puts the failed variant first and then runs what is selected.
    ff = run(suite, "--ff", "-v")
    assert ff.ran() == BASELINE_IDS | {"test_sum[3-replicated]"}
    assert re.search(r"^test_q.py::test_sum\[3-replicated\] FAILED", ff.output, re.M).start() < (
        ff.output.index("test_q.py::test_join PASSED")
    )


def test_declarations_apply_below_their_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npsyduck_transformations =\n    seeded: SEED='4 2'\n")
    pytester.makeconftest(
        "from pytest_psyduck import Transformation\n"
        "def pytest_psyduck_transformations(config):\n"
        "    return [Transformation('replicated', env={'DB_REPLICAS': '3'})]\n"
    )
    pytester.makepyfile(test_top="def test_a(psyduck_transformation): pass")
    sub = pytester.mkpydir("sub")
    (sub / "conftest.py").write_text(
        "from pytest_psyduck import Transformation\n"
        "def pytest_psyduck_transformations():\n"
        "    return [Transformation('sharded', env={'SHARDS': '2'})]\n"
    )
    (sub / "test_sub.py").write_text(
        "import os\n"
        "def test_b(psyduck_transformation):\n"
        "    assert os.environ.get('SEED') == psyduck_transformation.env.get('SEED')\n"
    )
    session = run(pytester, "-p", "no:cacheprovider", *FARM)
    assert session.result.ret == 0
    assert session.ran("passed") == {
        "test_a",
        "test_a[seeded]",
        "test_a[replicated]",
        "test_sub::test_b",
        "test_sub::test_b[seeded]",
        "test_sub::test_b[replicated]",
        "test_sub::test_b[sharded]",
    }


def test_awkward_parametrize_ids_round_trip_through_node_ids(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npsyduck_transformations =\n    replicated: R=3\n    x.2+y: A=1\n")
    ids = ["3-replicated", "3", "a::b", "x[y]", "sp ace", "x.2+y"]
    pytester.makepyfile(
        test_odd=f"""
        import pytest

        @pytest.mark.parametrize("x", {ids!r}, ids={ids!r})
        def test_odd(x):
            pass
        """
    )
    everything = run(pytester, "-p", "no:cacheprovider", "--psyduck-transform", "all")
    names = everything.ran("passed")
    assert len(names) == 3 * len(ids)
    assert {"test_odd[3-replicated]", "test_odd[3-replicated0]", "test_odd[a::b-x.2+y]"} <= names
    variants = {name for name in names if everything.cases[name].transformation != "baseline"}
    assert everything.cases["test_odd[3-replicated0]"].transformation == "replicated"
    assert everything.cases["test_odd[3-replicated]"].transformation == "baseline"
    for args in [(), FARM]:
        again = run(
            pytester, "-p", "no:cacheprovider", *args, *(f"test_odd.py::{n}" for n in variants)
        )
        assert again.ran("passed") == variants


def test_args_start_a_worker_profile(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        profile_plugin="import os\n"
        "def pytest_configure(config):\n"
        "    os.environ['PLUGGED'] = 'yes'\n"
    )
    pytester.makeconftest(
        "from pytest_psyduck import Transformation\n"
        "def pytest_psyduck_transformations(config):\n"
        "    return [Transformation('plugged', args=['-p', 'profile_plugin'])]\n"
    )
    pytester.makepyfile(
        test_p="""
        import os

        def test_plugin(psyduck_transformation):
            plugged = os.environ.get("PLUGGED") == "yes"
            assert plugged == (psyduck_transformation.name == "plugged")
        """
    )
    on_farm = run(pytester, "-p", "no:cacheprovider", *FARM)
    assert on_farm.ran("passed") == {"test_plugin", "test_plugin[plugged]"}

    local = run(pytester, "-p", "no:cacheprovider", "--psyduck-transform", "all", "-rs")
    assert local.ran("skipped") == {"test_plugin[plugged]"}
    assert "'plugged' runs in a worker started with -p profile_plugin" in local.output

    by_hand = run(
        pytester,
        "-p",
        "no:cacheprovider",
        "-p",
        "profile_plugin",
        "test_p.py::test_plugin[plugged]",
    )
    assert by_hand.ran("passed") == {"test_plugin[plugged]"}


def test_requires_no_host_has_fails_fast(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "from pytest_psyduck import Transformation\n"
        "def pytest_psyduck_transformations(config):\n"
        "    return [Transformation('exotic', requires={'cpu': 'no-such-flag'}),\n"
        "            Transformation('native', requires={'kind': 'local'})]\n"
    )
    pytester.makepyfile(test_r="def test_a(): pass\ndef test_b(): pass\n")
    refused = run(pytester, "-p", "no:cacheprovider", *FARM)
    assert refused.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no host can run 2 test(s)" in refused.output
    assert "test_r.py::test_a[exotic] requires {'cpu': 'no-such-flag'}" in refused.output
    assert "test_r.py::test_b[exotic] requires {'cpu': 'no-such-flag'}" in refused.output
    assert "Traceback" not in refused.output

    placed = run(pytester, "-p", "no:cacheprovider", *FARM, "--psyduck-transform", "native")
    assert placed.ran("passed") == {"test_a", "test_a[native]", "test_b", "test_b[native]"}

    local = run(pytester, "-p", "no:cacheprovider", "--psyduck-transform", "all", "-rs")
    assert local.ran("skipped") == {"test_a[exotic]", "test_b[exotic]"}
    assert "'exotic' requires cpu=no-such-flag, which this machine lacks" in local.output


DECLARE = "from pytest_psyduck import Transformation\ndef pytest_psyduck_transformations(config):\n"


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        pytest.param(
            {},
            ("--psyduck-transform", "replicatd"),
            "--psyduck-transform: unknown transformation(s) replicatd; declared: replicated",
            id="unknown-name",
        ),
        pytest.param(
            {},
            ("--psyduck-transform", "all,replicated"),
            "--psyduck-transform 'all,replicated': expected NAME[,NAME...], 'all' or 'none'",
            id="bad-selection",
        ),
        pytest.param(
            {"tox.ini": "[pytest]\npsyduck_transformations =\n    broken line\n"},
            (),
            "psyduck_transformations: bad line 'broken line': expected 'NAME: KEY=VALUE",
            id="malformed-ini",
        ),
        pytest.param(
            {"tox.ini": "[pytest]\npsyduck_transformations =\n    replicated: R=1\n"},
            (),
            "transformation 'replicated' is declared twice: by psyduck_transformations in "
            "tox.ini and by conftest.py",
            id="duplicate",
        ),
        pytest.param(
            {"conftest.py": DECLARE + "    return [Transformation('baseline')]\n"},
            (),
            "transformation 'baseline' from conftest.py: the name is reserved",
            id="reserved",
        ),
        pytest.param(
            {"conftest.py": DECLARE + "    return Transformation('solo')\n"},
            (),
            "pytest_psyduck_transformations in conftest.py must return a list of "
            "pytest_psyduck.Transformation, got Transformation(name='solo'",
            id="not-a-list",
        ),
        pytest.param(
            {
                "conftest.py": DECLARE
                + "    return [Transformation('boom', applies=lambda i: 1 / 0)]\n"
            },
            (),
            "transformation 'boom': applies(test_x.py::test_a) raised ZeroDivisionError: "
            "division by zero (at ",
            id="applies-raises",
        ),
        pytest.param(
            {"conftest.py": DECLARE + "    raise RuntimeError('no config')\n"},
            (),
            "pytest_psyduck_transformations in conftest.py raised RuntimeError: no config (at ",
            id="hook-raises",
        ),
        pytest.param(
            {
                "test_x.py": "import pytest\n"
                "@pytest.mark.psyduck(exclude=['replicatd'])\ndef test_a(): pass\n"
            },
            (),
            "test_x.py::test_a: @pytest.mark.psyduck names unknown transformation(s) replicatd; "
            "declared here: replicated",
            id="mark-unknown",
        ),
        pytest.param(
            {
                "test_x.py": "import pytest\n"
                "@pytest.mark.psyduck(exclude='replicated')\ndef test_a(): pass\n"
            },
            (),
            "test_x.py::test_a: @pytest.mark.psyduck(exclude=...) must be a list of "
            "transformation names",
            id="mark-not-a-list",
        ),
    ],
)
def test_bad_input_is_a_clear_usage_error(
    pytester: pytest.Pytester, files: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    files = {
        "conftest.py": DECLARE + "    return [Transformation('replicated', env={'R': '3'})]\n",
        "test_x.py": "def test_a(): pass\n",
        **files,
    }
    for name, text in files.items():
        (pytester.path / name).write_text(textwrap.dedent(text))
    for extra in [("--psyduck-transform", "all"), FARM]:
        session = run(pytester, "-p", "no:cacheprovider", *extra, *args)
        assert session.result.ret == pytest.ExitCode.USAGE_ERROR, session.output
        assert message in session.output
        assert "Traceback" not in session.output and "INTERNALERROR" not in session.output


def test_unittest_and_doctest_items_run_as_written(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npsyduck_transformations =\n    replicated: R=3\n")
    pytester.makepyfile(
        test_u='''
        import unittest

        def double(x):
            """
            >>> double(2)
            4
            """
            return 2 * x

        class TestCase(unittest.TestCase):
            def test_u(self):
                self.assertEqual(double(1), 2)

        def test_f():
            assert double(0) == 0
        '''
    )
    session = run(pytester, "-p", "no:cacheprovider", *FARM, "--doctest-modules")
    session.result.assert_outcomes(passed=4)
    assert {"test_f", "test_f[replicated]", "TestCase::test_u"} <= session.ran("passed")
