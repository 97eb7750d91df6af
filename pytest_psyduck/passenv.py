"""The invoker's environment variables that workers in containers get (``--psyduck-pass-env``).

Local workers inherit the whole environment of the pytest that started them.  A
container starts from its image's environment instead, so a suite reading a
variable its invoker set (``FOO=1 pytest --psyduck``) would see it locally and
not there.  As tox's ``pass_env`` does, the invoker names what to pass, with
``fnmatch`` patterns, and a short fixed set passes by default.  The variables are
taken here, in the user's process, and travel in the run manifest
(:attr:`farm.manifest.WorkerSpec.env`): a remote farm's own environment never
mixes in.  The farm's credentials never pass, whatever the patterns say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import pytest

from farm.tokens import without_credentials

#: Passed to every worker without being asked, as tox passes a fixed set: what
#: says where the run happens (``CI``), locale and time zone, hash seed, terminal
#: and colour settings, and pytest's own options from the environment, so that a
#: worker runs the suite under the invoker's configuration.
DEFAULT_PASS_ENV = (
    "CI",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "PYTHONHASHSEED",
    "TERM",
    "COLUMNS",
    "NO_COLOR",
    "FORCE_COLOR",
    "PY_COLORS",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
)


def pass_env_patterns(config: pytest.Config) -> list[str]:
    """The defaults, then ini ``psyduck_pass_env`` (one a line), then ``--psyduck-pass-env``."""
    given = [*config.getini("psyduck_pass_env"), *(config.getoption("psyduck_pass_env") or ())]
    return [*DEFAULT_PASS_ENV, *(p.strip() for p in given if p.strip())]


def passed_environment(environ: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The variables of *environ* whose names match one of *patterns*, less credentials.

    Matching is case-sensitive, as variable names are on POSIX.
    """
    patterns = list(patterns)
    chosen = {
        name: value
        for name, value in environ.items()
        if any(fnmatchcase(name, pattern) for pattern in patterns)
    }
    return without_credentials(chosen)
