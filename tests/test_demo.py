"""`qrun demo` end to end: tiny self-made models through convert -> ask -> bench -> report, offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.demo.cli import BANNER, DEMO_QUANT

ALL_MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
N_QUESTIONS = 5  # the seed suite


@dataclass
class DemoRun:
    exit_code: int
    output: str  # stdout: what the demo shows the user
    stderr: str  # progress of the steps


def _run(args: list[str], *, home: Path) -> DemoRun:
    """`qrun demo ARGS` in a fresh process (a native crash in llama.cpp then fails this test, not the session)."""
    env = {**os.environ, "QRUN_HOME": str(home)}
    env.pop("QRUN_THREADS", None)
    proc = subprocess.run(
        [sys.executable, "-c", "from qrun.cli import main; main()", "demo", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=600,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr)


def _ok(run: DemoRun) -> None:
    if run.exit_code == -signal.SIGILL:
        pytest.fail(
            "llama.cpp died of SIGILL: its AMX Q4_K kernels trap on a CPU that advertises AMX without "
            "enabling it (llama_model_params.use_extra_bufts=False or a build without AMX avoids them)"
        )
    assert run.exit_code == 0, f"exit {run.exit_code}\n--- stdout\n{run.output}\n--- stderr\n{run.stderr[-3000:]}"


def _check_outputs(out: Path, models: tuple[str, ...], output: str, *, max_tokens: int) -> None:
    # What the user is told: the banner at start and end, one header + answer per model, the table, where the
    # files are, the elapsed time, the next commands.
    assert output.count(BANNER) == 2
    for model in models:
        assert f"── {model} ({DEMO_QUANT}" in output
    assert "accuracy" in output and "gen tok/s" in output
    assert str(out / "bench" / "results.json") in output and str(out / "bench" / "report.md") in output
    assert "total " in output and "qrun convert" in output and "qrun bench" in output

    for model in models:
        checkpoint = out / "checkpoints" / model
        assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
        gguf = out / "ggufs" / f"{model}-{DEMO_QUANT}.gguf"
        assert gguf.is_file() and gguf.stat().st_size > 0
        assert not (out / "ggufs" / f"{model}-F16.gguf").exists()  # the intermediate is not kept
    for name in ("results.json", "results.csv", "report.md"):
        assert (out / "bench" / name).is_file(), name

    report = (out / "bench" / "report.md").read_text(encoding="utf-8")
    results = json.loads((out / "bench" / "results.json").read_text(encoding="utf-8"))
    assert {run["model"] for run in results["runs"]} == set(models)
    # --threads 2: the demo's bench sweeps 1 and 2 threads, so its report has both plots
    assert sorted((run["model"], run["settings"]["n_threads"]) for run in results["runs"]) == sorted(
        (model, threads) for model in models for threads in (1, 2)
    )
    plots = [out / "bench" / "accuracy-vs-speed.png", out / "bench" / "speed-vs-threads.png"]
    assert f"Plots:   {plots[0]}, {plots[1]} (embedded in the report)" in output
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({plot.name})" in report
    assert results["config"]["max_tokens"] == max_tokens and results["partial"] is False
    for run in results["runs"]:
        assert run["model"] in report
        assert run["status"] == "ok", run.get("failure")
        assert run["quant"] == DEMO_QUANT
        assert run["gguf_size_bytes"] > 0 and run["load_s"] > 0 and run["peak_rss_bytes"] > 0
        assert [q["question_id"] for q in run["questions"]] == [f"seed-{i}" for i in range(1, N_QUESTIONS + 1)]
        for question in run["questions"]:
            median = question["median"]
            assert median["prompt_tokens"] > 0 and median["ttft_s"] > 0 and median["total_s"] > 0
            assert 0 < median["gen_tokens"] <= max_tokens
            assert median["gen_tokens_per_s"] > 0 and median["prompt_tokens_per_s"] > 0
            assert 0.0 <= question["score"]["score"] <= 1.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `qrun demo` of all three models into its default folder, QRUN_HOME/demo (max-tokens 4 keeps it ~20 s)."""
    home = tmp_path_factory.mktemp("demo-home")
    return home / "demo", _run(["--threads", "2", "--max-tokens", "4"], home=home)


def test_demo_runs_all_three_models_end_to_end(demo_run):
    out, run = demo_run
    _ok(run)
    _check_outputs(out, ALL_MODELS, run.output, max_tokens=4)
    # Step progress goes to stderr, the demo's own output to stdout.
    assert "[convert]" in run.stderr and "[convert]" not in run.output
    assert "qrun bench:" in run.stderr


def test_demo_rerun_reuses_checkpoints_and_ggufs(demo_run, tmp_path):
    out, first = demo_run
    _ok(first)
    gguf = out / "ggufs" / f"deepseek-llm-7b-chat-{DEMO_QUANT}.gguf"
    weights = out / "checkpoints" / "deepseek-llm-7b-chat" / "model.safetensors"
    before = (gguf.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    run = _run(["--out", str(out), "--threads", "2", "--model", "deepseek", "--max-tokens", "4"], home=tmp_path)
    _ok(run)
    # Nothing rebuilt: same tokenizer + shape (checkpoint marker matches), GGUF up to date by its manifest.
    assert (gguf.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    assert "already built" in run.stderr and "up to date" in run.stderr
    _check_outputs(out, ("deepseek-llm-7b-chat",), run.output, max_tokens=4)


def test_demo_quant_option_one_model(tmp_path):
    # --quant picks another type (F16: no quantize step, the F16 GGUF is the output) and --model runs one model.
    out = tmp_path / "demo"
    run = _run(
        ["--out", str(out), "--threads", "2", "--model", "chatglm3", "--max-tokens", "3", "--quant", "F16"],
        home=tmp_path,
    )
    _ok(run)
    assert "── chatglm3-6b (F16" in run.output and "qwen-7b-chat" not in run.output
    assert (out / "ggufs" / "chatglm3-6b-F16.gguf").is_file()
    assert not (out / "checkpoints" / "qwen-7b-chat").exists()
    results = json.loads((out / "bench" / "results.json").read_text(encoding="utf-8"))
    assert [(r["model"], r["quant"], r["settings"]["n_threads"], r["status"]) for r in results["runs"]] == [
        ("chatglm3-6b", "F16", 1, "ok"),
        ("chatglm3-6b", "F16", 2, "ok"),
    ]
    assert all(0 < q["median"]["gen_tokens"] <= 3 for q in results["runs"][0]["questions"])


def test_demo_bad_options_fail_in_one_line(tmp_path):
    # Checked before anything is built, so CliRunner in-process is safe and fast here.
    for args, words in (
        (["--model", "llama-2"], "unknown model"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--threads", "-1"], "--threads"),
        (["--quant", "Q3_K"], "--quant"),
    ):
        result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), *args])
        assert result.exit_code == 1, result.output
        assert words in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "d").exists()  # nothing built before the options are checked
