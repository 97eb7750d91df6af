"""Build a project's test image from the project, without any registry: ``psyduck image build``.

The image holds the user's interpreter minor, pytest and every installed pytest
plugin at the user's exact versions, and the project's declared dependencies
(:mod:`farm.images.requirements`) — not the project, whose code arrives with
each run.  Many farms reach no image registry and cannot reach PyPI from inside
``docker build`` (a corporate proxy's certificate, an air gap), so, as
``.ci/build-test-image`` does, the base comes from Debian's packages
(debootstrap minbase, imported once and cached: :mod:`farm.images.base`) or is
a local image (``base=``), wheels are fetched on this machine for the container's platform,
and they are installed under ``docker build`` with no network at all.  The tag
is a digest of the inputs (:mod:`farm.images.recipe`): an unchanged project
finds its image at once, from a small cache of what was asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from farm.images import recipe
from farm.images.base import (
    BuildError,
    Progress,
    base_facts,
    debian_base,
    engine,
    image_id,
    run_tool,
)
from farm.images.requirements import (
    Requirements,
    RequirementsError,
    merged_constraints,
    project_dependencies,
    project_name,
    read_requirements,
)

#: Seconds pip may take to fetch (or build) the wheels; the image build.
PIP_TIMEOUT = 900.0
BUILD_TIMEOUT = 1200.0
#: The distribution injected into every container: never installed in an image.
PSYDUCK_DISTRIBUTION = "pytest-psyduck"


@dataclass(frozen=True)
class BuiltImage:
    """A project's test image: its tag, and whether it was reused rather than built now."""

    tag: str
    reused: bool


