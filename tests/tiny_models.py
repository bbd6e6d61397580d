"""Build tiny random-weight checkpoints and GGUFs of the three models, once per test session, lazily per model.

The session fixtures in conftest.py are thin wrappers over TinyModels. Everything is built on first use of a
(model, quant) pair, so a test that needs only the DeepSeek Q4_K_M never pays for Qwen's vocabulary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).parent
TOKENIZERS_DIR = TESTS_DIR / "data" / "tokenizers"  # real tokenizer/config files (see SOURCES.md there)
MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")

# Random weights ~ N(0, WEIGHT_STD). At the synthetic default (0.02, the models' initializer_range) logits have std
# ~0.3 and attention over 16 tokens is nearly uniform, so a rope mistake moves logits by only ~1-5 % and rarely flips
# an argmax (ChatGLM without rope.dimension_count: 4 %, no argmax change). At 0.05 the same mistakes move logits by
# 60-90 % and flip most argmaxes, while F16-vs-f32 differences stay ~6e-4 (measured on hand-made GGUFs of all three
# architectures; 0.08 pushes those to ~1.2e-3).
WEIGHT_STD = 0.05


def _threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class TinyModels:
    """Session cache of tiny checkpoints and GGUFs under one root folder (a tmp_path_factory dir)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._checkpoints: dict[str, Path] = {}
        self._ggufs: dict[tuple[str, str], Path] = {}

    def checkpoint(self, model: str) -> Path:
        """Folder with config.json, tokenizer files and safetensors of a tiny random `model` (built once)."""
        if model not in self._checkpoints:
            from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint

            self._checkpoints[model] = Path(
                write_random_checkpoint(
                    model,
                    self.root / "checkpoints" / model,
                    tokenizer_dir=TOKENIZERS_DIR / model,
                    config_overrides=TINY_OVERRIDES[model],
                    seed=0,
                    weight_std=WEIGHT_STD,
                )
            )
        return self._checkpoints[model]

    def gguf(self, model: str, quant: str = "Q4_K_M") -> Path:
        """Path of the tiny `model` converted to `quant` (F16, Q4_K_M, or any other llama.cpp type; built once)."""
        key = (model, quant)
        if key not in self._ggufs:
            if (model, "F16") not in self._ggufs:
                self._ggufs.update(self._convert_pair(model))
            if key not in self._ggufs:  # another type: quantized from the F16 like the pipeline does
                from qrun.convert.quantize import quantize_gguf

                path = self._out_dir(model) / f"{model}-{quant}.gguf"
                quantize_gguf(self._ggufs[(model, "F16")], path, quant, threads=_threads())
                self._ggufs[key] = path
        return self._ggufs[key]

    def shaped_gguf(self, label: str, model: str, overrides: dict, quant: str) -> Path:
        """A `model` GGUF of another small shape: TINY_OVERRIDES[model] updated with `overrides` (built once per
        label), converted and quantized to `quant` through the real pipeline."""
        key = (f"{model}:{label}", quant)
        if key not in self._ggufs:
            from qrun.convert.pipeline import convert_model, gguf_path_for
            from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint

            folder = self.root / "shaped" / label
            checkpoint = write_random_checkpoint(
                model,
                folder / "checkpoint",
                tokenizer_dir=TOKENIZERS_DIR / model,
                config_overrides={**TINY_OVERRIDES[model], **overrides},
                seed=0,
                weight_std=WEIGHT_STD,
            )
            convert_model(model, from_dir=checkpoint, quant=quant, out_dir=folder, threads=_threads())
            self._ggufs[key] = Path(gguf_path_for(model, quant, folder))
        return self._ggufs[key]

    def _out_dir(self, model: str) -> Path:
        out = self.root / "ggufs" / model
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _convert_pair(self, model: str) -> dict[tuple[str, str], Path]:
        """F16 and Q4_K_M through the real pipeline: one convert_model(keep_f16=True) call yields both."""
        from qrun.convert.pipeline import convert_model, gguf_path_for

        out_dir = self._out_dir(model)
        convert_model(
            model, from_dir=self.checkpoint(model), quant="Q4_K_M", out_dir=out_dir, keep_f16=True, threads=_threads()
        )
        paths = {(model, q): Path(gguf_path_for(model, q, out_dir)) for q in ("F16", "Q4_K_M")}
        for path in paths.values():
            assert path.is_file(), f"convert_model did not write {path}"
        return paths


N_CTX_TOKENS = 256  # a multiple of 256: llama-cpp-python 0.3.36 mis-sizes buffers otherwise (settings.CTX_ALIGN_TOKENS)


def open_llama(gguf_path: Path, *, logits_all: bool = False):
    """llama_cpp.Llama on a tiny GGUF, small context, quiet. Tests call llama.cpp directly so that they check the
    converted file, not qrun's runner; the model params are qrun's own (weight repacking per settings.repack_weights:
    off by default, as llama.cpp's AMX repack dies with SIGILL on VMs that advertise AMX without enabling it)."""
    from llama_cpp import Llama

    from qrun import settings
    from qrun.runner.engine import _model_params

    with _model_params(use_extra_bufts=settings.repack_weights()):
        return Llama(
            model_path=str(gguf_path),
            n_ctx=N_CTX_TOKENS,
            n_threads=_threads(),
            logits_all=logits_all,
            seed=0,
            verbose=False,
        )


def llama_cpp_logits(gguf_path: Path, token_ids: list[int]) -> np.ndarray:
    """[len(token_ids), n_vocab] float32 logits llama.cpp computes for token_ids evaluated as one batch."""
    llm = open_llama(gguf_path, logits_all=True)
    try:
        llm.eval(token_ids)
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
    finally:
        llm.close()


_PROBE = (
    "import sys\n"
    f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
    "from tiny_models import open_llama\n"
    "llm = open_llama(sys.argv[1])\n"
    "llm.eval([1] * 16); llm.eval([1]); llm.close()\n"  # a batch and a single token take different kernels
)


def load_failure(gguf_path: Path) -> str | None:
    """Why llama.cpp cannot load and run `gguf_path`, probed in a child process (None when it can).

    A llama.cpp built with instructions the CPU or VM refuses (e.g. AMX tile ops, used for quantized matmuls only)
    kills the process with SIGILL; probing in a child turns that into a test failure instead of a dead test session.
    """
    result = subprocess.run([sys.executable, "-c", _PROBE, str(gguf_path)], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        why = f"llama.cpp died with {name}"
        if name == "SIGILL":
            why += (
                " (an instruction this machine refuses, e.g. the AMX tile ops of llama.cpp's weight repacking:"
                " unset QRUN_REPACK, or rebuild llama-cpp-python with CMAKE_ARGS='-DGGML_NATIVE=OFF"
                " -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON')"
            )
        return why
    return f"llama.cpp exited {result.returncode}: {result.stderr.strip()[-500:]}"


class LazyMap(Mapping):
    """Read-only {model: value} whose values are computed on first access (so unused models are never built)."""

    def __init__(self, keys: tuple[str, ...], compute):
        self._keys = keys
        self._compute = compute

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return self._compute(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
