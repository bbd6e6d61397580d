"""`qrun chat` on a real pseudo-terminal (pexpect): the line editor's history, multi-line input, /system, /save and
/load across two processes, the log and --no-log, with the tiny Qwen GGUF answering for real."""

from __future__ import annotations

import json
import os
import sqlite3
import sys

import pexpect
import pytest

MODEL = "qwen-7b-chat"
FAST = ["--threads", "1", "--ctx", "512", "--max-tokens", "6", "--temperature", "0"]
# prompt_toolkit turns bracketed paste on as each prompt starts: a prompt drawn again (the Up arrow redraws the
# line) does not, so waiting for this tells a new prompt from a redrawn one
PROMPT_STARTS = "\x1b[?2004h"
TIMEOUT_S = 60


def spawn(gguf, home, cwd, *extra: str) -> pexpect.spawn:
    env = dict(
        os.environ,
        QRUN_HOME=str(home),
        TERM="xterm",
        # the pty answers no cursor position request; a terminal emulator would
        PROMPT_TOOLKIT_NO_CPR="1",
    )
    env.pop("QRUN_CHAT_LOG", None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "qrun", "chat", str(gguf), *FAST, *extra],
        env=env,
        cwd=str(cwd),
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(40, 160),
    )
    child.greeting = wait_prompt(child)  # what the chat said before its first prompt
    return child


def wait_prompt(child: pexpect.spawn, text: str = ">>>") -> str:
    """Wait for the next prompt; returns what was written since the previous one."""
    child.expect_exact(PROMPT_STARTS)
    said = child.before
    child.expect_exact(text)
    return said


def say(child: pexpect.spawn, line: str, *, then: str = ">>>") -> str:
    child.send(line + "\r")
    return wait_prompt(child, then)


def quit_with_ctrl_d(child: pexpect.spawn) -> None:
    child.send("\x04")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def logged(home) -> list[tuple]:
    with sqlite3.connect(home / "logs.db") as db:
        return db.execute(
            "SELECT prompt, system, prompt_json, response_json, conversation_id FROM responses ORDER BY datetime_utc"
        ).fetchall()


@pytest.fixture(scope="module")
def gguf(tiny_gguf):
    return tiny_gguf(MODEL)


