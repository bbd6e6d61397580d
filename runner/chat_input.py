"""Where `qrun chat` reads its messages: a line editor on a terminal, plain lines otherwise.

On a terminal, prompt_toolkit rather than readline: its prompt can be drawn on stderr (stdout carries only the
answers, so `qrun chat qwen > answers.txt` works; readline draws on stdout), it edits and measures double-width CJK
text itself instead of depending on the libreadline or libedit Python was built with, and it binds Esc-Enter to
a new line without a custom terminal setup. Up and Down recall earlier lines from a history file in qrun's home.

Multi-line messages: a message that starts with \"\"\" goes on until a line that ends with \"\"\", as in Ollama; this
works on piped input too. On a terminal, Esc then Enter (Alt-Enter) also starts a new line in the editor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TextIO

from qrun.fsutil import os_reason

PROMPT = ">>> "
CONTINUATION = "... "  # inside a \"\"\" block
BLOCK_QUOTE = '"""'
HISTORY_FILE = "chat-history"


class LineReader(Protocol):
    def read(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input. Ctrl-C raises KeyboardInterrupt."""
        ...


class PlainLines:
    """Lines from a stream (a pipe, a file, a test's StringIO); the prompt goes to `prompt_to`."""

    def __init__(self, stream: TextIO, prompt_to: TextIO):
        self.stream, self.prompt_to = stream, prompt_to

    def read(self, prompt: str) -> str | None:
        self.prompt_to.write(prompt)
        self.prompt_to.flush()
        line = self.stream.readline()
        return line.rstrip("\r\n") if line else None


class TerminalLines:
    """prompt_toolkit's line editor, drawn on `prompt_to` (stderr); history in `history_path`, or kept in memory
    only when it is None (a chat that is not logged leaves no history file either)."""

    def __init__(self, prompt_to: TextIO, *, history_path: Path | None, notice: Callable[[str], None]):
        # imported here, not at the top: only a chat on a terminal needs it, and it costs every other qrun command
        # about 0.1 s to import
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import History, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.output import create_output

        history: History = InMemoryHistory() if history_path is None else _file_history(history_path, notice)
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _new_line(event) -> None:
            event.current_buffer.insert_text("\n")

        self._session: PromptSession[str] = PromptSession(
            history=history, key_bindings=bindings, output=create_output(stdout=prompt_to)
        )

    def read(self, prompt: str) -> str | None:
        try:
            return self._session.prompt(prompt)
        except EOFError:  # Ctrl-D on an empty line
            return None


def _file_history(path: Path, notice: Callable[[str], None]):
    """prompt_toolkit's FileHistory, except that a file it cannot read or write (a home that is a file, a full
    disk) costs one note and the history of this session only, never the chat."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    def say_failed(err: OSError) -> None:
        reason = f"{path.parent} is not a folder" if path.parent.is_file() else os_reason(err)
        notice(f"note: the line history is kept for this chat only: {path}: {reason}")

    class _History(FileHistory):
        failed = False

        def _failed(self, err: OSError) -> None:
            if not self.failed:
                self.failed = True
                say_failed(err)

        def load_history_strings(self):
            try:
                return list(super().load_history_strings())
            except OSError as err:
                self._failed(err)
                return []

        def store_string(self, string: str) -> None:
            if self.failed:
                return
            try:
                super().store_string(string)
            except OSError as err:
                self._failed(err)

    try:  # here, not in the thread that loads the history: the note comes before the first prompt
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        say_failed(err)
        return InMemoryHistory()
    return _History(str(path))


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def read_message(lines: LineReader) -> str | None:
    """The next message: one line, or a \"\"\" block of lines joined by newlines. None at end of input (a block cut
    short by it is returned as far as it got)."""
    line = lines.read(PROMPT)
    if line is None or not line.lstrip().startswith(BLOCK_QUOTE):
        return line
    text: str | None = line.lstrip()[len(BLOCK_QUOTE) :]
    parts: list[str] = []
    while text is not None:
        if text.rstrip().endswith(BLOCK_QUOTE):
            parts.append(text.rstrip()[: -len(BLOCK_QUOTE)])
            break
        parts.append(text)
        text = lines.read(CONTINUATION)
    return "\n".join(parts).strip("\n")
