"""`/save` and `/load` in `qrun chat`: a conversation as a JSON transcript.

A transcript records what is needed to go on with a conversation and to check what the model saw: the model, the
GGUF (path, and its sha256 when its manifest knows it), the load and sampling settings, the system prompt, the
history the next turn renders, and per turn the messages rendered, the prompt token ids and the answer token ids.
`/load` restores the system prompt and the history; the answer then continues from the same prompt ids, which the
chat renders from the history text each turn (runner/chat.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qrun.errors import PromptError, UsageError
from qrun.fsutil import os_reason, read_input_text, write_json_atomic
from qrun.runner import formats
from qrun.runner.ask import known_sha256
from qrun.text import check_text

if TYPE_CHECKING:
    from qrun.runner.chat import ChatSession

FORMAT = "qrun-chat-transcript"
VERSION = 1


def to_dict(session: ChatSession, *, saved_utc: str) -> dict:
    engine = session.engine
    return {
        "format": FORMAT,
        "version": VERSION,
        "saved_utc": saved_utc,
        "model": engine.spec.name,
        "conversation_id": session.conversation_id,
        "gguf": {"path": str(engine.path), "sha256": known_sha256(engine.path)},
        "load": engine.settings.to_dict(),
        "sampling": {**session.sampling, "seed": session.seed},
        "system": session.system,  # null: the model's default system prompt
        "history": list(session.history),
        "turns": list(session.turns),
    }


def save(session: ChatSession, path: str | os.PathLike, *, saved_utc: str) -> Path:
    """Write the session's transcript to `path` atomically. An existing file is replaced only if it is a qrun chat
    transcript (saving again as the conversation goes on); anything else there is kept.

    Raises:
        UsageError: `path` holds another kind of file, or cannot be written.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{path} is a folder", "give a file name, e.g. /save chat.json")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {path.parent} is not a folder", "give a path in an existing folder")
    if path.exists() and not _is_transcript(path):
        raise UsageError(f"{path} exists and is not a qrun chat transcript", "give a new file name")
    try:
        write_json_atomic(path, to_dict(session, saved_utc=saved_utc))
    except OSError as err:
        raise UsageError(f"cannot write {path}: {os_reason(err)}", "give a path in a folder you can write") from None
    return path


def _is_transcript(path: Path) -> bool:
    try:
        data = json.loads(read_input_text(path))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def read(path: str | os.PathLike) -> dict:
    """A transcript file, checked: its model, system prompt and history are usable as they are.

    Raises:
        UsageError: unreadable, not JSON, not a qrun chat transcript, or a history that is not a conversation.
    """
    path = Path(path).expanduser()
    try:
        data = json.loads(read_input_text(path))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {os_reason(err)}", "give the path of a file /save wrote") from None
    except ValueError as err:  # UnicodeDecodeError and json.JSONDecodeError
        raise UsageError(f"{path} is not a JSON transcript ({err})", "give the path of a file /save wrote") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path} is not a qrun chat transcript", "give the path of a file /save wrote")
    if data.get("version") != VERSION:
        raise UsageError(
            f"{path} is a transcript of version {data.get('version')!r}; this qrun reads version {VERSION}",
            "load it with the qrun that saved it",
        )
    problem = _problem(data)
    if problem:
        raise UsageError(f"{path} is a damaged transcript: {problem}", "give the path of a file /save wrote")
    return data


def _problem(data: dict) -> str | None:
    """What makes a transcript unusable, or None."""
    if not isinstance(data.get("model"), str):
        return "no model name"
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        return "the system prompt is not text"
    history = data.get("history")
    if not isinstance(history, list) or len(history) % 2:
        return "the history is not a list of user and assistant messages"
    for i, message in enumerate(history):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"history message {i + 1} is not a {{role, content}} object"
        if message["role"] != formats.ROLES[i % 2] or not isinstance(message["content"], str):
            role = formats.ROLES[i % 2]
            return f"history message {i + 1} is not {'an' if role == 'assistant' else 'a'} {role} message with text"
    try:
        for message in history:
            check_text(message["content"], what="a history message")
        if system is not None:
            check_text(system, what="the system prompt")
    except PromptError as err:
        return err.message
    turns = data.get("turns")
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        return "the turns are not a list of objects"
    conversation_id = data.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        return "the conversation id is not text"
    return None


def differences(data: dict, session: ChatSession) -> list[str]:
    """How a transcript's GGUF and sampling differ from this session's (same model): worth a note, not a refusal."""
    notes = []
    gguf: Any = data.get("gguf") if isinstance(data.get("gguf"), dict) else {}
    sha256 = gguf.get("sha256")
    if sha256 and known_sha256(session.engine.path) not in (None, sha256):
        notes.append(f"it was made with another GGUF ({gguf.get('path')})")
    saved: Any = data.get("sampling") if isinstance(data.get("sampling"), dict) else {}
    ours = {**session.sampling, "seed": session.seed}
    changed = [f"{key} {saved[key]} -> {value}" for key, value in ours.items() if key in saved and saved[key] != value]
    if changed:
        notes.append("this session samples with other settings: " + ", ".join(changed))
    return notes