def test_history_multiline_system_save_then_load_in_a_new_session(gguf, tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    child = spawn(gguf, home, work)
    say(child, "hello there")
    child.send("\x1b[A")  # Up: the previous line comes back, Enter sends it again
    child.expect_exact("hello there")
    say(child, "")
    say(child, '"""first line', then="...")
    say(child, 'second line"""')
    child.send("alpha\x1b\r")  # Esc-Enter: a new line inside the message
    say(child, "beta")
    assert "System prompt set; the history of 4 turn(s) is kept" in say(child, "/system Answer in one word.")
    assert "Saved 4 turn(s)" in say(child, "/save saved.json")
    say(child, "next question")
    child.send("\x03")  # Ctrl-C at the prompt: a hint, not the end of the chat
    assert "(/exit or Ctrl-D quits)" in wait_prompt(child)
    quit_with_ctrl_d(child)

    records = logged(home)
    assert [r[0] for r in records] == [
        "hello there",
        "hello there",
        "first line\nsecond line",
        "alpha\nbeta",
        "next question",
    ]
    assert [r[1] for r in records] == ["You are a helpful assistant."] * 4 + ["Answer in one word."]
    assert len({r[4] for r in records}) == 1  # one conversation
    assert "+hello there" in (home / "chat-history").read_text(encoding="utf-8")

    saved = json.loads((work / "saved.json").read_text(encoding="utf-8"))
    assert saved["model"] == MODEL and saved["system"] == "Answer in one word."
    assert saved["gguf"]["path"] == str(gguf) and len(saved["gguf"]["sha256"]) == 64
    assert saved["load"]["n_ctx"] == 512 and saved["sampling"]["temperature"] == 0
    assert [turn["messages"][-1]["content"] for turn in saved["turns"]] == [r[0] for r in records[:4]]
    for turn, record in zip(saved["turns"], records):
        assert turn["prompt_token_ids"] == json.loads(record[2])["token_ids"]
        assert turn["answer_token_ids"] == json.loads(record[3])["token_ids"]
    assert len(saved["history"]) == 8

    # a transcript of another model and a damaged one are one line each; the session goes on
    other = dict(saved, model="deepseek-llm-7b-chat")
    (work / "other.json").write_text(json.dumps(other), encoding="utf-8")
    (work / "bad.json").write_text('{"format": "qrun-chat-transcript", "version": 1', encoding="utf-8")
    history_before = (home / "chat-history").read_bytes()
    child = spawn(gguf, home, work, "--no-log")
    refused = say(child, "/load other.json")
    assert "Error: other.json is a conversation with deepseek-llm-7b-chat; this chat runs qwen-7b-chat" in refused
    assert "Error: bad.json is not a JSON transcript" in say(child, "/load bad.json")
    assert "Loaded 4 turn(s) from saved.json." in say(child, "/load saved.json")
    say(child, "next question")
    say(child, "/save again.json")
    quit_with_ctrl_d(child)

    again = json.loads((work / "again.json").read_text(encoding="utf-8"))
    assert again["turns"][:4] == saved["turns"]
    assert again["conversation_id"] == saved["conversation_id"]
    # the loaded conversation continues exactly as the first session went on: same prompt ids, same answer ids
    first_session_next = records[4]
    assert again["turns"][4]["prompt_token_ids"] == json.loads(first_session_next[2])["token_ids"]
    assert again["turns"][4]["answer_token_ids"] == json.loads(first_session_next[3])["token_ids"]
    assert len(logged(home)) == 5  # --no-log: nothing more in the log
    assert (home / "chat-history").read_bytes() == history_before  # --no-log: the line history stays in memory


def test_no_log_keeps_no_files_in_the_home(gguf, tmp_path):
    home = tmp_path / "home"
    child = spawn(gguf, home, tmp_path, "--no-log")
    say(child, "hello")
    quit_with_ctrl_d(child)
    assert not (home / "logs.db").exists() and not (home / "chat-history").exists()


def test_ctrl_c_on_a_terminal_stops_the_answer_not_the_chat(gguf, tmp_path):
    child = spawn(gguf, tmp_path / "home", tmp_path, "--ctx", "2048", "--max-tokens", "1800")
    child.send("写一首很长的诗\r")
    child.expect_exact("\x1b[?2004l")  # the editor has let go of the terminal: the answer is being written
    child.expect(r"\S{8}")  # the answer has begun (1800 tokens take several seconds)
    child.send("\x03")
    assert "[answer stopped]" in wait_prompt(child)
    assert "/save FILE" in say(child, "/help")  # the chat goes on (another 1800-token answer would take long)
    quit_with_ctrl_d(child)
    with sqlite3.connect(tmp_path / "home" / "logs.db") as db:
        stops = [json.loads(row[0])["stop_reason"] for row in db.execute("SELECT response_json FROM responses")]
    assert stops == ["interrupted"]


def test_a_home_that_is_a_file_costs_two_notes_not_the_chat(gguf, tmp_path):
    home = tmp_path / "home"
    home.write_bytes(b"not a folder")
    child = spawn(gguf, home, tmp_path)
    said = say(child, "hello")
    child.send("\x1b[A")  # the line history still works, in memory
    child.expect_exact("hello")
    said += say(child, "")
    quit_with_ctrl_d(child)
    history_note = f"note: the line history is kept for this chat only: {home / 'chat-history'}: {home} is not a folder"
    assert history_note in child.greeting
    assert said.count("note: this chat is not logged from here on") == 1
    assert home.read_bytes() == b"not a folder"
