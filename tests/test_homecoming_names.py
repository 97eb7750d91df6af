"""The notice of files not brought home names them all, in a bounded number of names."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_psyduck.homecoming import name_left_out

segment = st.sampled_from(["a", "b", "out", "t01", "t02", "data", "x.bin", "y.txt"])
paths = st.lists(st.lists(segment, min_size=1, max_size=5).map("/".join), max_size=200)


@given(paths, st.integers(1, 12))
@settings(max_examples=300)
def test_every_left_out_file_is_named_or_in_a_named_directory(left_out, most):
    names = name_left_out(left_out, most)
    assert len(names) <= most or names == left_out
    if len(left_out) <= most:
        assert names == left_out
        return
    counted = {}
    for name in names:
        directory, count = re.fullmatch(r"(.+/) \(([\d,]+) files\)", name).groups()
        counted[directory] = int(count.replace(",", ""))
    assert sum(counted.values()) == len(left_out)
    for path in left_out:
        holders = [d for d in counted if d == "./" or path.startswith(d)]
        assert holders, (path, names)


def test_thousands_of_files_in_a_few_directories_are_named_by_directory():
    left_out = [f"out/t{n:02d}/f{i:03d}.bin" for n in range(15, 20) for i in range(100)]
    assert name_left_out(left_out) == [f"out/t{n:02d}/ (100 files)" for n in range(15, 20)]
