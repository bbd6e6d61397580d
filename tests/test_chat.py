"""`qrun chat` driven through piped input: turns, /reset, /exit, EOF, context overflow, Ctrl-C, \"\"\" blocks, /system,
/save and /load, and the log (tests/test_chat_repl.py drives it through a terminal)."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.fsutil import sha256_file
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


def chat_lines(engine, text: str, session=None):
    """run_chat over piped lines; returns (session, stdout, stderr)."""
    session = session or session_for(engine)
    stdout, stderr = io.StringIO(), io.StringIO()
    run_chat(session, stdin=io.StringIO(text), stdout=stdout, stderr=stderr)
    return session, stdout.getvalue(), stderr.getvalue()


def test_triple_quote_blocks_on_piped_input(engine):
    session, _, _ = chat_lines(engine, '"""\none\n\ntwo\n"""\n"""same line"""\n"""cut short by the end\nof input\n')
    assert [m["content"] for m in session.history[::2]] == ["one\n\ntwo", "same line", "cut short by the end\nof input"]


def test_system_command_keeps_the_history_and_shapes_the_next_prompt(engine):
    session, _, stderr = chat_lines(engine, "/system\nhi\n/system Be brief.\n/system\nagain\n")
    assert "System prompt (the model's default): You are a helpful assistant." in stderr
    assert "System prompt set; the history of 1 turn(s) is kept" in stderr
    assert "System prompt (set): Be brief." in stderr
    assert session.system == "Be brief." and len(session.history) == 4
    last = session.turns[-1]
    assert last["system"] == "Be brief."
    assert last["prompt_token_ids"] == engine.prompt_ids(last["messages"], system="Be brief.")
    assert last["messages"][:2] == session.history[:2]


def test_save_then_load_goes_on_with_the_same_ids(engine, tmp_path):
    path = tmp_path / "chat.json"
    first, _, stderr = chat_lines(engine, f"你好\n/system 简短回答。\n再说一遍\n/save {path}\n")
    assert f"Saved 2 turn(s) to {path}." in stderr
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["turns"][1]["answer_token_ids"] == first.turns[1]["answer_token_ids"]
    assert saved["gguf"] == {"path": str(engine.path), "sha256": sha256_file(engine.path)}  # the manifest's
    first.turn("第三个问题", lambda t: None)

    second, _, stderr = chat_lines(engine, f"/load {path}\n第三个问题\n")
    assert "Loaded 2 turn(s)" in stderr and "note:" not in stderr
    assert second.turns[:2] == saved["turns"]
    assert second.turns[2]["prompt_token_ids"] == first.turns[2]["prompt_token_ids"]
    assert second.turns[2]["answer_token_ids"] == first.turns[2]["answer_token_ids"]

    third = session_for(engine)
    third.sampling["max_tokens"] = 3
    _, _, stderr = chat_lines(engine, f"/load {path}\n", session=third)
    assert "note: this session samples with other settings: max_tokens 6 -> 3" in stderr