def cache_dir() -> Path:
    """``$PSYDUCK_IMAGE_CACHE``, else ``/var/cache/psyduck`` for root, else ``~/.cache/psyduck``."""
    if os.environ.get("PSYDUCK_IMAGE_CACHE"):
        return Path(os.environ["PSYDUCK_IMAGE_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/psyduck")
    return Path.home() / ".cache" / "psyduck"


def environment_pins() -> tuple[list[str], list[str]]:
    """(pytest and every pytest plugin, every distribution) installed in this environment,
    as ``NAME==VERSION``; psyduck itself excluded (it is injected).

    Plugins are those with a ``pytest11`` entry point: the image gets each of them.
    All distributions become pip constraints: a dependency the image shares with
    this environment gets this environment's version.
    """
    plugins = {"pytest": f"pytest=={importlib.metadata.version('pytest')}"}
    everything = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        key = recipe.normalize(name)
        if not name or key == PSYDUCK_DISTRIBUTION:
            continue
        everything.setdefault(key, f"{name}=={dist.version}")
        if any(ep.group == "pytest11" for ep in dist.entry_points):
            plugins.setdefault(key, f"{name}=={dist.version}")
    return sorted(plugins.values()), sorted(everything.values())


def declared_requirements(
    project: Path, extras: Sequence[str], groups: Sequence[str], requirement_files: Sequence[str]
) -> tuple[str, Requirements]:
    """(project name, its declared requirements and constraints) from pyproject.toml and
    requirements files."""
    pyproject: dict = {}
    path = project / "pyproject.toml"
    try:
        if path.exists():
            pyproject = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{path}: {exc}") from exc
    try:
        found = Requirements(project_dependencies(pyproject, extras, groups))
        for name in requirement_files:
            read_requirements(name, lambda p: Path(p).read_text(), found)
    except RequirementsError as exc:
        raise BuildError(str(exc)) from exc
    return project_name(pyproject, project.resolve().name), found


def fetch_wheels(
    requirements: Sequence[str],
    constraints: Path,
    facts: dict[str, str],
    dest: Path,
    progress: Progress,
) -> list[recipe.Wheel]:
    """Wheels of the complete set *requirements* need, for the container's platform.

    Binary wheels only, for the base's Python, glibc and machine, at the
    versions the *constraints* file pins; if some requirement has no such wheel
    (an sdist-only project), the whole set is instead built into wheels here
    with ``pip wheel`` (same Python minor).
    """
    pip = [sys.executable, "-m", "pip"]
    progress(f"resolving {len(requirements)} requirement(s) with pip")
    requirements = [*requirements, "-c", str(constraints)]
    try:
        target = recipe.pip_target(facts["python"], facts["machine"], facts["glibc"])
        run_tool(
            [*pip, "download", "--quiet", "--dest", str(dest), *target, *requirements],
            "pip download",
            PIP_TIMEOUT,
        )
    except (BuildError, ValueError) as exc:
        progress(
            f"no complete binary wheel set ({str(exc).splitlines()[0]}); building with pip wheel"
        )
        shutil.rmtree(dest)
        dest.mkdir()
        run_tool(
            [*pip, "wheel", "--quiet", "--wheel-dir", str(dest), *requirements],
            "pip wheel",
            PIP_TIMEOUT,
        )
    wheels = []
    for path in sorted(dest.glob("*.whl")):
        wheels.append(recipe.wheel_of(path.name, hashlib.sha256(path.read_bytes()).hexdigest()))
    return wheels


def docker_build(api: docker.APIClient, context: Path, tag: str) -> None:
    """``docker build --network none`` of *context* as *tag*; BuildError with the log's tail."""
    log: list[str] = []
    for chunk in api.build(
        path=str(context),
        tag=tag,
        network_mode="none",
        rm=True,
        forcerm=True,
        decode=True,
        use_config_proxy=False,
        timeout=BUILD_TIMEOUT,
    ):
        if "error" in chunk:
            raise BuildError(f"docker build failed: {chunk['error']}\n{''.join(log)[-3000:]}")
        log.append(chunk.get("stream", ""))
    if not image_id(api, tag):
        raise BuildError(f"docker build ended without {tag}:\n{''.join(log)[-3000:]}")


def build_project_image(
    project: str | Path,
    *,
    extras: Sequence[str] = (),
    groups: Sequence[str] = (),
    requirement_files: Sequence[str] = (),
    base: str | None = None,
    refresh: bool = False,
    host: str | None = None,
    progress: Progress = print,
) -> BuiltImage:
    """Build, or reuse, the test image of *project*; see the module's docstring.

    *host* (a docker or ssh host spec) builds on that host's engine instead of
    the local one; wheels are still fetched here, for its platform.
    """
    project = Path(project)
    name, declared = declared_requirements(project, extras, groups, requirement_files)
    plugins, installed = environment_pins()
    requirements = [*declared.requirements, *plugins]
    constrained = merged_constraints(declared.constraints, installed)
    python_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    cache = cache_dir()
    api = engine(host)
    try:
        base = base or debian_base(api, python_minor, cache, progress)
        base_id = image_id(api, base)
        if base_id is None:
            raise BuildError(f"the base image {base!r} is not on the Docker engine")
        asked_for = [*requirements, *(f"-c {line}" for line in constrained)]
        key = recipe.declared_key(python_minor, asked_for, base_id)
        asked = cache / "tags" / key
        if not refresh and asked.is_file():
            tag = asked.read_text().strip()
            if image_id(api, tag):
                progress(f"reusing {tag} (requirements unchanged)")
                return BuiltImage(tag, reused=True)
        facts = base_facts(api, base)
        if facts["python"] != python_minor:
            raise BuildError(
                f"the base image {base!r} has Python {facts['python']}, yours is {python_minor}"
            )
        with tempfile.TemporaryDirectory() as work:
            context = Path(work)
            wheels_dir = context / recipe.WHEELS_DIR
            wheels_dir.mkdir()
            constraints = context / "constraints.txt"
            constraints.write_text("\n".join(constrained) + "\n")
            wheels = fetch_wheels(requirements, constraints, facts, wheels_dir, progress)
            tag = recipe.image_tag(name, recipe.inputs_digest(python_minor, wheels, base_id))
            if image_id(api, tag):
                progress(f"reusing {tag} (same wheels)")
                reused = True
            else:
                progress(f"building {tag} from {base} with {len(wheels)} wheel(s), no network")
                (context / "Dockerfile").write_text(recipe.dockerfile(base))
                docker_build(api, context, tag)
                progress(f"built {tag}")
                reused = False
        asked.parent.mkdir(parents=True, exist_ok=True)
        asked.write_text(tag + "\n")
        return BuiltImage(tag, reused)
    finally:
        api.close()


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """What to put in the image: the options of ``psyduck image build`` (and of the
    ``psyduck_image_build`` ini key, which ``--psyduck-image auto`` uses)."""
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    parser.add_argument("--extras", default="", help="extras of [project.optional-dependencies]")
    parser.add_argument(
        "--group", action="append", default=[], help="a [dependency-groups] group (repeatable)"
    )
    parser.add_argument(
        "-r", dest="requirements", action="append", default=[], help="a requirements file"
    )
    parser.add_argument("--base", help="a local image with the same Python and pip")
    parser.add_argument("--refresh", action="store_true", help="resolve the requirements again")
    parser.add_argument(
        "--host", help="build on this docker or ssh host's engine (a --psyduck-hosts spec)"
    )


def build_from_arguments(args: argparse.Namespace, progress: Progress) -> BuiltImage:
    """:func:`build_project_image` with options parsed by :func:`add_build_arguments`."""
    return build_project_image(
        args.project,
        extras=[e for e in args.extras.split(",") if e],
        groups=args.group,
        requirement_files=args.requirements,
        base=args.base,
        refresh=args.refresh,
        host=args.host,
        progress=progress,
    )


def push_image(
    tag: str, pokedex_url: str, token: str, progress: Progress, host: str | None = None
) -> str:
    """Store *tag* in the registry face of the pokedex node at *pokedex_url*; its reference there.

    Hosts missing the run's image pull ``HOST:PORT/<tag>`` from there and name it
    *tag* again (:meth:`farm.hosts.docker.DockerHost._provide_image`).  The push
    goes through the engine holding the image (*host*'s, if it was built there).
    """
    from farm.hosts.docker import PULL_USER, registry_address

    registry = registry_address(pokedex_url)
    repository, _, own_tag = tag.rpartition(":")
    target = f"{registry}/{repository}"
    progress(f"pushing {tag} to {registry}")
    api = engine(host)
    try:
        api.tag(tag, target, own_tag)
        try:
            auth = {"username": PULL_USER, "password": token, "serveraddress": registry}
            for chunk in api.push(target, own_tag, auth_config=auth, stream=True, decode=True):
                if "error" in chunk:
                    raise BuildError(f"pushing {tag} to {registry} failed: {chunk['error']}")
        finally:
            api.remove_image(f"{target}:{own_tag}", noprune=True)
    except docker.errors.APIError as exc:
        raise BuildError(f"pushing {tag} to {registry} failed: {exc.explanation}") from exc
    finally:
        api.close()
    return f"{target}:{own_tag}"
