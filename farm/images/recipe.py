"""The pure parts of building a project's test image: its name, its Dockerfile, pip's target.

A test image is named by a digest of everything that decides its content (the
interpreter minor, the exact wheel set, the base image's id), so an unchanged
project finds its image under the same tag and reuses it at once, and any
change gives a new tag.  :mod:`farm.images.build` does the effects (pip,
debootstrap, the engine); everything here is computed from values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Repository of built images: ``psyduck-auto/<project>:<digest12>``.
REPOSITORY = "psyduck-auto"
#: Where wheels are copied in the build context and the image (removed after install).
WHEELS_DIR = "wheels"
#: Oldest glibc whose manylinux wheels pip is asked for (manylinux2014).
OLDEST_GLIBC_MINOR = 17


@dataclass(frozen=True, order=True)
class Wheel:
    """One wheel of the image: its distribution name (normalized), version and sha256."""

    name: str
    version: str
    sha256: str


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name: ``Foo_bar.baz`` → ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_of(filename: str, sha256: str) -> Wheel:
    """The :class:`Wheel` a wheel file name (``name-version-...whl``) and hash stand for."""
    if not filename.endswith(".whl") or filename.count("-") < 4:
        raise ValueError(f"{filename!r} is not a wheel file name")
    name, version = filename.split("-")[:2]
    return Wheel(normalize(name), version, sha256)


def inputs_digest(python_minor: str, wheels: Iterable[Wheel], base_id: str) -> str:
    """sha256 of what decides the image's content; the order of *wheels* does not matter."""
    document = {
        "python": python_minor,
        "wheels": [[w.name, w.version, w.sha256] for w in sorted(set(wheels))],
        "base": base_id,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def image_tag(project: str, digest: str) -> str:
    """``psyduck-auto/<project>:<first 12 of digest>``, the project name made a valid repository."""
    repository = re.sub(r"[^a-z0-9]+", "-", project.lower()).strip("-") or "project"
    return f"{REPOSITORY}/{repository}:{digest[:12]}"


def declared_key(python_minor: str, requirements: Iterable[str], base_id: str) -> str:
    """sha256 of what was *asked* for: the cache key from which a resolved tag is reused."""
    document = {"python": python_minor, "requirements": sorted(set(requirements)), "base": base_id}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def pip_target(python_minor: str, machine: str, glibc: str) -> list[str]:
    """``pip download`` arguments that fetch wheels for the container, not for this machine.

    Every manylinux tag the container's glibc (``2.36``) and *machine*
    (``x86_64``) can run, CPython *python_minor* (``3.11``), pure wheels included.
    """
    major, minor = python_minor.split(".")
    glibc_major, glibc_minor = (int(p) for p in glibc.split(".")[:2])
    if glibc_major != 2:
        raise ValueError(f"unexpected glibc version {glibc!r}")
    platforms = [
        f"manylinux_2_{m}_{machine}" for m in range(glibc_minor, OLDEST_GLIBC_MINOR - 1, -1)
    ]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    if machine in ("x86_64", "i686"):
        platforms += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_minor]
    for abi in (f"cp{major}{minor}", "abi3", "none"):
        args += ["--abi", abi]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def dockerfile(base: str) -> str:
    """Install every wheel of the context (the complete resolved set) with no index at all."""
    return f"""\
FROM {base}
COPY {WHEELS_DIR} /tmp/psyduck-wheels
RUN python3 -m pip install --no-index --no-deps --no-cache-dir --no-compile \\
        --break-system-packages /tmp/psyduck-wheels/*.whl \\
    && rm -rf /tmp/psyduck-wheels
ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
CMD ["python3"]
"""


#: Debian suite whose ``python3`` has each minor version (debootstrap's default base).
DEBIAN_SUITES = {"3.11": "bookworm"}
#: What debootstrap installs into the base: an interpreter and pip, nothing else.
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip")


def debian_suite(python_minor: str) -> str:
    """The Debian suite whose python3 is *python_minor*; ValueError says to pass ``--base``."""
    suite = DEBIAN_SUITES.get(python_minor)
    if suite is None:
        known = ", ".join(f"{v} ({s})" for v, s in DEBIAN_SUITES.items())
        raise ValueError(
            f"no Debian release has Python {python_minor} as its python3 (known: {known}); "
            "pass --base IMAGE, a local image with that Python and pip"
        )
    return suite


def rootfs_key(suite: str, packages: Iterable[str]) -> str:
    """The cached rootfs's key: what debootstrap builds (as ``.ci/build-test-image`` keys it)."""
    return hashlib.sha256(f"{suite} {','.join(packages)}\n".encode()).hexdigest()[:12]
