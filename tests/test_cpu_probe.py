"""The repacking check: where llama.cpp's AMX kernels crash, repacking runs with AMX denied (AVX-512 kernels); where
repacking crashes anyway, --repack is one error line, not SIGILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qrun import settings
from qrun.cli import main
from qrun.runner import amx_guard, cpu_probe
from qrun.runner.engine import system_info

_PROBE_THEN_LOAD = """
import json, sys
from qrun.errors import UsageError
from qrun.runner import cpu_probe
from qrun.runner.engine import Engine, system_info
try:
    verdict = cpu_probe.check_repack(system_info(), force_probe=True)
except UsageError as err:
    print(json.dumps({"refused": err.message}))
    sys.exit(0)
with Engine.load(sys.argv[1], n_ctx=256, n_threads=1, repack=True) as engine:
    generation = engine.generate(engine.tokenize("hello world, " * 8), max_tokens=2)
    list(generation)
    print(json.dumps({"verdict": verdict, "gen_tokens": generation.stats.gen_tokens,
                      "amx_denied": engine.amx_denied}))
"""


def test_probe_verdict_is_cached_and_decides_whether_repack_may_load(tiny_gguf):
    # force the probe whatever this CPU is: its verdict must agree with what a real repacked load then does (in a
    # child process: where AMX traps, the verdict makes the process deny itself AMX for good)
    child = subprocess.run(
        [sys.executable, "-c", _PROBE_THEN_LOAD, str(tiny_gguf("deepseek-llm-7b-chat", "Q4_0"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr  # a SIGILL here would mean the verdict let a crashing load through
    got = json.loads(child.stdout.strip().splitlines()[-1])
    cached = json.loads((settings.qrun_home() / "cpu-probe.json").read_text(encoding="utf-8"))["verdict"]
    if "refused" in got:
        assert not cached["repack_ok"] and not cached.get("repack_without_amx_ok")
        assert "crash" in got["refused"]
    else:
        assert got["verdict"]["probed"] is True and got["gen_tokens"] >= 1
        # where AMX traps (an Intel VM that advertises it without enabling it) the verdict says so and the load
        # ran with AMX denied; where it works or is absent (AMD EPYC), nothing was denied
        assert got["amx_denied"] is got["verdict"]["amx_denied"] is (not cached["repack_ok"])


def _cache_verdict(verdict: dict) -> None:
    """Leave the verdict a probe on this machine would have cached."""
    key = {
        "cpu": cpu_probe._cpu_model(),
        "llama_cpp_python": cpu_probe.metadata.version("llama-cpp-python"),
        "system_info": system_info(),
        "probe_version": cpu_probe._PROBE_VERSION,
    }
    settings.qrun_home().mkdir(parents=True, exist_ok=True)
    (settings.qrun_home() / "cpu-probe.json").write_text(json.dumps({"key": key, "verdict": verdict}), encoding="utf-8")


@pytest.mark.skipif(not amx_guard.supported(), reason="the AMX guard is for Linux x86-64")
def test_amx_guard_fails_only_the_amx_request():
    plain = subprocess.run(
        [sys.executable, "-c", "from qrun.runner import amx_guard as g; print(g.amx_request_denied())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if plain.stdout.strip() != "False":
        pytest.skip("this kernel refuses AMX anyway: nothing for the guard to change")
    code = (
        "import os; from qrun.runner import amx_guard; "
        "assert amx_guard.deny_amx() and amx_guard.deny_amx(); "
        "assert amx_guard.amx_request_denied(); "
        "assert os.getpid() > 0 and os.listdir('.') is not None; print('ok')"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr


@pytest.mark.skipif(not amx_guard.supported(), reason="the AMX guard is for Linux x86-64")
def test_a_cached_amx_only_crash_verdict_repacks_with_amx_denied(tiny_gguf, monkeypatch):
    """Where only AMX crashes, --repack works: the process denies itself AMX and says so (in a child process,
    since the guard lasts for the process)."""
    if "AMX_INT8 = 1" not in system_info():
        pytest.skip("this llama.cpp build has no AMX kernels")
    _cache_verdict({"repack_ok": False, "exit": "SIGILL", "repack_without_amx_ok": True})
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from qrun.cli import main; main()",
            "ask",
            str(tiny_gguf("deepseek-llm-7b-chat", "Q4_0")),
            "hi",
            "--repack",
            "--json",
            "--max-tokens",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout)["settings"]
    assert got["repack"] is True and got["amx_denied"] is True
    assert "AMX is denied to this process" in child.stderr


def test_a_cached_crash_verdict_refuses_repack_in_one_line(tiny_gguf, monkeypatch):
    # the verdict a crashing CPU leaves behind, keyed to this machine: ask must refuse before loading anything
    monkeypatch.setattr(cpu_probe, "_needs_probe", lambda _info: True)
    _cache_verdict({"repack_ok": False, "exit": "SIGILL", "repack_without_amx_ok": False})
    result = CliRunner().invoke(main, ["ask", str(tiny_gguf("deepseek-llm-7b-chat")), "hi", "--repack"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: llama.cpp's repacked weights crash on this CPU")
    assert result.stderr.count("\n") == 1
    # without --repack the same model answers
    ok = CliRunner().invoke(main, ["ask", str(tiny_gguf("deepseek-llm-7b-chat")), "hi", "--max-tokens", "2"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("info, needed", [("CPU : AVX2 = 1 | AMX_INT8 = 1 |", True), ("CPU : AVX2 = 1 |", False)])
def test_only_amx_builds_are_probed(info, needed):
    assert cpu_probe._needs_probe(info) is needed
