"""Ctrl-C and SIGTERM stop qrun within 2 s even in the middle of one long llama.cpp call, and what was done is kept.

A prompt of ~3,000 tokens on a 6-layer, 512-wide DeepSeek shape takes several seconds on one thread, all inside
llama_decode calls of 512 tokens; before llama.cpp's abort callback was wired in, a signal waited for the call to
return. Each test starts a real `qrun` process, sends a real signal while that evaluation runs, and times the exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
MODEL = "deepseek-llm-7b-chat"
# 6 layers of width 512: ~4x the tiny shape's work per token, so a long prompt takes seconds, not a fraction of one
LONG_SHAPE = {"hidden_size": 512, "num_hidden_layers": 6, "intermediate_size": 1408}
LONG_PROMPT = "你好，世界。今天天气怎么样？" * 400  # ~3,200 DeepSeek tokens
STOP_WITHIN_S = 2.0
SIGNAL_AFTER_PROMPT_STARTS_S = 1.0


@pytest.fixture(scope="module")
def long_gguf(tiny_models) -> Path:
    return tiny_models.shaped_gguf("long-prompt", MODEL, LONG_SHAPE, "Q4_0")


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    # SIGINT restored: a suite started as a background job (`pytest &`) would hand it down ignored
    return subprocess.Popen(
        QRUN + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def _wait_until(predicate, proc: subprocess.Popen, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timeout waiting for {what}"
        time.sleep(0.02)


def _has_mapped(pid: int, path: Path) -> bool:
    """True once llama.cpp has mapped the GGUF: the load has started (and takes ~0.3 s for this shape)."""
    try:
        return str(path.resolve()) in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _signal_and_time(proc: subprocess.Popen, sig: int, *, group: bool = False) -> tuple[float, str, str]:
    t0 = time.monotonic()
    if group:  # what a terminal's Ctrl-C does: the whole foreground process group gets it
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return time.monotonic() - t0, stdout, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_ask_during_a_long_prompt_evaluation(long_gguf, tmp_path, sig):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(LONG_PROMPT, encoding="utf-8")
    with open(prompt, encoding="utf-8") as stdin:
        proc = _start(["ask", str(long_gguf), "-", "--threads", "1", "--ctx", "4096", "--max-tokens", "4"], stdin=stdin)
    _wait_until(lambda: _has_mapped(proc.pid, long_gguf), proc, "the load")
    time.sleep(SIGNAL_AFTER_PROMPT_STARTS_S)
    elapsed_s, stdout, stderr = _signal_and_time(proc, sig)
    assert proc.returncode == 130, stderr
    assert elapsed_s < STOP_WITHIN_S, f"stopped {elapsed_s:.2f} s after the signal"
    assert stdout == "", "the signal came after the prompt was evaluated: this test needs a longer prompt"
    assert stderr.strip().splitlines() == ["Interrupted."]  # nothing from llama.cpp, no traceback


def test_uninterrupted_the_prompt_takes_long_enough_to_test(long_gguf):
    """Guards the test above: were the prompt quick, it would pass without ever aborting a decode."""
    result = subprocess.run(
        QRUN + ["ask", str(long_gguf), "-", "--threads", "1", "--ctx", "4096", "--max-tokens", "1", "--json"],
        input=LONG_PROMPT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["ttft_s"] > SIGNAL_AFTER_PROMPT_STARTS_S + STOP_WITHIN_S, stats


def test_ctrl_c_stops_a_long_generation_and_keeps_the_partial_answer(tiny_gguf):
    gguf = tiny_gguf(MODEL)
    proc = _start(
        [
            "ask",
            str(gguf),
            "写一首很长的诗",
            "--threads",
            "1",
            "--ctx",
            "4096",
            "--max-tokens",
            "4000",
            "--temperature",
            "0",
        ],
        start_new_session=True,
    )
    first = proc.stdout.read(8)  # streamed: the answer has begun
    assert first, proc.stderr.read()
    time.sleep(SIGNAL_AFTER_PROMPT_STARTS_S)
    elapsed_s, stdout, stderr = _signal_and_time(proc, signal.SIGINT, group=True)
    assert proc.returncode == 130, stderr
    assert elapsed_s < STOP_WITHIN_S
    assert len(first + stdout) > 100  # ~4 ms a token for a second: the partial answer stays on stdout, cut short
    assert len(first + stdout) < 8000
    assert stderr.strip().splitlines()[-1] == "Interrupted."


def test_ctrl_c_in_chat_stops_the_answer_and_keeps_the_session(long_gguf):
    proc = _start(
        ["chat", str(long_gguf), "--threads", "1", "--ctx", "4096", "--max-tokens", "4"], stdin=subprocess.PIPE
    )
    stopped_at: list[float] = []

    def watch_stderr() -> None:
        for line in proc.stderr:
            if "[answer stopped]" in line:
                stopped_at.append(time.monotonic())

    reader = threading.Thread(target=watch_stderr, daemon=True)
    reader.start()
    proc.stdin.write(LONG_PROMPT + "\n")
    proc.stdin.flush()
    _wait_until(lambda: _has_mapped(proc.pid, long_gguf), proc, "the load")
    time.sleep(SIGNAL_AFTER_PROMPT_STARTS_S)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _wait_until(lambda: stopped_at, proc, "[answer stopped]", timeout_s=30)
    assert stopped_at[0] - t0 < STOP_WITHIN_S
    proc.stdin.write("/reset\n你好\n/exit\n")  # the session goes on after the interrupted answer
    proc.stdin.close()
    stdout = proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    assert stdout.strip(), "the next message got no answer"


@pytest.mark.parametrize(
    "sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c-to-the-group", "sigterm-to-the-parent"]
)
def test_a_signal_stops_bench_during_a_long_prompt_and_marks_it_partial(long_gguf, tmp_path, sig, group):
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "long", [{**seed["questions"][0], "question": LONG_PROMPT}]
    suite = tmp_path / "long.json"
    suite.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    proc = _start(
        ["bench", str(long_gguf), "--out", str(out), "--suite", str(suite), "--threads", "1", "--max-tokens", "4"],
        start_new_session=True,
    )
    stream = out / "measurements.jsonl"
    # the worker's "load" line: next comes the warm-up, which evaluates the long prompt
    _wait_until(
        lambda: stream.exists() and '"event": "load"' in stream.read_text(encoding="utf-8"), proc, "the worker's load"
    )
    time.sleep(SIGNAL_AFTER_PROMPT_STARTS_S)
    elapsed_s, _stdout, stderr = _signal_and_time(proc, sig, group=group)
    assert proc.returncode == 130, stderr
    assert elapsed_s < STOP_WITHIN_S, f"stopped {elapsed_s:.2f} s after the signal"
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert doc["partial"] is True
    assert not (out / ".jobs").exists()
    events = [json.loads(line)["event"] for line in stream.read_text(encoding="utf-8").splitlines()]
    assert events[:3] == ["start", "identity", "load"] and "rep" not in events  # kept: measured before the signal
    assert "partial results written" in stderr
