"""Small tokenizers of each kind that `qrun demo` makes itself, from the built-in corpus (qrun/demo/corpus.py).

The package must not ship the models' own vocabularies, yet the demo has to exercise exactly the code paths the real
files take through the converter and llama.cpp. So each made tokenizer has the real one's FORMAT and settings, only a
small vocabulary learned from our own text:

* Qwen: a tiktoken rank file `qwen.tiktoken` (`base64(bytes) rank`), ranks 0..255 the single bytes in GPT-2's
  byte-to-unicode order as in the real file, then merges learned by byte-level BPE over text pre-split with Qwen's
  regex. The specials (<|endoftext|>, <|im_start|>, <|im_end|>, <|extra_N|>) are not in the file: Qwen's code and our
  converter put them right after the last rank.
* ChatGLM3: a SentencePiece BPE `tokenizer.model` trained with the trainer settings of the real one (read from its
  trainer_spec: byte_fallback, split_digits, identity normalization, dummy prefix on, extra whitespace kept...).
  The converter appends the nine ChatGLM3 specials after the last piece.
* DeepSeek: a byte-level BPE `tokenizer.json` with the deepseek-llm pre-tokenizer / decoder / normalizer structure
  (regexes copied from the real file: configuration, not vocabulary), BOS/EOS added after the vocabulary.

Everything is deterministic: the same corpus gives byte-identical files (tests/test_demo_tokenizers.py checks it).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from qrun.convert.vocab_bpe import byte_to_unicode
from qrun.demo.corpus import corpus_lines

# Source: Qwen-7B-Chat tokenization_qwen.py PAT_STR (cl100k-style, but single digits).
QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (the pattern verbatim)
# Source: Qwen's tokenization_qwen.py: specials follow the ranks in this order, then <|extra_0|>..<|extra_204|>.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"  # full-width bar U+FF5C and U+2581, as in the real tokenizer.json
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"

# Source: the deepseek-llm tokenizer.json pre_tokenizer (five Split regexes, then single digits, then byte-level);
# llama.cpp's "deepseek-llm" pre-tokenizer implements the same splits.
_DEEPSEEK_SPLITS = (
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\ud7ff]+",
)

# Source: deepseek-llm-7b-chat tokenizer_config.json chat_template (the published DeepSeek-LLM chat format).
DEEPSEEK_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Vocabulary targets: big enough that the demo prompts tokenize into words, small enough that the models stay tiny.
QWEN_TARGET_TOKENS = 1500
CHATGLM3_PIECES = 1500
DEEPSEEK_TARGET_TOKENS = 1500
# Longest learned token: 12 bytes (4 CJK characters) / 6 SentencePiece characters. The real vocabularies keep
# Chinese tokens short too; without a cap a small corpus merges whole repeated sentences into one token.
MAX_TOKEN_BYTES = 12
CHATGLM3_MAX_PIECE_CHARS = 6


def gpt2_byte_order() -> list[int]:
    """The 256 byte values in GPT-2's bytes_to_unicode order (printable first): the order of Qwen's ranks 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def _byte_level_bpe(pre_tokenizer, *, vocab_size: int) -> dict:
    """Train a byte-level BPE on the corpus with the `tokenizers` trainer; returns the tokenizer as a JSON dict."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        max_token_length=MAX_TOKEN_BYTES,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([line + "\n" for line in corpus_lines()], trainer)
    return json.loads(tokenizer.to_str())


def _rank_bpe(ranks: dict[bytes, int], piece: bytes) -> list[bytes]:
    """tiktoken's byte-pair merge: repeatedly join the adjacent pair whose joined bytes have the lowest rank."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
        if parts[best] + parts[best + 1] not in ranks:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def qwen_ranks() -> list[bytes]:
    """The demo Qwen vocabulary: token bytes in rank order.

    Every multi-byte token is kept only if tiktoken's merge over the lower ranks builds it from exactly two parts,
    which is how a converter recomputes BPE merges from a rank file (and what makes llama.cpp's merge-based BPE
    agree with tiktoken's rank-based one).
    """
    split = pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated")
    learned = _byte_level_bpe(
        pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        vocab_size=QWEN_TARGET_TOKENS,
    )
    unicode_to_byte = {ch: b for b, ch in enumerate(byte_to_unicode())}
    ranks: dict[bytes, int] = {bytes([b]): i for i, b in enumerate(gpt2_byte_order())}
    for merge in learned["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(unicode_to_byte[ch] for ch in left + right)
        if token not in ranks and len(_rank_bpe(ranks, token)) == 2:
            ranks[token] = len(ranks)
    return sorted(ranks, key=ranks.__getitem__)


def write_qwen_tokenizer(out_dir: Path) -> int:
    """Write qwen.tiktoken into out_dir; returns the rank count (= the id of <|endoftext|>)."""
    ranks = qwen_ranks()
    text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(ranks))
    (out_dir / "qwen.tiktoken").write_text(text, encoding="ascii")
    return len(ranks)


def chatglm3_model_proto() -> bytes:
    """A SentencePiece BPE model trained like ChatGLM3's (settings from its tokenizer.model trainer_spec)."""
    model = io.BytesIO()
    # minloglevel silences the trainer's C++ log (its `logstream` option needs a real stderr file descriptor).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        minloglevel=3,
        model_type="bpe",
        vocab_size=CHATGLM3_PIECES,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        character_coverage=0.9999,
        max_sentencepiece_length=CHATGLM3_MAX_PIECE_CHARS,
        split_by_unicode_script=True,
        split_by_number=True,
        split_by_whitespace=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
    )
    return model.getvalue()


def write_chatglm3_tokenizer(out_dir: Path) -> int:
    """Write tokenizer.model into out_dir; returns the piece count (= the id of [MASK], the first special)."""
    proto = chatglm3_model_proto()
    (out_dir / "tokenizer.model").write_bytes(proto)
    return spm.SentencePieceProcessor(model_proto=proto).get_piece_size()


def deepseek_tokenizer_json() -> dict:
    """The demo DeepSeek tokenizer.json (as a dict): learned BPE + the real pre-tokenizer structure + BOS/EOS."""
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in _DEEPSEEK_SPLITS]
    pre = pre_tokenizers.Sequence(
        [
            *splits,
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    learned = _byte_level_bpe(pre, vocab_size=DEEPSEEK_TARGET_TOKENS)
    tokenizer = Tokenizer.from_str(json.dumps(learned))
    tokenizer.normalizer = normalizers.Sequence([])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(DEEPSEEK_BOS, special=True, normalized=False),
            AddedToken(DEEPSEEK_EOS, special=True, normalized=False),
        ]
    )
    bos_id = tokenizer.token_to_id(DEEPSEEK_BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{DEEPSEEK_BOS} $A",
        pair=f"{DEEPSEEK_BOS} $A {DEEPSEEK_BOS}:1 $B:1",
        special_tokens=[(DEEPSEEK_BOS, bos_id)],
    )
    data = json.loads(tokenizer.to_str())
    # The real file (and older `tokenizers` releases) store merges as "left right" strings.
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return data


def write_deepseek_tokenizer(out_dir: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json into out_dir; returns the BPE vocab size (= BOS id)."""
    data = deepseek_tokenizer_json()
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {
            "__type": "AddedToken",
            "content": DEEPSEEK_BOS,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
        "eos_token": {
            "__type": "AddedToken",
            "content": DEEPSEEK_EOS,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
        },
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 4096,
        "pad_token": None,
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": DEEPSEEK_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return len(data["model"]["vocab"])
