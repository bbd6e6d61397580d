"""Bad input from a last hostile pass over every command, kept as regression tests: each is one `Error:` line and
exit code 1 (or the right behaviour), never a traceback, a hang, a silent wrong setting or a lost output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.runner import ask as ask_lib
from qrun.runner.engine import Engine

MODEL = "deepseek-llm-7b-chat"
QRUN = [sys.executable, "-m", "qrun"]


def _one_error_line(result, *words: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()  # progress lines ("[convert] ...") may come first
    assert lines and lines[-1].startswith("Error:") and "Traceback" not in result.stderr, result.stderr
    assert sum(line.startswith("Error:") for line in lines) == 1, result.stderr
    for word in words:
        assert word in lines[-1], result.stderr


# -1 became llama.cpp's LLAMA_DEFAULT_SEED ("random": two runs differed) and 2**32 drew what --seed 0 draws.
@pytest.mark.parametrize("seed", ["-1", "4294967295", "4294967296"])
def test_a_seed_llama_cpp_cannot_reproduce_is_refused(tiny_gguf, seed):
    gguf = str(tiny_gguf(MODEL))
    for command in (["ask", gguf, "hi", "--temperature", "1"], ["chat", gguf]):
        result = CliRunner().invoke(main, [*command, "--seed", seed], input="hi\n")
        _one_error_line(result, "--seed", seed)


def test_the_largest_seed_is_reproducible(tiny_gguf):
    gguf = str(tiny_gguf(MODEL))
    runs = [
        ask_lib.ask(gguf, "hi", max_tokens=6, temperature=1.5, seed=0xFFFFFFFE, with_sha256=False)["answer"]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


# A vocab-only load read n_ctx_train as 0, so `--max-tokens 5000` asked for a 5,120-token context and was refused
# as "--ctx 5120 is more than the 4096 tokens ..." although no --ctx was given: it must run in the trained context.
def test_max_tokens_beyond_the_training_context_runs_in_it(tiny_gguf):
    gguf = tiny_gguf(MODEL)
    with Engine.load(gguf, vocab_only=True) as vocab:
        trained = vocab.header.context_length
        assert vocab.n_ctx_train == trained
        eos = vocab.eos_id
    result = ask_lib.ask(
        str(gguf), "hi", max_tokens=trained + 1000, temperature=0, with_sha256=False, logit_bias={eos: 100.0}
    )  # stop at once: only the context size is under test
    assert result["settings"]["n_ctx"] == trained


def _closing(fd: int):
    return lambda: os.close(fd)


# A closed stdin or stdout (`qrun chat <&-`, `qrun ask ... >&-`) left sys.stdin/stdout None: a traceback at the first
# read or write. Closed, they behave as /dev/null: no input, output discarded.
def test_a_closed_stdin_reads_as_empty(tiny_gguf):
    gguf = str(tiny_gguf(MODEL))
    chat = subprocess.run([*QRUN, "chat", gguf], preexec_fn=_closing(0), capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr
    ask = subprocess.run([*QRUN, "ask", gguf, "-"], preexec_fn=_closing(0), capture_output=True, text=True, timeout=120)
    assert ask.returncode == 1 and ask.stderr.startswith("Error: the prompt is empty"), ask.stderr
    assert ask.stderr.count("\n") == 1


def test_a_closed_stdout_discards_the_answer(tiny_gguf):
    gguf = str(tiny_gguf(MODEL))
    ask = subprocess.run(
        [*QRUN, "ask", gguf, "hi", "--max-tokens", "3"],
        preexec_fn=_closing(1),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert ask.returncode == 0 and ask.stderr == "", ask.stderr


# 0 heads or a size written as a string ended in ZeroDivisionError / TypeError tracebacks; a NaN or negative
# rope_theta and a context of 0 converted without complaint into a GGUF that runs as nonsense.
@pytest.mark.parametrize(
    "key, value",
    [
        ("num_attention_heads", 0),
        ("hidden_size", "256"),
        ("num_key_value_heads", 0),
        ("rope_theta", float("nan")),
        ("rope_theta", -1.0),
        ("max_position_embeddings", 0),
    ],
)
def test_a_config_size_that_is_zero_or_not_a_number_is_refused(tiny_checkpoints, tmp_path, key, value):
    source = tiny_checkpoints[MODEL]
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for item in source.iterdir():
        (folder / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config[key] = value
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", MODEL, "--from", str(folder), "--out", str(out)])
    _one_error_line(result, "config.json")
    assert not list(out.glob("*.gguf*")) and not list(out.glob("*.json"))  # only the convert lock may stay


# /dev/zero given as an answers or results file was read until the kernel killed qrun for memory (exit 137), and
# "[[[[..." nested 100,000 deep was a RecursionError traceback, in every reader of JSON input.
def _deep_json(path):
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    return str(path)


def test_a_device_or_deeply_nested_json_as_input_is_one_line(tmp_path):
    deep = _deep_json(tmp_path / "deep.json")
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "seed-1", "answer": "x"}) + "\n", encoding="utf-8")
    for args, words in (
        (["score", "/dev/zero"], ["/dev/zero", "device"]),
        (["report", "/dev/zero", "--out", str(tmp_path / "r1")], ["/dev/zero", "device"]),
        (["score", deep], ["nested too deeply"]),
        (["score", str(answers), "--suite", deep], ["nested too deeply"]),
        (["report", deep, "--out", str(tmp_path / "r2")], ["nested too deeply"]),
    ):
        _one_error_line(CliRunner().invoke(main, args), *words)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


# Each question's line number was found by counting the newlines before it again: a suite of 10,000 questions took
# minutes to load (quadratic in its size). Error lines must still point at the right line.
def test_a_suite_of_ten_thousand_questions_loads_quickly(tmp_path):
    import time

    from qrun.bench import suite

    seed = json.loads(suite.resolve("seed").read_text(encoding="utf-8"))
    questions = [dict(seed["questions"][0], id=f"q{i}") for i in range(10_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(dict(seed, questions=questions), ensure_ascii=False, indent=1), encoding="utf-8")
    t0 = time.monotonic()
    loaded = suite.load(str(path))
    assert time.monotonic() - t0 < 30  # minutes before; a few seconds on 2 shared CPUs now
    assert len(loaded.questions) == 10_000
    text = path.read_text(encoding="utf-8")
    assert loaded.raw["questions"][-1].line == text[: text.rindex('"id": "q9999"')].count("\n")


# A GGUF whose file name is not UTF-8 was reported as "llama.cpp could not load ...: 'utf-8' codec can't encode
# character '\udcff' ... — use a GGUF made by `qrun convert`", blaming a good file.
def test_a_gguf_name_that_is_not_utf8_says_so(tiny_gguf, tmp_path):
    gguf = tiny_gguf(MODEL)
    odd = os.path.join(os.fsencode(tmp_path), b"model-\xff.gguf")
    os.symlink(os.fsencode(gguf), odd)
    result = subprocess.run([*QRUN, "ask", os.fsdecode(odd), "hi"], capture_output=True, timeout=120)
    stderr = result.stderr.decode("utf-8", errors="replace")
    assert result.returncode == 1 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("Error:") and "not UTF-8" in stderr and "rename" in stderr, stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (a device that is always full)")
def test_an_output_that_cannot_be_written_is_one_line(tiny_gguf):
    """`qrun ask ... > /dev/full`: one error line on stderr, exit 1, no traceback at exit either."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*QRUN, "ask", str(tiny_gguf("deepseek-llm-7b-chat")), "你好", "--max-tokens", "64", "--temperature", "0"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "Error: cannot write the output (No space left on device) — free space on that disk, or send the output "
        "elsewhere"
    ]
