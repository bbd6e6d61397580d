"""Interactive multi-turn chat: the library behind `qrun chat`.

History is kept as messages and re-rendered in the model's own format every turn (formats.py), so the model sees
exactly what its reference chat() would build. When history plus room for the answer outgrows the context, the
oldest turns are dropped with a notice. Ctrl-C during an answer stops that answer; the session goes on.
Each turn is kept as a record (messages, prompt and answer token ids) for /save (runner/transcript.py) and the log
(runner/chat_log.py); input comes from runner/chat_input.py.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TextIO

from qrun.errors import PromptError, QrunError, UsageError
from qrun.runner import transcript
from qrun.runner.ask import answer_reserve
from qrun.runner.chat_input import LineReader, PlainLines, read_message
from qrun.runner.chat_log import ChatLog
from qrun.runner.engine import Engine, Generation
from qrun.text import check_text

COMMANDS_HELP = "/help lists the commands, /exit (or Ctrl-D) quits, Ctrl-C stops an answer"
HELP = """\
/system TEXT   set the system prompt for the next turns; the history is kept (/reset clears it)
/system        show the system prompt
/save FILE     write the conversation to FILE as JSON: model, GGUF, settings, and each turn's token ids
/load FILE     go on with a conversation /save wrote (for the same model)
/reset         clear the history
/help          this list
/exit          quit (Ctrl-D too)
Multi-line messages: begin with \"\"\" and end with \"\"\" (as in Ollama); in a terminal, Esc then Enter (Alt-Enter)
also starts a new line. Up and Down recall earlier lines. Ctrl-C stops an answer, not the chat."""
# conversations.name in the log, as llm names a conversation: the start of its first message
NAME_CHARS = 40


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _new_id() -> str:
    return uuid.uuid4().hex


class ChatSession:
    """A conversation with one loaded engine; turn() answers one user message and remembers the exchange."""

    def __init__(self, engine: Engine, *, system: str | None, sampling: dict, seed: int, notice: Callable[[str], None]):
        self.engine, self.system, self.sampling, self.seed, self.notice = engine, system, sampling, seed, notice
        self.history: list[dict] = []  # alternating user / assistant messages
        self.turns: list[dict] = []  # one record per answered turn since the last /reset (see turn())
        self.conversation_id = _new_id()
        self.last: Generation | None = None

    def reset(self) -> None:
        self.history.clear()
        self.turns.clear()
        self.conversation_id = _new_id()

    @property
    def system_text(self) -> str:
        """The system prompt the model gets: --system or /system, else the model's own default (Qwen's); "" = none."""
        return (self.engine.spec.default_system or "") if self.system is None else self.system

    def fit(self, user_text: str) -> list[int]:
        """Prompt ids for history + user_text, dropping the oldest turns until they fit with room for an answer.

        Raises:
            PromptError: user_text is not UTF-8 text, or too long for the context on its own; the history is
                left as it was (turns are dropped only for a message that then fits).
        """
        check_text(user_text, what="this message")
        budget = self.engine.n_ctx - answer_reserve(self.engine.n_ctx, self.sampling["max_tokens"])
        history = list(self.history)
        while True:
            messages = history + [{"role": "user", "content": user_text}]
            ids = self.engine.prompt_ids(messages, system=self.system)
            if len(ids) <= budget or not history:
                break
            del history[:2]
        if len(ids) >= self.engine.n_ctx:
            raise PromptError(
                f"this message is {len(ids)} tokens with the chat format; the context holds {self.engine.n_ctx}",
                "send a shorter message or restart with a larger --ctx (the history is kept)",
            )
        dropped = (len(self.history) - len(history)) // 2
        if dropped:
            self.history[:] = history
            self.notice(
                f"note: dropped the oldest {dropped} turn(s) of the history to fit the "
                f"{self.engine.n_ctx}-token context"
            )
        return ids

    def turn(self, user_text: str, on_text: Callable[[str], None]) -> Generation:
        """Answer user_text, streaming to on_text. A KeyboardInterrupt while streaming ends the answer early
        (stop_reason "interrupted"); the partial answer is kept in the history, as the user saw it.

        The exchange is appended to self.turns: {"id", "datetime_utc", "system" (as the model got it), "messages"
        (the history rendered, then the user message), "prompt_token_ids", "answer", "answer_token_ids" (the stop
        token not included), "stop_reason", "options" (sampling and seed), "duration_s"}.
        """
        ids = self.fit(user_text)
        messages = self.history + [{"role": "user", "content": user_text}]
        started_utc = _utc_now()
        generation = self.engine.generate(ids, seed=self.seed, **self.sampling)
        self.last = generation
        try:
            for text in generation:
                on_text(text)
        except KeyboardInterrupt:
            pass
        finally:
            generation.close()
        assert generation.stats is not None  # set when the generation ends
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": generation.text}]
        self.turns.append(
            {
                "id": _new_id(),
                "datetime_utc": started_utc,
                "system": self.system_text,
                "messages": messages,
                "prompt_token_ids": list(ids),
                "answer": generation.text,
                "answer_token_ids": list(generation.token_ids),
                "stop_reason": generation.stats.stop_reason,
                "options": {**self.sampling, "seed": self.seed},
                "duration_s": generation.stats.total_s,
            }
        )
        return generation

    def restore(self, data: dict) -> None:
        """Go on with a transcript's conversation (transcript.read checked it)."""
        self.system = data["system"]
        self.history = [dict(message) for message in data["history"]]
        self.turns = list(data["turns"])
        self.conversation_id = data.get("conversation_id") or _new_id()


