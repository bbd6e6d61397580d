"""Tokenizer DATA files -> GGUF tokenizer metadata that llama.cpp tokenizes exactly like the reference tokenizer.

One builder per model reads only data files (no tokenizer code from a checkpoint is ever run):
  qwen_vocab      qwen.tiktoken ranks -> llama.cpp "gpt2" BPE, pre-tokenizer "qwen2" (its regex is Qwen v1's
                  tokenization_qwen.py PAT_STR), merges recovered from the ranks (convert/vocab_bpe.py).
  chatglm3_vocab  tokenizer.model (SentencePiece BPE) -> llama.cpp "llama" (SPM), pre "chatglm-spm".
  deepseek_vocab  tokenizer.json (HF byte-level BPE) -> llama.cpp "gpt2", pre "deepseek-llm".
Special-token ids are derived from the files, never hard-coded, so `qrun demo`'s small self-made tokenizers go
through the same code. Token ids beyond the tokenizer, up to the model's vocab_size, become "[PAD<id>]"
placeholders of type UNUSED: llama.cpp never matches UNUSED tokens in text, so typing "[PAD151900]" stays text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from qrun.convert.vocab_bpe import bytes_to_token_text, load_tiktoken_ranks, recover_merges
from qrun.convert.vocab_spm import SP_CONTROL, check_llama_cpp_compatible, read_sentencepiece_model
from qrun.errors import CheckpointError, UnsupportedConfigError

NORMAL, CONTROL, USER_DEFINED, UNUSED = (
    int(gguf.TokenType.NORMAL),
    int(gguf.TokenType.CONTROL),
    int(gguf.TokenType.USER_DEFINED),
    int(gguf.TokenType.UNUSED),
)

# Source: Qwen-7B-Chat tokenization_qwen.py SPECIAL_TOKENS, numbered from len(mergeable_ranks) in this order.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
# Source: ChatGLM3-6B tokenization_chatglm.py SPTokenizer.__init__ special_tokens, numbered from sp.vocab_size().
CHATGLM3_SPECIALS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)


@dataclass
class Vocab:
    """Everything llama.cpp reads from tokenizer.ggml.*; ids are None when the model has no such token."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre: selects llama.cpp's pre-tokenizer regexes
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # control / added token text -> id

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.token_types) != n or (self.scores is not None and len(self.scores) != n):
            raise ValueError("tokens, token_types and scores differ in length")
        if len(set(self.tokens)) != n:
            # llama.cpp aborts the whole process (GGML_ASSERT) on a repeated token text: refuse here instead.
            seen: set[str] = set()
            dup = next(t for t in self.tokens if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise CheckpointError(f"the tokenizer defines the token {dup!r} twice", "check the tokenizer files")
        for name in ("bos_id", "eos_id", "unk_id", "eot_id", "eom_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < n:
                raise CheckpointError(
                    f"{name} {value} is outside the vocabulary of {n} tokens", "check the tokenizer and config files"
                )

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write every tokenizer.ggml.* key of this vocabulary."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for value, add in (
            (self.bos_id, writer.add_bos_token_id),
            (self.eos_id, writer.add_eos_token_id),
            (self.unk_id, writer.add_unk_token_id),
            (self.eot_id, writer.add_eot_token_id),
            (self.eom_id, writer.add_eom_token_id),
            (self.pad_id, writer.add_pad_token_id),
        ):
            if value is not None:
                add(value)
        # Always explicit: llama.cpp's defaults differ per tokenizer model (SPM adds BOS unless told not to).
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)


def _pad(
    tokens: list[str], types: list[int], vocab_size: int, scores: list[float] | None = None, pad_score: float = 0.0
) -> None:
    if len(tokens) > vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}",
            "the tokenizer files do not belong to this checkpoint",
        )
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores is not None:
            scores.append(pad_score)


def _read_json(path: Path, *, required: bool) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise CheckpointError(
                f"tokenizer file missing: {path}", "copy the model's tokenizer files into the folder"
            ) from None
        return {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}", "re-download the model's tokenizer files") from None


