"""Read `pytorch_model*.bin` state dicts without torch and without running code from the file.

A torch.save() file (torch >= 1.6) is a zip: `<prefix>/data.pkl` (the pickled state dict) and `<prefix>/data/<key>`
(raw little-endian storage bytes). Plain pickle would import and call whatever the file names — `os.system`
included — so the pickle is read by an Unpickler whose find_class allows only the five globals a state dict of
float tensors needs, and returns our own stand-ins for them; storages become references to zip entries
(persistent_load) that are read one tensor at a time.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qrun.convert.safetensors_io import STORAGE_DTYPES, convert_rows
from qrun.errors import CheckpointError

# torch storage class name -> safetensors dtype name (same byte layouts)
_STORAGE_TYPES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}
# data.pkl of a 7B model's state dict is ~100 KB (names and layouts only); more than this is not a state dict.
_MAX_PICKLE_BYTES = 64 << 20


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's values live: a zip entry, an element offset into it, a shape and strides (in elements)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: records the layout, builds nothing."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("pickle tensor without storage data", "the file is not a plain state dict")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
        raise CheckpointError("pickle tensor with an invalid layout", "re-download the file")
    return TensorRef(storage, storage_offset, tuple(size), tuple(stride))


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_TYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, *, source: Path):
        super().__init__(io.BytesIO(data))
        self._source = source
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise CheckpointError(
                f"refusing to unpickle {module}.{name}: not tensor data ({self._source.name})",
                "only plain state dicts of float tensors are read; use the model's safetensors files",
            )
        return allowed

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise CheckpointError(f"unexpected persistent id in {self._source.name}", "the file is not a state dict")
        _, storage_type, key, _location, numel = pid
        return self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))


class TorchZipFile:
    """One torch zip checkpoint; same reading interface as SafetensorsFile."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise CheckpointError(
                f"{self.path} is not a torch zip checkpoint (truncated, corrupt, or the pre-1.6 legacy format)",
                "re-download it, or use the model's safetensors files",
            ) from None
        pkl_names = [n for n in self._zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise CheckpointError(f"{self.path}: no data.pkl inside", "not a torch.save() file; re-download it")
        self._prefix = pkl_names[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in self._zip.namelist() and self._zip.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{self.path} stores big-endian data", "convert it on the machine that wrote it")
        try:
            state = _StateDictUnpickler(
                self._read_entry(self._zip.getinfo(pkl_names[0]), _MAX_PICKLE_BYTES), source=self.path
            ).load()
        except CheckpointError:
            raise
        except Exception as exc:  # malformed opcodes, wrong arity, BUILD on our stand-ins, a bad zip entry, ...
            raise CheckpointError(
                f"truncated or corrupt: {self.path} ({type(exc).__name__}: {exc})",
                "re-download the file, or use the model's safetensors files",
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, TensorRef) for v in state.values()):
            raise CheckpointError(f"{self.path} is not a flat state dict of tensors", "use the safetensors files")
        self.entries: dict[str, TensorRef] = dict(state)
        self._check_storages()

    def _read_entry(self, info: zipfile.ZipInfo, limit_bytes: int) -> bytes:
        """At most `limit_bytes` of a zip entry, decompressing no more than that: a deflated entry can claim any
        size and expand a few KB into gigabytes."""
        if info.file_size > limit_bytes:
            raise CheckpointError(
                f"truncated or corrupt: {self.path} ({info.filename} declares {info.file_size} "
                f"bytes, more than the {limit_bytes} its tensors need)",
                "re-download the file",
            )
        with self._zip.open(info) as f:
            data = f.read(limit_bytes + 1)
        if len(data) != info.file_size:
            raise CheckpointError(
                f"truncated or corrupt: {self.path} ({info.filename} holds {len(data)} bytes, "
                f"its header says {info.file_size})",
                "re-download the file",
            )
        return data

    def _check_storages(self) -> None:
        """Every storage the tensors use is in the zip, sized as declared, and covers the tensors laid on it."""
        self._needed_bytes: dict[str, int] = {}
        names = set(self._zip.namelist())
        for name, ref in self.entries.items():
            storage = ref.storage
            entry = f"{self._prefix}data/{storage.key}"
            if entry not in names:
                raise CheckpointError(
                    f"truncated or corrupt: {self.path} (tensor {name}'s storage {storage.key} is not in the file)",
                    "re-download the file",
                )
            itemsize = STORAGE_DTYPES[storage.dtype][1]
            n_elements = math.prod(ref.shape)
            end = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) + 1 if n_elements else 0
            if end > storage.numel:
                raise CheckpointError(
                    f"truncated or corrupt: {self.path} (tensor {name} overruns its storage)", "re-download the file"
                )
            info = self._zip.getinfo(entry)
            if info.file_size != storage.numel * itemsize:
                raise CheckpointError(
                    f"truncated or corrupt: {self.path} (storage {storage.key})", "re-download the file"
                )
            self._needed_bytes[storage.key] = max(self._needed_bytes.get(storage.key, 0), end * itemsize)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def _storage_array(self, storage: _Storage) -> np.ndarray:
        """The part of a storage the tensors use (mapped when stored uncompressed, as torch.save does)."""
        info = self._zip.getinfo(f"{self._prefix}data/{storage.key}")
        raw_dtype, itemsize = STORAGE_DTYPES[storage.dtype]
        needed_bytes = self._needed_bytes[storage.key]
        if needed_bytes == 0:
            return np.zeros(0, dtype=raw_dtype)
        if info.compress_type == zipfile.ZIP_STORED:  # map it, don't read it
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                file_bytes = os.fstat(f.fileno()).st_size
            if len(local) < 30:
                raise CheckpointError(
                    f"truncated or corrupt: {self.path} (storage {storage.key})", "re-download the file"
                )
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + needed_bytes > file_bytes:
                raise CheckpointError(
                    f"truncated or corrupt: {self.path} (storage {storage.key} ends past the end of the file)",
                    "re-download the file",
                )
            return np.memmap(self.path, mode="r", dtype=raw_dtype, offset=start, shape=(needed_bytes // itemsize,))
        try:
            with self._zip.open(info) as f:  # decompress only what the tensors need, whatever the entry claims
                data = f.read(needed_bytes)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise CheckpointError(
                f"truncated or corrupt: {self.path} (storage {storage.key}: {exc})", "re-download the file"
            ) from None
        if len(data) != needed_bytes:
            raise CheckpointError(f"truncated or corrupt: {self.path} (storage {storage.key})", "re-download the file")
        return np.frombuffer(data, dtype=raw_dtype)

    def read(self, name: str, *, dtype=np.float32) -> np.ndarray:
        ref = self.entries[name]
        flat = self._storage_array(ref.storage)
        if math.prod(ref.shape) == 0:
            return np.zeros(ref.shape, dtype=dtype)
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.shape, strides=[s * itemsize for s in ref.stride], writeable=False
        )
        return convert_rows(view, ref.storage.dtype, dtype)
