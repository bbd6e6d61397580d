"""Read a SentencePiece tokenizer.model (a serialized ModelProto) without protobuf or the sentencepiece runtime.

Only the fields a GGUF vocabulary needs are decoded: every piece with its score and type, the trainer's model type,
byte fallback and special ids, and the normalizer settings that decide whether llama.cpp's "llama" (SPM) tokenizer
can reproduce SentencePiece's output at all. Field numbers are from sentencepiece's sentencepiece_model.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qrun.errors import CheckpointError, UnsupportedConfigError

# sentencepiece_model.proto ModelProto.SentencePiece.Type, numbered exactly like gguf.TokenType.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6
SP_MODEL_BPE = 2  # TrainerSpec.ModelType


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: int
    byte_fallback: bool
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int  # -1 = none
    normalizer_name: str
    has_charsmap: bool
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    treat_whitespace_as_suffix: bool


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of one protobuf message; varints as int, others as raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("message truncated")
        yield number, value


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # negative int32 are 10-byte varints


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    """Parse tokenizer.model.

    Raises:
        CheckpointError: the file is missing or is not a SentencePiece model.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"tokenizer file missing: {path}", "copy the model's tokenizer.model into the folder"
        ) from None
    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    trainer: dict[int, int | bytes] = {}
    normalizer: dict[int, int | bytes] = {}
    try:
        for number, value in _fields(data):
            if number == 1:  # repeated SentencePiece pieces
                piece = dict(_fields(value))  # type: ignore[arg-type]
                pieces.append(piece[1].decode("utf-8"))  # type: ignore[union-attr]
                scores.append(struct.unpack("<f", piece.get(2, b"\0\0\0\0"))[0])  # type: ignore[arg-type]
                types.append(int(piece.get(3, SP_NORMAL)))
            elif number == 2:
                trainer = dict(_fields(value))  # type: ignore[arg-type]
            elif number == 3:
                normalizer = dict(_fields(value))  # type: ignore[arg-type]
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{path} is not a SentencePiece model ({exc})", "re-download tokenizer.model") from None
    if not pieces:
        raise CheckpointError(f"{path} holds no SentencePiece pieces", "re-download tokenizer.model")
    return SentencePieceModel(
        pieces=pieces,
        scores=scores,
        types=types,
        model_type=int(trainer.get(3, 1)),  # proto default UNIGRAM
        byte_fallback=bool(trainer.get(35, 0)),
        unk_id=_int32(int(trainer.get(40, 0))),
        bos_id=_int32(int(trainer.get(41, 1))),
        eos_id=_int32(int(trainer.get(42, 2))),
        pad_id=_int32(int(trainer.get(43, (1 << 64) - 1))),
        normalizer_name=bytes(normalizer.get(1, b"")).decode("utf-8", "replace"),
        has_charsmap=bool(normalizer.get(2, b"")),
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
        treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
    )


def check_llama_cpp_compatible(model: SentencePieceModel, path: Path) -> None:
    """Refuse models whose encoding llama.cpp's SPM tokenizer cannot reproduce.

    llama.cpp (src/llama-vocab.cpp, llm_tokenizer_spm_session) implements score-ordered BPE merging on raw text
    with spaces escaped to U+2581 and a space prefix; it has no Unicode normalizer, never collapses whitespace,
    and spells unknown characters as <0xXX> byte pieces.

    Raises:
        UnsupportedConfigError: naming the setting.
    """
    hint = (
        "this SentencePiece model cannot be tokenized identically by llama.cpp; train it with "
        "model_type=bpe, byte_fallback=true, normalization_rule_name=identity, remove_extra_whitespaces=false"
    )
    problems = []
    if model.model_type != SP_MODEL_BPE:
        problems.append(f"model_type={model.model_type} (not BPE)")
    if model.normalizer_name not in ("identity", "") or model.has_charsmap:
        problems.append(f"normalizer={model.normalizer_name!r}")
    if model.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces=true")
    if not model.escape_whitespaces or model.treat_whitespace_as_suffix:
        problems.append("whitespace handling (escape_whitespaces=false or treat_whitespace_as_suffix=true)")
    byte_pieces = {p for p, t in zip(model.pieces, model.types) if t == SP_BYTE}
    if not model.byte_fallback or len(byte_pieces) != 256:
        problems.append("no byte fallback (needs the 256 <0xXX> byte pieces)")
    if problems:
        raise UnsupportedConfigError(f"{path}: unsupported SentencePiece settings: {', '.join(problems)}", hint)
