"""The GGUF vocabularies qrun.convert.vocab writes tokenize in llama.cpp exactly like each model's reference tokenizer.

References, built from the real files in tests/data/tokenizers:
  Qwen-7B-Chat   tiktoken with qwen.tiktoken + Qwen's PAT_STR, no special tokens allowed (encode_ordinary).
  ChatGLM3-6B    sentencepiece with tokenizer.model (what tokenization_chatglm.py's SPTokenizer.encode calls).
  DeepSeek       tokenizers with tokenizer.json, special tokens encoded as text (llama.cpp's special=False).

Known differences that no GGUF metadata can fix (llama.cpp's tokenizer code decides them); each is pinned by a test
so a llama.cpp upgrade that changes them fails here:
  ChatGLM3  llama.cpp's SPM merging joins two adjacent symbols whenever their text is ANY vocabulary entry, control
            tokens included, so plain text "sop"/"eop" can become the control tokens 64792/64793. It happens exactly
            where SentencePiece leaves the pieces s|op, so|p or e|op side by side (e.g. "xsop", "(sop)", "  sop").
  DeepSeek  llama.cpp maps non-ASCII whitespace to \\v before its std::regex pre-tokenizer, so U+3000 (ideographic
            space, the one whitespace inside the deepseek-llm punctuation class) never joins that class: text with
            two or more non-newline whitespace characters right before U+3000 splits differently.
  Qwen      Qwen's own QWenTokenizer NFC-normalizes text before tiktoken; llama.cpp does not. Callers must NFC text.
"""

from __future__ import annotations

import base64
import ctypes
import re
import unicodedata
from types import SimpleNamespace

import gguf
import llama_cpp
import pytest
import sentencepiece
import tiktoken
import tokenizers

from qrun.convert.vocab import Vocab, chatglm3_vocab, deepseek_vocab, qwen_vocab
from qrun.convert.vocab_spm import read_sentencepiece_model
from tiny_models import TOKENIZERS_DIR
from tokenizer_corpus import corpus

QWEN_DIR = TOKENIZERS_DIR / "qwen-7b-chat"
CHATGLM3_DIR = TOKENIZERS_DIR / "chatglm3-6b"
DEEPSEEK_DIR = TOKENIZERS_DIR / "deepseek-llm-7b-chat"
# Source: Qwen-7B-Chat tokenization_qwen.py PAT_STR.
QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (the pattern verbatim)
DEEPSEEK_U3000 = re.compile(r"[^\S\r\n]{2}\u3000")
CORPUS = corpus()


def write_vocab_only_gguf(vocab: Vocab, arch: str, path) -> None:
    """A GGUF with no tensors: llama.cpp's vocab_only load needs general.architecture and the tokenizer keys."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(4096)  # only silences llama.cpp's "n_ctx_train (0)" warning for the dummy context
    vocab.add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_vocab_only(vocab: Vocab, arch: str, path) -> SimpleNamespace:
    write_vocab_only_gguf(vocab, arch, path)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return SimpleNamespace(vocab=vocab, llm=llm, lv=llama_cpp.llama_model_get_vocab(llm.model))


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab-ggufs")
    loaded = {
        "qwen": load_vocab_only(qwen_vocab(QWEN_DIR, vocab_size=151936), "qwen", out / "qwen.gguf"),
        "chatglm3": load_vocab_only(chatglm3_vocab(CHATGLM3_DIR, vocab_size=65024), "chatglm", out / "chatglm3.gguf"),
        "deepseek": load_vocab_only(deepseek_vocab(DEEPSEEK_DIR, vocab_size=102400), "llama", out / "deepseek.gguf"),
    }
    yield loaded
    for model in loaded.values():
        model.llm.close()


def qwen_reference(rank_file=QWEN_DIR / "qwen.tiktoken") -> tiktoken.Encoding:
    """Qwen's encoder the way tokenization_qwen.py builds it, minus its special tokens."""
    lines = rank_file.read_text().split("\n")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in lines if line)}
    return tiktoken.Encoding("qwen-test", pat_str=QWEN_PAT, mergeable_ranks=ranks, special_tokens={})


def deepseek_reference(path=DEEPSEEK_DIR / "tokenizer.json") -> tokenizers.Tokenizer:
    """DeepSeek's fast tokenizer, with special-token text encoded as plain text."""
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True  # special-token text stays text, like llama.cpp's special=False
    return tok


