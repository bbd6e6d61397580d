"""A Hugging Face checkpoint folder: config.json, tokenizer files, and weights read one tensor at a time.

Weights are found in this order: model.safetensors.index.json (+ its shards), model.safetensors, any other
*.safetensors, pytorch_model.bin.index.json (+ shards), pytorch_model*.bin. Pickle .bin files are read only through
the allow-listed unpickler in torch_pickle.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath

import numpy as np

from qrun.convert.safetensors_io import SafetensorsFile
from qrun.convert.torch_pickle import TorchZipFile
from qrun.errors import CheckpointError

_FOLDER_HINT = "point --from at the model folder (config.json, tokenizer files and weights), or re-download it"


def read_json(path: Path, *, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}", _FOLDER_HINT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", f"re-download the {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object", f"re-download the {what}")
    return data


def regular_file(path: Path) -> Path:
    """`path` when it is a regular file (or a symlink to one); a FIFO, device or folder is refused before anything
    opens it (opening a FIFO blocks until someone writes to it).

    Raises:
        CheckpointError: not a regular file.
    """
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}", _FOLDER_HINT) from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise CheckpointError(f"weight file {path} is {kind}", "the checkpoint's weights must be regular files")
    return path


def _blob_store(directory: Path) -> Path | None:
    """The blob folder of a Hugging Face cache snapshot (`<repo>/snapshots/<rev>`), whose files are symlinks into
    `<repo>/blobs`; None for other folders."""
    if directory.parent.name == "snapshots":
        return (directory.parent.parent / "blobs").resolve()
    return None


def _shard_path(directory: Path, shard, index_name: str) -> Path:
    """The file an index entry names, which must stay inside the checkpoint folder.

    An index is downloaded text: a name like "../x" or "/etc/passwd", or a symlink leading out of the folder,
    would make qrun read (and report on) files the checkpoint does not own. Symlinks into the hub cache's own blob
    store are what hub downloads consist of and are allowed.
    """
    where = f"{directory / index_name}"
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{where} names a shard that is not a file name: {shard!r}", "re-download the index file")
    parts = PurePosixPath(shard).parts
    if PurePosixPath(shard).is_absolute() or ".." in parts or "\\" in shard or "\x00" in shard:
        raise CheckpointError(
            f"{where} names shard {shard!r} outside the checkpoint folder",
            "shards must be files inside the folder; re-download the index file",
        )
    path = directory / shard
    if not path.exists():
        raise CheckpointError(
            f"missing shard {shard} (listed in {index_name}) in {directory}", "download every shard the index lists"
        )
    resolved, home = path.resolve(), directory.resolve()
    blobs = _blob_store(directory)
    if not (resolved.is_relative_to(home) or (blobs is not None and resolved.is_relative_to(blobs))):
        raise CheckpointError(
            f"shard {shard} (listed in {index_name}) leads outside {directory} (to {resolved})",
            "copy the shard into the checkpoint folder instead of linking it",
        )
    return regular_file(path)


def _shards_from_index(directory: Path, index_name: str) -> list[Path]:
    index = read_json(directory / index_name, what="index file")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{directory / index_name} has no weight_map", "re-download the index file")
    shards = []
    for shard in weight_map.values():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{directory / index_name} names a shard that is not a file name: {shard!r}",
                "re-download the index file",
            )
    for shard in dict.fromkeys(weight_map.values()):  # keep order, drop repeats
        shards.append(_shard_path(directory, shard, index_name))
    return shards


def find_weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred.

    Raises:
        CheckpointError: no weights; a shard the index names is missing, not a string, or outside the folder; a
            weight file that is not a regular file (a FIFO would block the reader).
    """
    if (directory / "model.safetensors.index.json").is_file():
        return _shards_from_index(directory, "model.safetensors.index.json")
    if (directory / "model.safetensors").exists():
        return [regular_file(directory / "model.safetensors")]
    if found := sorted(directory.glob("*.safetensors")):
        return [regular_file(p) for p in found]
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _shards_from_index(directory, "pytorch_model.bin.index.json")
    if found := sorted(directory.glob("pytorch_model*.bin")):
        return [regular_file(p) for p in found]
    raise CheckpointError(
        f"no weights in {directory} (expected model.safetensors, sharded model-*.safetensors with "
        "model.safetensors.index.json, or pytorch_model*.bin)",
        _FOLDER_HINT,
    )


class Checkpoint:
    """config.json plus every tensor of a checkpoint folder, by Hugging Face name.

    Reading is lazy: headers are parsed when the folder is opened, each tensor's data only when read().
    """

    def __init__(self, directory: str | os.PathLike, *, tokenizer_files: tuple[str, ...] = ()):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"checkpoint folder {self.directory} does not exist", _FOLDER_HINT)
        self.config = read_json(self.directory / "config.json", what="config.json")
        for name in tokenizer_files:
            if not (self.directory / name).is_file():
                raise CheckpointError(f"missing tokenizer file {name} in {self.directory}", _FOLDER_HINT)
        self.weight_files = find_weight_files(self.directory)
        self._where: dict[str, SafetensorsFile | TorchZipFile] = {}
        for path in self.weight_files:
            reader = SafetensorsFile(path) if path.suffix == ".safetensors" else TorchZipFile(path)
            for name in reader.names():
                if name in self._where:
                    raise CheckpointError(
                        f"tensor {name} appears in both {self._where[name].path.name} and {path.name}",
                        "remove the stray weight file from the folder",
                    )
                self._where[name] = reader

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures")
        return archs[0] if isinstance(archs, list) and archs else None

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def read(self, name: str, *, dtype=np.float32) -> np.ndarray:
        """Tensor `name` as a new array of `dtype` (np.float32, np.float16 or safetensors_io.BF16_BITS); costs ~one
        tensor of memory."""
        return self._where[name].read(name, dtype=dtype)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files)
