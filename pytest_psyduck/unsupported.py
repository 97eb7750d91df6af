"""Plugin options a farm run cannot honour as plain pytest does, named at session start.

psyduck's promise is plain pytest's results; where a plugin's option depends
on every test running in the user's process, the run would differ silently.
Instead, one line per such option says so, and what to do, before any result.
Options psyduck refuses outright (``--pdb``, pytest-xdist's ``-n``) are usage
errors in :mod:`pytest_psyduck.plugin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Unsupported:
    """An option (its ``dest``) that a farm run would honour differently."""

    plugin: str
    dest: str
    flag: str
    why: str
    advice: str

    def applies(self, config: pytest.Config) -> bool:
        return getattr(config.option, self.dest, None) not in (None, False)

    def notice(self) -> str:
        return (
            f"psyduck: {self.plugin} {self.flag} is not supported with --psyduck "
            f"({self.why}); {self.advice}"
        )


KNOWN = (
    Unsupported(
        "pytest-rerunfailures",
        "fail_on_flaky",
        "--fail-on-flaky",
        "it counts reruns in the process that ran the test, not the one that exits",
        "the run's exit status ignores flaky tests: drop --psyduck to get exit status 7",
    ),
    Unsupported(
        "pytest-rerunfailures",
        "max_suite_reruns",
        "--max-suite-reruns",
        "each worker counts its own reruns",
        "the cap applies per worker, not to the whole run: drop --psyduck for a suite-wide cap",
    ),
)


def notices(config: pytest.Config) -> list[str]:
    """One line for each option given that this run cannot honour."""
    return [entry.notice() for entry in KNOWN if entry.applies(config)]
