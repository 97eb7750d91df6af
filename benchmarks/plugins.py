"""pytest-cov under plain pytest vs pytest-xdist vs psyduck, in one run.

    python benchmarks/plugins.py [--repeat 3] [--workers 2]

Prints ``name: value`` lines, ratios first (below 1.0 means psyduck is faster),
then the seconds behind them and each command's coverage TOTAL line, which
must be the same for all three.  The suite: a 20-function library and 200
tests that each take 20 ms; pytest-cov comes from the compatibility tests'
plugins (``.ci/cache/compat-site/plugins``, installed by ``.ci/install``).
psyduck's local workers start fresh here (pytest-cov configures workers as
workers), so the ratio includes that start-up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / ".ci" / "cache" / "compat-site" / "plugins"


def make_suite(root: Path) -> Path:
    functions = "\n".join(
        f"def f{i}(x):\n    if x > {i}:\n        return x - {i}\n    return {i} - x\n"
        for i in range(20)
    )
    (root / "mylib").mkdir()
    (root / "mylib" / "__init__.py").write_text(functions)
    for m in range(10):
        body = "import time\nimport mylib\n" + "\n".join(
            f"def test_{i}():\n    time.sleep(0.02)\n    assert mylib.f{(m + i) % 20}({i}) >= 0\n"
            for i in range(20)
        )
        (root / f"test_m{m}.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def timed(path: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PSYDUCK_STANDBY": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--cov=mylib", *args],
        cwd=path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr}")
    total = re.search(r"^TOTAL.*$", done.stdout, re.M)
    return elapsed, total.group(0) if total else "(no TOTAL line)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    if not (PLUGINS / "pytest_cov").is_dir():
        raise SystemExit(f"pytest-cov is not installed in {PLUGINS}: run .ci/install")
    commands = {
        "plain": [],
        "xdist": ["-n", str(options.workers)],
        "psyduck": ["--psyduck", "--psyduck-hosts", f"local:{options.workers}"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = make_suite(Path(tmp))
        best: dict[str, float] = {}
        totals: dict[str, str] = {}
        for round_ in range(options.repeat + 1):  # round 0 warms caches up and is not counted
            for name, args in commands.items():
                elapsed, totals[name] = timed(path, args)
                if round_:
                    best[name] = min(best.get(name, elapsed), elapsed)
    print(f"cov_psyduck_vs_plain: {best['psyduck'] / best['plain']:.2f}")
    print(f"cov_psyduck_vs_xdist: {best['psyduck'] / best['xdist']:.2f}")
    for name in commands:
        print(f"cov_seconds_{name}: {best[name]:.2f}")
    for name in commands:
        print(f"cov_total_{name}: {totals[name]}")


if __name__ == "__main__":
    main()