@pytest.fixture(scope="session")
def qwen_ref() -> tiktoken.Encoding:
    return qwen_reference()


@pytest.fixture(scope="session")
def deepseek_ref() -> tokenizers.Tokenizer:
    return deepseek_reference()


@pytest.fixture(scope="session")
def sp() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(CHATGLM3_DIR / "tokenizer.model"))


def llama_ids(model, text: str) -> list[int]:
    # add_bos=True means "add what the model adds": only DeepSeek's GGUF says add_bos_token=true.
    return model.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def detokenize(model, ids: list[int], *, unparse_special: bool = False) -> str:
    # Not Llama.detokenize: llama-cpp-python 0.3.36 uses a 32-byte piece buffer and silently truncates longer
    # tokens (Qwen has tokens up to 128 bytes, e.g. runs of spaces or "=").
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 + 8 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(model.lv, arr, len(ids), buf, size, False, unparse_special)
        if n >= 0:
            return buf.raw[:n].decode("utf-8")
        size = -n + 1


def test_corpus_is_large_and_mixed():
    assert len(CORPUS) >= 500 and len(set(CORPUS)) > 480
    for needle in ("明明明明明白白白", "😀", "\t", "  ", "<|im_end|>", "：", "def ", "\u3000", "sop"):
        assert any(needle in text for text in CORPUS), needle


def test_qwen_matches_tiktoken(models, qwen_ref):
    ref = qwen_ref
    mismatches = [
        (t, llama_ids(models["qwen"], t), ref.encode_ordinary(t))
        for t in CORPUS
        if llama_ids(models["qwen"], t) != ref.encode_ordinary(t)
    ]
    assert mismatches == []


def test_deepseek_matches_tokenizers(models, deepseek_ref):
    ref = deepseek_ref
    checked = mismatches = 0
    for text in CORPUS:
        if DEEPSEEK_U3000.search(text):
            continue  # known llama.cpp difference, pinned in test_known_differences_are_exactly_these
        checked += 1
        mismatches += llama_ids(models["deepseek"], text) != ref.encode(text).ids
    assert checked > 500 and mismatches == 0


def _sentencepiece_leaves_special_pair(sp, ids: list[int], special_texts: set[str]) -> bool:
    pieces = [sp.id_to_piece(i) for i in ids]
    return any(a + b in special_texts for a, b in zip(pieces, pieces[1:]))


def test_chatglm3_matches_sentencepiece_except_sop_eop(models, sp):
    specials = {t for t, i in models["chatglm3"].vocab.special_ids.items() if i >= sp.vocab_size()}
    expected_differences, differences = [], []
    for text in CORPUS:
        ref = sp.encode(text)
        if _sentencepiece_leaves_special_pair(sp, ref, specials):
            expected_differences.append(text)
        if llama_ids(models["chatglm3"], text) != ref:
            differences.append(text)
    # The differences are exactly the predicted ones, and the corpus does exercise them.
    assert differences == expected_differences
    assert 0 < len(differences) < 15


def test_known_differences_are_exactly_these(models, sp, qwen_ref, deepseek_ref):
    # "xsop": SentencePiece gives ▁x s op; llama.cpp merges s+op into the control token sop.
    assert sp.encode("xsop") == [1994, 30917, 404]
    assert llama_ids(models["chatglm3"], "xsop") == [1994, 64792]
    assert llama_ids(models["chatglm3"], " sop") == sp.encode(" sop")[:1] + [64792]
    ref = deepseek_ref
    assert ref.encode("a  \u3000").ids == [100000, 64, 207, 207, 88946]  # a, Ġ, Ġ, U+3000
    assert llama_ids(models["deepseek"], "a  \u3000") == [100000, 64, 243, 88946]  # a, ĠĠ, U+3000
    assert llama_ids(models["deepseek"], "a \u3000") == ref.encode("a \u3000").ids
    # Qwen: decomposed "é" tokenizes differently from its NFC form, so NFC must happen before llama.cpp.
    decomposed = "cafe\u0301"
    nfc = unicodedata.normalize("NFC", decomposed)
    assert llama_ids(models["qwen"], decomposed) == qwen_ref.encode_ordinary(decomposed)
    assert llama_ids(models["qwen"], nfc) == qwen_ref.encode_ordinary(nfc) != llama_ids(models["qwen"], decomposed)


