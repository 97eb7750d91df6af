"""Pure parts of test transformations: naming, selection, ini lines, env, the matrix's tallies.

The properties here are what the integration tests rely on without being
able to enumerate: variant names never collide with each other or with a
baseline whatever the parametrize ids and transformation names, and pytest's
own parser of node-id arguments hands back exactly the name psyduck gave.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from _pytest.main import resolve_collection_argument
from hypothesis import given
from hypothesis import strategies as st

from pytest_psyduck import BASELINE, Transformation
from pytest_psyduck.matrix import Result, excluded_in_run, split_failures, tally
from pytest_psyduck.transformations import (
    _NAME,
    Variant,
    environment,
    item_name,
    parse_ini_line,
    parse_selection,
    requested_names,
    variant_ids,
)

identifiers = st.from_regex(r"test_[A-Za-z0-9_]{0,12}", fullmatch=True)
transformation_names = st.from_regex(_NAME, fullmatch=True).filter(
    lambda name: name not in ("baseline", "all", "none")
)
#: Parametrize ids are arbitrary strings once pytest has made them (non-ASCII escaped).
param_ids = st.text(alphabet=string.printable.strip() + " ", min_size=1, max_size=12)


@pytest.fixture(scope="module")
def test_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("naming") / "test_q.py"
    path.write_text("")
    return path


def selected_name(test_file: Path, name: str) -> str:
    """The item name pytest's command-line parser matches for ``test_q.py::<name>``."""
    argument = resolve_collection_argument(test_file.parent, f"{test_file.name}::{name}", 0)
    return argument.parts[-1] + (argument.parametrization or "")


@given(
    originalname=identifiers,
    parametrizations=st.lists(st.lists(param_ids, max_size=3), max_size=6),
    names=st.lists(transformation_names, min_size=1, max_size=6, unique=True),
)
def test_variant_names_are_unique_and_round_trip(
    test_file: Path, originalname: str, parametrizations: list[list[str]], names: list[str]
) -> None:
    baselines = list(dict.fromkeys(item_name(originalname, ids) for ids in parametrizations))
    taken = set(baselines)
    variants = []
    for ids in parametrizations:
        for name in names:
            new_ids = variant_ids(originalname, ids, name, taken)
            variant = item_name(originalname, new_ids)
            assert variant not in taken
            assert new_ids[: len(ids)] == tuple(ids)
            assert new_ids[-1].startswith(name)
            taken.add(variant)
            variants.append(variant)
    assert len(set(variants)) == len(variants)
    for variant in variants:
        assert selected_name(test_file, variant) == variant


def test_variant_name_is_built_like_parametrization() -> None:
    assert item_name("test_join", variant_ids("test_join", (), "replicated", set())) == (
        "test_join[replicated]"
    )
    assert item_name("test_sum", variant_ids("test_sum", ("3",), "replicated", set())) == (
        "test_sum[3-replicated]"
    )


def test_a_parametrize_id_that_reads_like_a_variant_keeps_its_name() -> None:
    taken = {"test_sum[3]", "test_sum[3-replicated]"}
    ids = variant_ids("test_sum", ("3",), "replicated", taken)
    assert item_name("test_sum", ids) == "test_sum[3-replicated0]"
    assert variant_ids("test_sum", ("3",), "seed2", {"test_sum[3-seed2]"})[-1] == "seed2_0"


def test_requested_names_split_node_ids_as_pytest_does() -> None:
    assert requested_names(
        ["tests", "t.py::test_a", "t.py::C::test_b[x::y-replicated]", "t.py::test_c[1]"]
    ) == {"test_b[x::y-replicated]", "test_c[1]"}


# -- selection and declarations ------------------------------------------------------


def test_default_selection_is_all_on_the_farm_and_none_locally() -> None:
    assert "anything" in parse_selection(None, distributed=True)
    assert "anything" not in parse_selection(None, distributed=False)
    chosen = parse_selection(" replicated,vectorized ", distributed=False)
    assert "replicated" in chosen and "seed" not in chosen
    assert parse_selection("none", distributed=True).names == frozenset()


@pytest.mark.parametrize("value", ["", "all,replicated", "baseline", "a b", ",x", "-x"])
def test_bad_selection_is_a_usage_error(value: str) -> None:
    with pytest.raises(pytest.UsageError, match="--psyduck-transform"):
        parse_selection(value, distributed=False)


