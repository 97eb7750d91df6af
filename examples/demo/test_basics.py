"""Passing, failing and skipped tests."""

import sys

import pytest


def test_addition():
    assert 1 + 1 == 2


def test_reads_data_file():
    from pathlib import Path

    data = (Path(__file__).parent / "data" / "fruit.txt").read_text().split()
    assert data == ["apple", "banana", "cherry"]


def test_basket(basket):
    assert basket.read_text().splitlines() == ["apple", "pear"]


def test_inventory(inventory):
    assert inventory["apples"] == 3


def test_prints_and_fails(inventory):
    print("looking for pears")
    assert inventory["pears"] > 0, "we are out of pears"


@pytest.mark.skip(reason="not ready yet")
def test_skipped():
    raise AssertionError


@pytest.mark.skipif(sys.platform == "win32", reason="posix only")
def test_posix_path():
    assert "/" in __file__


@pytest.mark.xfail(reason="known bug #12")
def test_known_bug():
    assert [1, 2] == [2, 1]
