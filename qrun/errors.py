"""Typed errors of the qrun library.

Every error carries what went wrong and how to fix it; the CLI (qrun/cli.py) prints them as one line
`Error: <what> — <how to fix>` and exits with code 1. Set QRUN_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations


class QrunError(Exception):
    """Base of every error qrun reports to a user."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} — {self.hint}"
        return " ".join(text.split())  # one line, whatever the parts contained


class UnknownModelError(QrunError):
    """A model name that is not in the registry."""


class UsageError(QrunError):
    """An option value that cannot work (threads 0, ctx too small, an empty prompt, ...)."""


class CheckpointError(QrunError):
    """A checkpoint folder that is missing files, corrupt, or not the model it claims to be."""


class UnsupportedConfigError(CheckpointError):
    """A config.json setting that the converter does not implement."""


class DownloadError(QrunError):
    """A checkpoint that could not be fetched from a hub."""


class DiskSpaceError(QrunError):
    """Not enough free disk for the work about to start."""


class ConversionError(QrunError):
    """Conversion or quantization failed."""


class NotConvertedError(QrunError):
    """A model that has no GGUF yet."""


class GGUFError(QrunError):
    """A GGUF file that is missing, truncated, not a GGUF, or that llama.cpp refuses to load."""


class PromptError(QrunError):
    """A prompt that cannot be run (empty, longer than the context)."""


class SuiteError(QrunError):
    """A benchmark suite or answers file that cannot be read."""


class BenchError(QrunError):
    """A benchmark that could not run at all."""
