"""`qrun chat` driven through its input: turns, /reset, /exit, EOF, context overflow and Ctrl-C."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.runner.chat import ChatSession, run_chat
from qrun.runner.engine import Engine

MODEL = "qwen-7b-chat"
SAMPLING = {"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "top_k": 0}


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    with Engine.load(tiny_gguf(MODEL), n_ctx=256, n_threads=1) as loaded:
        yield loaded


def session_for(engine, notices=None):
    return ChatSession(
        engine,
        system=None,
        sampling=dict(SAMPLING),
        seed=1,
        notice=(notices.append if notices is not None else lambda m: None),
    )


def test_two_turns_keep_history_in_the_models_format(engine):
    session = session_for(engine)
    first = session.turn("你好", lambda t: None)
    assert session.history == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": first.text}]
    second_ids = session.fit("再说一遍")
    assert second_ids == engine.prompt_ids(session.history + [{"role": "user", "content": "再说一遍"}])
    first_prompt = engine.prompt_ids(session.history[:1])  # ends with "<|im_start|>assistant\n"
    answer_ids = engine.tokenize(first.text)
    assert second_ids[: len(first_prompt) + len(answer_ids) + 1] == first_prompt + answer_ids + [151645]
    session.reset()
    assert session.history == []


def test_history_overflow_drops_oldest_turns_with_a_notice(engine):
    notices = []
    session = session_for(engine, notices)
    message = "请详细回答这个问题。" * 8  # ~60 tokens: four turns cannot fit 256 - 6 tokens
    for _ in range(5):
        session.turn(message, lambda t: None)
    assert any("dropped the oldest" in n for n in notices)
    assert len(engine.prompt_ids(session.history[:-1])) <= engine.n_ctx
    assert session.history[-2]["content"] == message


def test_ctrl_c_stops_the_answer_not_the_session(engine):
    session = session_for(engine)
    session.sampling["max_tokens"] = 50

    def interrupt(_text):
        raise KeyboardInterrupt

    generation = session.turn("讲个故事", interrupt)
    assert generation.stats.stop_reason == "interrupted"
    assert len(generation.token_ids) < 50
    assert session.history[-1]["role"] == "assistant"
    follow_up = session.turn("继续", lambda t: None)
    assert follow_up.stats.stop_reason in ("eos", "stop_token", "max_tokens")


def test_run_chat_loop_commands(engine):
    session = session_for(engine)
    stdin = io.StringIO("hello\n\n/unknown\nsecond\n/reset\nthird\n/exit\nnever read\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run_chat(session, stdin=stdin, stdout=stdout, stderr=stderr) == 3
    assert stdout.getvalue().count("\n") == 3
    assert "History cleared." in stderr.getvalue() and "Unknown command /unknown" in stderr.getvalue()
    assert len(session.history) == 2  # /reset emptied it before "third"


def test_cli_chat_two_turns_reset_and_eof(tiny_gguf):
    path = str(tiny_gguf(MODEL))
    result = CliRunner().invoke(
        main,
        ["chat", path, "--threads", "1", "--ctx", "256", "--max-tokens", "6", "--temperature", "0"],
        input="你好\nhow are you?\n/reset\nbye\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 3  # three answers, one line each
    assert "History cleared." in result.stderr and "Traceback" not in result.stderr


def test_cli_chat_overflow_with_small_ctx(tiny_gguf):
    path = str(tiny_gguf(MODEL))
    long = "这是一个需要很多上下文的问题。" * 10  # ~80 tokens: the fourth turn cannot fit 256 - 4
    result = CliRunner().invoke(
        main,
        ["chat", path, "--threads", "1", "--ctx", "256", "--max-tokens", "4", "--temperature", "0"],
        input=f"{long}\n{long}\n{long}\n{long}\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert "dropped the oldest" in result.stderr


def test_cli_chat_message_longer_than_the_context_is_an_error_line_not_an_exit(tiny_gguf):
    path = str(tiny_gguf(MODEL))
    huge = "很长" * 400
    result = CliRunner().invoke(
        main,
        ["chat", path, "--threads", "1", "--ctx", "256", "--max-tokens", "4", "--temperature", "0"],
        input=f"{huge}\nshort\n",
    )
    assert result.exit_code == 0, result.output
    assert "Error: this message is" in result.stderr
    assert result.stdout.count("\n") == 1  # "short" was still answered


def test_cli_chat_bad_options_are_one_line_errors(tiny_gguf):
    result = CliRunner().invoke(main, ["chat", str(tiny_gguf(MODEL)), "--top-p", "2"], input="")
    assert result.exit_code == 1 and result.stderr.startswith("Error: --top-p") and result.stdout == ""
