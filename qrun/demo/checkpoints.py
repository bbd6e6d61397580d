"""Tiny random-weight checkpoints of the three models for `qrun demo`, with the demo's self-made tokenizers.

Each checkpoint has exactly the real Hugging Face layout (written by qrun.convert.synthetic.write_random_checkpoint):
the real config.json shape shrunk to 2 layers and hidden 256, the vocabulary sizes those of the small demo
tokenizers (qrun/demo/tokenizers.py). No file of the real models is shipped or needed: the base configs
(qrun.convert.synthetic.BASE_CONFIGS) are the models' published hyper-parameters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from qrun.convert.synthetic import BASE_CONFIGS, TINY_OVERRIDES, write_random_checkpoint
from qrun.convert.vocab import CHATGLM3_SPECIALS
from qrun.demo import tokenizers as demo_tokenizers
from qrun.fsutil import write_json_atomic

DEMO_MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
VOCAB_ALIGN = 64  # embedding rows rounded up to a multiple of this (the real models pad to 64 or 128 too)
_MARKER = ".qrun-demo.json"  # written last into a finished checkpoint: what it was built from
# The vocabulary keys each config carries: Qwen both, ChatGLM3 only padded_vocab_size, DeepSeek vocab_size.
_VOCAB_KEYS = {
    "qwen-7b-chat": ("vocab_size", "padded_vocab_size"),
    "chatglm3-6b": ("padded_vocab_size",),
    "deepseek-llm-7b-chat": ("vocab_size",),
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def write_demo_tokenizer_dir(model: str, out_dir: Path) -> dict:
    """Write the demo tokenizer files of `model` plus its full-size base config.json into out_dir.

    Returns:
        {"first_special_id": id of the first special token, "n_tokens": tokens incl. specials,
         "vocab_size": embedding rows (n_tokens rounded up to VOCAB_ALIGN)}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(BASE_CONFIGS[model])
    generation = None
    if model == "qwen-7b-chat":
        first = demo_tokenizers.write_qwen_tokenizer(out_dir)
        n_tokens = first + len(demo_tokenizers.QWEN_SPECIALS)
        vocab_size = _round_up(n_tokens, VOCAB_ALIGN)
        # Qwen's config and generation_config use <|endoftext|> as bos/eos/pad.
        config.update(vocab_size=vocab_size, padded_vocab_size=vocab_size, bos_token_id=first, eos_token_id=first)
        generation = {
            "chat_format": "chatml",
            "eos_token_id": first,
            "pad_token_id": first,
            "stop_words_ids": [[first]],
            "do_sample": True,
            "top_k": 0,
            "top_p": 0.8,
            "max_new_tokens": 512,
        }
        _write_json(
            out_dir / "tokenizer_config.json",
            {"remove_space": False, "do_lower_case": False, "tokenizer_class": "QWenTokenizer"},
        )
    elif model == "chatglm3-6b":
        first = demo_tokenizers.write_chatglm3_tokenizer(out_dir)
        n_tokens = first + len(CHATGLM3_SPECIALS)
        vocab_size = _round_up(n_tokens, VOCAB_ALIGN)
        config.update(padded_vocab_size=vocab_size)
        _write_json(
            out_dir / "tokenizer_config.json",
            {"remove_space": False, "do_lower_case": False, "tokenizer_class": "ChatGLMTokenizer"},
        )
    elif model == "deepseek-llm-7b-chat":
        first = demo_tokenizers.write_deepseek_tokenizer(out_dir)  # also writes tokenizer_config.json
        n_tokens = first + 2
        vocab_size = _round_up(n_tokens, VOCAB_ALIGN)
        config.update(vocab_size=vocab_size, bos_token_id=first, eos_token_id=first + 1)
        generation = {"bos_token_id": first, "eos_token_id": first + 1}
    else:
        raise ValueError(f"no demo tokenizer for {model!r}")
    _write_json(out_dir / "config.json", config)
    if generation is not None:
        _write_json(out_dir / "generation_config.json", generation)
    return {"first_special_id": first, "n_tokens": n_tokens, "vocab_size": vocab_size}


def demo_config_overrides(model: str, vocab: dict) -> dict:
    """config.json overrides of a demo checkpoint: the test suite's tiny shape with the demo vocabulary size."""
    overrides = dict(TINY_OVERRIDES[model])
    for key in _VOCAB_KEYS[model]:
        overrides[key] = vocab["vocab_size"]
    return overrides


def build_demo_checkpoints(
    root: Path, *, models=DEMO_MODELS, progress: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Tiny random checkpoints of `models` under root/<model>, reusing any already built from the same inputs.

    Returns:
        {model name: checkpoint folder}.
    """
    say = progress or (lambda _msg: None)
    checkpoints = {}
    for model in models:
        tok_dir = root / "tokenizers" / model
        vocab = write_demo_tokenizer_dir(model, tok_dir)
        overrides = demo_config_overrides(model, vocab)
        fingerprint = {"tokenizer_sha256": _dir_sha256(tok_dir), "config_overrides": overrides}
        out_dir = root / model
        marker = out_dir / _MARKER
        if marker.is_file() and _read_json(marker) == fingerprint:
            say(f"{model}: tiny checkpoint already built ({out_dir})")
        else:
            say(f"{model}: writing a tiny random-weight checkpoint ({vocab['n_tokens']} tokens) to {out_dir}")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            write_random_checkpoint(model, out_dir, tokenizer_dir=tok_dir, config_overrides=overrides, seed=0)
            write_json_atomic(marker, fingerprint)
        checkpoints[model] = out_dir
    return checkpoints


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dir_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
