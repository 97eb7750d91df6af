"""Subtests with the pytest-subtests plugin installed, under ``--psyduck`` as plain (issue #13).

pytest 9 took the plugin into its core and ignores the installed plugin
(``pytest_subtests`` is among its integrated external plugins), so with
pytest-subtests 0.15 on the path both sessions use pytest's own ``subtests``
fixture and ``unittest`` ``subTest`` support; what must match is the parent's
outcome (``contains 1 failed subtest`` for the fixture, none for
``unittest``, whose failed subTests pytest does not count) and the keyword
arguments as written (``i=2``).
"""

from __future__ import annotations

import re

import pytest

from tests.compat.test_conventions import both, with_site

SUBTESTS_SUITE = {
    "test_orders.py": """
import unittest

def test_every_order_ships(subtests):
    for i in range(3):
        with subtests.test(msg="order", i=i):
            assert i != 2, "order 2 is stuck"

def test_every_region_answers(subtests):
    for region in ["eu", "us", "ap"]:
        with subtests.test(region=region):
            assert region == "eu"

def test_all_regions_configured(subtests):
    for i in range(2):
        with subtests.test(i=i):
            assert i < 2

class TestLegacy(unittest.TestCase):
    def test_prices(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 1)

    def test_currencies(self):
        for code in ["EUR", "USD"]:
            with self.subTest(code=code):
                self.assertEqual(len(code), 3)
""",
}


def _result_lines(output: str) -> list[str]:
    return sorted(re.findall(r"^(?:SUB)?(?:PASSED|FAILED)\S* .*$", output, re.M))


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_subtests_with_the_plugin_installed_report_as_plain_pytest(suite, spawn):
    path = suite(SUBTESTS_SUITE)
    args = ("-p", "no:cacheprovider", "-rA")
    farm = ("--psyduck-hosts", "local:2", f"--psyduck-spawn={spawn}")
    plain, psy = both(path, args, farm, env=with_site("subtests"))
    assert plain.returncode == 1
    assert _result_lines(psy.stdout) == _result_lines(plain.stdout)
    for needle in (
        "FAILED test_orders.py::test_every_order_ships - contains 1 failed subtest",
        "FAILED test_orders.py::test_every_region_answers - contains 2 failed subtests",
        "SUBFAILED[order] (i=2) test_orders.py::test_every_order_ships - ",
        "SUBFAILED(region='us') test_orders.py::test_every_region_answers",
        "SUBFAILED(i=1) test_orders.py::TestLegacy::test_prices - AssertionError: 1 == 1",
        "PASSED test_orders.py::TestLegacy::test_prices",
        "PASSED test_orders.py::test_all_regions_configured",
    ):
        assert needle in plain.stdout, needle
        assert needle in psy.stdout, (needle, psy.stdout)
