"""`qrun demo` end to end: tiny self-made models through convert -> ask -> bench -> report, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.demo import BANNER, DEMO_QUANT

ALL_MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
N_QUESTIONS = 5  # the seed suite


def _run(args: list[str]):
    result = CliRunner().invoke(main, ["demo", *args], catch_exceptions=False)
    return result


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
    assert len(results["runs"]) == len(models)
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
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QRUN_HOME", str(home))
        result = _run(["--threads", "2", "--max-tokens", "4"])
    return home / "demo", result


def test_demo_runs_all_three_models_end_to_end(demo_run):
    out, result = demo_run
    assert result.exit_code == 0, result.output
    _check_outputs(out, ALL_MODELS, result.output, max_tokens=4)


def test_demo_rerun_reuses_checkpoints_and_ggufs(demo_run, monkeypatch):
    out, first = demo_run
    assert first.exit_code == 0, first.output
    gguf = out / "ggufs" / f"deepseek-llm-7b-chat-{DEMO_QUANT}.gguf"
    weights = out / "checkpoints" / "deepseek-llm-7b-chat" / "model.safetensors"
    before = (gguf.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    result = _run(["--out", str(out), "--threads", "2", "--model", "deepseek", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    # Nothing rebuilt: same tokenizer + shape (checkpoint marker matches), GGUF up to date by its manifest.
    assert (gguf.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    _check_outputs(out, ("deepseek-llm-7b-chat",), result.output, max_tokens=4)


def test_demo_bad_options_fail_in_one_line(tmp_path):
    for args, words in ((["--model", "llama-2"], "unknown model"), (["--max-tokens", "0"], "--max-tokens"),
                        (["--threads", "-1"], "--threads")):
        result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), *args])
        assert result.exit_code == 1, result.output
        assert words in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / "d").exists()  # nothing built before the options are checked
