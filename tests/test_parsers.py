"""Small parsers and path mapping: sizes in marks, listen addresses, snapshot relocation."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.config import ConfigError, parse_listen
from farm.snapshots import relocate
from pytest_psyduck.marks import parse_size

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@given(st.integers(1, 10_000), st.sampled_from(sorted(UNITS)), st.sampled_from(["", "B", "iB"]))
def test_sizes_parse_in_binary_units(number, unit, suffix):
    if not unit and suffix:
        suffix = "B"
    assert parse_size(f"{number}{unit}{suffix}") == number * UNITS[unit]
    assert parse_size(f"{number}{unit.lower()}") == number * UNITS[unit]


@given(st.integers(1, 2**50))
def test_integer_sizes_are_bytes(number):
    assert parse_size(number) == number


@given(st.text(max_size=12))
def test_anything_else_is_a_clear_error(text):
    try:
        assert parse_size(text) > 0
    except ValueError as exc:
        assert "size" in str(exc)


@pytest.mark.parametrize("bad", [0, -5, True, "0M", "-1G", "12 parsecs"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@given(st.from_regex(r"[a-z0-9.\-]{1,20}", fullmatch=True), st.integers(0, 65535))
def test_listen_addresses(host, port):
    assert parse_listen(f"{host}:{port}") == (host, port)


@pytest.mark.parametrize("bad", ["nowhere", "host:", "host:99999", ":x"])
def test_bad_listen_addresses(bad):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(bad)


segments = st.lists(st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True), min_size=1, max_size=4)


@given(segments, segments, st.sampled_from(["", "--rootdir=", "--basetemp="]))
def test_paths_under_the_root_move_into_the_tree(root_parts, rest_parts, option):
    root = "/" + os.path.join(*root_parts)
    path = os.path.join(root, *rest_parts)
    moved = relocate(option + path, root, "/cache/tree")
    assert moved == option + "/cache/tree" + path[len(root) :]


@given(segments, segments)
def test_paths_outside_the_root_stay(root_parts, other_parts):
    root = "/" + os.path.join("project", *root_parts)
    other = "/" + os.path.join("elsewhere", *other_parts)
    assert relocate(other, root, "/cache/tree") == other
    # A sibling that merely shares the root's name as a prefix is not inside it.
    assert relocate(root + "x/file", root, "/cache/tree") == root + "x/file"