def _config_pad_id(tokenizer_dir: Path) -> int | None:
    """pad_token_id as the model's generation_config.json or config.json declares it, if at all."""
    for name in ("generation_config.json", "config.json"):
        value = _read_json(tokenizer_dir / name, required=False).get("pad_token_id")
        if isinstance(value, int):
            return value
    return None


def qwen_vocab(tokenizer_dir: Path | str, *, vocab_size: int) -> Vocab:
    """Qwen v1: qwen.tiktoken ranks + Qwen's specials (from the rank count on) -> llama.cpp gpt2/qwen2 vocab.

    Raises:
        CheckpointError: missing or malformed qwen.tiktoken, or vocab_size too small for the tokenizer.
    """
    tokenizer_dir = Path(tokenizer_dir)
    ranks = load_tiktoken_ranks(tokenizer_dir / "qwen.tiktoken")
    tokens = [bytes_to_token_text(t) for t in ranks]
    text_of = dict(zip(ranks, tokens))
    merges = [f"{text_of[a]} {text_of[b]}" for a, b in recover_merges(ranks)]
    types = [NORMAL] * len(tokens)
    if len(ranks) + len(QWEN_SPECIALS) > vocab_size:
        raise CheckpointError(
            f"qwen.tiktoken has {len(ranks)} ranks + {len(QWEN_SPECIALS)} special tokens, more "
            f"than the model's vocab_size {vocab_size}",
            "the tokenizer does not fit this model",
        )
    special_ids = {text: len(ranks) + i for i, text in enumerate(QWEN_SPECIALS)}
    tokens += QWEN_SPECIALS
    types += [CONTROL] * len(QWEN_SPECIALS)
    _pad(tokens, types, vocab_size)
    endoftext = special_ids["<|endoftext|>"]
    pad_id = _config_pad_id(tokenizer_dir)
    # Qwen's tokenizer uses <|endoftext|> as bos, eos and unk, and never adds a BOS (qwen_generation_utils).
    # eot is set explicitly: llama.cpp would otherwise pick <|im_end|> or <|endoftext|> by hash-map order.
    return Vocab(
        model="gpt2",
        pre="qwen2",
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=endoftext,
        eos_id=endoftext,
        unk_id=endoftext,
        eot_id=special_ids["<|im_end|>"],
        pad_id=pad_id if pad_id is not None and pad_id < vocab_size else None,
        add_bos=False,
        add_eos=False,
        special_ids=special_ids,
    )


def chatglm3_vocab(tokenizer_dir: Path | str, *, vocab_size: int) -> Vocab:
    """ChatGLM3: tokenizer.model pieces/scores/types + nine specials (from the piece count on) -> llama.cpp SPM.

    Raises:
        CheckpointError: missing or malformed tokenizer.model, or vocab_size too small.
        UnsupportedConfigError: SentencePiece settings llama.cpp cannot reproduce (see vocab_spm).
    """
    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / "tokenizer.model"
    sp = read_sentencepiece_model(path)
    check_llama_cpp_compatible(sp, path)
    tokens, scores, types = list(sp.pieces), list(sp.scores), list(sp.types)
    # The specials get a score below every real piece. llama.cpp's SPM merging joins any two adjacent symbols
    # whose text is a vocabulary entry, control tokens included, so plain "sop"/"eop" text can merge into
    # those control tokens; the lowest score makes that merge the last resort (see tests: only text where
    # SentencePiece itself leaves "so"+"p", "s"+"op", "eo"+"p" or "e"+"op" side by side is affected).
    special_score = min(scores) - 1.0
    n_pieces = len(tokens)
    if n_pieces + len(CHATGLM3_SPECIALS) > vocab_size:
        raise CheckpointError(
            f"tokenizer.model has {n_pieces} pieces + {len(CHATGLM3_SPECIALS)} special tokens, "
            f"more than the model's vocab_size {vocab_size}",
            "the tokenizer does not fit this model",
        )
    special_ids = {text: n_pieces + i for i, text in enumerate(CHATGLM3_SPECIALS)}
    special_ids.update({p: i for i, (p, t) in enumerate(zip(sp.pieces, sp.types)) if t == SP_CONTROL})
    tokens += CHATGLM3_SPECIALS
    scores += [special_score] * len(CHATGLM3_SPECIALS)
    types += [CONTROL] * len(CHATGLM3_SPECIALS)
    _pad(tokens, types, vocab_size, scores, special_score)
    pad_id = _config_pad_id(tokenizer_dir)
    # ChatGLM3's chat() stops on eos, <|user|> and <|observation|>; llama.cpp puts eos, eot and eom ids into
    # its end-of-generation set (llama_vocab::impl::load, "special_eot_id is not in special_eog_ids").
    return Vocab(
        model="llama",
        pre="chatglm-spm",
        tokens=tokens,
        token_types=types,
        scores=scores,
        bos_id=sp.bos_id if sp.bos_id >= 0 else None,
        eos_id=sp.eos_id if sp.eos_id >= 0 else None,
        unk_id=sp.unk_id if sp.unk_id >= 0 else None,
        eot_id=special_ids["<|user|>"],
        eom_id=special_ids["<|observation|>"],
        pad_id=pad_id if pad_id is not None and 0 <= pad_id < vocab_size else None,
        add_bos=False,
        add_eos=False,
        add_space_prefix=sp.add_dummy_prefix,
        special_ids=special_ids,
    )


