"""The base of a test image, and the engine calls every image step shares.

The default base is a Debian minbase with ``python3`` and pip, made by
debootstrap from the Debian mirror this machine's apt uses (no image registry
needed), kept as a rootfs tar in the image cache and imported once; any local
image with the same Python and pip may be the base instead (the only way for an
engine of another architecture than this machine's).  Either way one
throw-away container reports the base's Python, glibc and machine, which decide
the wheels pip fetches (:func:`farm.images.recipe.pip_target`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from farm.images import recipe

Progress = Callable[[str], None]

#: Seconds debootstrap may take to make the Debian base.
DEBOOTSTRAP_TIMEOUT = 1200.0
#: Seconds any other engine call may take (inspect, tag, a probe container's run).
ENGINE_TIMEOUT = 120
#: Run in the base image: its interpreter, glibc and machine, for pip's target.
BASE_PROBE = (
    "import json, platform, sys; print(json.dumps({'python': '%d.%d' % sys.version_info[:2], "
    "'glibc': platform.libc_ver()[1], 'machine': platform.machine()}))"
)


class BuildError(RuntimeError):
    """The image could not be built; the text says which step failed and why."""


#: Docker's and Python's names of one architecture, to Python's (``platform.machine()``).
ARCHITECTURE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def foreign_architecture(engine_arch: str, local_arch: str) -> str | None:
    """Why a base debootstrapped here cannot serve an engine of *engine_arch*, or None.

    debootstrap makes a rootfs of this machine's architecture: on an engine of
    another one (an ssh host's) its interpreter would not even start.  An
    unknown engine architecture is given the benefit of the doubt.
    """
    engine_arch = ARCHITECTURE_ALIASES.get(engine_arch, engine_arch)
    local_arch = ARCHITECTURE_ALIASES.get(local_arch, local_arch)
    if not engine_arch or engine_arch == local_arch:
        return None
    return (
        f"the engine is {engine_arch} and this machine {local_arch}: a Debian base made "
        f"here would not run there; pass --base IMAGE, an image on that engine with "
        f"python3 and pip (wheels are then fetched for its platform)"
    )


def engine(host: str | None = None) -> docker.APIClient:
    """A client of the local Docker engine, or of *host*'s (a ``docker``/``ssh://`` spec as
    for ``--psyduck-hosts``), checked to answer; BuildError if it does not."""
    where = f"the Docker engine of {host}" if host else "the Docker engine"
    try:
        if host:
            from farm.hosts import parse_hosts

            hosts = parse_hosts(host)
            if len(hosts) != 1 or not hasattr(hosts[0], "connect_engine"):
                raise BuildError(f"--host {host!r}: name one docker or ssh host")
            api = hosts[0].connect_engine()
        else:
            api = docker.APIClient(timeout=ENGINE_TIMEOUT, version="auto")
        api.ping()
    except BuildError:
        raise
    except Exception as exc:  # a bad spec, or any way of not reaching the engine
        raise BuildError(f"cannot reach {where}: {exc}") from exc
    return api


def image_id(api: docker.APIClient, image: str) -> str | None:
    """The id of *image* on the engine, or None if the engine has no such image."""
    try:
        return api.inspect_image(image)["Id"]
    except docker.errors.ImageNotFound:
        return None


def run_tool(argv: list[str], what: str, timeout: float) -> None:
    """Run a build tool (pip, debootstrap, tar); BuildError with its output's tail if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what} took longer than {timeout:.0f} s") from exc
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BuildError(f"{what} failed:\n{(done.stderr or done.stdout)[-3000:]}")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (``$PSYDUCK_DEBIAN_MIRROR`` first)."""
    if os.environ.get("PSYDUCK_DEBIAN_MIRROR"):
        return os.environ["PSYDUCK_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and line.rstrip("/").endswith("/debian"):
                return line.split()[1]
    lists = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in lists:
        for line in path.read_text().splitlines() if path.exists() else ():
            parts = line.split()
            if len(parts) > 2 and parts[0] == "deb" and parts[1].rstrip("/").endswith("/debian"):
                return parts[1]
    raise BuildError("no Debian mirror in /etc/apt/sources.list*; set PSYDUCK_DEBIAN_MIRROR")


def debian_base(api: docker.APIClient, python_minor: str, cache: Path, progress: Progress) -> str:
    """The default base: a Debian minbase with python3 and pip, debootstrapped once and cached.

    The rootfs tar is kept under *cache* (keyed by suite and packages, as
    ``.ci/build-test-image`` keys it, so either reuses the other's) and
    imported once as ``psyduck-base/<suite>:<key>``.
    """
    try:
        suite = recipe.debian_suite(python_minor)
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    key = recipe.rootfs_key(suite, recipe.DEBIAN_PACKAGES)
    tag = f"psyduck-base/{suite}:{key}"
    if image_id(api, tag):
        return tag
    try:
        engine_arch = str(api.info().get("Architecture", ""))
    except Exception as exc:  # the engine answered ping moments ago; say what broke
        raise BuildError(f"cannot ask the Docker engine its architecture: {exc}") from exc
    problem = foreign_architecture(engine_arch, platform.machine())
    if problem:
        raise BuildError(problem)
    rootfs = cache / f"{suite}-minbase-{key}.tar"
    if not rootfs.is_file():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            raise BuildError(
                "making the Debian base needs root and debootstrap (apt-get install "
                "debootstrap); or pass --base IMAGE, a local image with python3 and pip"
            )
        progress(f"debootstrap {suite} (once; cached in {cache})")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            root = Path(work) / "rootfs"
            run_tool(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(recipe.DEBIAN_PACKAGES)}",
                    suite,
                    str(root),
                    debian_mirror(),
                ],
                "debootstrap",
                DEBOOTSTRAP_TIMEOUT,
            )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(root / junk, ignore_errors=True)
            partial = rootfs.with_suffix(".tar.partial")
            run_tool(
                ["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], "tar", 600
            )
            partial.rename(rootfs)
    progress(f"importing {rootfs.name} as {tag}")
    repository, _, own_tag = tag.partition(":")
    api.import_image(src=str(rootfs), repository=repository, tag=own_tag)
    return tag


def base_facts(api: docker.APIClient, base: str) -> dict[str, str]:
    """Python minor, glibc and machine of *base*, from one throw-away container of it."""
    try:
        container = api.create_container(
            base,
            ["python3", "-c", BASE_PROBE],
            network_disabled=True,
            entrypoint=[],
            host_config=api.create_host_config(network_mode="none"),
        )
    except docker.errors.ImageNotFound as exc:
        raise BuildError(f"the base image {base!r} is not on the Docker engine") from exc
    try:
        try:
            api.start(container)
        except docker.errors.APIError as exc:
            raise BuildError(
                f"the base image {base!r} has no usable python3: {exc.explanation}"
            ) from exc
        api.wait(container, timeout=ENGINE_TIMEOUT)
        output = api.logs(container, stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        api.remove_container(container, force=True)
    try:
        return json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BuildError(f"the base image {base!r} cannot run python3: {output[-500:]}") from exc
