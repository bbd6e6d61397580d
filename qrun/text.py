"""Text from outside (arguments, stdin, chat lines, files) that is not valid UTF-8: one clear error, never a crash.

Python hands undecodable bytes of argv (and of stdin under a C/POSIX locale) over as lone surrogates
(surrogateescape, PEP 383: byte 0xNN becomes U+DCNN), and JSON's "\\ud800" escapes make lone surrogates too. None
of them is text: llama.cpp's tokenizer gets UTF-8 bytes, and encoding a lone surrogate fails.
"""

from __future__ import annotations

from qrun.errors import PromptError


def utf8_problem(text: str) -> str | None:
    """Why text cannot be encoded as UTF-8 (the first bad character and where), or None if it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
            return f"byte 0x{code - 0xDC00:02x} at character {err.start + 1} is not valid UTF-8"
        return f"a lone surrogate U+{code:04X} at character {err.start + 1} is not text"
    return None


def check_text(text: str, *, what: str, hint: str = "save or type it as UTF-8 text") -> str:
    """text itself if it is valid UTF-8.

    Raises:
        PromptError: naming `what` and the first bad character.
    """
    problem = utf8_problem(text)
    if problem:
        raise PromptError(f"{what} is not valid UTF-8 text: {problem}", hint)
    return text


def decode_utf8(data: bytes, *, what: str, hint: str = "save or type it as UTF-8 text") -> str:
    """bytes -> str, strictly.

    Raises:
        PromptError: naming `what` and the first undecodable byte.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptError(
            f"{what} is not valid UTF-8 text: byte 0x{data[err.start]:02x} at byte {err.start + 1} ({err.reason})", hint
        ) from None
