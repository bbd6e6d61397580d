"""The wheel holds what users run: the qrun package, its commands and the built-in suites, none of the perf tooling
(tools/perf/: real-scale runs, bandwidth, compute peak, the peers, perf suites), which runs from a checkout. And
`python -m qrun` is the same command line as the `qrun` script."""

from __future__ import annotations

import configparser
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
PERF_NAMES = ("realscale", "bandwidth", "compute_peak", "peers", "perf-tg128", "tools/")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def _package_dirs() -> dict[str, Path]:
    """{installed package: its source folder} from setup.cfg's packages and package_dir (a subpackage not named
    there lives in its parent's folder)."""
    lines = [line.split("=") for line in _setup_cfg()["options"]["package_dir"].split("\n") if line.strip()]
    mapped = {name.strip(): ROOT / folder.strip() for name, folder in lines}
    dirs = {}
    for package in _setup_cfg()["options"]["packages"].split():
        parent, _, last = package.rpartition(".")
        dirs[package] = mapped.get(package) or dirs[parent] / last
    return dirs


def test_setup_cfg_installs_only_the_layers():
    packages = _setup_cfg()["options"]["packages"].split()
    assert sorted(packages) == ["qrun", "qrun.bench", "qrun.convert", "qrun.demo", "qrun.runner"]
    for folder in _package_dirs().values():
        assert folder.resolve() != (ROOT / "tools").resolve()
        names = [p.relative_to(ROOT).as_posix() for p in folder.glob("**/*") if "__pycache__" not in p.parts]
        assert not [n for n in names if any(perf in n for perf in PERF_NAMES)], folder


def _can_build_wheels() -> bool:
    # setuptools has bdist_wheel built in from 70.1; before that it comes from the `wheel` package (test extra)
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels(), reason="no bdist_wheel: install the test extra (pip install -e '.[test]')")
def test_the_built_wheel_holds_no_perf_tooling(tmp_path):
    # Built from a copy, so setuptools' build/ and egg-info never touch the checkout (and no stale build/ leaks in).
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "ggufs", "data", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("qrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"qrun", wheel.name.split("-py")[0] + ".dist-info"}
    assert not [n for n in names if any(perf in n for perf in PERF_NAMES)]
    # ...and everything users run: every module of the four packages and the built-in suites
    expected = {
        f"{pkg.replace('.', '/')}/{p.relative_to(folder).as_posix()}"
        for pkg, folder in _package_dirs().items()
        for p in folder.glob("*.py")
    }
    assert expected <= set(names)
    assert "qrun/bench/suites/seed.json" in names and "qrun/cli.py" in names
    assert "qrun/bench/texts/zh_default.txt" in names  # qrun quality's default text


def test_python_dash_m_qrun_is_the_command_line(tmp_path):
    help_run = subprocess.run([sys.executable, "-m", "qrun", "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr
    assert all(f"\n  {cmd} " in help_run.stdout for cmd in ("ask", "bench", "convert", "demo", "tune"))
    missing = tmp_path / "missing.gguf"
    bad = subprocess.run(
        [sys.executable, "-m", "qrun", "ask", str(missing), "hi"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(f"Error: GGUF file not found: {missing} — ") and bad.stderr.count("\n") == 1
