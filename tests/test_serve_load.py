"""tools/perf/serve_load.py, the load script behind docs/performance.md's `qrun serve` figures, run as a user runs it:
a real subprocess that starts a real `qrun serve` on a tiny GGUF and streams real requests through the `openai`
client. Small settings (1 and 2 clients, one 4-token request each) keep each run to a few seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qrun.convert.pipeline import convert_model
from qrun.demo.checkpoints import build_demo_checkpoints
from qrun.demo.cli import DEMO_QUANT

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--clients", "1,2", "--requests", "1", "--max-tokens", "4", "--threads", "1"]
TABLE_HEADER = (  # docs/performance.md quotes this table
    "| clients | requests | aggregate tok/s | latency p50 s | latency p95 s | TTFT p50 s | TTFT p95 s "
    "| load avg | noise |"
)


def run_load(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.perf.serve_load", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=180,
    )


def servers_naming(text: str) -> list[str]:
    """Command lines of live processes that mention text (a folder unique to the test): a `qrun serve` left behind."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline and "serve" in cmdline:
            found.append(cmdline)
    return found


def assert_measured(proc: subprocess.CompletedProcess, model: str) -> dict:
    """The markdown table, a blank line, then the JSON; every request ran to --max-tokens (stops biased away)."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    table, _, document = proc.stdout.partition("\n\n")
    result = json.loads(document)
    assert result["model"] == model
    assert result["setup"]["max_tokens"] == 4 and result["setup"]["requests_per_client"] == 1
    assert any(f"loaded {model}" in line for line in result["setup"]["server_log"])
    levels = result["levels"]
    assert [level["clients"] for level in levels] == [1, 2]
    assert [level["requests"] for level in levels] == [1, 2]
    # exactly requests x max_tokens: a stop token not biased away (a wrong vocabulary's ids) would end one early
    assert [level["completion_tokens"] for level in levels] == [4, 8]
    for level in levels:
        assert level["aggregate_tokens_per_s"] > 0 and level["wall_s"] > 0
        assert 0 < level["latency_p50_s"] <= level["latency_p95_s"]
        assert level["ttft_p50_s"] <= level["ttft_p95_s"] <= level["latency_p95_s"]
        assert "noisy" in level["noise"] and level["noise"]["window_s"] > 0
    lines = table.splitlines()
    assert lines[0] == TABLE_HEADER and lines[1].startswith("|---:|")
    assert len(lines) == 2 + len(levels)
    for line, level in zip(lines[2:], levels, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:3] == [str(level["clients"]), str(level["requests"]), f"{level['aggregate_tokens_per_s']:.1f}"]
        assert cells[8]  # the noise verdict (measure.noise_mark)
    return result


def test_load_script_on_a_tiny_gguf(tiny_gguf, tmp_path):
    gguf = tmp_path / "served" / "deepseek.gguf"  # a path no other test's server names (the orphan check below)
    gguf.parent.mkdir()
    gguf.symlink_to(tiny_gguf("deepseek-llm-7b-chat"))
    proc = run_load(str(gguf), *SMALL)
    assert_measured(proc, "deepseek-llm-7b-chat")
    assert servers_naming(str(gguf.parent)) == []


@pytest.fixture()
def demo_ggufs(tmp_path) -> Path:
    """`qrun demo`'s tiny DeepSeek (its own ~1,100-token vocabulary) converted as the demo converts it."""
    checkpoints = build_demo_checkpoints(tmp_path / "checkpoints", models=("deepseek-llm-7b-chat",))
    out = tmp_path / "demo-ggufs"
    convert_model("deepseek-llm-7b-chat", from_dir=checkpoints["deepseek-llm-7b-chat"], quant=DEMO_QUANT, out_dir=out)
    return out


def test_load_script_on_a_demo_vocabulary(demo_ggufs):
    # the released model's stop id (100001) is past this vocabulary's end: the server would answer 400 to it
    proc = run_load("deepseek", "--ggufs", str(demo_ggufs), *SMALL)
    assert_measured(proc, "deepseek-llm-7b-chat")
    assert servers_naming(str(demo_ggufs)) == []


def assert_one_error_line(proc: subprocess.CompletedProcess, *parts: str) -> None:
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for part in parts:
        assert part in lines[0]


def test_a_server_error_ends_the_run_in_one_line(demo_ggufs):
    # the server starts, then refuses to load the model for the first request (HTTP 400)
    proc = run_load("deepseek", "--ggufs", str(demo_ggufs), "--ctx", "100000", *SMALL)
    assert_one_error_line(proc, "qrun serve answered HTTP 400", "--ctx 100000 is more than", "use --ctx")
    assert servers_naming(str(demo_ggufs)) == []


def test_a_server_that_does_not_start_ends_the_run_in_one_line(tmp_path):
    empty = tmp_path / "no-ggufs"
    empty.mkdir()
    proc = run_load("qwen", "--ggufs", str(empty), *SMALL)
    assert_one_error_line(proc, "qrun serve did not start", "qwen-7b-chat is not converted", "run `qrun convert")
    assert servers_naming(str(empty)) == []


def test_sigterm_stops_the_server_too(demo_ggufs):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.perf.serve_load", "deepseek", "--ggufs", str(demo_ggufs)]
        + ["--clients", "1", "--requests", "50", "--max-tokens", "2000", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not servers_naming(str(demo_ggufs)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert servers_naming(str(demo_ggufs)), "the script started no server"
        time.sleep(2)  # the server loads the model and the requests run
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and stdout == ""
    assert stderr.strip() == "Interrupted."
    assert servers_naming(str(demo_ggufs)) == []
