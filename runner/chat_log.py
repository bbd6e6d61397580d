"""The log of `qrun chat`: one record per exchange in <qrun home>/logs.db, the way simonw/llm logs prompts.

SQLite, as llm does (its logs.db: a `conversations` table and a `responses` table with these column names), rather
than a JSONL file: each record is committed as one transaction, so two chats in two terminals never interleave
half-written lines and a crash never leaves a torn record; the log stays queryable with `sqlite3` or Datasette; the
module is in Python's standard library. Off with `qrun chat --no-log` or QRUN_CHAT_LOG=0.

A log that cannot be written (read-only home, full disk, a damaged file) costs a one-line note, never the chat.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from qrun import settings

ENV = "QRUN_CHAT_LOG"
FILE_NAME = "logs.db"
# A second chat writing its record at the same moment waits this long for SQLite's lock.
LOCK_WAIT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    name TEXT,
    model TEXT
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    model TEXT,
    prompt TEXT,
    system TEXT,
    prompt_json TEXT,
    options_json TEXT,
    response TEXT,
    response_json TEXT,
    conversation_id TEXT REFERENCES conversations(id),
    duration_ms INTEGER,
    datetime_utc TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER
);
"""


def log_path() -> Path:
    return settings.qrun_home() / FILE_NAME


def logging_on(flag: bool | None = None) -> bool:
    """--log/--no-log, then QRUN_CHAT_LOG, then on.

    Raises:
        UsageError: QRUN_CHAT_LOG is not a yes/no value.
    """
    if flag is not None:
        return flag
    return settings.env_bool(ENV, default=True)


class ChatLog:
    """Appends exchanges to the log database; opened at the first record."""

    def __init__(self, path: Path, *, notice: Callable[[str], None]):
        self.path, self.notice = path, notice
        self._db: sqlite3.Connection | None = None
        self._failed = False

    def record(self, exchange: dict, *, conversation_id: str, model: str, name: str) -> None:
        """Write one exchange (a turn record of ChatSession.turn). After a failure, the rest of the session is not
        logged (one note says so)."""
        if self._failed:
            return
        try:
            db = self._open()
            with db:
                db.execute(
                    "INSERT OR IGNORE INTO conversations (id, name, model) VALUES (?, ?, ?)",
                    (conversation_id, name, model),
                )
                db.execute(
                    "INSERT INTO responses (id, model, prompt, system, prompt_json, options_json, response, "
                    "response_json, conversation_id, duration_ms, datetime_utc, input_tokens, output_tokens) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        exchange["id"],
                        model,
                        exchange["messages"][-1]["content"],
                        exchange["system"],
                        json.dumps(
                            {"messages": exchange["messages"], "token_ids": exchange["prompt_token_ids"]},
                            ensure_ascii=False,
                        ),
                        json.dumps(exchange["options"], ensure_ascii=False),
                        exchange["answer"],
                        json.dumps(
                            {"token_ids": exchange["answer_token_ids"], "stop_reason": exchange["stop_reason"]},
                            ensure_ascii=False,
                        ),
                        conversation_id,
                        round(exchange["duration_s"] * 1000),
                        exchange["datetime_utc"],
                        len(exchange["prompt_token_ids"]),
                        len(exchange["answer_token_ids"]),
                    ),
                )
        except (sqlite3.Error, OSError) as err:
            self._failed = True
            reason = f"{self.path.parent} is not a folder" if self.path.parent.is_file() else str(err)
            self.notice(f"note: this chat is not logged from here on: {self.path}: {reason} (--no-log turns it off)")

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
            try:
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
