"""When the plugin builds the project's image itself (``--psyduck-image auto``), and with what."""

from __future__ import annotations

import pytest

from pytest_psyduck.images import build_arguments, wants_auto_image


@pytest.mark.parametrize(
    ("args", "auto"),
    [
        (("--psyduck-hosts", "docker:2"), True),
        (("--psyduck-hosts", "local:2,ssh://ci@build-7"), True),
        (("--psyduck-hosts", "local:2"), False),
        ((), False),
        (("--psyduck-hosts", "docker:2", "--psyduck-image", "mine:1"), False),
        (("--psyduck-hosts", "local:2", "--psyduck-image", "auto"), True),
        (("--psyduck-farm", "http://127.0.0.1:9", "--psyduck-hosts", "docker:2"), False),
        (("--psyduck-farm", "http://127.0.0.1:9", "--psyduck-image", "auto"), True),
    ],
)
def test_auto_is_the_default_only_for_the_embedded_farms_container_hosts(pytester, args, auto):
    assert wants_auto_image(pytester.parseconfig(*args)) is auto


def test_ini_image_names_an_image_and_turns_auto_off(pytester):
    pytester.makeini("[pytest]\npsyduck_image = mine:1\npsyduck_hosts = docker:2\n")
    assert not wants_auto_image(pytester.parseconfig())


def test_build_options_come_from_the_ini_with_the_rootdir_as_project(pytester):
    pytester.makeini("[pytest]\npsyduck_image_build = --group tests --extras a,b -r req.txt\n")
    args = build_arguments(pytester.parseconfig())
    assert args.group == ["tests"]
    assert args.extras == "a,b"
    assert args.requirements == [str(pytester.path / "req.txt")]
    assert args.project == str(pytester.path)


def test_bad_build_options_are_a_usage_error(pytester):
    pytester.makeini("[pytest]\npsyduck_image_build = --no-such-option\n")
    with pytest.raises(pytest.UsageError, match="psyduck_image_build: unrecognized arguments"):
        build_arguments(pytester.parseconfig())
