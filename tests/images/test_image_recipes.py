"""The pure parts of test images: declared dependencies, the inputs digest, the check's verdict."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.images import recipe
from farm.images.check import (
    PROBE_MARKER,
    Expectation,
    check_request,
    image_problem,
    parse_check_request,
    parse_probe_output,
)
from farm.images.probe import describe_start_failure
from farm.images.requirements import (
    RequirementsError,
    merged_constraints,
    project_dependencies,
    project_name,
    read_requirements,
    requirement_name,
    requirements_lines,
)
from farm.protocol import ProtocolError

PYPROJECT = {
    "project": {
        "name": "demo",
        "dependencies": ["attrs>=22", "click"],
        "optional-dependencies": {"yaml": ["pyyaml"], "fast": ["ujson; python_version<'4'"]},
    },
    "dependency-groups": {
        "tests": ["pytest", "hypothesis"],
        "cov": [{"include-group": "tests"}, "coverage[toml]"],
        "all": [{"include-group": "cov"}, {"include-group": "tests"}, "tox"],
        "loop-a": [{"include-group": "loop-b"}],
        "loop-b": [{"include-group": "loop-a"}],
    },
}


# -- pyproject ---------------------------------------------------------------------
def test_project_dependencies_alone():
    assert project_dependencies(PYPROJECT) == ["attrs>=22", "click"]


def test_extras_and_groups_are_added_in_order():
    found = project_dependencies(PYPROJECT, extras=["fast", "yaml"], groups=["tests"])
    assert found == [
        "attrs>=22",
        "click",
        "ujson; python_version<'4'",
        "pyyaml",
        "pytest",
        "hypothesis",
    ]


def test_include_group_is_expanded_recursively():
    found = project_dependencies(PYPROJECT, groups=["all"])
    assert found == [
        "attrs>=22",
        "click",
        "pytest",
        "hypothesis",
        "coverage[toml]",
        "pytest",
        "hypothesis",
        "tox",
    ]


def test_include_group_cycle_is_an_error():
    with pytest.raises(RequirementsError, match="cycle: loop-a -> loop-b -> loop-a"):
        project_dependencies(PYPROJECT, groups=["loop-a"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extras": ["nope"]}, r"no extra 'nope' .*known: fast, yaml"),
        ({"groups": ["nope"]}, r"no dependency group 'nope' \(known: all, cov,"),
    ],
)
def test_unknown_extra_or_group_names_the_known_ones(kwargs, message):
    with pytest.raises(RequirementsError, match=message):
        project_dependencies(PYPROJECT, **kwargs)


@pytest.mark.parametrize(
    "pyproject",
    [
        {"project": {"dependencies": "attrs"}},
        {"project": {"dependencies": [1]}},
        {"dependency-groups": {"g": [{"include": "x"}]}},
        {"dependency-groups": {"g": "pytest"}},
    ],
)
def test_malformed_tables_are_clear_errors(pyproject):
    with pytest.raises(RequirementsError):
        project_dependencies(pyproject, groups=["g"] if "dependency-groups" in pyproject else [])


def test_a_project_without_pyproject_tables_has_no_dependencies():
    assert project_dependencies({}) == []
    assert project_name({}, "dir-name") == "dir-name"
    assert project_name(PYPROJECT, "dir-name") == "demo"


# -- requirements files ------------------------------------------------------------
FILES = {
    "requirements.txt": (
        "# the app\n"
        "requests>=2  # inline comment\n"
        "-r sub/dev.txt\n"
        "--index-url https://example.invalid/simple\n"
        "--extra-index-url=https://example.invalid/other\n"
        "\n"
        "urllib3 \\\n"
        "    <3\n"
    ),
    "sub/dev.txt": "-c constraints.txt\nhypothesis[cli]==6.1 ; python_version >= '3.8'\n",
    "sub/constraints.txt": "idna==3.4\n-r more-pins.txt\n",
    "sub/more-pins.txt": "Certifi_X==2024.2.2  # a pin, not a requirement\n",
    "loop.txt": "-r loop2.txt\n",
    "loop2.txt": "--requirement=loop.txt\n",
    "editable.txt": "-e ./src\n",
    "includes-missing.txt": "-r gone.txt\n",
}


def read(path: str) -> str:
    try:
        return FILES[path]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory") from None


def test_requirements_nesting_comments_continuations_and_options():
    found = read_requirements("requirements.txt", read)
    assert found.requirements == [
        "requests>=2",
        "hypothesis[cli]==6.1 ; python_version >= '3.8'",
        "urllib3     <3",
    ]
    # A -c file, and whatever it includes, only constrains.
    assert found.constraints == ["idna==3.4", "Certifi_X==2024.2.2"]


def test_the_projects_constraints_win_over_the_environments_versions():
    merged = merged_constraints(
        ["Idna==3.4", "certifi<2025"], ["idna==3.7", "six==1.17.0", "Certifi==2025.1.1"]
    )
    assert merged == ["Idna==3.4", "certifi<2025", "six==1.17.0"]


def test_requirement_names_are_normalized():
    assert requirement_name("Certifi_X==2024.2.2") == "certifi-x"
    assert requirement_name("hypothesis[cli]>=6 ; python_version >= '3.8'") == "hypothesis"
    assert requirement_name("  zope.interface") == "zope-interface"


def test_requirements_include_cycle_is_an_error():
    with pytest.raises(RequirementsError, match=r"cycle: loop\.txt -> loop2\.txt -> loop\.txt"):
        read_requirements("loop.txt", read)


def test_editable_requirement_is_refused_with_the_reason():
    with pytest.raises(RequirementsError, match=r"'-e \./src' is not supported"):
        read_requirements("editable.txt", read)


def test_missing_included_file_names_the_includer():
    with pytest.raises(
        RequirementsError, match=r"cannot read gone.txt \(included from includes-missing.txt\)"
    ):
        read_requirements("includes-missing.txt", read)


requirement = st.from_regex(
    r"[A-Za-z][A-Za-z0-9_.-]{0,10}(==[0-9]{1,3}(\.[0-9]{1,3}){0,2})?", fullmatch=True
)


@given(st.lists(requirement), st.lists(st.sampled_from(["", "# note", "   ", "#x y z"])))
def test_requirements_lines_keep_every_requirement_in_order(requirements, noise):
    lines = [f"{r}  # why" if i % 2 else r for i, r in enumerate(requirements)]
    text = "\n".join(noise + lines + noise)
    assert requirements_lines(text) == requirements


# -- the inputs digest ---------------------------------------------------------------
wheel = st.builds(
    recipe.Wheel,
    st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
    st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


@given(st.lists(wheel, min_size=1, unique=True), st.randoms())
def test_digest_is_stable_under_reordering(wheels, random):
    shuffled = list(wheels)
    random.shuffle(shuffled)
    assert recipe.inputs_digest("3.11", wheels, "sha256:b") == recipe.inputs_digest(
        "3.11", shuffled, "sha256:b"
    )


@given(st.lists(wheel, min_size=1, unique=True), st.data())
def test_digest_changes_with_any_input(wheels, data):
    digest = recipe.inputs_digest("3.11", wheels, "sha256:b")
    assert recipe.inputs_digest("3.12", wheels, "sha256:b") != digest
    assert recipe.inputs_digest("3.11", wheels, "sha256:c") != digest
    assert recipe.inputs_digest("3.11", wheels[1:], "sha256:b") != digest
    index = data.draw(st.integers(0, len(wheels) - 1))
    old = wheels[index]
    field = data.draw(st.sampled_from(["name", "version", "sha256"]))
    changed = recipe.Wheel(**{**vars(old), field: getattr(old, field) + "0"})
    if changed not in wheels:
        assert (
            recipe.inputs_digest(
                "3.11", [*wheels[:index], changed, *wheels[index + 1 :]], "sha256:b"
            )
            != digest
        )


def test_declared_key_ignores_order_and_duplicates():
    assert recipe.declared_key("3.11", ["a", "b", "a"], "x") == recipe.declared_key(
        "3.11", ["b", "a"], "x"
    )
    assert recipe.declared_key("3.11", ["a"], "x") != recipe.declared_key("3.11", ["a"], "y")


def test_image_tag_is_a_valid_reference():
    assert (
        recipe.image_tag("My_Project.Name", "ab" * 32)
        == "psyduck-auto/my-project-name:abababababab"
    )
    assert recipe.image_tag("Ünïcode!!", "0" * 64) == "psyduck-auto/n-code:000000000000"


def test_wheel_file_names():
    found = recipe.wheel_of("Typing_Extensions-4.15.0-py3-none-any.whl", "ff")
    assert found == recipe.Wheel("typing-extensions", "4.15.0", "ff")
    with pytest.raises(ValueError, match="not a wheel"):
        recipe.wheel_of("attrs-26.1.0.tar.gz", "ff")


def test_pip_target_lists_every_runnable_manylinux_tag():
    args = recipe.pip_target("3.11", "x86_64", "2.36")
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in platforms and "manylinux2014_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms
    assert [args[i + 1] for i, a in enumerate(args) if a == "--abi"] == ["cp311", "abi3", "none"]
    assert "--only-binary=:all:" in args


def test_debian_suite_for_other_minors_says_to_pass_base():
    assert recipe.debian_suite("3.11") == "bookworm"
    with pytest.raises(ValueError, match="pass --base IMAGE"):
        recipe.debian_suite("3.12")


def test_rootfs_key_matches_the_ci_scripts_cache():
    # .ci/build-test-image: echo "$suite $include" | sha256sum | cut -c1-12
    assert recipe.rootfs_key("bookworm", recipe.DEBIAN_PACKAGES) == "07dec7cdea38"


# -- the image check's verdict -----------------------------------------------------------
YOURS = Expectation("3.11", "9.2.0")


@pytest.mark.parametrize(
    ("facts", "problem"),
    [
        ({"python": "3.11.2", "pytest": "9.2.0"}, None),
        ({"python": "3.12.1", "pytest": "9.2.0"}, "its Python is 3.12, yours is 3.11"),
        (
            {"python": "3.11.2", "pytest": "8.3.5", "inject_error": "ImportError: CallSpec"},
            "its pytest is 8.3.5, yours is 9.2.0",
        ),
        (
            {"python": "3.11.2", "pytest_error": "ModuleNotFoundError: No module named 'pytest'"},
            "pytest does not import (ModuleNotFoundError",
        ),
        (
            {"python": "3.11.2", "pytest": "9.2.0", "inject_error": "ImportError: x"},
            "psyduck's worker code does not import there (ImportError: x)",
        ),
    ],
)
def test_image_problem(facts, problem):
    found = image_problem(facts, YOURS)
    assert found == problem if problem is None else found.startswith(problem)


def test_an_empty_expectation_checks_only_what_must_work():
    assert image_problem({"python": "3.9.1", "pytest": "7.0"}, Expectation()) is None


def test_probe_output_is_found_among_other_lines():
    facts = {"python": "3.11.2", "pytest": "9.2.0"}
    output = f"warning: something\n{PROBE_MARKER}{json.dumps(facts)}\n"
    assert parse_probe_output(output) == facts
    with pytest.raises(ValueError, match="did not run psyduck's check: Segmentation fault"):
        parse_probe_output("Segmentation fault\n")


def test_start_failures_say_the_interpreter_is_missing():
    said = 'exec: "python3": executable file not found in $PATH: unknown'
    assert describe_start_failure("python3", said).startswith("it has no python3")
    assert describe_start_failure("python3", "disk full").startswith("a container of it")


@given(st.one_of(st.none(), st.text(max_size=40)), st.text(max_size=10), st.text(max_size=10))
def test_check_request_round_trips(image, python, pytest_version):
    expect = Expectation(python, pytest_version)
    assert parse_check_request(check_request(image, expect)) == (image or None, expect)


@pytest.mark.parametrize(
    "message",
    [
        {"t": "run"},
        {"t": "check_image", "image": 3, "python": "3.11", "pytest": "9"},
        {"t": "check_image", "image": "x" * 513, "python": "3.11", "pytest": "9"},
        {"t": "check_image", "image": "x", "pytest": "9"},
        {"t": "check_image", "image": "x", "python": "3.11", "pytest": ["9"]},
    ],
)
def test_malformed_check_requests_are_protocol_errors(message):
    with pytest.raises(ProtocolError):
        parse_check_request(message)


def test_environment_pins_take_pytest_and_its_plugins_at_the_installed_versions():
    import importlib.metadata

    from farm.images.build import environment_pins

    plugins, everything = environment_pins()
    assert f"pytest=={importlib.metadata.version('pytest')}" in plugins
    assert f"hypothesis=={importlib.metadata.version('hypothesis')}" in plugins  # a pytest11 plugin
    assert not any(recipe.normalize(p.split("==")[0]) == "pytest-psyduck" for p in everything)
    assert set(plugins) <= set(everything)
    assert f"msgpack=={importlib.metadata.version('msgpack')}" in everything  # not a plugin
    assert not any(p.startswith("msgpack==") for p in plugins)


@pytest.mark.parametrize(
    ("engine", "local", "foreign"),
    [
        ("x86_64", "x86_64", False),
        ("amd64", "x86_64", False),
        ("arm64", "aarch64", False),
        ("", "x86_64", False),
        ("aarch64", "x86_64", True),
        ("x86_64", "arm64", True),
    ],
)
def test_a_base_made_here_is_refused_for_an_engine_of_another_architecture(engine, local, foreign):
    from farm.images.base import foreign_architecture

    problem = foreign_architecture(engine, local)
    assert bool(problem) == foreign
    if foreign:
        assert "--base IMAGE" in problem
