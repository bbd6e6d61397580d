"""Faults and hostile input for bench, tune, report, text input and numeric options: real processes, real signals,
real files. Each case ends in exit code 1 and one `Error:` line (or works), leaves no partial file, and keeps
earlier outputs byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrun import settings

QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
DEEPSEEK = "deepseek-llm-7b-chat"


def qrun(*args, input: bytes | None = None, env: dict | None = None, timeout: float = 120,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `qrun ARGS...` in a fresh process; args may be bytes (passed to the OS as they are)."""
    return subprocess.run(QRUN + list(args), input=input, capture_output=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr
    return stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative name -> bytes): compared before and after a fault."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- numbers ---------------------------------------------------------------------------------------------------------

TOO_MANY = str(settings.max_threads() + 1)


@pytest.mark.parametrize("args", [
    ["--threads", "1000000"], ["--threads", TOO_MANY], ["--threads-batch", "1000000"],
    ["--threads", "99999999999999999999999999"], ["--threads-batch", str(2**63)],
    ["--temperature", "nan"], ["--temperature", "inf"], ["--top-p", "nan"], ["--top-p", "-inf"],
])
def test_ask_refuses_absurd_numbers_in_one_line(tiny_gguf, tmp_path, args):
    # 1,000,000 threads reached llama.cpp and ended in std::bad_alloc; NaN sampling passed every check
    gguf = tiny_gguf(DEEPSEEK)
    proc = qrun("ask", str(gguf), "你好", "--max-tokens", "2", *args)
    assert_one_error_line(proc, args[0])
    assert proc.stdout == b""


def test_qrun_threads_env_above_the_bound_is_one_line(tiny_gguf):
    proc = qrun("ask", str(tiny_gguf(DEEPSEEK)), "你好", "--max-tokens", "2", env={"QRUN_THREADS": "1000000"})
    assert_one_error_line(proc, "QRUN_THREADS=1000000", f"({settings.max_threads()}:")
    proc = qrun("ask", str(tiny_gguf(DEEPSEEK)), "你好", "--max-tokens", "2", env={"QRUN_THREADS": "²"})
    assert_one_error_line(proc, "QRUN_THREADS")


def test_the_bound_is_generous_but_finite():
    assert settings.max_threads() == min(4 * (os.cpu_count() or 1), settings.THREADS_CAP)
    assert settings.check_threads(str(settings.max_threads())) == settings.max_threads()
    assert settings.check_thread_list("0, 1") == [0, 1]


@pytest.mark.parametrize("args", [
    ["bench", "--threads", f"1,{TOO_MANY}"], ["bench", "--threads-batch", "1000000"],
    ["tune", "--threads", "1000000"], ["tune", "--threads-batch", TOO_MANY],
    ["chat", DEEPSEEK, "--threads", "1000000"], ["chat", DEEPSEEK, "--top-p", "nan"],
])
def test_every_command_shares_the_thread_bound(tmp_path, args):
    proc = qrun(*args, "--ggufs", str(tmp_path), input=b"", cwd=tmp_path)
    assert_one_error_line(proc, "--t")
    assert not (tmp_path / "bench-results").exists()


@pytest.mark.parametrize("tool", ["bandwidth", "compute_peak", "realscale"])
def test_measurement_tools_share_the_thread_bound(tool):
    proc = subprocess.run([sys.executable, "-m", f"qrun.bench.{tool}", "--threads", "1000000"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # argparse's usage error
    assert f"is more threads than qrun allows on this machine ({settings.max_threads()}" in proc.stderr
