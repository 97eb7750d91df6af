"""Probe facts kept on disk (pure: files only): what invalidates them, what survives damage."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from farm.images.probefacts import ENTRIES_KEPT, FILE_NAME, ProbeFacts, facts_key, packages_stamp

FACTS = {"python": "3.11.2", "pytest": "9.2.0", "inject_ok": True}


def test_facts_come_back_for_the_same_key_only(tmp_path):
    cache = ProbeFacts(tmp_path / "host")
    key = facts_key("engine", "sha256:1", "python3", "/opt/psyduck", {})
    assert cache.get(key) is None
    cache.put(key, FACTS)
    assert ProbeFacts(tmp_path / "host").get(key) == FACTS  # another farm, the same disk
    for other in (
        facts_key("other engine", "sha256:1", "python3", "/opt/psyduck", {}),
        facts_key("engine", "sha256:2", "python3", "/opt/psyduck", {}),
        facts_key("engine", "sha256:1", "python3.12", "/opt/psyduck", {}),
        facts_key("engine", "sha256:1", "python3", "/opt/psyduck:/extra", {}),
    ):
        assert cache.get(other) is None


def test_an_edited_package_is_checked_again(tmp_path):
    package = tmp_path / "pytest_psyduck"
    package.mkdir()
    (package / "worker.py").write_text("A = 1\n")
    before = packages_stamp({"pytest_psyduck": str(package)})
    (package / "worker.py").write_text("A = 22\n")  # another size
    assert packages_stamp({"pytest_psyduck": str(package)}) != before
    edited = packages_stamp({"pytest_psyduck": str(package)})
    os.utime(package / "worker.py", ns=(1, 1))  # the same size, another time
    assert packages_stamp({"pytest_psyduck": str(package)}) != edited
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "worker.cpython-311.pyc").write_bytes(b"x")
    stamp = packages_stamp({"pytest_psyduck": str(package)})
    assert stamp == packages_stamp({"pytest_psyduck": str(package)})  # bytecode is no edit
    (package / "new.py").write_text("")
    assert packages_stamp({"pytest_psyduck": str(package)}) != stamp


@given(junk=st.binary(max_size=200))
def test_a_damaged_file_is_an_empty_cache_and_is_replaced(tmp_path_factory, junk):
    directory = tmp_path_factory.mktemp("host")
    (directory / FILE_NAME).write_bytes(junk)
    cache = ProbeFacts(directory)
    assert cache.get("key") is None
    cache.put("key", FACTS)
    assert cache.get("key") == FACTS


def test_the_oldest_entries_are_forgotten(tmp_path):
    cache = ProbeFacts(tmp_path)
    for n in range(ENTRIES_KEPT + 5):
        cache.put(f"image {n}", FACTS)
    assert cache.get("image 0") is None and cache.get("image 4") is None
    assert cache.get("image 5") == cache.get(f"image {ENTRIES_KEPT + 4}") == FACTS
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary files left
