"""Plugin options a farm run cannot honour as plain pytest does, named at session start.

psyduck's promise is plain pytest's results; where a plugin's option depends
on every test running in the user's process, the run would differ silently.
Instead, one line per such option says so, and what to do, before any result.
pytest-rerunfailures' reruns need forked workers: elsewhere its workers look
for a pytest-xdist controller to report to.  Options psyduck refuses outright
(``--pdb``, pytest-xdist's ``-n``) are usage errors in :mod:`pytest_psyduck.plugin`.
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


#: What to say when tests would be rerun by workers that are not forked.
RERUNS_NEED_FORK = (
    "psyduck: pytest-rerunfailures reruns are supported on forked local workers only "
    "(elsewhere it expects a pytest-xdist controller); run with local hosts and "
    "--psyduck-spawn fork to rerun as plain pytest does"
)


def notices(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """One line for each option given, or plugin used, that this run cannot honour."""
    lines = [entry.notice() for entry in KNOWN if entry.applies(config)]
    if reruns_requested(config, items) and not forked_only(config):
        lines.append(RERUNS_NEED_FORK)
    return lines


def reruns_requested(config: pytest.Config, items: list[pytest.Item]) -> bool:
    """Whether pytest-rerunfailures may rerun some test: an option, its ini or a mark."""
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return False
    if getattr(config.option, "reruns", None) or getattr(config.option, "force_reruns", None):
        return True
    try:
        if config.getini("reruns"):
            return True
    except ValueError:  # an older pytest-rerunfailures without the ini setting
        pass
    return any(item.get_closest_marker("flaky") is not None for item in items)


def forked_only(config: pytest.Config) -> bool:
    """Whether every worker is forked from this process: the embedded farm's local
    hosts with ``--psyduck-spawn fork`` (the default)."""
    from farm.hosts import host_kind
    from pytest_psyduck.plugin import remote_farm_url

    if remote_farm_url(config.option) or config.getoption("psyduck_spawn") == "exec":
        return False
    hosts = config.getoption("psyduck_hosts") or config.getini("psyduck_hosts") or "local"
    return all(host_kind(spec.strip()) == "local" for spec in hosts.split(",") if spec.strip())