def _token_content(value: object) -> str | None:
    """tokenizer_config.json names a token as a string or as an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def deepseek_vocab(tokenizer_dir: Path | str, *, vocab_size: int) -> Vocab:
    """DeepSeek-LLM: tokenizer.json vocab + merges in order, added tokens by id -> llama.cpp gpt2/deepseek-llm.

    Raises:
        CheckpointError: missing or malformed tokenizer.json, unknown bos/eos, or vocab_size too small.
        UnsupportedConfigError: a tokenizer.json that is not byte-level BPE without a normalizer.
    """
    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / "tokenizer.json"
    data = _read_json(path, required=True)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise UnsupportedConfigError(f"{path}: not a byte-level BPE tokenizer", "use the model's own tokenizer.json")
    if (data.get("normalizer") or {}).get("normalizers", []) or (data.get("normalizer") or {}).get("type") not in (
        None,
        "Sequence",
    ):
        raise UnsupportedConfigError(
            f"{path}: normalizer {data['normalizer'].get('type')} is not supported",
            "use the model's own tokenizer.json",
        )
    by_id = {i: text for text, i in model.get("vocab", {}).items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    n = max([*by_id, *added], default=-1) + 1
    if n > vocab_size:
        raise CheckpointError(
            f"{path} has {n} tokens but the model's vocab_size is {vocab_size}", "the tokenizer does not fit this model"
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        if i in added:
            # Special added tokens are control tokens; the others (13 single characters at 100002..) are matched
            # in raw text before BPE, which llama.cpp does for USER_DEFINED tokens even with special=False.
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    _pad(tokens, types, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special_ids = {t["content"]: i for i, t in added.items()}
    config = _read_json(tokenizer_dir / "tokenizer_config.json", required=False)
    fallback = _read_json(tokenizer_dir / "config.json", required=False)
    ids = {}
    for name in ("bos", "eos"):
        text = _token_content(config.get(f"{name}_token"))
        token_id = special_ids.get(text) if text is not None else fallback.get(f"{name}_token_id")
        if not isinstance(token_id, int):
            raise CheckpointError(
                f"cannot tell the {name} token of {path} (tokenizer_config.json {name}_token {text!r})",
                "copy the model's tokenizer_config.json into the folder",
            )
        if not 0 <= token_id < len(tokens):
            raise CheckpointError(
                f"{name}_id {token_id} is outside the vocabulary of {len(tokens)} tokens",
                "check the tokenizer and config files",
            )
        ids[name] = token_id
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        # Without the flag, the fast tokenizer adds what its post-processor template puts first.
        single = ((data.get("post_processor") or {}).get("single") or [{}])[0]
        add_bos = single.get("SpecialToken", {}).get("id") == tokens[ids["bos"]]
    return Vocab(
        model="gpt2",
        pre="deepseek-llm",
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        add_bos=add_bos,
        add_eos=bool(config.get("add_eos_token", False)),
        special_ids=special_ids,
    )
