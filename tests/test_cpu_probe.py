"""The repacking check: on a CPU where llama.cpp's repacked kernels crash, --repack is one error line, not SIGILL."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qrun import settings
from qrun.cli import main
from qrun.errors import UsageError
from qrun.runner import cpu_probe
from qrun.runner.engine import Engine, system_info


def test_probe_verdict_is_cached_and_decides_whether_repack_may_load(tiny_gguf):
    # force the probe whatever this CPU is: its verdict must agree with what a real repacked load then does
    try:
        verdict = cpu_probe.check_repack(system_info(), force_probe=True)
        crashed = False
    except UsageError as err:
        crashed = True
        assert "SIGILL" in err.message or "crash" in err.message
    cache = json.loads((settings.qrun_home() / "cpu-probe.json").read_text(encoding="utf-8"))
    assert cache["verdict"]["repack_ok"] is (not crashed)
    if not crashed:
        assert verdict["probed"] is True
        with Engine.load(tiny_gguf("deepseek-llm-7b-chat", "Q4_0"), n_ctx=256, n_threads=1, repack=True) as engine:
            generation = engine.generate(engine.tokenize("hello world, " * 8), max_tokens=2)
            list(generation)
            assert generation.stats.gen_tokens >= 1


def test_a_cached_crash_verdict_refuses_repack_in_one_line(tiny_gguf, monkeypatch):
    # the verdict a crashing CPU leaves behind, keyed to this machine: ask must refuse before loading anything
    monkeypatch.setattr(cpu_probe, "_needs_probe", lambda _info: True)
    key = {"cpu": cpu_probe._cpu_model(), "llama_cpp_python": cpu_probe.metadata.version("llama-cpp-python"),
           "system_info": system_info()}
    settings.qrun_home().mkdir(parents=True, exist_ok=True)
    (settings.qrun_home() / "cpu-probe.json").write_text(
        json.dumps({"key": key, "verdict": {"repack_ok": False, "exit": "SIGILL"}}), encoding="utf-8")
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
