"""How many models `qrun serve` keeps loaded: memory decides (README "qrun serve").

Before loading a model, the least recently used loaded models are unloaded until the models kept plus the new one
fit: each counts its footprint (GGUF size + a full KV cache), and together they must stay RESERVE_BYTES under the
memory free for models, which is the system's available memory plus what the loaded models hold themselves.
"""

from __future__ import annotations

import math
from pathlib import Path

import psutil

from qrun import settings
from qrun.gguf_file import GGUFHeader, read_header

# Memory the kept models must leave free: llama.cpp's compute buffers, the server itself and the rest of the
# system. A margin, not a measured figure.
RESERVE_BYTES = 1 << 30
_KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}  # ggml's q8_0 block: 32 int8 values and one f16 scale


def kv_cache_bytes(header: GGUFHeader, *, n_ctx: int, kv_type: str) -> int:
    """K and V cache bytes of n_ctx tokens, from the GGUF's shape keys (llama.cpp's sizes: n_layer x n_ctx x
    (n_head_kv x head size) for each of K and V)."""
    meta, arch = header.metadata, header.architecture
    n_layer = int(meta.get(f"{arch}.block_count", 0))
    n_embd = int(meta.get(f"{arch}.embedding_length", 0))
    n_head = int(meta.get(f"{arch}.attention.head_count", 0)) or 1
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    k_size = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    v_size = int(meta.get(f"{arch}.attention.value_length", n_embd // n_head))
    return math.ceil(n_layer * n_ctx * n_head_kv * (k_size + v_size) * _KV_BYTES_PER_VALUE.get(kv_type, 2.0))


def footprint_bytes(gguf: Path, load: settings.LoadSettings) -> int:
    """What a model needs resident to run without paging: its weights (the GGUF's size) and a full KV cache for the
    context it will get (Engine.load's default when --ctx was not given)."""
    header = read_header(gguf)
    n_ctx = load.n_ctx or min(settings.DEFAULT_CTX_TOKENS, header.context_length or settings.DEFAULT_CTX_TOKENS)
    return gguf.stat().st_size + kv_cache_bytes(header, n_ctx=n_ctx, kv_type=load.kv_type)


def fit_loaded(loaded_lru: list[tuple[str, int]], need_bytes: int, *, free_bytes: int, max_models: int) -> list[str]:
    """Which loaded models to unload (oldest use first) so that the kept ones and a new one needing need_bytes fit
    in free_bytes - RESERVE_BYTES, and at most max_models are loaded (0 = no cap). loaded_lru: (name, footprint
    bytes), least recently used first."""
    kept, unload = list(loaded_lru), []
    while kept and (
        sum(b for _, b in kept) + need_bytes > free_bytes - RESERVE_BYTES or (max_models and len(kept) >= max_models)
    ):
        unload.append(kept.pop(0)[0])
    return unload


def free_for_models_bytes(baseline_anon_bytes: int) -> int:
    """Memory the served models may use: what the system has available (psutil; the page cache of mapped GGUFs
    counts as available there) plus the anonymous memory the loaded models hold (KV caches and buffers, which
    unloading gives back): this process's anonymous memory above baseline_anon_bytes, measured before any load."""
    return psutil.virtual_memory().available + max(0, anon_bytes() - baseline_anon_bytes)


def anon_bytes() -> int:
    """This process's resident memory that is not file-backed (psutil: rss - shared)."""
    info = psutil.Process().memory_info()
    return max(0, info.rss - getattr(info, "shared", 0))
