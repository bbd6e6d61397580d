"""A Hugging Face checkpoint folder: config.json, tokenizer files, and weights read one tensor at a time.

Weights are found in this order: model.safetensors.index.json (+ its shards), model.safetensors, any other
*.safetensors, pytorch_model.bin.index.json (+ shards), pytorch_model*.bin. Pickle .bin files are read only through
the allow-listed unpickler in torch_pickle.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qrun.errors import CheckpointError
from qrun.convert.safetensors_io import SafetensorsFile
from qrun.convert.torch_pickle import TorchZipFile

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


def _shards_from_index(directory: Path, index_name: str) -> list[Path]:
    index = read_json(directory / index_name, what="index file")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{directory / index_name} has no weight_map", "re-download the index file")
    shards = []
    for shard in dict.fromkeys(weight_map.values()):  # keep order, drop repeats
        path = directory / shard
        if not path.is_file():
            raise CheckpointError(f"missing shard {shard} (listed in {index_name}) in {directory}",
                                  "download every shard the index lists")
        shards.append(path)
    return shards


def find_weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred.

    Raises:
        CheckpointError: no weights, or a shard the index names is missing.
    """
    if (directory / "model.safetensors.index.json").is_file():
        return _shards_from_index(directory, "model.safetensors.index.json")
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if found := sorted(directory.glob("*.safetensors")):
        return found
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _shards_from_index(directory, "pytorch_model.bin.index.json")
    if found := sorted(directory.glob("pytorch_model*.bin")):
        return found
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
