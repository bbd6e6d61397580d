"""Write a converter's model as an unquantized (F16 or BF16) GGUF, streaming: peak memory is about one tensor.

GGUF puts every tensor's name, shape and type before any data, and the converters know those from config.json
alone, so the header, key/values and tensor infos are written first (gguf.GGUFWriter.add_tensor_info), then each
tensor is read, converted and written (write_tensor_data) and dropped before the next one.
The file is written under fsutil.partial_path(out_path) and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from qrun.convert.safetensors_io import BF16_BITS
from qrun.errors import ConversionError
from qrun.fsutil import partial_path

# hparams() key -> GGUFWriter method writing `<arch>.<key>` with the type llama.cpp's loader checks
# (u32 for counts and lengths, f32 for rope base and eps).
_HPARAM_WRITERS = {
    "context_length": gguf.GGUFWriter.add_context_length,
    "embedding_length": gguf.GGUFWriter.add_embedding_length,
    "block_count": gguf.GGUFWriter.add_block_count,
    "feed_forward_length": gguf.GGUFWriter.add_feed_forward_length,
    "head_count": gguf.GGUFWriter.add_head_count,
    "head_count_kv": gguf.GGUFWriter.add_head_count_kv,
    "rope_dimension_count": gguf.GGUFWriter.add_rope_dimension_count,
    "rope_freq_base": gguf.GGUFWriter.add_rope_freq_base,
    "layer_norm_rms_epsilon": gguf.GGUFWriter.add_layer_norm_rms_eps,
    "vocab_size": gguf.GGUFWriter.add_vocab_size,
}
QRUN_MODEL_KEY = "qrun.model"  # canonical registry name, read back by runner/engine.py
# The converter's weight_type -> the GGUF's file type; BF16 tensors arrive as uint16 bits and are tagged as such.
_FILE_TYPES = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16}

Progress = Callable[[int, int, str], None]  # (done_bytes, total_bytes, tensor name)


def _prepare(converter, partial: Path) -> tuple[gguf.GGUFWriter, list]:
    writer = gguf.GGUFWriter(partial, converter.gguf_arch)
    writer.add_name(converter.spec.name)
    writer.add_string(QRUN_MODEL_KEY, converter.spec.name)
    writer.add_file_type(_FILE_TYPES[converter.weight_type])
    hparams = converter.hparams()
    unknown = set(hparams) - set(_HPARAM_WRITERS)
    if unknown:  # a converter bug, not a user error
        raise ValueError(f"no GGUF writer for hparams {sorted(unknown)}")
    for key, value in hparams.items():
        _HPARAM_WRITERS[key](writer, value)
    converter.vocab().add_to(writer)
    infos = converter.tensor_infos()
    for name, shape, dtype in infos:
        dtype = np.dtype(dtype)
        raw_dtype = gguf.GGMLQuantizationType.BF16 if dtype == BF16_BITS else None
        writer.add_tensor_info(name, shape, dtype, math.prod(shape) * dtype.itemsize, raw_dtype=raw_dtype)
    return writer, infos


def write_gguf(converter, out_path: str | os.PathLike, *, progress: Progress | None = None) -> dict:
    """Write `converter`'s model to `out_path` as a GGUF with converter.weight_type (F16 or BF16) weights and F32
    norms/biases.

    Args:
        converter: from qrun.convert.converters.converter_for().
        out_path: final file name; work happens in a `.partial` sibling of this process
            (fsutil.partial_path), renamed when complete.
        progress: called after each tensor with (done_bytes, total_bytes, tensor_name).

    Returns:
        {"path", "file_bytes", "tensor_count", "tensor_bytes", "wall_s", plus converter.info()}.

    Raises:
        ConversionError: a converter produced a tensor that does not match its announced shape or type.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    started = time.perf_counter()
    writer, infos = _prepare(converter, partial)
    total_bytes = sum(math.prod(shape) * np.dtype(dtype).itemsize for _, shape, dtype in infos)
    done_bytes = 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        expected = iter(infos)
        for name, array in converter.tensors():
            want_name, want_shape, want_dtype = next(expected)
            if (name, tuple(array.shape), array.dtype) != (want_name, tuple(want_shape), np.dtype(want_dtype)):
                raise ConversionError(
                    f"converter produced {name} {array.dtype}{list(array.shape)}, "
                    f"announced {want_name} {np.dtype(want_dtype)}{list(want_shape)}",
                    "this is a bug in qrun's converter; please report it",
                )
            writer.write_tensor_data(np.ascontiguousarray(array))
            done_bytes += array.nbytes
            del array  # drop our reference before the generator reads the next tensor
            if progress:
                progress(done_bytes, total_bytes, name)
        if next(expected, None) is not None:
            raise ConversionError("converter stopped before its last tensor", "this is a bug in qrun's converter")
        writer.flush()
        for fout in writer.fout or ():
            os.fsync(fout.fileno())
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes buffered data: on a full disk that fails again
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return {
        "path": str(out_path),
        "file_bytes": out_path.stat().st_size,
        "tensor_count": len(infos),
        "tensor_bytes": total_bytes,
        "wall_s": round(time.perf_counter() - started, 3),
        **converter.info(),
    }
