"""The project imports in a container as on the user's machine: editable installs baked
into the image, ``src/`` layouts, ``importlib.metadata`` and the image's own ``PYTHONPATH``.

The image is real: derived from the test image with ``docker build --network none``, the
project installed editable by pip (``pip install -e``) at the very path the suite has
on this machine, as a developer builds an image of a checkout, plus a package laid
out as ``setup.py develop`` leaves one (an ``.egg-info`` inside the project, named by a
``.pth``), and ``ENV PYTHONPATH`` naming a directory of the image.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_pytest
from tests.farm_hosts.hostlib import psyduck_session

pytestmark = pytest.mark.docker

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "proj"
version = "1.2.3"
"""

#: The project as the image's build saw it; the suite then changes its code.
BAKED = {
    "pyproject.toml": PYPROJECT,
    "src/proj/__init__.py": "VALUE = 'baked into the image'\n",
    "vendor/legacy_pkg/__init__.py": "NAME = 'legacy'\n",
    "vendor/legacy_pkg.egg-info/PKG-INFO": (
        "Metadata-Version: 2.1\nName: legacy_pkg\nVersion: 0.5\n"
    ),
}

DOCKERFILE = """\
FROM {base}
COPY extra /opt/extra
COPY proj {root}
RUN python3 -m pip install --quiet --no-build-isolation --no-index --no-deps \\
        --break-system-packages -e {root} \\
    && echo {root}/vendor > /usr/local/lib/python3.11/dist-packages/legacy.pth
ENV PYTHONPATH=/opt/extra
"""

#: Imports inside the tests: this machine, which collects the suite, has none of them.
IMPORTS = """
import importlib.metadata
import os
import pathlib

ROOT = pathlib.Path(__file__).parents[1]


def test_the_editable_project_is_the_current_code():
    import proj

    assert proj.VALUE == "the working tree"
    assert pathlib.Path(proj.__file__) == ROOT / "src" / "proj" / "__init__.py"


def test_metadata_of_the_project_and_of_an_egg_info_inside_it():
    import legacy_pkg

    assert importlib.metadata.version("proj") == "1.2.3"
    assert importlib.metadata.version("legacy_pkg") == "0.5"
    assert legacy_pkg.NAME == "legacy"


def test_the_images_pythonpath_is_extended():
    import extra_mod

    assert extra_mod.WHERE == "the image"
    assert os.environ["PYTHONPATH"].split(":") == ["/opt/extra", "/opt/psyduck"]
"""


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@pytest.fixture(scope="module")
def editable_image(
    docker_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """(image, project root): the project installed editable at its own path."""
    root = tmp_path_factory.mktemp("editable") / "proj"
    context = tmp_path_factory.mktemp("context")
    write(context / "proj", BAKED)
    write(context / "extra", {"extra_mod.py": "WHERE = 'the image'\n"})
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=docker_image, root=root))
    tag = f"psyduck-test-editable:{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        ["docker", "build", "--network", "none", "--quiet", "--tag", tag, str(context)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    try:
        yield tag, root
    finally:
        subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, timeout=120)


def test_an_editable_install_in_the_image_imports_the_working_tree(editable_image):
    image, root = editable_image
    write(
        root,
        {
            **BAKED,
            "src/proj/__init__.py": "VALUE = 'the working tree'\n",
            "tests/test_imports.py": IMPORTS,
        },
    )
    done = psyduck_session(root, "--psyduck-hosts", "docker:2", "--psyduck-image", image, "-rA")
    assert done.returncode == 0, done.output
    assert "3 passed" in done.output.splitlines()[-1], done.output


SRC_LAYOUT = {
    "src/mylib/__init__.py": "def answer():\n    return 42\n",
    "tests/test_lib.py": (
        "import importlib.util\n"
        "import mylib\n\n"
        "def test_answer():\n    assert mylib.answer() == 42\n\n"
        "def test_from_src():\n"
        "    assert mylib.__file__.endswith('src/mylib/__init__.py')\n"
    ),
}


@pytest.mark.parametrize(
    ("ini", "code"),
    [("[pytest]\npythonpath = src\n", 0), ("[pytest]\n", 2)],
    ids=["pythonpath-src", "no-pythonpath"],
)
def test_a_src_layout_behaves_as_in_plain_pytest(docker_image, suite, ini, code):
    path = suite({**SRC_LAYOUT, "pytest.ini": ini})
    plain = run_pytest(path, "-p", "no:cacheprovider")
    farm = psyduck_session(path, "--psyduck-hosts", "docker:2", "--psyduck-image", docker_image)
    assert plain.returncode == farm.returncode == code, farm.output
    last = farm.output.strip().splitlines()[-1].split(" in ")[0].strip("= ")
    assert last == plain.stdout.strip().splitlines()[-1].split(" in ")[0].strip("= ")
