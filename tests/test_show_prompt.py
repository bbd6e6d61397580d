"""`qrun ask --show-prompt`: each id with its piece, and the text the ids decode to, for the three models.

The expected bytes of every id come from each model's reference tokenizer files (tests/data/tokenizers), not from
llama.cpp: tiktoken ranks for Qwen, SentencePiece pieces for ChatGLM3, tokenizer.json's byte-level vocabulary for
DeepSeek, and each model's own special-token table.
"""

from __future__ import annotations

import base64
import json
from functools import cache

import pytest
import sentencepiece
import tokenizers
from click.testing import CliRunner

from qrun.cli import main
from tiny_models import TOKENIZERS_DIR

# Source: Qwen-7B-Chat tokenization_qwen.py: SPECIAL_START_ID = 151643, then ENDOFTEXT, IMSTART, IMEND.
QWEN_SPECIALS = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
# Source: ChatGLM3-6B tokenization_chatglm.py SPTokenizer: these follow the SentencePiece vocabulary, in this order.
CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>"]


@cache
def _qwen_ranks() -> dict[int, bytes]:
    lines = (TOKENIZERS_DIR / "qwen-7b-chat" / "qwen.tiktoken").read_text().split()
    return {int(rank): base64.b64decode(token) for token, rank in zip(lines[::2], lines[1::2])}


@cache
def _sentencepiece() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZERS_DIR / "chatglm3-6b" / "tokenizer.model"))


@cache
def _deepseek() -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(TOKENIZERS_DIR / "deepseek-llm-7b-chat" / "tokenizer.json"))


@cache
def _byte_level_chars() -> dict[str, int]:
    # GPT-2's bytes_to_unicode (openai/gpt-2 src/encoder.py), which byte-level BPE vocabularies are written in
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def reference_bytes(model: str, token: int) -> bytes:
    """What `token` spells in the model's own tokenizer files."""
    if model == "qwen-7b-chat":
        return QWEN_SPECIALS[token].encode() if token in QWEN_SPECIALS else _qwen_ranks()[token]
    if model == "chatglm3-6b":
        sp = _sentencepiece()
        if token >= sp.vocab_size():
            return CHATGLM3_SPECIALS[token - sp.vocab_size()].encode()
        piece = sp.id_to_piece(token)
        if sp.is_byte(token):  # "<0x0A>"
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode()
    tok = _deepseek()
    text = tok.id_to_token(token)
    if token in tok.get_added_tokens_decoder():
        return text.encode()
    return bytes(_byte_level_chars()[char] for char in text)


def show(gguf, prompt: str, *extra: str):
    return CliRunner().invoke(main, ["ask", str(gguf), prompt, "--show-prompt", *extra])


CASES = [
    # ChatGLM3: SentencePiece's "▁" before each text segment: the ids decode to "<|user|> \n 你好", not the
    # template's "<|user|>\n你好"; 𰻝 is not in its vocabulary and is spelled in four byte tokens
    ("chatglm3-6b", "你好 𰻝", "[gMASK]sop<|user|> \n 你好 𰻝<|assistant|>"),
    (
        "qwen-7b-chat",
        "你好\tworld",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好\tworld<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    ("deepseek-llm-7b-chat", "你好 𰻝", "<｜begin▁of▁sentence｜>User: 你好 𰻝\n\nAssistant:"),
]


@pytest.mark.parametrize("model, prompt, decoded", CASES, ids=[case[0] for case in CASES])
def test_show_prompt_ids_pieces_and_decoded_text(tiny_gguf, model, prompt, decoded):
    result = show(tiny_gguf(model), prompt, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ids = data["prompt_token_ids"]
    assert [token["id"] for token in data["tokens"]] == ids
    expected = [reference_bytes(model, token) for token in ids]
    assert [bytes.fromhex(token["piece_hex"]) for token in data["tokens"]] == expected
    assert [token["piece"] for token in data["tokens"]] == [b.decode("utf-8", errors="replace") for b in expected]
    assert data["prompt_text"] == decoded == b"".join(expected).decode("utf-8")

    plain = show(tiny_gguf(model), prompt)
    assert plain.exit_code == 0, plain.output
    head, _, rest = plain.stdout.partition(f"\n--- {len(ids)} token ids:\n")
    assert head == decoded
    id_line, table_title, *rows = rest.splitlines()
    assert id_line == " ".join(map(str, ids)) and table_title == "--- id -> piece:"
    assert [row.split(" -> ")[0].strip() for row in rows] == [str(token) for token in ids]


def test_show_prompt_pieces_escape_what_cannot_be_seen(tiny_gguf):
    plain = show(tiny_gguf("chatglm3-6b"), "a\tb 𰻝", "--system", "")
    rows = dict(row.split(" -> ", 1) for row in plain.stdout.split("--- id -> piece:\n", 1)[1].splitlines())
    shown = list(rows.values())
    assert '"\\n"' in shown and '"<|user|>"' in shown  # quoted, with the newline escaped
    assert "bytes f0" in shown and "bytes 9d" in shown  # byte tokens of 𰻝 (F0 B0 BB 9D), one byte each
    assert not any("\t" in row for row in shown)
