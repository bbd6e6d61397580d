"""Full-size random-weight checkpoints for the real-scale benchmark, written at disk speed.

qrun.convert.synthetic.write_random_checkpoint draws every value from a seeded normal distribution and rounds it to
bf16 in numpy: about 1 CPU-minute per GB on this 2-core machine, ~40 minutes for the three 7B checkpoints. Speed,
memory and load time do not depend on the weights' values, so `fill="tiled"` writes the same files (config,
tokenizer files, shard layout, index, tensor names, shapes and bf16 dtype: all from synthetic.py) but fills each
large tensor by repeating one block of random bf16 values drawn once; small tensors (norms, biases, rotary
frequencies) get exactly synthetic.py's values. `fill="random"` calls write_random_checkpoint itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from qrun import registry
from qrun.convert import synthetic
from qrun.convert.safetensors_io import f32_to_bf16_bits
from qrun.fsutil import write_json_atomic
from qrun.measure import MemoryWatch

MARKER = ".realscale-complete.json"  # written last: a checkpoint without it is incomplete and rewritten
_TILE_ELEMENTS = 1 << 24  # 32 MB of bf16: a period far longer than any row (rows are at most 22016 values)
_SMALL_ELEMENTS = 1 << 20  # tensors up to this size get synthetic.py's own values
_SHARD_MAX_BYTES = 2 << 30  # as write_random_checkpoint's default


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _write_shard(path: Path, specs, config: dict, tile: bytes, *, seed: int) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        nbytes = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_json = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_json += b" " * (-len(header_json) % 8)  # 8-byte aligned data, as safetensors' writer does
    with open(path, "wb") as f:
        f.write(len(header_json).to_bytes(8, "little"))
        f.write(header_json)
        for name, shape in specs:
            n = math.prod(shape)
            if n <= _SMALL_ELEMENTS:
                for block in synthetic._values(name, shape, seed=seed, config=config, weight_std=0.02):
                    f32_to_bf16_bits(block).tofile(f)
                continue
            remaining = n * 2
            while remaining:
                chunk = tile[:remaining]
                f.write(chunk)
                remaining -= len(chunk)
        f.flush()
        os.fsync(f.fileno())


def write_tiled_checkpoint(
    model: str,
    out_dir: Path,
    *,
    tokenizer_dir: Path,
    config_overrides: dict | None = None,
    seed: int = 0,
    shard_max_bytes: int = _SHARD_MAX_BYTES,
) -> Path:
    """The files write_random_checkpoint(model, out_dir, tokenizer_dir=..., config_overrides=..., dtype="bf16",
    shard_max_bytes=...) writes, with tiled values in the large tensors."""
    spec = registry.get(model)
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    config = synthetic._apply_overrides(config, config_overrides or {})
    write_json_atomic(out_dir / "config.json", config)
    for name in dict.fromkeys((*spec.tokenizer_files, *synthetic._EXTRA_FILES)):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)
    rng = np.random.default_rng(seed)
    tile = f32_to_bf16_bits(0.02 * rng.standard_normal(_TILE_ELEMENTS, dtype=np.float32)).tobytes()
    shards: list[list] = [[]]
    size = 0
    for name, shape in synthetic.hf_tensor_shapes(spec.name, config):
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > shard_max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    if len(shards) == 1:  # as write_random_checkpoint: one file, no index
        _write_shard(out_dir / "model.safetensors", shards[0], config, tile, seed=seed)
        return out_dir
    weight_map, total = {}, 0
    for i, specs in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(out_dir / file_name, specs, config, tile, seed=seed)
        weight_map.update({name: file_name for name, _ in specs})
        total += sum(math.prod(shape) * 2 for _, shape in specs)
    write_json_atomic(
        out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return out_dir


def make_checkpoint(model: str, out_dir: str, tokenizer_dir: str, fill: str, config_overrides: dict | None) -> dict:
    """Write one checkpoint (run in a fresh process so its memory is its own) and its completion marker."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)  # an incomplete earlier attempt
    load_before = os.getloadavg()
    with MemoryWatch() as watch:
        if fill == "random":
            synthetic.write_random_checkpoint(
                model, out, tokenizer_dir=tokenizer_dir, config_overrides=config_overrides, dtype="bf16"
            )
        else:
            write_tiled_checkpoint(model, out, tokenizer_dir=Path(tokenizer_dir), config_overrides=config_overrides)
    info = {
        "model": registry.get(model).name,
        "fill": fill,
        "config_overrides": config_overrides,
        "bytes": checkpoint_bytes(out),
        **watch.stats().to_dict(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "finished_unix": time.time(),
    }
    write_json_atomic(out / MARKER, info)
    return info
