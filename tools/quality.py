"""The quality gate `.ci/run` runs before the tests: ruff (lint and format check), mypy, the layers contract.

    python -m tools.quality          # from the root of a checkout, with `pip install -e '.[test]'` done

mypy checks the package as it is installed (qrun, qrun.runner, qrun.convert, qrun.bench): setup.cfg maps the
card's top-level folders into the qrun namespace, which mypy cannot follow from the source tree, so the gate links
the folders into that shape in a temporary directory first. Exits 1 when any check fails.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["qrun", "runner", "convert", "bench", "tools", "tests"]


def _package_tree(into: Path) -> Path:
    """<into>/qrun laid out as the installed package (setup.cfg's package_dir), made of symlinks."""
    options = configparser.ConfigParser()
    options.read(ROOT / "setup.cfg", encoding="utf-8")
    mapping = dict(
        line.replace(" ", "").split("=") for line in options["options"]["package_dir"].split("\n") if line.strip()
    )
    root = into / "qrun"
    root.mkdir()
    for entry in (ROOT / mapping["qrun"]).iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "qrun":
            (root / package.split(".", 1)[1]).symlink_to(ROOT / folder)
    return into


def _run(name: str, command: list[str], **kwargs) -> bool:
    print(f"== {name}: {' '.join(command)}", flush=True)
    ok = subprocess.run(command, **kwargs).returncode == 0
    print(f"== {name}: {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def main() -> int:
    os.chdir(ROOT)
    results = [
        _run("ruff lint", [sys.executable, "-m", "ruff", "check", *LINTED]),
        _run("ruff format", [sys.executable, "-m", "ruff", "format", "--check", *LINTED]),
    ]
    with tempfile.TemporaryDirectory(prefix="qrun-mypy-") as tmp:
        tree = _package_tree(Path(tmp))
        results.append(
            _run(
                "mypy",
                [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "qrun"],
                cwd=tree,
            )
        )
    results.append(
        _run(
            "layers contract", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layers.py"]
        )
    )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
