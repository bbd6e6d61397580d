"""Byte-level BPE pieces: the GPT-2 byte<->unicode table, tiktoken rank files, and merges recovered from ranks.

llama.cpp's "gpt2" tokenizer model stores every token as text in GPT-2's printable byte alphabet and applies
explicit merge rules; a tiktoken rank file (Qwen v1's qwen.tiktoken) has neither, only `base64(bytes) rank` lines.
The merge that produces a token is found by running byte-level BPE over the token's own bytes with only the
lower-ranked tokens allowed: it stops at exactly two parts, and those are the merge (the same rule llama.cpp's
convert_hf_to_gguf.py QwenModel.bpe applies, here written to be fast enough for 151k tokens).
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path

from qrun.errors import CheckpointError


@lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character table (index = byte value).

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) map in order to
    U+0100 upwards. Source: openai/gpt-2 encoder.py bytes_to_unicode, which llama.cpp's unicode_byte_to_utf8
    mirrors.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def bytes_to_token_text(token: bytes) -> str:
    """A token's raw bytes as the GPT-2 byte-alphabet text llama.cpp's gpt2 vocab stores."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def load_tiktoken_ranks(path: Path) -> list[bytes]:
    """Read a tiktoken rank file (`base64(bytes) rank` per line) into a list indexed by rank.

    Raises:
        CheckpointError: the file is missing, unreadable, or its ranks are not exactly 0..n-1.
    """
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise CheckpointError(
            f"tokenizer file missing: {path}", "copy the model's qwen.tiktoken into the folder"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"cannot read tokenizer file {path}: {exc}", "re-download the model's tokenizer files"
        ) from None
    by_rank: dict[int, bytes] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            b64, rank = line.split()
            by_rank[int(rank)] = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise CheckpointError(f"{path} line {line_no} is not `base64 rank`", "re-download qwen.tiktoken") from None
    ranks = [by_rank.get(i) for i in range(len(by_rank))]
    if not ranks or any(r is None for r in ranks) or len(set(ranks)) != len(ranks):
        raise CheckpointError(
            f"{path}: ranks are not a permutation of 0..{len(by_rank) - 1} over distinct tokens",
            "re-download qwen.tiktoken",
        )
    return ranks  # type: ignore[return-value]


def recover_merges(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """For every multi-byte token, in rank order, the pair of lower-ranked tokens BPE merges into it.

    Raises:
        CheckpointError: some token is not reachable by BPE from lower-ranked tokens (not a BPE rank file).
    """
    rank_of = {tok: i for i, tok in enumerate(ranks)}
    missing = [b for b in range(256) if bytes([b]) not in rank_of]
    if missing:
        # Byte-level BPE must be able to spell any byte on its own, or some text has no tokenization at all.
        raise CheckpointError(
            f"the rank file has no single-byte token for {len(missing)} byte value(s), e.g. 0x{missing[0]:02X}",
            "the tokenizer file is not a byte-level BPE rank file",
        )
    merges: list[tuple[bytes, bytes]] = []
    for rank, token in enumerate(ranks):
        if len(token) < 2:
            continue
        parts = _last_merge(token, rank, rank_of)
        if parts is None:
            raise CheckpointError(
                f"token rank {rank} ({token!r}) cannot be built by BPE from lower ranks",
                "the tokenizer file is not a byte-level BPE rank file",
            )
        merges.append(parts)
    return merges


def _last_merge(token: bytes, max_rank: int, rank_of: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """Run BPE on `token` with ranks below `max_rank`; return the two final parts, or None if it is not two.

    Plain quadratic BPE per token: tokens are short (median 6 bytes), so all 151k Qwen tokens take ~2 s.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            r = rank_of.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            return None
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None
