"""Check a GGUF file before llama.cpp sees it; read the few metadata keys qrun needs and the tensor table.

llama.cpp answers a missing, cut or foreign file with a bare "Failed to load model" (llama-cpp-python: ValueError);
this reads the header (GGUF v2/v3 layout, as gguf-py's GGUFReader does) and compares the tensor data it declares
with the file size, so the user is told what is wrong and how to fix it. It reads only the header, with struct,
because gguf.GGUFReader builds a numpy view per vocabulary string (seconds for Qwen's 151k tokens).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType

from qrun.errors import GGUFError

_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Keys whose values are kept (everything else is skipped over).
_WANTED_PREFIXES = ("general.", "qrun.")
# the shape keys size a model's KV cache before it is loaded (qrun serve decides what fits in memory with it)
_WANTED_SUFFIXES = (
    ".context_length",
    ".block_count",
    ".embedding_length",
    ".attention.head_count",
    ".attention.head_count_kv",
    ".attention.key_length",
    ".attention.value_length",
)
_REBUILD_HINT = "re-create it with `qrun convert <model>` (or copy it again)"


@dataclass
class GGUFHeader:
    version: int
    n_tensors: int
    metadata: dict = field(default_factory=dict)
    data_end_bytes: int = 0  # where the last tensor's data ends, per the header
    tensors: list[tuple[str, int, int]] = field(default_factory=list)  # (name, ggml type, element count)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None


class _Cursor:
    """Reads the header from an in-memory prefix of the file (grown on demand): a Python loop over Qwen's ~300k
    vocabulary and merge strings is ~10x faster on a bytes buffer than through file reads."""

    def __init__(self, f, file_bytes: int):
        self.f, self.file_bytes = f, file_bytes
        self.buf, self.pos = f.read(min(file_bytes, 16 << 20)), 0

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            if self.pos + n > self.file_bytes:
                raise EOFError
            self.buf += self.f.read(max(self.pos + n - len(self.buf), 16 << 20))

    def read(self, n: int) -> bytes:
        self._need(n)
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self._need(size)
        self.pos += size
        return struct.unpack_from("<" + fmt, self.buf, self.pos - size)[0]

    def tell(self) -> int:
        return self.pos

    def string(self, keep: bool = True):
        n = self.unpack("Q")
        if not keep:
            self._need(n)
            self.pos += n
            return None
        return self.read(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        unpack_from, buf, pos = struct.unpack_from, self.buf, self.pos
        for _ in range(count):
            if pos + 8 > len(buf):
                self.pos = pos
                self._need(8)
                buf = self.buf
            pos += 8 + unpack_from("<Q", buf, pos)[0]
        self.pos = pos
        self._need(0)

    def value(self, vtype: int, keep: bool):
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type in _SCALAR_FORMATS:
                size = struct.calcsize(_SCALAR_FORMATS[item_type]) * count
                self._need(size)
                self.pos += size
            elif item_type == _STRING:
                self.skip_strings(count)
            else:
                for _ in range(count):
                    self.value(item_type, keep=False)
            return None
        if vtype not in _SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.unpack(_SCALAR_FORMATS[vtype])


def _tensor_bytes(ggml_type: int, dims: list[int]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return math.prod(dims) // block_size * type_size


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Validate `path` as a complete GGUF file and return its header.

    Raises:
        GGUFError: missing, not a regular file, not GGUF, unsupported version, or shorter than its header declares.
    """
    path = Path(path)
    if not path.exists():
        raise GGUFError(f"GGUF file not found: {path}", "check the path, or run `qrun models` to list converted models")
    if not path.is_file():
        raise GGUFError(f"not a file: {path}", "give the path of a .gguf file")
    file_bytes = path.stat().st_size
    try:
        with open(path, "rb") as f:
            cur = _Cursor(f, file_bytes)
            magic = cur.buf[:4]
            cur.pos = 4
            if len(magic) < 4 or struct.unpack("<I", magic)[0] != GGUF_MAGIC:
                raise GGUFError(
                    f"{path} is not a GGUF file (no GGUF magic bytes)", "give a .gguf made by `qrun convert`"
                )
            version = cur.unpack("I")
            if version not in (2, 3):
                raise GGUFError(f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3", _REBUILD_HINT)
            header = GGUFHeader(version=version, n_tensors=cur.unpack("Q"))
            n_kv = cur.unpack("Q")
            for _ in range(n_kv):
                key = cur.string()
                keep = key.startswith(_WANTED_PREFIXES) or key.endswith(_WANTED_SUFFIXES)
                value = cur.value(cur.unpack("I"), keep)
                if keep:
                    header.metadata[key] = value
            extents = []
            for _ in range(header.n_tensors):
                name = cur.string()
                dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
                ggml_type, offset = cur.unpack("I"), cur.unpack("Q")
                extents.append(offset + _tensor_bytes(ggml_type, dims))
                header.tensors.append((name, ggml_type, math.prod(dims)))
            alignment = header.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
            # llama.cpp reads it as a u32 and refuses anything but a power of two (gguf.cpp); a float, 0 or a
            # negative value would otherwise make the data offset here meaningless (or divide by zero)
            if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
                raise GGUFError(f"{path} has general.alignment {alignment!r}; GGUF needs a power of two", _REBUILD_HINT)
            data_start = -(-cur.tell() // alignment) * alignment
            # a vocabulary-only GGUF has no tensors and no padding after its header
            header.data_end_bytes = data_start + max(extents) if extents else cur.tell()
    except EOFError:
        raise GGUFError(
            f"{path} is truncated: it ends inside its own header ({file_bytes} bytes)", _REBUILD_HINT
        ) from None
    except (ValueError, KeyError, struct.error) as err:
        raise GGUFError(f"{path} has a corrupt GGUF header ({err})", _REBUILD_HINT) from None
    if header.data_end_bytes > file_bytes:
        raise GGUFError(
            f"{path} is truncated: its tensors need {header.data_end_bytes} bytes, the file has {file_bytes}",
            _REBUILD_HINT,
        )
    return header


def read_tensor_infos(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(name, ggml type, element count) of every tensor of a validated GGUF."""
    return read_header(path).tensors


# gguf-py's TokenType: CONTROL = 3, USER_DEFINED = 4 (the types llama.cpp's tokenizer matches as special text)
_SPECIAL_TOKEN_TYPES = (3, 4)


def token_ids(path: str | os.PathLike, texts: Iterable[str]) -> dict[str, int | None]:
    """The ids of the tokens whose text is one of `texts` in a GGUF's vocabulary (tokenizer.ggml.tokens).

    This is how the runner resolves stop tokens by text (qrun.registry), read from the file without loading it.
    A text held twice resolves to the copy marked control or user-defined (tokenizer.ggml.token_type): those are
    the ones llama.cpp's tokenizer turns special text into; failing that, the last copy.

    Returns:
        {text: id, or None when the vocabulary lacks it}.

    Raises:
        GGUFError: as read_header() (the file is validated first).
    """
    read_header(path)
    wanted = {text.encode("utf-8"): text for text in texts}
    found: dict[str, list[int]] = {text: [] for text in wanted.values()}
    token_types: tuple[int, ...] = ()
    with open(path, "rb") as f:
        cur = _Cursor(f, Path(path).stat().st_size)
        cur.pos = 16  # magic, version, tensor count
        for _ in range(cur.unpack("Q")):
            key = cur.string()
            vtype = cur.unpack("I")
            if vtype == _ARRAY and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
                item_type, count = cur.unpack("I"), cur.unpack("Q")
                if key == "tokenizer.ggml.tokens" and item_type == _STRING:
                    for token_id in range(count):
                        data = cur.read(cur.unpack("Q"))
                        if data in wanted:
                            found[wanted[data]].append(token_id)
                    continue
                if key == "tokenizer.ggml.token_type" and item_type == 5:  # int32, as gguf-py writes them
                    token_types = struct.unpack_from(f"<{count}i", cur.read(4 * count))
                    continue
                cur.pos -= 12  # not the layout expected: skip the array as any other value
            cur.value(vtype, keep=False)

    def pick(ids: list[int]) -> int | None:
        special = [i for i in ids if i < len(token_types) and token_types[i] in _SPECIAL_TOKEN_TYPES]
        chosen = special or ids
        return chosen[-1] if chosen else None

    return {text: pick(ids) for text, ids in found.items()}
