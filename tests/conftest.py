"""Shared test setup: every test gets its own qrun home and ggufs folder, and the tiny models are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import MODELS, LazyMap, TinyModels

DATA_DIR = Path(__file__).parent / "data"
TOKENIZERS_DIR = DATA_DIR / "tokenizers"  # real tokenizer/config files of the three models (see SOURCES.md there)


@pytest.fixture(autouse=True)
def isolated_qrun_state(tmp_path, monkeypatch):
    """Point qrun's home and default ggufs folder at tmp_path so no test reads or writes the user's files."""
    monkeypatch.setenv("QRUN_HOME", str(tmp_path / "qrun-home"))
    monkeypatch.setenv("QRUN_GGUF_DIR", str(tmp_path / "ggufs"))
    monkeypatch.delenv("QRUN_DEBUG", raising=False)
    monkeypatch.delenv("QRUN_THREADS", raising=False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """The session's cache of tiny checkpoints and GGUFs (built lazily, per model and quant)."""
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_models) -> LazyMap:
    """{model name: Path} of tiny random-weight HF checkpoints (real tokenizer files, 2 layers, hidden 256).

    Lazy: a checkpoint is written the first time its model is looked up. Treat the folders as read-only.
    """
    return LazyMap(MODELS, tiny_models.checkpoint)


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_models) -> LazyMap:
    """{model name: {"F16": Path, "Q4_K_M": Path}} of the tiny checkpoints converted by qrun (lazy per model)."""
    return LazyMap(MODELS, lambda model: {q: tiny_models.gguf(model, q) for q in ("F16", "Q4_K_M")})


@pytest.fixture(scope="session")
def tiny_gguf(tiny_models):
    """Factory: tiny_gguf("deepseek-llm-7b-chat", quant="Q4_K_M") -> Path, built once per (model, quant).

    Any quant llama.cpp knows works (others than F16/Q4_K_M are quantized from the F16). Treat files as read-only.
    """

    def get(model: str, quant: str = "Q4_K_M") -> Path:
        return tiny_models.gguf(model, quant)

    return get
