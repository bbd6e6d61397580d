"""Checkpoint reading: our safetensors reader, the allow-listed pickle reader, and every bad-folder error."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import TensorSpec, serialize_file

from helpers import pickle_tuple, write_torch_zip
from qrun.convert.checkpoint import Checkpoint
from qrun.convert.safetensors_io import (
    BF16_BITS,
    SafetensorsFile,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    write_safetensors,
)
from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint
from qrun.convert.torch_pickle import TorchZipFile
from qrun.errors import CheckpointError
from tiny_models import TOKENIZERS_DIR, WEIGHT_STD


# --- helpers --------------------------------------------------------------------------------------------------
def _save_with_reference_writer(path: Path, arrays: dict[str, np.ndarray], *, bf16: set[str] = frozenset()) -> None:
    """Write safetensors with the `safetensors` package's own serializer (independent of our writer)."""
    keep = {}
    specs = {}
    for name, array in arrays.items():
        data = f32_to_bf16_bits(array) if name in bf16 else np.asarray(array, order="C")
        keep[name] = data
        specs[name] = TensorSpec(
            dtype="bfloat16" if name in bf16 else data.dtype.name,
            shape=data.shape,
            data_ptr=data.ctypes.data,
            data_len=data.nbytes,
        )
    serialize_file(specs, str(path), metadata=None)


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    """A writable copy of a checkpoint folder (weights hard-linked: tests only replace files, never edit them)."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.suffix == ".safetensors":
            os.link(item, dst / item.name)
        else:
            shutil.copyfile(item, dst / item.name)
    return dst


# --- safetensors ----------------------------------------------------------------------------------------------
def test_bf16_rounding_is_nearest_even():
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 1 + 2**-7 + 2**-9], dtype=np.float32)
    assert f32_to_bf16_bits(values).tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x3F81]
    assert bf16_bits_to_f32(np.array([0x3F80, 0xC020], dtype=np.uint16)).tolist() == [1.0, -2.5]


def test_reader_matches_reference_writer_for_f32_f16_bf16(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "a.f32": rng.standard_normal((5, 7)).astype(np.float32),
        "b.f16": rng.standard_normal((3, 4, 2)).astype(np.float16),
        "c.bf16": rng.standard_normal((6, 3)).astype(np.float32),
        "d.scalar": np.array(2.5, dtype=np.float32),
    }
    path = tmp_path / "model.safetensors"
    _save_with_reference_writer(path, arrays, bf16={"c.bf16"})
    reader = SafetensorsFile(path)
    assert sorted(reader.names()) == sorted(arrays)
    assert np.array_equal(reader.read("a.f32"), arrays["a.f32"])
    assert np.array_equal(reader.read("a.f32", dtype=np.float16), arrays["a.f32"].astype(np.float16))
    assert reader.read("b.f16", dtype=np.float16).dtype == np.float16
    assert np.array_equal(reader.read("b.f16"), arrays["b.f16"].astype(np.float32))
    assert np.array_equal(reader.read("c.bf16"), bf16_bits_to_f32(f32_to_bf16_bits(arrays["c.bf16"])))
    assert np.abs(reader.read("c.bf16") - arrays["c.bf16"]).max() < 2**-7 * np.abs(arrays["c.bf16"]).max()
    assert reader.read("d.scalar").shape == () and float(reader.read("d.scalar")) == 2.5


def test_reading_as_bf16_bits_copies_bf16_and_rounds_the_rest(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {
        "a.f32": rng.standard_normal((5, 7)).astype(np.float32),
        "b.f16": rng.standard_normal((3, 4)).astype(np.float16),
        "c.bf16": rng.standard_normal((6, 3)).astype(np.float32),
    }
    path = tmp_path / "model.safetensors"
    _save_with_reference_writer(path, arrays, bf16={"c.bf16"})
    reader = SafetensorsFile(path)
    assert reader.read("c.bf16", dtype=BF16_BITS).tolist() == f32_to_bf16_bits(arrays["c.bf16"]).tolist()
    assert reader.read("a.f32", dtype=BF16_BITS).tolist() == f32_to_bf16_bits(arrays["a.f32"]).tolist()
    assert reader.read("b.f16", dtype=BF16_BITS).tolist() == f32_to_bf16_bits(arrays["b.f16"]).tolist()


@pytest.mark.parametrize("dtype", ["F16", "F32"])
def test_our_writer_is_read_by_the_safetensors_package(tmp_path, dtype):
    values = np.arange(24, dtype=np.float32).reshape(4, 6) / 8
    path = tmp_path / "x.safetensors"
    write_safetensors(path, [("t", (4, 6))], lambda name, shape: [values[:3], values[3:]], dtype=dtype)
    assert np.array_equal(safetensors.numpy.load_file(path)["t"].astype(np.float32), values)


def _write_small(path: Path) -> None:
    _save_with_reference_writer(path, {"w": np.ones((64, 64), dtype=np.float32)})


@pytest.mark.parametrize("damage", ["truncated-data", "truncated-header", "garbage-json", "huge-length", "tiny"])
def test_damaged_safetensors_is_reported_by_name(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    _write_small(path)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    damaged = {
        "truncated-data": data[:-100],
        "truncated-header": data[: 8 + header_len // 2],
        "garbage-json": data[:8] + b"{" * header_len + data[8 + header_len :],
        "huge-length": struct.pack("<Q", 1 << 40) + data[8:],
        "tiny": data[:5],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt: .*model\.safetensors") as info:
        SafetensorsFile(path)
    assert "re-download" in info.value.hint


# --- pickle .bin ------------------------------------------------------------------------------------------------
def test_torch_zip_state_dict_loads_to_equal_arrays(tmp_path):
    rng = np.random.default_rng(2)
    f32 = rng.standard_normal(40).astype(np.float32)
    f16 = rng.standard_normal(12).astype(np.float16)
    bf16 = rng.standard_normal(6).astype(np.float32)
    path = tmp_path / "pytorch_model.bin"
    write_torch_zip(
        path,
        {
            "a": ("0", 0, (4, 5), (5, 1)),  # contiguous
            "a_t": ("0", 0, (5, 4), (1, 5)),  # the transpose of a: same storage, non-contiguous strides
            "tail": ("0", 20, (20,), (1,)),  # offset into a shared storage
            "h": ("1", 0, (3, 4), (4, 1)),
            "b": ("2", 0, (2, 3), (3, 1)),
        },
        {"0": ("FloatStorage", f32), "1": ("HalfStorage", f16), "2": ("BFloat16Storage", f32_to_bf16_bits(bf16))},
    )
    reader = TorchZipFile(path)
    assert reader.names() == ["a", "a_t", "tail", "h", "b"]
    assert np.array_equal(reader.read("a"), f32[:20].reshape(4, 5))
    assert np.array_equal(reader.read("a_t"), f32[:20].reshape(4, 5).T)
    assert np.array_equal(reader.read("tail"), f32[20:])
    assert np.array_equal(reader.read("h", dtype=np.float16), f16.reshape(3, 4))
    assert np.array_equal(reader.read("b"), bf16_bits_to_f32(f32_to_bf16_bits(bf16)).reshape(2, 3))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(TOKENIZERS_DIR / "deepseek-llm-7b-chat", checkpoint)
    with zipfile.ZipFile(checkpoint / "pytorch_model.bin", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|nt|os)\.system: not tensor data"):
        Checkpoint(checkpoint)
    assert not marker.exists()


def test_storage_from_bytes_loader_is_refused(tmp_path):
    pkl = b"\x80\x02ctorch.storage\n_load_from_bytes\n" + pickle_tuple([b"C\x00"]) + b"R."
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle torch\.storage\._load_from_bytes"):
        TorchZipFile(path)


def test_legacy_or_plain_pickle_bin_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(CheckpointError, match="not a torch zip checkpoint"):
        TorchZipFile(path)


# --- checkpoint folders -------------------------------------------------------------------------------------------
def test_sharded_checkpoint_reads_like_single_file(tmp_path, tiny_checkpoints):
    model = "chatglm3-6b"
    sharded = write_random_checkpoint(
        model,
        tmp_path / "sharded",
        tokenizer_dir=TOKENIZERS_DIR / model,
        config_overrides=TINY_OVERRIDES[model],
        shard_max_bytes=8 << 20,
        weight_std=WEIGHT_STD,
    )  # as the session fixture's, so values must be equal
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    single, split = Checkpoint(tiny_checkpoints[model]), Checkpoint(sharded)
    assert sorted(single.names()) == sorted(split.names()) == sorted(index["weight_map"])
    for name in single.names():
        assert np.array_equal(single.read(name), split.read(name)), name


def test_missing_shard_is_named(tmp_path, tiny_checkpoints):
    model = "chatglm3-6b"
    folder = write_random_checkpoint(
        model,
        tmp_path / "c",
        tokenizer_dir=TOKENIZERS_DIR / model,
        config_overrides=TINY_OVERRIDES[model],
        shard_max_bytes=8 << 20,
    )
    victim = sorted(folder.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard {victim.name} \\(listed in model.safetensors.index"):
        Checkpoint(folder)


@pytest.mark.parametrize("missing", ["config.json", "qwen.tiktoken", "model.safetensors"])
def test_missing_file_is_named(tmp_path, tiny_checkpoints, missing):
    folder = _copy_checkpoint(tiny_checkpoints["qwen-7b-chat"], tmp_path / "q")
    (folder / missing).unlink()
    expected = "no weights in" if missing == "model.safetensors" else f"missing (tokenizer file )?{missing}"
    with pytest.raises(CheckpointError, match=expected):
        Checkpoint(folder, tokenizer_files=("qwen.tiktoken",))


def test_missing_folder_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        Checkpoint(tmp_path)


def test_malformed_pickle_is_a_clear_error(tmp_path):
    # _rebuild_tensor_v2 called with the wrong number of arguments, then a cut-off stream
    path = tmp_path / "pytorch_model.bin"
    for pkl in (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.", b"\x80\x02ccollections\nOrderedDict\n)R(X"):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            TorchZipFile(path)
