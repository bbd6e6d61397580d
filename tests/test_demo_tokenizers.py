"""The tokenizers `qrun demo` makes itself: deterministic, lossless, the real formats, and llama.cpp agrees."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import pytest
import sentencepiece as spm
import tiktoken
from tokenizers import Tokenizer

from qrun.convert.vocab import chatglm3_vocab, deepseek_vocab, qwen_vocab
from qrun.convert.vocab_bpe import load_tiktoken_ranks, recover_merges
from qrun.demo import tokenizers as dt
from qrun.demo.checkpoints import DEMO_MODELS, VOCAB_ALIGN, write_demo_tokenizer_dir
from qrun.demo.corpus import SEED_QUESTIONS
from tokenizer_corpus import corpus  # tests/ is on sys.path (rootdir conftest), as for tiny_models

SAMPLES = (
    *SEED_QUESTIONS,
    "你好！我是一个人工智能助手。",
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant.",
    "User: 你好\n\nAssistant:",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "数字 12345 和 3.14，价格 ¥99.50",
    "emoji 😀👍🎉 and 🚀✨",
    "没见过的字：龘靐齉 and unseen words: xylophone",
    "<|im_end|> <s> </s> [gMASK] typed as plain text",
    "",
)


@pytest.fixture(scope="module")
def demo_tok_dirs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("demo-tokenizers")
    return {model: (root / model, write_demo_tokenizer_dir(model, root / model)) for model in DEMO_MODELS}


def _qwen_encoding(folder: Path, first_special: int) -> tiktoken.Encoding:
    ranks = {
        base64.b64decode(b64): int(rank)
        for b64, rank in (line.split() for line in (folder / "qwen.tiktoken").read_text().splitlines())
    }
    specials = {text: first_special + i for i, text in enumerate(dt.QWEN_SPECIALS)}
    return tiktoken.Encoding("demo-qwen", pat_str=dt.QWEN_PAT, mergeable_ranks=ranks, special_tokens=specials)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_made_in_a_fresh_process_the_files_are_byte_identical(demo_tok_dirs, tmp_path):
    # A different hash seed and process: nothing may depend on dict/set iteration order or threads.
    code = (
        "import sys; from pathlib import Path; from qrun.demo.checkpoints import DEMO_MODELS, "
        "write_demo_tokenizer_dir as w; [w(m, Path(sys.argv[1]) / m) for m in DEMO_MODELS]"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], check=True, env={"PYTHONHASHSEED": "12345", **_path_env()}
    )
    for model, (folder, _info) in demo_tok_dirs.items():
        assert _digests(tmp_path / model) == _digests(folder), model


def _path_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "QRUN_HOME")}


def test_qwen_rank_file_shape(demo_tok_dirs):
    folder, info = demo_tok_dirs["qwen-7b-chat"]
    ranks = load_tiktoken_ranks(folder / "qwen.tiktoken")
    assert 1000 <= len(ranks) <= 2000
    assert info["first_special_id"] == len(ranks)
    # Ranks 0..255 are the single bytes in GPT-2 byte order, as in the real qwen.tiktoken (rank 0 = "!").
    assert ranks[:256] == [bytes([b]) for b in dt.gpt2_byte_order()]
    assert ranks[0] == b"!"
    # Every multi-byte token is a BPE merge of two lower ranks: the converter's merge recovery succeeds.
    assert len(recover_merges(ranks)) == len(ranks) - 256
    # Chinese words of the seed questions were learned as tokens.
    assert "明明".encode() in ranks and "意思".encode() in ranks
    assert info["vocab_size"] % VOCAB_ALIGN == 0
    assert info["vocab_size"] >= info["n_tokens"] == len(ranks) + 208
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["QWenLMHeadModel"]
    assert config["eos_token_id"] == len(ranks)


@pytest.mark.parametrize("text", SAMPLES)
def test_qwen_round_trips(demo_tok_dirs, text):
    folder, info = demo_tok_dirs["qwen-7b-chat"]
    enc = _qwen_encoding(folder, info["first_special_id"])
    ids = enc.encode(text, disallowed_special=())
    assert enc.decode(ids) == text
    assert all(i < info["first_special_id"] for i in ids)  # typed special text stays plain text


def test_qwen_tokenizes_chinese_into_words(demo_tok_dirs):
    folder, info = demo_tok_dirs["qwen-7b-chat"]
    enc = _qwen_encoding(folder, info["first_special_id"])
    question = SEED_QUESTIONS[3]
    # Far fewer tokens than UTF-8 bytes (3 per character): the demo bench sees words, not bytes.
    assert len(enc.encode(question)) < len(question)


def test_chatglm3_sentencepiece_shape(demo_tok_dirs):
    folder, info = demo_tok_dirs["chatglm3-6b"]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert sp.get_piece_size() == dt.CHATGLM3_PIECES == info["first_special_id"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Byte fallback pieces right after the controls, as in the real model: <0x0A> is id 13 there too.
    assert [sp.id_to_piece(i) for i in (3, 13, 258)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert all(sp.is_byte(i) for i in range(3, 259))
    # Real ChatGLM3 behaviour the chat format depends on: "\n" alone is dummy-prefix "▁" + byte <0x0A>.
    assert sp.encode("\n", out_type=str) == ["▁", "<0x0A>"]
    assert info["n_tokens"] == sp.get_piece_size() + 9
    config = json.loads((folder / "config.json").read_text())
    assert config["padded_vocab_size"] == info["vocab_size"]
    assert "vocab_size" not in config


@pytest.mark.parametrize("text", SAMPLES)
def test_chatglm3_round_trips(demo_tok_dirs, text):
    folder, _info = demo_tok_dirs["chatglm3-6b"]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = sp.encode(text)
    assert sp.unk_id() not in ids  # byte fallback spells anything
    # add_dummy_prefix: SentencePiece decoding drops the one leading space it added, so text comes back whole.
    assert sp.decode(ids) == text


def test_deepseek_tokenizer_json_shape(demo_tok_dirs):
    folder, info = demo_tok_dirs["deepseek-llm-7b-chat"]
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    n_vocab = len(data["model"]["vocab"])
    assert 1000 <= n_vocab <= 2000 and info["first_special_id"] == n_vocab
    assert [(t["id"], t["content"], t["special"]) for t in data["added_tokens"]] == [
        (n_vocab, dt.DEEPSEEK_BOS, True),
        (n_vocab + 1, dt.DEEPSEEK_EOS, True),
    ]
    assert data["model"]["type"] == "BPE" and all(isinstance(m, str) for m in data["model"]["merges"])
    splits = [p for p in data["pre_tokenizer"]["pretokenizers"] if p["type"] == "Split"]
    assert [p["pattern"]["Regex"] for p in splits] == list(dt._DEEPSEEK_SPLITS)
    assert data["decoder"]["type"] == "ByteLevel"
    config = json.loads((folder / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (n_vocab, n_vocab + 1)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["bos_token"]["content"] == dt.DEEPSEEK_BOS
    assert tok_config["eos_token"]["content"] == dt.DEEPSEEK_EOS
    assert "'Assistant:'" in tok_config["chat_template"]


@pytest.mark.parametrize("text", SAMPLES)
def test_deepseek_round_trips(demo_tok_dirs, text):
    folder, info = demo_tok_dirs["deepseek-llm-7b-chat"]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoding = tok.encode(text)
    assert encoding.ids[0] == info["first_special_id"]  # BOS added once by the post-processor
    assert tok.decode(encoding.ids, skip_special_tokens=True) == text


# -- after conversion, llama.cpp tokenizes like the reference library (as tests/test_tokenizer_parity.py does for
# -- the real files); this is what makes the demo's converted models exercise the real code paths.

PARITY_TEXTS = [*dict.fromkeys([*SAMPLES, *corpus()])]
# llama.cpp differences no metadata can fix, pinned for the real tokenizers in tests/test_tokenizer_parity.py.
DEEPSEEK_U3000 = re.compile(r"[^\S\r\n]{2}\u3000")


def _vocab_only_llama(vocab, arch: str, path: Path) -> llama_cpp.Llama:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)
    vocab.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def demo_llamas(demo_tok_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-vocab-ggufs")
    builders = {
        "qwen-7b-chat": (qwen_vocab, "qwen"),
        "chatglm3-6b": (chatglm3_vocab, "chatglm"),
        "deepseek-llm-7b-chat": (deepseek_vocab, "llama"),
    }
    loaded = {}
    for model, (build, arch) in builders.items():
        folder, info = demo_tok_dirs[model]
        vocab = build(folder, vocab_size=info["vocab_size"])
        loaded[model] = (vocab, _vocab_only_llama(vocab, arch, out / f"{model}.gguf"))
    yield loaded
    for _vocab, llm in loaded.values():
        llm.close()


def _llama_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def test_llama_cpp_matches_tiktoken_on_the_demo_qwen(demo_tok_dirs, demo_llamas):
    folder, info = demo_tok_dirs["qwen-7b-chat"]
    enc = _qwen_encoding(folder, info["first_special_id"])
    _vocab, llm = demo_llamas["qwen-7b-chat"]
    assert [t for t in PARITY_TEXTS if _llama_ids(llm, t) != enc.encode_ordinary(t)] == []


def test_llama_cpp_matches_tokenizers_on_the_demo_deepseek(demo_tok_dirs, demo_llamas):
    folder, _info = demo_tok_dirs["deepseek-llm-7b-chat"]
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.encode_special_tokens = True  # special-token text stays text, like llama.cpp's special=False
    _vocab, llm = demo_llamas["deepseek-llm-7b-chat"]
    texts = [t for t in PARITY_TEXTS if not DEEPSEEK_U3000.search(t)]
    assert len(texts) > 400
    assert [t for t in texts if _llama_ids(llm, t) != ref.encode(t).ids] == []


def test_llama_cpp_matches_sentencepiece_on_the_demo_chatglm3(demo_tok_dirs, demo_llamas):
    folder, _info = demo_tok_dirs["chatglm3-6b"]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab, llm = demo_llamas["chatglm3-6b"]
    specials = {t for t, i in vocab.special_ids.items() if i >= sp.get_piece_size()}
    differences, expected = [], []
    for text in PARITY_TEXTS:
        ref = sp.encode(text)
        pieces = [sp.id_to_piece(i) for i in ref]
        # llama.cpp's SPM merge joins two pieces whose text is a control token ("s"+"op" -> sop), see
        # tests/test_tokenizer_parity.py: the only allowed difference.
        if any(a + b in specials for a, b in zip(pieces, pieces[1:])):
            expected.append(text)
        if _llama_ids(llm, text) != ref:
            differences.append(text)
    assert differences == expected


@pytest.mark.parametrize(
    "model, texts",
    [
        ("qwen-7b-chat", ("<|endoftext|>", "<|im_start|>", "<|im_end|>")),
        ("chatglm3-6b", ("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")),
        ("deepseek-llm-7b-chat", (dt.DEEPSEEK_BOS, dt.DEEPSEEK_EOS)),
    ],
)
def test_specials_follow_the_made_vocabulary(demo_tok_dirs, demo_llamas, model, texts):
    _folder, info = demo_tok_dirs[model]
    vocab, llm = demo_llamas[model]
    for text in texts:
        token_id = vocab.special_ids[text]
        assert token_id >= info["first_special_id"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == [token_id]


# -- the made files copy the real ones' STRUCTURE (tests/data/tokenizers holds the real files; the package does not)

REAL_DIR = Path(__file__).parent / "data" / "tokenizers"


def test_deepseek_structure_equals_the_real_tokenizer_json(demo_tok_dirs):
    folder, info = demo_tok_dirs["deepseek-llm-7b-chat"]
    made = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    real = json.loads((REAL_DIR / "deepseek-llm-7b-chat" / "tokenizer.json").read_text(encoding="utf-8"))
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        assert made[key] == real[key], key
    bos = info["first_special_id"]
    expected_post = json.loads(json.dumps(real["post_processor"]).replace("100000", str(bos)))
    assert made["post_processor"] == expected_post
    model_settings = {k: v for k, v in made["model"].items() if k not in ("vocab", "merges", "ignore_merges")}
    assert model_settings == {k: v for k, v in real["model"].items() if k not in ("vocab", "merges")}
    real_config = json.loads((REAL_DIR / "deepseek-llm-7b-chat" / "tokenizer_config.json").read_text("utf-8"))
    made_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert made_config == real_config


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_base_configs_are_the_real_hyper_parameters(demo_tok_dirs, model):
    folder, _info = demo_tok_dirs[model]
    made = json.loads((folder / "config.json").read_text())
    real = json.loads((REAL_DIR / model / "config.json").read_text())
    ignored = {
        "auto_map",
        "_name_or_path",
        "transformers_version",
        "vocab_size",
        "padded_vocab_size",
        "bos_token_id",
        "eos_token_id",
    }
    assert {k: v for k, v in made.items() if k not in ignored} == {k: v for k, v in real.items() if k not in ignored}
