"""Interactive multi-turn chat: the library behind `qrun chat`.

History is kept as messages and re-rendered in the model's own format every turn (formats.py), so the model sees
exactly what its reference chat() would build. When history plus room for the answer outgrows the context, the
oldest turns are dropped with a notice. Ctrl-C during an answer stops that answer; the session goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from qrun.errors import PromptError, QrunError
from qrun.runner.ask import answer_reserve
from qrun.runner.engine import Engine, Generation
from qrun.text import check_text

COMMANDS_HELP = "/reset clears the history, /exit (or Ctrl-D) quits, Ctrl-C stops an answer"


class ChatSession:
    """A conversation with one loaded engine; turn() answers one user message and remembers the exchange."""

    def __init__(self, engine: Engine, *, system: str | None, sampling: dict, seed: int, notice: Callable[[str], None]):
        self.engine, self.system, self.sampling, self.seed, self.notice = engine, system, sampling, seed, notice
        self.history: list[dict] = []  # alternating user / assistant messages
        self.last: Generation | None = None

    def reset(self) -> None:
        self.history.clear()

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
        (stop_reason "interrupted"); the partial answer is kept in the history, as the user saw it."""
        ids = self.fit(user_text)
        generation = self.engine.generate(ids, seed=self.seed, **self.sampling)
        self.last = generation
        try:
            for text in generation:
                on_text(text)
        except KeyboardInterrupt:
            pass
        finally:
            generation.close()
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": generation.text}]
        return generation


def run_chat(
    session: ChatSession, *, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Read lines until /exit or EOF; returns the number of answered turns. Prompts and notices go to stderr,
    answers to stdout."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    stderr.write(f"Chatting with {session.engine.spec.name}. {COMMANDS_HELP}.\n")
    turns = 0
    while True:
        stderr.write(">>> ")
        stderr.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stderr.write("\n(/exit or Ctrl-D quits)\n")
            continue
        if not line:  # EOF
            stderr.write("\n")
            break
        text = line.rstrip("\r\n")
        command = text.strip().lower()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            session.reset()
            stderr.write("History cleared.\n")
            continue
        if command.startswith("/") and " " not in command:
            stderr.write(f"Unknown command {command}: {COMMANDS_HELP}.\n")
            continue

        def write(piece: str) -> None:
            stdout.write(piece)
            stdout.flush()

        try:
            generation = session.turn(text, write)
        except QrunError as err:
            stderr.write(f"Error: {err.one_line()}\n")
            continue
        stdout.write("\n")
        stdout.flush()
        if generation.stats and generation.stats.stop_reason == "interrupted":
            stderr.write("[answer stopped]\n")
        turns += 1
    return turns