@pytest.mark.parametrize(
    "model, text, token_id",
    [
        ("qwen", "<|endoftext|>", 151643),
        ("qwen", "<|im_start|>", 151644),
        ("qwen", "<|im_end|>", 151645),
        ("qwen", "<|extra_0|>", 151646),
        ("qwen", "<|extra_204|>", 151850),
        ("chatglm3", "[MASK]", 64789),
        ("chatglm3", "[gMASK]", 64790),
        ("chatglm3", "sop", 64792),
        ("chatglm3", "<|system|>", 64794),
        ("chatglm3", "<|user|>", 64795),
        ("chatglm3", "<|assistant|>", 64796),
        ("chatglm3", "<|observation|>", 64797),
        ("chatglm3", "</s>", 2),
        ("deepseek", "<｜begin▁of▁sentence｜>", 100000),
        ("deepseek", "<｜end▁of▁sentence｜>", 100001),
    ],
)
def test_special_tokens_resolve_to_the_real_ids(models, model, text, token_id):
    m = models[model]
    assert m.vocab.special_ids[text] == token_id
    assert m.llm.tokenize(text.encode(), add_bos=False, special=True) == [token_id]
    assert token_id not in m.llm.tokenize(text.encode(), add_bos=False, special=False)
    assert detokenize(m, [token_id], unparse_special=True) == text
    assert detokenize(m, [token_id]) == ""  # control tokens never print as text


@pytest.mark.parametrize(
    "model, bos, eos, add_bos, eog, not_eog",
    [
        ("qwen", 151643, 151643, False, {151643, 151645}, {151644, 151646, 198}),
        ("chatglm3", 1, 2, False, {2, 64795, 64797}, {64790, 64792, 64794, 64796, 13}),
        ("deepseek", 100000, 100001, True, {100001}, {100000, 100002, 185}),
    ],
)
def test_bos_eos_and_end_of_generation(models, model, bos, eos, add_bos, eog, not_eog):
    lv = models[model].lv
    assert (llama_cpp.llama_vocab_bos(lv), llama_cpp.llama_vocab_eos(lv)) == (bos, eos)
    assert llama_cpp.llama_vocab_get_add_bos(lv) is add_bos
    assert {t for t in eog | not_eog if llama_cpp.llama_vocab_is_eog(lv, t)} == eog


@pytest.mark.parametrize(
    "model, vocab_size, first_pad", [("qwen", 151936, 151851), ("chatglm3", 65024, 64798), ("deepseek", 102400, 100015)]
)
def test_padding_tokens_are_unused_and_never_typed(models, model, vocab_size, first_pad):
    m = models[model]
    assert llama_cpp.llama_vocab_n_tokens(m.lv) == vocab_size
    for token_id in (first_pad, vocab_size - 1):
        assert llama_cpp.llama_vocab_get_attr(m.lv, token_id) == llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
        for special in (False, True):
            assert token_id not in m.llm.tokenize(f"[PAD{token_id}]".encode(), add_bos=False, special=special)


@pytest.mark.parametrize("model", ["qwen", "deepseek"])
def test_byte_level_detokenize_round_trips(models, model):
    m = models[model]
    failures = [t for t in CORPUS if detokenize(m, m.llm.tokenize(t.encode(), add_bos=False, special=False)) != t]
    assert failures == []


def test_chatglm3_detokenize_matches_sentencepiece_decode(models, sp):
    # SentencePiece reads a literal "▁" (U+2581) in text as a space, so only text without it round-trips; llama.cpp
    # must decode exactly like sp.decode, including dropping the dummy-prefix space.
    m = models["chatglm3"]
    checked = 0
    for text in CORPUS:
        ids = sp.encode(text)
        if llama_ids(m, text) != ids:
            continue  # the sop/eop difference, covered above
        checked += 1
        assert detokenize(m, ids) == sp.decode(ids), text
        if "\u2581" not in text:
            assert sp.decode(ids) == text
    assert checked > 500


def test_chatglm3_pieces_scores_and_types_match_sentencepiece(models, sp):
    parsed = read_sentencepiece_model(CHATGLM3_DIR / "tokenizer.model")
    assert parsed.add_dummy_prefix and not parsed.remove_extra_whitespaces and parsed.normalizer_name == "identity"
    v = models["chatglm3"].vocab
    n = sp.vocab_size()
    assert v.tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert v.scores[:n] == [sp.get_score(i) for i in range(n)]
    kinds = [
        3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1
        for i in range(n)
    ]
    assert v.token_types[:n] == kinds
    assert v.add_space_prefix is True and v.eot_id == 64795 and v.eom_id == 64797
