"""The bookkeeping around a conversion: which checkpoint files it reads (and their fingerprint), how much disk it
will need, which unquantized type to write, the resumable intermediate and its marker, and leftovers of
interrupted runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from qrun import __version__, settings
from qrun.errors import DiskSpaceError, UsageError
from qrun.fsutil import file_identity, os_reason, owner_pid, pid_alive, write_json_atomic
from qrun.registry import ModelSpec

# Upper estimates of bits per weight of each output, including the tensors llama.cpp keeps at higher precision
# (K-quant mixes put output/attn_v/ffn_down partly in Q6_K; ChatGLM3's 13696-wide FFN falls back to Q5_0/Q8_0).
# Measured Q4_K_M files of the 7B models are 4.9-5.2 bits; these leave a margin so the check errs on the safe side.
_EST_BITS_PER_WEIGHT = {
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 7.0,
    "Q5_K_M": 6.2,
    "Q4_K_M": 5.5,
    "Q4_K_S": 5.0,
    "Q4_0": 5.0,
}
# Vocabulary, merges and metadata of a GGUF: a few MB even for Qwen's 152k tokens; allowance on top of the weights.
_GGUF_OVERHEAD_BYTES = 64 << 20
_SAFETENSORS_ELEMENT_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def lock_path(spec: ModelSpec, out_dir: Path) -> Path:
    """The lock file of one model's outputs in one folder.

    One lock covers all of a model's outputs there, not one per quant: every quant of a model is made from the same
    F16/BF16 intermediate, and a run removes intermediates of other types and leftovers of interrupted runs.
    """
    return out_dir / f".{spec.name}.lock"


@contextlib.contextmanager
def output_lock(spec: ModelSpec, out_dir: Path, *, say: Callable[[str], None], wait: bool = True) -> Iterator[bool]:
    """Hold the lock of `spec`'s outputs in `out_dir` for the duration of the block.

    A second run waits for the first (saying so once) and then finds its outputs made. The kernel releases the
    lock when its process dies, however it dies, so a killed run never blocks the next one. The lock file itself
    stays (an empty hidden file): removing it on release would let a waiting run and a new one hold two locks.

    Args:
        wait: False = do not wait; the block then runs with False when another run holds the lock.

    Yields:
        True when the lock is held.

    Raises:
        UsageError: the lock file cannot be created (read-only folder, no permission).
    """
    lock = filelock.FileLock(lock_path(spec, out_dir))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if not wait:
                yield False
                return
            say(f"[convert] waiting: another qrun run is writing {spec.name} outputs in {out_dir}")
            lock.acquire()
    except OSError as err:
        raise UsageError(
            f"cannot write in {out_dir}: {os_reason(err)}",
            "choose a writable folder with --ggufs DIR (or QRUN_GGUF_DIR)",
        ) from None
    try:
        yield True
    finally:
        lock.release()


def checkpoint_files(folder: Path, spec: ModelSpec) -> list[Path]:
    """The files of a checkpoint folder that conversion reads (config, tokenizer, weights), sorted by name."""
    names = {"config.json", "generation_config.json", "tokenizer_config.json", *spec.tokenizer_files}
    files = {folder / n for n in names if (folder / n).is_file()}
    for pattern in (
        "*.safetensors",
        "model.safetensors.index.json",
        "pytorch_model*.bin",
        "pytorch_model.bin.index.json",
    ):
        files.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(files)


def fingerprint(folder: Path, spec: ModelSpec) -> str:
    """Identity of a checkpoint's input files (names, sizes, mtimes) plus qrun's version: same value, same GGUF."""
    digest = hashlib.sha256(f"qrun {__version__} {spec.name}\n".encode())
    for path in checkpoint_files(folder, spec):
        info = path.stat()
        digest.update(f"{path.name} {info.st_size} {info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file (8-byte length + JSON); None when it cannot be read (or is not a regular
    file: opening a FIFO would block; the converter then reports it)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        with open(path, "rb") as f:
            (header_bytes,) = struct.unpack("<Q", f.read(8))
            if header_bytes > 100 << 20:
                return None
            header = json.loads(f.read(header_bytes))
        return header if isinstance(header, dict) else None
    except (OSError, ValueError, struct.error):
        return None


def _safetensors_params(path: Path) -> int | None:
    """Parameter count from a safetensors header; None when it cannot be read."""
    header = _safetensors_header(path)
    if header is None:
        return None
    try:
        total = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            total += (end - begin) // _SAFETENSORS_ELEMENT_BYTES.get(entry["dtype"], 2)
        return total
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def natural_weight_type(folder: Path) -> str:
    """The unquantized GGUF type that keeps a checkpoint's weights as they are: "BF16" when every matrix in its
    safetensors files is stored in bfloat16 (as all three models ship), else "F16".

    BF16 weights then go into the GGUF as copied bits: exact (F16 cannot hold bf16's range) and without the
    per-value decode to f32 and rounding to f16 (docs/performance.md: the conversion step's time against its I/O
    floor). llama.cpp's quantizer reads BF16 as well as F16. Pickle checkpoints
    get "F16" (their headers are not read here; the converter handles any stored type either way).
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "F16"
    for path in files:
        header = _safetensors_header(path)
        if header is None:
            return "F16"
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
                return "F16"  # a corrupt header: the converter's reader says what is wrong with it
            if len(entry["shape"]) >= 2 and entry.get("dtype") != "BF16":
                return "F16"
    return "BF16"


def estimate_params(folder: Path) -> int:
    """Parameters of a checkpoint from its safetensors headers; pickle shards (or unreadable headers) count as
    2-byte weights by file size, an overestimate for f32 files that keeps the disk check on the safe side."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin")):
        params = _safetensors_params(path) if path.suffix == ".safetensors" else None
        total += params if params is not None else path.stat().st_size // 2
    return total


def estimate_gguf_bytes(n_params: int, quant: str) -> int:
    return int(n_params * _EST_BITS_PER_WEIGHT[quant] / 8) + _GGUF_OVERHEAD_BYTES


def check_free_disk(
    folder: Path, *, unquantized_bytes: int, unquantized_type: str, output_bytes: int, quant: str
) -> None:
    """Fail before starting when `folder`'s disk lacks room for what is about to be written.

    Args:
        unquantized_bytes: size of the F16/BF16 GGUF still to be written (0 when an existing one is reused).
        unquantized_type: "F16" or "BF16", for the message.
        output_bytes: size of the quantized output (0 when QUANT is F16/BF16: that file is the output).

    Raises:
        DiskSpaceError: naming both sizes, the reserve (QRUN_KEEP_FREE_BYTES) and the free space.
    """
    free_bytes = shutil.disk_usage(folder).free
    reserve_bytes = settings.keep_free_bytes()
    need_bytes = unquantized_bytes + output_bytes + reserve_bytes
    if need_bytes <= free_bytes:
        return
    parts = [f"{unquantized_type} intermediate {_gb(unquantized_bytes)}"] if unquantized_bytes else []
    if output_bytes:
        parts.append(f"{quant} output {_gb(output_bytes)}")
    parts.append(f"reserve {_gb(reserve_bytes)} (QRUN_KEEP_FREE_BYTES)")
    raise DiskSpaceError(
        f"not enough free disk in {folder}: need {_gb(need_bytes)} ({' + '.join(parts)}), {_gb(free_bytes)} free",
        "free some space or pass --ggufs DIR on a disk with more room",
    )


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e7 else f"{n_bytes} bytes"


def intermediate_path(spec: ModelSpec, out_dir: Path, weight_type: str) -> Path:
    """Where the F16/BF16 intermediate lives until it is quantized (not a `<name>-<QUANT>.gguf` final name)."""
    return out_dir / f"{spec.name}-{weight_type}.intermediate.gguf"


def intermediate_paths(spec: ModelSpec, out_dir: Path) -> list[Path]:
    """Intermediates of this model of any type (a run for another type or --keep-f16 leaves them stale)."""
    return [intermediate_path(spec, out_dir, t) for t in settings.UNQUANTIZED]


def marker_path(intermediate: Path) -> Path:
    return intermediate.with_suffix(".json")


def write_marker(
    intermediate: Path, *, checkpoint_fingerprint: str, source: dict, convert_step: dict, writer_info
) -> None:
    """Record that `intermediate` is complete and which checkpoint it came from (so a rerun can reuse it)."""
    write_json_atomic(
        marker_path(intermediate),
        {
            "model_fingerprint": checkpoint_fingerprint,
            **file_identity(intermediate),
            "source": source,
            "convert_step": convert_step,
            "writer": json.loads(json.dumps(writer_info, default=str)) if writer_info is not None else None,
        },
    )


def reusable_marker(intermediate: Path, checkpoint_fingerprint: str) -> dict | None:
    """The marker of a complete intermediate made from the same checkpoint files, else None."""
    try:
        marker = json.loads(marker_path(intermediate).read_text(encoding="utf-8"))
        identity = file_identity(intermediate)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    same_file = all(marker.get(key) == value for key, value in identity.items())
    return marker if same_file and marker.get("model_fingerprint") == checkpoint_fingerprint else None


def remove_intermediate(intermediate: Path) -> None:
    intermediate.unlink(missing_ok=True)
    marker_path(intermediate).unlink(missing_ok=True)


def clean_stale_partials(spec: ModelSpec, out_dir: Path) -> list[Path]:
    """Delete what interrupted runs of this model left: `*.partial` outputs and atomic-write temporaries.

    Call it holding output_lock(). A file whose name carries the id of a live process (fsutil.partial_path) is
    kept: a run of a qrun that took no lock may still be writing it. Names without an id are from such older
    runs too, and are removed only under the lock.
    """
    removed = []
    for pattern in (f"{spec.name}-*.partial", f".{spec.name}-*.tmp"):
        for path in out_dir.glob(pattern):
            pid = owner_pid(path)
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                continue
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed
