"""`qrun ask` end to end on the tiny GGUFs: model resolution, streaming, --json/--stats/--show-prompt, and every bad
input as one `Error:` line with exit code 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.errors import NotConvertedError, PromptError, UnknownModelError
from qrun.fsutil import sha256_file
from qrun.runner import ask as ask_lib
from qrun.runner import resolve

MODEL = "deepseek-llm-7b-chat"
FAST = ["--threads", "1", "--max-tokens", "8", "--temperature", "0", "--ctx", "512"]


@pytest.fixture
def ggufs(tiny_gguf, tmp_path):
    """A ggufs folder holding the tiny DeepSeek Q4_K_M (and its manifest) under its canonical name."""
    folder = tmp_path / "my-ggufs"
    folder.mkdir()
    src = tiny_gguf(MODEL)
    os.symlink(src, folder / src.name)
    if src.with_suffix(".json").exists():
        os.symlink(src.with_suffix(".json"), folder / src.with_suffix(".json").name)
    return folder


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_resolve_names_aliases_paths(ggufs, tmp_path):
    assert resolve.gguf_for("deepseek", ggufs_dir=ggufs) == ggufs / f"{MODEL}-Q4_K_M.gguf"
    assert resolve.gguf_for("some/file.gguf") == Path("some/file.gguf")
    with pytest.raises(NotConvertedError) as err:
        resolve.gguf_for("qwen", ggufs_dir=ggufs)
    assert f"run `qrun convert qwen-7b-chat --out {ggufs}`" in err.value.one_line()
    with pytest.raises(NotConvertedError) as err:
        resolve.gguf_for("deepseek", quant="q8_0")
    assert "run `qrun convert deepseek-llm-7b-chat --quant Q8_0`" in err.value.one_line()
    with pytest.raises(UnknownModelError) as err:
        resolve.gguf_for("llama-70b")
    assert "chatglm3-6b" in err.value.one_line()


def test_ask_streams_and_reports(ggufs):
    pieces = []
    result = ask_lib.ask(
        "deepseek", "你好", ggufs_dir=ggufs, threads=1, ctx=512, max_tokens=8, temperature=0, on_text=pieces.append
    )
    assert "".join(pieces) == result["answer"]
    assert result["model"] == MODEL and result["sha256"] == sha256_file(ggufs / f"{MODEL}-Q4_K_M.gguf")
    again = ask_lib.ask("deepseek", "你好", ggufs_dir=ggufs, threads=1, ctx=512, max_tokens=8, temperature=0)
    assert again["answer"] == result["answer"]  # greedy is reproducible


def test_cli_streams_only_the_answer(ggufs):
    result = run("ask", "deepseek", "Hello", "--ggufs", str(ggufs), *FAST)
    assert result.exit_code == 0, result.output
    expected = ask_lib.ask(
        "deepseek", "Hello", ggufs_dir=ggufs, threads=1, ctx=512, max_tokens=8, temperature=0, with_sha256=False
    )
    assert result.stdout == expected["answer"] + "\n"
    assert result.stderr == ""


def test_cli_json_and_stats(ggufs):
    result = run("ask", str(ggufs / f"{MODEL}-Q4_K_M.gguf"), "Hello", "--json", "--stats", *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert set(data) >= {"answer", "model", "gguf", "sha256", "stats"}
    assert len(data["sha256"]) == 64
    for field in (
        "load_s",
        "prompt_tokens",
        "prompt_tokens_per_s",
        "ttft_s",
        "gen_tokens",
        "gen_tokens_per_s",
        "total_s",
        "peak_rss_bytes",
        "peak_anon_bytes",
    ):
        assert data["stats"][field] > 0, field
    assert data["stats"]["stop_reason"] in ("eos", "stop_token", "max_tokens")
    for label in ("load", "prompt", "first token", "generated", "peak RSS", "stop reason"):
        assert label in result.stderr


def test_cli_show_prompt(ggufs):
    result = run("ask", "deepseek", "你好", "--ggufs", str(ggufs), "--show-prompt", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"prompt_text", "prompt_token_ids", "tokens"}
    assert data["prompt_text"] == "<｜begin▁of▁sentence｜>User: 你好\n\nAssistant:"
    assert data["prompt_token_ids"][0] == 100000 and data["prompt_token_ids"][-2:] == [77398, 25]
    plain = run("ask", "deepseek", "你好", "--ggufs", str(ggufs), "--show-prompt")
    assert plain.stdout.startswith(data["prompt_text"]) and " ".join(map(str, data["prompt_token_ids"])) in plain.stdout


def test_overlong_prompt_fails_or_is_truncated(ggufs):
    long_prompt = "这是一个很长的问题。" * 200
    result = run("ask", "deepseek", long_prompt, "--ggufs", str(ggufs), *FAST)
    assert_one_line_error(result, "context holds 512", "--truncate")
    notices = []
    answer = ask_lib.ask(
        "deepseek",
        long_prompt + "END",
        ggufs_dir=ggufs,
        threads=1,
        ctx=512,
        max_tokens=8,
        temperature=0,
        truncate=True,
        with_sha256=False,
        notice=notices.append,
    )
    assert answer["stats"]["prompt_tokens"] <= 512 - 8
    assert len(notices) == 1 and "dropped its first" in notices[0]
    result = run("ask", "deepseek", long_prompt, "--ggufs", str(ggufs), "--truncate", *FAST)
    assert result.exit_code == 0 and "dropped" in result.stderr


def test_ctx_rounding_is_noted(ggufs):
    result = run("ask", "deepseek", "hi", "--ggufs", str(ggufs), *FAST[:-2], "--ctx", "300")
    assert result.exit_code == 0, result.output
    assert "rounded up to 512" in result.stderr


def test_bad_files(ggufs, tiny_gguf, tmp_path):
    assert_one_line_error(run("ask", str(tmp_path / "missing.gguf"), "hi"), "not found")
    assert_one_line_error(run("ask", "qwen", "hi", "--ggufs", str(ggufs)), "qrun convert qwen-7b-chat")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert_one_line_error(run("ask", str(text), "hi"), "not a GGUF")
    data = tiny_gguf(MODEL).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("ask", str(cut), "hi"), "truncated")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ctx", "0"], "--ctx"),
        (["--ctx", "-5"], "--ctx"),
        (["--ctx", "abc"], "--ctx"),
        (["--ctx", "1000000"], "trained on"),
        (["--threads", "-1"], "--threads"),
        (["--threads", "two"], "--threads"),
        (["--temperature", "-0.5"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--quant", "Q3_X"], "--quant"),
    ],
)
def test_bad_option_values(ggufs, args, needle):
    assert_one_line_error(run("ask", "deepseek", "hi", "--ggufs", str(ggufs), *args), needle)


def test_empty_prompt(ggufs):
    assert_one_line_error(run("ask", "deepseek", "   ", "--ggufs", str(ggufs)), "empty")
    with pytest.raises(PromptError):
        ask_lib.ask("deepseek", "", ggufs_dir=ggufs)
