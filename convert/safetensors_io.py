"""Our own safetensors reader and streaming writer (numpy only, no torch).

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw data; offsets are
relative to the end of the header. Tensors are read through a short-lived np.memmap and converted in row chunks,
so reading one tensor costs about one output-sized array, never the whole file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from qrun.errors import CheckpointError

# Storage dtype name -> (numpy dtype of the raw bytes, bytes per element). BF16 is kept as uint16 and widened.
STORAGE_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
_MAX_HEADER_BYTES = 100 << 20  # the format's own limit (safetensors rejects larger headers)
_CHUNK_ELEMENTS = 1 << 20  # values converted per step: ~4 MB of f32 scratch
_REDOWNLOAD_HINT = "re-download the file (an interrupted download leaves it short)"
BF16_BITS = np.dtype(np.uint16)  # out dtype meaning "bfloat16, as its uint16 bit pattern" (numpy has no bfloat16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 stored as uint16 -> float32 (exact: bf16 is the top half of an f32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even (as torch's .to(torch.bfloat16) does)."""
    bits = np.asarray(values, dtype=np.float32, order="C").view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return rounded.astype(np.uint16)


def convert_rows(raw: np.ndarray, storage_dtype: str, out_dtype) -> np.ndarray:
    """A new array of `out_dtype` holding `raw` (a stored array, e.g. a memmap) decoded, converted in row chunks.

    `out_dtype` BF16_BITS means bfloat16 carried as uint16 bit patterns (numpy has no bfloat16); a BF16 tensor read
    as BF16_BITS is copied as stored, with no arithmetic at all.
    """
    out_dtype = np.dtype(out_dtype)
    if out_dtype == BF16_BITS and storage_dtype == "BF16":
        return np.array(raw, order="C")
    out = np.empty(raw.shape, dtype=out_dtype)
    flat_in = raw.reshape(raw.shape[0], -1) if raw.ndim > 1 else raw.reshape(-1, 1)
    flat_out = out.reshape(flat_in.shape)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, flat_in.shape[1]))
    for start in range(0, flat_in.shape[0], rows_per_chunk):
        chunk = np.asarray(flat_in[start : start + rows_per_chunk])
        if storage_dtype == "BF16":
            chunk = bf16_bits_to_f32(chunk)
        if out_dtype == BF16_BITS:
            chunk = f32_to_bf16_bits(chunk)
        flat_out[start : start + rows_per_chunk] = chunk
    return out


class SafetensorsFile:
    """One .safetensors file: validated header, tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.metadata: dict = {}
        self._parse_header()

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"truncated or corrupt: {self.path} ({why})", _REDOWNLOAD_HINT)

    def _parse_header(self) -> None:
        file_bytes = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise self._corrupt(f"{file_bytes} bytes, shorter than the 8-byte header length")
            (header_bytes,) = struct.unpack("<Q", prefix)
            if header_bytes > _MAX_HEADER_BYTES or 8 + header_bytes > file_bytes:
                raise self._corrupt(f"header length {header_bytes} does not fit a {file_bytes}-byte file")
            raw_header = f.read(header_bytes)
        try:
            header = json.loads(raw_header.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(f"header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        self.data_start = 8 + header_bytes
        data_bytes = file_bytes - self.data_start
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise self._corrupt("__metadata__ is not a JSON object")
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise self._corrupt(f"header entry for {name} is not a JSON object")
            try:
                dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise self._corrupt(f"bad header entry for {name}") from None
            if any(d < 0 for d in shape) or not all(type(o) is int for o in (begin, end)) or not isinstance(dtype, str):
                raise self._corrupt(f"bad header entry for {name}")
            itemsize = STORAGE_DTYPES.get(dtype, (None, None))[1]
            if itemsize is not None and end - begin != math.prod(shape) * itemsize:
                raise self._corrupt(f"{name}: {end - begin} bytes for shape {shape} {dtype}")
            if not 0 <= begin <= end <= data_bytes:
                raise self._corrupt(f"{name} ends at byte {end} of a {data_bytes}-byte data section")
            self.entries[name] = {"dtype": dtype, "shape": tuple(shape), "begin": begin, "end": end}
        self._check_layout(data_bytes)

    def _check_layout(self, data_bytes: int) -> None:
        """Tensors tile the data section exactly, as the format requires (and the reference reader checks): two
        tensors sharing bytes, or bytes that belong to none, mean a corrupt or crafted file."""
        expected = 0
        for name, entry in sorted(self.entries.items(), key=lambda kv: (kv[1]["begin"], kv[1]["end"])):
            if entry["begin"] < expected:
                raise self._corrupt(f"{name} at bytes {entry['begin']}-{entry['end']} overlaps another tensor")
            if entry["begin"] > expected:
                raise self._corrupt(
                    f"bytes {expected}-{entry['begin']} of the data section belong to no tensor (before {name})"
                )
            expected = entry["end"]
        if expected != data_bytes:
            raise self._corrupt(f"the tensors cover {expected} of the {data_bytes}-byte data section")

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name]["shape"]

    def read(self, name: str, *, dtype=np.float32) -> np.ndarray:
        """Tensor `name` as a new array of `dtype` (np.float32, np.float16 or BF16_BITS)."""
        entry = self.entries[name]
        if entry["dtype"] not in STORAGE_DTYPES:
            raise CheckpointError(
                f"{self.path.name}: tensor {name} is stored as {entry['dtype']}",
                "only F32, F16 and BF16 checkpoints are supported",
            )
        raw_dtype = STORAGE_DTYPES[entry["dtype"]][0]
        shape = entry["shape"]
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype=dtype)
        raw = np.memmap(
            self.path, mode="r", dtype=raw_dtype, offset=self.data_start + entry["begin"], shape=(math.prod(shape),)
        ).reshape(shape)
        try:
            return convert_rows(raw, entry["dtype"], dtype)
        finally:
            del raw  # unmap now: page-cache pages of this tensor stop counting in our RSS


def write_safetensors(
    path: str | os.PathLike,
    specs: Iterable[tuple[str, tuple[int, ...]]],
    make_tensor: Callable[[str, tuple[int, ...]], Iterable[np.ndarray]],
    *,
    dtype: str = "BF16",
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file tensor by tensor; returns its size in bytes.

    Args:
        specs: (name, shape) of every tensor, in file order (the header is written first).
        make_tensor: called once per tensor; yields float32 row blocks that together fill the tensor in C order,
            so a huge tensor never has to exist in memory at once.
        dtype: "BF16", "F16" or "F32" (stored type; bf16 rounds to nearest even).
    """
    specs = list(specs)
    itemsize = STORAGE_DTYPES[dtype][1]
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_json = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_json += b" " * (-len(header_json) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_json)))
        f.write(header_json)
        for name, shape in specs:
            written = 0
            for block in make_tensor(name, shape):
                block = np.ascontiguousarray(block, dtype=np.float32)
                if dtype == "BF16":
                    encoded = f32_to_bf16_bits(block)
                else:
                    encoded = block.astype(STORAGE_DTYPES[dtype][0], copy=False)
                encoded.tofile(f)
                written += block.size
            if written != math.prod(shape):
                raise ValueError(f"{name}: wrote {written} values for shape {shape}")
        f.flush()
        os.fsync(f.fileno())
        return f.tell()
