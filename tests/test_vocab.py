"""qrun.convert.vocab builders on small and broken inputs: derived special ids, written keys, loud failures."""

from __future__ import annotations

import io
import json
import shutil

import gguf
import pytest
import sentencepiece

from qrun.convert.vocab import chatglm3_vocab, deepseek_vocab, qwen_vocab
from qrun.convert.vocab_bpe import recover_merges
from qrun.errors import CheckpointError, UnsupportedConfigError
from tiny_models import TOKENIZERS_DIR


def _tiny_qwen_dir(tmp_path, n_ranks: int):
    # Any prefix of a BPE rank file is itself a valid rank file (a token only merges from lower ranks).
    lines = (TOKENIZERS_DIR / "qwen-7b-chat" / "qwen.tiktoken").read_text().splitlines()[:n_ranks]
    (tmp_path / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
    return tmp_path


def _read_keys(vocab, tmp_path) -> dict:
    """The tokenizer.* fields as written (GGUFReader fields; .contents() decodes them)."""
    path = tmp_path / "v.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen")
    vocab.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return {k: f for k, f in gguf.GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}


def test_qwen_specials_start_at_the_rank_count_and_keys_are_written(tmp_path):
    vocab = qwen_vocab(_tiny_qwen_dir(tmp_path, 300), vocab_size=640)
    keys = {k: f.contents() for k, f in _read_keys(vocab, tmp_path).items()}
    assert keys["tokenizer.ggml.model"] == "gpt2" and keys["tokenizer.ggml.pre"] == "qwen2"
    assert keys["tokenizer.ggml.tokens"][300:303] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert keys["tokenizer.ggml.tokens"][507] == "<|extra_204|>" and keys["tokenizer.ggml.tokens"][508] == "[PAD508]"
    assert keys["tokenizer.ggml.token_type"][299:301] == [1, 3] and keys["tokenizer.ggml.token_type"][-1] == 5
    assert len(keys["tokenizer.ggml.tokens"]) == 640 and len(keys["tokenizer.ggml.merges"]) == 300 - 256
    assert (
        keys["tokenizer.ggml.bos_token_id"],
        keys["tokenizer.ggml.eos_token_id"],
        keys["tokenizer.ggml.unknown_token_id"],
        keys["tokenizer.ggml.eot_token_id"],
    ) == (300, 300, 300, 302)
    assert keys["tokenizer.ggml.add_bos_token"] is False and "tokenizer.ggml.scores" not in keys


def test_qwen_merges_are_the_lower_rank_pairs():
    ranks = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b"bc", b"abcbc"]
    assert recover_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]


def test_rank_file_problems_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="qwen.tiktoken"):
        qwen_vocab(tmp_path, vocab_size=151936)
    with pytest.raises(CheckpointError, match="vocab_size"):
        qwen_vocab(_tiny_qwen_dir(tmp_path, 300), vocab_size=400)
    with pytest.raises(CheckpointError, match="single-byte"):
        recover_merges([bytes([b]) for b in range(255)])
    with pytest.raises(CheckpointError, match="cannot be built"):
        recover_merges([bytes([b]) for b in range(256)] + [b"abc"])  # no "ab" or "bc" to merge from
    (tmp_path / "qwen.tiktoken").write_text("not base64!! 0\n")
    with pytest.raises(CheckpointError, match="line 1"):
        qwen_vocab(tmp_path, vocab_size=151936)


def test_chatglm3_vocab(tmp_path):
    # (Written keys are checked through llama.cpp itself in test_tokenizer_parity; GGUFReader needs ~15 s here.)
    vocab = chatglm3_vocab(TOKENIZERS_DIR / "chatglm3-6b", vocab_size=65024)
    assert (vocab.model, vocab.pre, len(vocab.tokens), len(vocab.scores)) == ("llama", "chatglm-spm", 65024, 65024)
    assert vocab.tokens[64789:64798] == [
        "[MASK]",
        "[gMASK]",
        "[sMASK]",
        "sop",
        "eop",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
    ]
    assert set(vocab.token_types[64789:64798]) == {3} and set(vocab.token_types[64798:]) == {5}
    assert (vocab.add_bos, vocab.add_space_prefix, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (False, True, 1, 2, 0)
    assert (vocab.eot_id, vocab.eom_id, vocab.pad_id) == (64795, 64797, 0)
    # Specials and padding score below every real piece (see vocab.py: llama.cpp's SPM merge order).
    assert max(vocab.scores[64789:]) < min(vocab.scores[:64789])


def test_sentencepiece_settings_llama_cpp_cannot_reproduce_are_refused(tmp_path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(  # sentencepiece's defaults: nmt_nfkc, whitespace collapsing, no bytes
        sentence_iterator=iter(["hello world", "你好世界", "tokenizers are fun"] * 20),
        model_writer=model,
        vocab_size=60,
        model_type="bpe",
        minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    with pytest.raises(UnsupportedConfigError, match="nmt_nfkc.*remove_extra_whitespaces.*byte fallback"):
        chatglm3_vocab(tmp_path, vocab_size=100)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05junk")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        chatglm3_vocab(tmp_path, vocab_size=100)


def _tiny_deepseek(tmp_path, *, added, config=None):
    data = json.loads((TOKENIZERS_DIR / "deepseek-llm-7b-chat" / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["vocab"] = {"a": 0, "b": 1, "ab": 2}
    data["model"]["merges"] = ["a b"]
    data["added_tokens"] = added
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def test_deepseek_ids_come_from_the_files(tmp_path):
    added = [
        {"id": 3, "content": "<B>", "special": True},
        {"id": 4, "content": "<E>", "special": True},
        {"id": 5, "content": "ø", "special": False},
    ]
    vocab = deepseek_vocab(
        _tiny_deepseek(
            tmp_path, added=added, config={"bos_token": "<B>", "eos_token": {"content": "<E>"}, "add_bos_token": True}
        ),
        vocab_size=8,
    )
    assert (vocab.bos_id, vocab.eos_id, vocab.add_bos) == (3, 4, True)
    assert vocab.token_types == [1, 1, 1, 3, 3, 4, 5, 5] and vocab.merges == ["a b"]
    shutil.copy(TOKENIZERS_DIR / "deepseek-llm-7b-chat" / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="outside the vocabulary"):  # config.json's 100000 does not fit
        deepseek_vocab(_tiny_deepseek(tmp_path, added=added, config={}), vocab_size=8)


def test_repeated_token_text_is_refused_before_llama_cpp_aborts(tmp_path):
    added = [{"id": 3, "content": "ab", "special": True}]
    with pytest.raises(CheckpointError, match="'ab' twice"):
        deepseek_vocab(
            _tiny_deepseek(tmp_path, added=added, config={"bos_token": "ab", "eos_token": "ab"}), vocab_size=4
        )