def _transcript(tmp_path, engine) -> dict:
    path = tmp_path / "good.json"
    chat_lines(engine, f"hi\n/save {path}\n")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is not a JSON transcript"),
        (b"\xff\xfe{}", "is not a JSON transcript"),
        (b"[1, 2]", "is not a qrun chat transcript"),
        (b'{"format": "qrun-chat-transcript", "version": 9}', "is a transcript of version 9"),
        ("history-roles", "history message 1 is not a user message with text"),
        ("history-roles-2", "history message 2 is not an assistant message with text"),
        ("history-odd", "the history is not a list of user and assistant messages"),
        ("surrogate", "history message"),
        ("model", "is a conversation with chatglm3-6b; this chat runs qwen-7b-chat — load it in `qrun chat"),
    ],
)
def test_bad_load_is_one_line_and_the_session_goes_on(engine, tmp_path, content, expected):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        data = _transcript(tmp_path, engine)
        if content == "history-roles":
            data["history"][0]["role"] = "assistant"
        elif content == "history-roles-2":
            data["history"][1]["role"] = "user"
        elif content == "history-odd":
            data["history"] = data["history"][:1]
        elif content == "surrogate":
            data["history"][0]["content"] = "\ud800"
        else:
            data["model"] = "chatglm3-6b"
        path.write_text(json.dumps(data), encoding="utf-8")
    session = session_for(engine)
    session.turn("before", lambda t: None)
    kept = list(session.history)
    _, stdout, stderr = chat_lines(engine, f"/load {path}\nafter\n", session=session)
    errors = [line for line in stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith(">>> Error: ") and expected in errors[0], stderr
    assert session.history[:2] == kept and len(session.history) == 4  # kept, and "after" was answered
    assert stdout.count("\n") == 1


def test_load_of_a_missing_file_or_a_folder_is_one_line(engine, tmp_path):
    _, _, stderr = chat_lines(engine, f"/load {tmp_path / 'nope.json'}\n/load {tmp_path}\n/load\n")
    assert "Error: cannot read" in stderr and "No such file or directory" in stderr
    assert stderr.count("Error: ") == 2 and "Usage: /load FILE" in stderr


def test_save_keeps_a_file_that_is_not_a_transcript_and_leaves_no_partial_file(engine, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\n")
    saves = [notes, notes / "chat.json", tmp_path / "missing" / "chat.json", tmp_path, tmp_path / "chat.json"]
    _, _, stderr = chat_lines(engine, "hi\n" + "".join(f"/save {path}\n" for path in saves) + "again\n")
    errors = [line[line.index("Error: ") :] for line in stderr.splitlines() if "Error: " in line]
    assert errors == [
        f"Error: {notes} exists and is not a qrun chat transcript — give a new file name",
        f"Error: cannot write {notes / 'chat.json'}: {notes} is not a folder — give a path in an existing folder",
        f"Error: cannot write {tmp_path / 'missing' / 'chat.json'}: {tmp_path / 'missing'} is not a folder — give a "
        "path in an existing folder",
        f"Error: {tmp_path} is a folder — give a file name, e.g. /save chat.json",
    ]
    assert notes.read_bytes() == b"my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json", "notes.txt"]  # no temporary file left
    assert json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))["history"][0]["content"] == "hi"


def test_cli_chat_logs_each_exchange_unless_turned_off(tiny_gguf, tmp_path, monkeypatch):
    path = str(tiny_gguf(MODEL))
    args = ["chat", path, "--threads", "1", "--ctx", "256", "--max-tokens", "4", "--temperature", "0"]
    log = tmp_path / "qrun-home" / "logs.db"
    result = CliRunner().invoke(main, args, input="你好\n/reset\n第二个\n")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(log) as db:
        rows = db.execute(
            "SELECT prompt, response, conversation_id, input_tokens, output_tokens FROM responses"
        ).fetchall()
        conversations = db.execute("SELECT name, model FROM conversations").fetchall()
    assert [row[0] for row in rows] == ["你好", "第二个"]
    assert [row[1] + "\n" for row in rows] == result.stdout.splitlines(keepends=True)
    assert rows[0][2] != rows[1][2]  # /reset starts another conversation
    assert all(row[3] > 0 and 0 < row[4] <= 4 for row in rows)
    assert sorted(conversations) == [("你好", MODEL), ("第二个", MODEL)]

    before = log.read_bytes()
    assert CliRunner().invoke(main, [*args, "--no-log"], input="三\n").exit_code == 0
    monkeypatch.setenv("QRUN_CHAT_LOG", "0")
    assert CliRunner().invoke(main, args, input="四\n").exit_code == 0
    assert log.read_bytes() == before
    monkeypatch.setenv("QRUN_CHAT_LOG", "maybe")
    result = CliRunner().invoke(main, args, input="五\n")
    assert result.exit_code == 1 and result.stderr.startswith("Error: QRUN_CHAT_LOG='maybe' is not a yes/no value")
    assert CliRunner().invoke(main, [*args, "--log"], input="六\n").exit_code == 0  # the flag wins over the env
    with sqlite3.connect(log) as db:
        assert [row[0] for row in db.execute("SELECT prompt FROM responses")] == ["你好", "第二个", "六"]


def test_cli_chat_a_log_that_cannot_be_written_costs_one_note(tiny_gguf, tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_bytes(b"")
    monkeypatch.setenv("QRUN_HOME", str(home))
    path = str(tiny_gguf(MODEL))
    result = CliRunner().invoke(
        main, ["chat", path, "--threads", "1", "--ctx", "256", "--max-tokens", "4"], input="一\n二\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 2
    assert result.stderr.count("note: this chat is not logged from here on") == 1
    assert home.read_bytes() == b""