def test_ini_line_declares_an_env_only_transformation() -> None:
    line = "replicated: DB_REPLICAS=3 DB_NAME='two words' EMPTY="
    transformation = parse_ini_line(line)
    assert transformation.name == "replicated"
    assert transformation.env == {"DB_REPLICAS": "3", "DB_NAME": "two words", "EMPTY": ""}
    assert transformation.args == () and transformation.requires == {}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("replicated DB=1", "expected 'NAME: KEY=VALUE"),
        ("replicated: DB", "'DB' is not KEY=VALUE"),
        ("replicated: =1", "'=1' is not KEY=VALUE"),
        ("replicated: A=1 A=2", "A is set twice"),
        ("two words: A=1", "transformation name 'two words'"),
        ("quoted: A='unterminated", "No closing quotation"),
    ],
)
def test_malformed_ini_line_is_a_usage_error(line: str, problem: str) -> None:
    with pytest.raises(pytest.UsageError, match="psyduck_transformations: bad line") as info:
        parse_ini_line(line)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "a b"}, ValueError),
        ({"name": "-x"}, ValueError),
        ({"name": "x", "env": {"A": 1}}, TypeError),
        ({"name": "x", "env": {"A=B": "1"}}, TypeError),
        ({"name": "x", "args": "-p plugin"}, TypeError),
        ({"name": "x", "args": ["-p", 3]}, TypeError),
        ({"name": "x", "requires": {"cpu": None}}, TypeError),
        ({"name": "x", "applies": "yes"}, TypeError),
    ],
)
def test_transformation_validates_its_fields(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="transformation"):
        Transformation(**kwargs)


def test_transformation_is_a_value() -> None:
    t = Transformation("avx", env=None, args=("-p", "x"), requires={"cpu": "avx2"})
    assert t == Transformation("avx", args=["-p", "x"], requires={"cpu": "avx2"})
    assert hash(t) == hash(Transformation("avx", args=["-p", "x"]))
    assert t.env == {} and not t.is_baseline and BASELINE.is_baseline


# -- the environment -----------------------------------------------------------------

env_keys = st.text(alphabet=string.ascii_uppercase + "_", min_size=1, max_size=4)
env_values = st.text(alphabet=string.printable, max_size=6)


@given(
    initial=st.dictionaries(env_keys, env_values, max_size=6),
    overlay=st.dictionaries(env_keys, st.none() | env_values, max_size=6),
    meddle=st.dictionaries(env_keys, env_values, max_size=3),
    fail=st.booleans(),
)
def test_environment_applies_then_restores_exactly(
    initial: dict[str, str], overlay: dict[str, str | None], meddle: dict[str, str], fail: bool
) -> None:
    environ = dict(initial)

    class Boom(Exception):
        pass

    try:
        with environment(overlay, environ):
            for key, value in overlay.items():
                assert environ.get(key) == value
            for key in initial.keys() - overlay.keys():
                assert environ[key] == initial[key]
            environ.update({k: v for k, v in meddle.items() if k in overlay})
            if fail:
                raise Boom
    except Boom:
        pass
    assert environ == initial


def test_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSYDUCK_NAMING_TEST", "before")
    with environment({"PSYDUCK_NAMING_TEST": None, "PSYDUCK_NAMING_NEW": "x"}):
        assert "PSYDUCK_NAMING_TEST" not in os.environ
        assert os.environ["PSYDUCK_NAMING_NEW"] == "x"
    assert os.environ["PSYDUCK_NAMING_TEST"] == "before"
    assert "PSYDUCK_NAMING_NEW" not in os.environ


# -- the matrix's tallies --------------------------------------------------------------


def test_tally_and_split_failures() -> None:
    replicated = Transformation("replicated")
    variants = {
        "t.py::a": Variant(BASELINE, "t.py::a"),
        "t.py::a[replicated]": Variant(replicated, "t.py::a"),
        "t.py::b": Variant(BASELINE, "t.py::b"),
        "t.py::b[replicated]": Variant(replicated, "t.py::b"),
    }
    results = {
        "t.py::a": Result("passed", 0.5),
        "t.py::a[replicated]": Result("failed", 1.0),
        "t.py::b": Result("skipped", 0.25),
        "t.py::b[replicated]": Result("failed", 0.25),
    }
    excluded = excluded_in_run(
        variants, results, {"t.py::b": {"vectorized": "no SIMD"}, "t.py::gone": {"x": ""}}
    )
    assert excluded == {("vectorized", "no SIMD"): 1}
    rows = tally(variants, results, excluded, ["baseline"])
    assert list(rows) == ["baseline", "replicated", "vectorized"]
    baseline = rows["baseline"]
    assert (baseline.passed, baseline.skipped, baseline.time) == (1, 1, 0.75)
    assert (rows["replicated"].failed, rows["replicated"].time) == (2, 1.25)
    assert rows["vectorized"].excluded == 1
    assert split_failures(variants, results) == [("t.py::a", ["replicated"], ["baseline"])]
