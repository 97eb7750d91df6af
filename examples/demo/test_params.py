"""Parametrized tests, a class, and a slow test."""

import time

import pytest


@pytest.mark.parametrize("n", range(10))
def test_square_is_non_negative(n):
    assert n * n >= 0


@pytest.mark.parametrize(("word", "length"), [("duck", 4), ("psyduck", 7), ("goose", 4)])
def test_length(word, length):
    assert len(word) == length


class TestStack:
    def test_push(self):
        stack = []
        stack.append(1)
        assert stack == [1]

    def test_pop_empty(self):
        with pytest.raises(IndexError):
            [].pop()


def test_slow():
    time.sleep(1.0)
    assert True
