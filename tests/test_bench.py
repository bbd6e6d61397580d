"""`qrun bench` end to end on the three tiny models: real worker processes, a real crash, a real Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun import settings
from qrun.cli import main

MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
QUANT = "Q4_K_M"
QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]


@pytest.fixture(scope="module")
def ggufs(tiny_ggufs, tmp_path_factory) -> Path:
    """A ggufs folder holding the three tiny models under their `qrun convert` names."""
    folder = tmp_path_factory.mktemp("bench-ggufs")
    for model in MODELS:
        (folder / f"{model}-{QUANT}.gguf").symlink_to(tiny_ggufs[model][QUANT])
    return folder


@pytest.fixture()
def two_question_suite(tmp_path) -> Path:
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "two", seed["questions"][2:4]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    return path


def _events(out: Path) -> list[dict]:
    path = out / "measurements.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def test_bench_three_tiny_models_end_to_end(ggufs, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--ggufs",
            str(ggufs),
            "--out",
            str(out),
            "--quant",
            QUANT,
            "--threads",
            "1",
            "--repeat",
            "2",
            "--max-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert doc["schema"] == "qrun-bench-results" and doc["schema_version"] == 1 and doc["partial"] is False
    assert doc["command"].startswith("qrun bench --ggufs") and doc["config"]["repeat"] == 2
    m = doc["machine"]
    assert m["logical_cores"] >= 1 and m["ram_bytes"] > 0 and m["cpu_model"] and m["qrun_version"]
    assert "CPU :" in m["llama_cpp_system_info"]  # from qrun.runner.engine.system_info()
    assert sorted(r["model"] for r in doc["runs"]) == sorted(MODELS)
    for run in doc["runs"]:
        assert run["status"] == "ok" and run["failure"] is None
        requested = {k: v for k, v in run["settings"].items() if k != "source"}
        assert requested == {
            "quant": None,
            "n_threads": 1,
            "n_threads_batch": 1,
            "n_ctx": None,
            "use_mmap": True,
            "repack": False,
            "flash_attn": False,
            "kv_type": "f16",
        }
        assert run["settings_source"] == {
            "quant": "flag",
            "n_threads": "flag",
            "n_threads_batch": "flag",
            "repack": "default",
            "use_mmap": "default",
            "n_ctx": "default",
            "flash_attn": "default",
            "kv_type": "default",
        }
        effective = run["effective_settings"]
        # the context is sized to the work: the longest seed question's prompt + --max-tokens, in 256s
        assert effective["n_threads"] == 1 and effective["source"]["n_ctx"] == "work"
        assert effective["n_ctx"] % 256 == 0 and 256 <= effective["n_ctx"] <= 1024
        assert run["gguf_size_bytes"] == Path(run["gguf"]).stat().st_size
        assert run["load_s"] > 0 and 0 < run["peak_anon_bytes"] <= run["peak_rss_bytes"]
        assert len(run["load_samples"]) == 2 and run["load_spread"]["n"] == 2  # a fresh load per repetition
        assert run["noise"]["samples"] == 2 + 5 * 2 and run["noisy"] == (run["noise"]["noisy"] > 0)
        assert "mmap" in run["memory_note"]
        assert [q["question_id"] for q in run["questions"]] == [f"seed-{i}" for i in range(1, 6)]
        for q in run["questions"]:
            reps = q["repetitions"]
            assert len(reps) == 2 and q["answers_identical"]  # greedy, fixed seed
            for rep in reps:
                assert rep["prompt_tokens"] > 10 and rep["ttft_s"] > 0 and 1 <= rep["gen_tokens"] <= 4
                assert rep["stop_reason"] in ("eos", "stop_token", "max_tokens")
                assert rep["prompt_tokens_per_s"] == pytest.approx(rep["prompt_tokens"] / rep["ttft_s"])
                assert rep["total_s"] >= rep["ttft_s"] and rep["decode_s"] == pytest.approx(
                    rep["total_s"] - rep["ttft_s"]
                )
                if rep["gen_tokens"] > 1:  # decode-only rate: tokens after the first / time after the first
                    assert rep["gen_tokens_per_s"] > 0
                    assert (rep["gen_tokens"] - 1) / rep["gen_tokens_per_s"] <= rep["decode_s"] * 1.0001
                    assert (rep["gen_tokens"] - 1) / rep["gen_tokens_per_s"] >= rep["decode_s"] * 0.5
                assert rep["zh_chars_per_s"] == pytest.approx(rep["zh_chars"] / rep["decode_s"])
                assert len(rep["loadavg"]) == 3 and rep["noisy"] in (True, False, None) and rep["window_s"] > 0
            assert q["median"]["ttft_s"] == pytest.approx(statistics.median(r["ttft_s"] for r in reps))
            assert q["spread"]["ttft_s"]["min"] <= q["median"]["ttft_s"] <= q["spread"]["ttft_s"]["max"]
            assert 0.0 <= q["score"]["score"] <= 1.0 and q["score"]["source"] == "rubric"
        assert run["summary"]["gen_tokens_per_s"] > 0 and run["summary"]["questions_answered"] == 5
    assert all(model in result.stdout for model in MODELS) and "gen tok/s" in result.stdout
    assert len((out / "results.csv").read_text(encoding="utf-8").splitlines()) == 1 + 3 * 5
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "PARTIAL" not in md and "### seed-5" in md and "peak anon" in md
    events = _events(out)
    assert [e["event"] for e in events if e["run_id"] == doc["runs"][0]["run_id"]][:4] == [
        "start",
        "identity",
        "load",
        "warmup",
    ]


def test_a_crashed_and_a_killed_worker_do_not_stop_the_others(ggufs, tmp_path, two_question_suite):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    real = (ggufs / f"qwen-7b-chat-{QUANT}.gguf").resolve().read_bytes()
    (folder / f"qwen-7b-chat-{QUANT}.gguf").write_bytes(real[: len(real) // 2])  # truncated: the load fails
    for model in MODELS[1:]:
        shutil.copy(ggufs / f"{model}-{QUANT}.gguf", folder / f"{model}-{QUANT}.gguf")
    out = tmp_path / "out"
    too_many = settings.physical_cores() + 1
    proc = subprocess.Popen(
        QRUN
        + [
            "bench",
            "--ggufs",
            str(folder),
            "--out",
            str(out),
            "--suite",
            str(two_question_suite),
            "--threads",
            str(too_many),
            "--max-tokens",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr_lines, killed = [], None
    for line in proc.stderr:
        stderr_lines.append(line)
        if "chatglm3-6b/" in line and "worker pid" in line:
            pid = int(line.rsplit("pid", 1)[1])
            deadline = time.time() + 60
            while not any(e["event"] == "load" and e["run_id"].startswith("chatglm3-6b/") for e in _events(out)):
                assert time.time() < deadline, "the chatglm3 worker never loaded"
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
            killed = pid
    stdout = proc.stdout.read()
    assert proc.wait(timeout=120) == 1, "".join(stderr_lines)  # everything written, but a failure is not success
    assert killed
    stderr = "".join(stderr_lines)
    assert f"--threads {too_many} is more than this machine's" in stderr
    assert stderr.splitlines()[-1] == (
        f"Error: 2 of 3 run(s) failed (qwen-7b-chat/{QUANT}/t{too_many}, "
        f'chatglm3-6b/{QUANT}/t{too_many}) — details under "Failures" in '
        f"{out / 'report.md'}"
    )
    assert not (out / ".jobs").exists() and (out / "measurements.jsonl").is_file()
    runs = {r["model"]: r for r in json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]}
    qwen, glm, deepseek = runs["qwen-7b-chat"], runs["chatglm3-6b"], runs["deepseek-llm-7b-chat"]
    assert qwen["status"] == "failed" and qwen["failure"]["exit_code"] != 0
    assert (
        qwen["failure"]["last_stderr"].startswith("Error: ")
        and f"qwen-7b-chat-{QUANT}.gguf" in qwen["failure"]["last_stderr"]
    )
    assert glm["status"] == "failed" and glm["failure"]["signal"] == signal.SIGKILL
    assert "SIGKILL" in glm["failure"]["reason"] and glm["load_s"] > 0  # measured before the kill: kept
    assert deepseek["status"] == "ok" and [q["question_id"] for q in deepseek["questions"]] == ["seed-3", "seed-4"]
    assert "FAILED" in stdout and "ok" in stdout
    assert "## Failures" in (out / "report.md").read_text(encoding="utf-8")


def test_ctrl_c_writes_partial_results(ggufs, tmp_path, two_question_suite):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        QRUN
        + [
            "bench",
            "--ggufs",
            str(ggufs),
            "--out",
            str(out),
            "--suite",
            str(two_question_suite),
            "--threads",
            "1",
            "--repeat",
            "4",
            "--max-tokens",
            "48",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # see below
    deadline = time.time() + 90
    while not any(e["event"] == "rep" for e in _events(out)):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # (SIGINT restored above: a suite run as `cmd &` starts with it ignored)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Interrupted." in stderr and "partial results written" in stderr
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert doc["partial"] is True and len(doc["runs"]) == 1
    run = doc["runs"][0]
    assert run["status"] == "interrupted" and run["questions"]
    assert run["questions"][0]["repetitions"]  # what was measured before Ctrl-C is kept
    assert "PARTIAL RESULTS" in (out / "report.md").read_text(encoding="utf-8")


def test_no_converted_models_names_the_convert_command(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--ggufs", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no converted models" in result.output and "qrun convert" in result.output
    result = CliRunner().invoke(main, ["bench", "qwen", "--ggufs", str(tmp_path), "--quant", "Q4_0"])
    assert result.exit_code == 1 and "run `qrun convert qwen --quant Q4_0`" in result.output
    result = CliRunner().invoke(main, ["bench", "--threads", "0,x", "--ggufs", str(tmp_path)])
    assert result.exit_code == 1 and "--threads must be a whole number of threads" in result.output


def test_earlier_results_are_kept_unless_force(ggufs, tmp_path, two_question_suite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}", encoding="utf-8")
    args = [
        "bench",
        "deepseek",
        "--ggufs",
        str(ggufs),
        "--out",
        str(out),
        "--suite",
        str(two_question_suite),
        "--threads",
        "1",
        "--max-tokens",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {out / 'results.json'} already holds earlier results"
        " — give --out NEW_DIR, or --force to replace them\n"
    )
    assert (out / "results.json").read_text(encoding="utf-8") == "{}"
    result = CliRunner().invoke(main, args + ["--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"][0]["status"] == "ok"
    assert not (out / ".jobs").exists() and (out / "measurements.jsonl").read_text(encoding="utf-8")


def test_out_that_is_a_file_and_threads_zero(tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["bench", "--out", str(a_file)])
    assert result.exit_code == 1 and result.stderr.startswith("Error:") and result.stderr.count("\n") == 1
    from qrun.bench.run import parse_threads

    assert parse_threads("0") == [settings.physical_cores()]
    assert parse_threads(f"0,{settings.physical_cores()},1") == [settings.physical_cores(), 1]
    help_text = " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())
    assert ", ".join(settings.QUANTS) in help_text and "[default: 512]" in help_text