def _argument(text: str) -> str:
    """A command's argument: the rest of the line, without the quotes a pasted path may carry."""
    value = text.split(None, 1)[1].strip() if len(text.split(None, 1)) > 1 else ""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def _command(session: ChatSession, text: str, say: Callable[[str], None]) -> bool:
    """Run a /command; False when `text` is a message to answer. Errors are said in one line, the chat goes on."""
    stripped = text.strip()
    word = stripped.split(None, 1)[0].lower() if stripped.startswith("/") else ""
    try:
        if word == "/reset" and stripped.lower() == "/reset":
            session.reset()
            say("History cleared.")
        elif word == "/help":
            say(HELP)
        elif word == "/system":
            _system(session, stripped, say)
        elif word == "/save":
            _save(session, _argument(stripped), say)
        elif word == "/load":
            _load(session, _argument(stripped), say)
        elif word and " " not in stripped:
            say(f"Unknown command {word}: {COMMANDS_HELP}.")
        else:
            return False
    except QrunError as err:
        say(f"Error: {err.one_line()}")
    return True


def _system(session: ChatSession, text: str, say: Callable[[str], None]) -> None:
    value = text.split(None, 1)[1].strip() if len(text.split(None, 1)) > 1 else None
    if value is None:
        shown = session.system_text or "(none)"
        origin = "the model's default" if session.system is None else "set"
        say(f"System prompt ({origin}): {shown}")
        return
    check_text(value, what="the system prompt")
    session.system = value
    kept = f"; the history of {len(session.history) // 2} turn(s) is kept (/reset clears it)" if session.history else ""
    say(f"System prompt set{kept}.")


def _save(session: ChatSession, path: str, say: Callable[[str], None]) -> None:
    if not path:
        say("Usage: /save FILE (e.g. /save chat.json)")
        return
    written = transcript.save(session, path, saved_utc=_utc_now())
    say(f"Saved {len(session.turns)} turn(s) to {written}.")


def _load(session: ChatSession, path: str, say: Callable[[str], None]) -> None:
    if not path:
        say("Usage: /load FILE (a transcript /save wrote)")
        return
    data = transcript.read(path)
    model = session.engine.spec.name
    if data["model"] != model:
        raise UsageError(
            f"{path} is a conversation with {data['model']}; this chat runs {model}",
            f"load it in `qrun chat {data['model']}`",
        )
    notes = transcript.differences(data, session)
    session.restore(data)
    say(f"Loaded {len(session.history) // 2} turn(s) from {path}.")
    for note in notes:
        say(f"note: {note}")


def run_chat(
    session: ChatSession,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    lines: LineReader | None = None,
    log: ChatLog | None = None,
) -> int:
    """Read messages until /exit or end of input; returns the number of answered turns.

    Prompts and notices go to stderr, answers to stdout. `lines` is where messages come from (default: plain lines
    of stdin); `log` records each exchange.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    lines = lines or PlainLines(stdin, stderr)

    def say(message: str) -> None:
        stderr.write(message + "\n")
        stderr.flush()

    say(f"Chatting with {session.engine.spec.name}. {COMMANDS_HELP}.")
    turns = 0
    while True:
        try:
            text = read_message(lines)
        except KeyboardInterrupt:
            stderr.write("\n(/exit or Ctrl-D quits)\n")
            continue
        if text is None:  # end of input
            stderr.write("\n")
            break
        command = text.strip().lower()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if _command(session, text, say):
            continue

        def write(piece: str) -> None:
            stdout.write(piece)
            stdout.flush()

        try:
            generation = session.turn(text, write)
        except QrunError as err:
            say(f"Error: {err.one_line()}")
            continue
        stdout.write("\n")
        stdout.flush()
        if generation.stats and generation.stats.stop_reason == "interrupted":
            say("[answer stopped]")
        if log is not None:
            log.record(
                session.turns[-1],
                conversation_id=session.conversation_id,
                model=session.engine.spec.name,
                name=(session.history[0]["content"] if session.history else text)[:NAME_CHARS],
            )
        turns += 1
    return turns
