"""psyduck's pytest entry point (``-p psyduck``): options, the mark, and wiring.

Without ``--psyduck`` nothing here changes pytest's behaviour.  With it, the
:class:`~pytest_psyduck.session.DistributedSession` takes over the run loop.
Inside a worker (the ``psyduck-worker`` plugin is registered) the controller
never activates, even though the worker sees the user's ``--psyduck`` argument.
"""

from __future__ import annotations

import argparse
import os

import pytest

from pytest_psyduck import hookspecs
from pytest_psyduck.roles import (
    CONTROLLER_BRIDGES_PLUGIN_NAME,
    MATRIX_PLUGIN_NAME,
    SESSION_PLUGIN_NAME,
    TRANSFORMATIONS_PLUGIN_NAME,
    WORKER_JUNIT_PLUGIN_NAME,
    WORKER_PLUGIN_NAME,
)

#: The packages of psyduck's distribution.
OWN_PACKAGES = ("pytest_psyduck", "farm", "pokedex")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    exempt_from_assertion_rewriting(pluginmanager, OWN_PACKAGES)


def exempt_from_assertion_rewriting(
    pluginmanager: pytest.PytestPluginManager, packages: tuple[str, ...]
) -> None:
    """Have pytest import *packages* as plain Python, not assertion-rewritten.

    pytest marks every package of a plugin's distribution for rewriting — the
    farm and pokedex too — and where bytecode is not written
    (``PYTHONDONTWRITEBYTECODE``, common in CI images) it then parses and
    compiles each of them anew in every run, in the user's pytest and in every
    worker that starts fresh: ~60 ms a run.  Their asserts are internal checks
    that need no rewritten messages.  pytest has no public way to unmark a
    package, so this reaches into its rewrite hook and does nothing if that has
    changed shape.  Modules imported before this hook ran (this one, the
    package's ``__init__``, ``hookspecs`` and ``roles``) stay rewritten; the
    plugin imports the rest later.
    """
    hook = getattr(pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    decided = getattr(hook, "_marked_for_rewrite_cache", None)
    if isinstance(marked, set) and isinstance(decided, dict):
        marked.difference_update(packages)
        decided.clear()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("psyduck", "run the suite on a psyduck farm")
    group.addoption(
        "--psyduck",
        action="store_true",
        default=False,
        help="run the collected tests on a psyduck farm (the embedded one unless --psyduck-farm)",
    )
    group.addoption(
        "--psyduck-farm",
        metavar="URL",
        default=None,
        help="coordinator URL of a remote farm (env PSYDUCK_FARM); token from PSYDUCK_TOKEN "
        "or --psyduck-token-file",
    )
    group.addoption(
        "--psyduck-token-file", metavar="PATH", default=None, help="file holding the farm token"
    )
    group.addoption(
        "--psyduck-hosts",
        metavar="SPEC",
        default=None,
        help="hosts of the embedded farm, comma-separated: local:N (default local:<cpus>)",
    )
    group.addoption(
        "--psyduck-spawn",
        choices=("fork", "exec"),
        default=None,
        help="how the embedded farm starts local workers: fork the collected session "
        "(default, fastest) or exec a fresh interpreter (what remote farms do)",
    )
    group.addoption(
        "--psyduck-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="kill and fail a test that runs longer (default: no timeout)",
    )
    group.addoption(
        "--psyduck-image",
        metavar="IMAGE",
        default=None,
        help="test image for docker/ssh hosts; 'auto' (the default for the embedded farm's "
        "docker/ssh hosts) builds or reuses the project's own (psyduck image build)",
    )
    group.addoption(
        "--psyduck-pass-env",
        metavar="NAME",
        action="append",
        default=None,
        help="pass the environment variables matching this fnmatch pattern to docker and ssh "
        "workers (repeatable; local workers get the whole environment)",
    )
    group.addoption(
        "--psyduck-transform",
        metavar="NAMES",
        default=None,
        help="run tests also under these transformations: NAME[,NAME...], 'all' or 'none' "
        "(default: all with --psyduck, none without, so plain pytest is unchanged)",
    )
    group.addoption(
        "--psyduck-dist",
        choices=("load", "loadfile", "loadgroup"),
        default=None,
        help="how tests may be spread over workers: load (default: freely, keeping each "
        "@pytest.mark.xdist_group on one worker in order), loadfile (each module's tests "
        "together, in order), loadgroup (pytest-xdist's name for load)",
    )
    parser.addini("psyduck_hosts", "default --psyduck-hosts", default="")
    parser.addini("psyduck_dist", "default --psyduck-dist: load, loadfile or loadgroup", default="")
    parser.addini("psyduck_timeout", "default --psyduck-timeout in seconds", default="")
    parser.addini("psyduck_image", "default --psyduck-image", default="")
    parser.addini(
        "psyduck_pass_env",
        "environment variables (fnmatch patterns, one a line) docker and ssh workers get",
        type="linelist",
        default=[],
    )
    parser.addini(
        "psyduck_image_build",
        "options of 'psyduck image build' for --psyduck-image auto, e.g. --group tests",
        default="",
    )
    parser.addini(
        "psyduck_transformations",
        "env-only test transformations, one a line: NAME: KEY=VALUE KEY=VALUE",
        type="linelist",
        default=[],
    )


def remote_farm_url(options: argparse.Namespace) -> str | None:
    """The farm named by ``--psyduck-farm`` or ``PSYDUCK_FARM``; None means the embedded one.

    Takes parsed options rather than the config: the early hook has only those.
    """
    return getattr(options, "psyduck_farm", None) or os.environ.get("PSYDUCK_FARM") or None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Start the embedded farm's process now, if this session will need it.

    Its start-up (~0.2 s, mostly importing aiohttp) then overlaps loading the
    conftests and collecting instead of delaying the first test.

    Plugins that decide this early whether the run is distributed (pytest-cov
    picks its controller side here) read pytest-xdist's ``dist`` option from
    the early options: it says ``load`` for a psyduck run, as for ``-n``.
    """
    options = early_config.known_args_namespace
    if (
        not getattr(options, "psyduck", False)
        or getattr(options, "collectonly", False)
        or early_config.pluginmanager.has_plugin(WORKER_PLUGIN_NAME)
    ):
        return
    if getattr(options, "dist", "no") == "no":
        options.dist = "load"
    if remote_farm_url(options):
        return
    from pytest_psyduck.sidecar import SIDECAR_KEY, Sidecar

    sidecar = Sidecar(
        hosts=options.psyduck_hosts or early_config.getini("psyduck_hosts"),
        fork=(options.psyduck_spawn or "fork") == "fork",
    )
    early_config.stash[SIDECAR_KEY] = sidecar
    early_config.add_cleanup(sidecar.abandon)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_psyduck import transformations
    from pytest_psyduck.marks import MARK_HELP
    from pytest_psyduck.matrix import TransformationMatrix

    config.addinivalue_line("markers", MARK_HELP)
    # Workers multiply tests exactly as the user's process does, and apply their env.
    config.pluginmanager.register(transformations, TRANSFORMATIONS_PLUGIN_NAME)
    if config.pluginmanager.has_plugin(WORKER_PLUGIN_NAME):
        from pytest_psyduck import workerjunit
        from pytest_psyduck.xdistcontract import ensure_hookspecs

        config.pluginmanager.register(workerjunit, WORKER_JUNIT_PLUGIN_NAME)
        # The user's pytest accepts a conftest implementing xdist's controller hooks
        # (it has their specs); so must every worker, forked or not, xdist installed or not.
        ensure_hookspecs(config.pluginmanager)
        return
    config.pluginmanager.register(TransformationMatrix(config), MATRIX_PLUGIN_NAME)
    if not config.getoption("psyduck"):
        return
    if getattr(config.option, "usepdb", False) or getattr(config.option, "trace", False):
        raise pytest.UsageError(
            "--pdb and --trace cannot be used with --psyduck: tests run on workers"
        )
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--psyduck and pytest-xdist's -n cannot be combined")
    from pytest_psyduck.pluginbridges import ControllerBridges
    from pytest_psyduck.session import DistributedSession
    from pytest_psyduck.xdistcontract import ensure_hookspecs

    ensure_hookspecs(config.pluginmanager)
    config.pluginmanager.register(ControllerBridges(), CONTROLLER_BRIDGES_PLUGIN_NAME)
    config.pluginmanager.register(DistributedSession(config), SESSION_PLUGIN_NAME)
