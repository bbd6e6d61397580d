"""Shared test setup: every test gets its own qrun home and ggufs folder, and the tiny models are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
TOKENIZERS_DIR = DATA_DIR / "tokenizers"  # real tokenizer/config files of the three models (see SOURCES.md there)


@pytest.fixture(autouse=True)
def isolated_qrun_state(tmp_path, monkeypatch):
    """Point qrun's home and default ggufs folder at tmp_path so no test reads or writes the user's files."""
    monkeypatch.setenv("QRUN_HOME", str(tmp_path / "qrun-home"))
    monkeypatch.setenv("QRUN_GGUF_DIR", str(tmp_path / "ggufs"))
    monkeypatch.delenv("QRUN_DEBUG", raising=False)
    monkeypatch.delenv("QRUN_THREADS", raising=False)
