"""Defaults in one place. Precedence everywhere: command-line flag, then QRUN_* environment variable, then the
constant here."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

# Default 4-bit type: the usual llama.cpp choice for 7B chat models (quality close to Q5, size ~4.1-4.4 GB).
DEFAULT_QUANT = "Q4_K_M"
# Types `qrun convert --quant` accepts; each is a llama.cpp ftype (LLAMA_FTYPE_MOSTLY_<name>, F16 = MOSTLY_F16).
QUANTS = ("F16", "Q8_0", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K")

DEFAULT_CTX_TOKENS = 4096
# llama.cpp rounds n_ctx up to a multiple of this (and llama-cpp-python 0.3.36 then sizes its own buffers from the
# unrounded value and crashes on prompts in the gap), so qrun only ever asks for multiples of it.
CTX_ALIGN_TOKENS = 256

DEFAULT_SUITE = "seed"
DEFAULT_SEED = 42


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def gguf_dir(flag: str | os.PathLike | None = None) -> Path:
    """Where converted models live: --out/--ggufs flag, then QRUN_GGUF_DIR, then ./ggufs."""
    if flag:
        return Path(flag).expanduser()
    return env_path("QRUN_GGUF_DIR", Path("ggufs"))


def qrun_home() -> Path:
    """qrun's own state (download cache, demo, tuning profile): QRUN_HOME, then ~/.cache/qrun."""
    return env_path("QRUN_HOME", Path.home() / ".cache" / "qrun")


def physical_cores() -> int:
    """Physical cores of this machine (threads beyond them slow llama.cpp down, see PERF-FACTS)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def default_threads() -> int:
    """--threads default: QRUN_THREADS, then the physical core count ("threads 0" also means that)."""
    value = os.environ.get("QRUN_THREADS")
    if value and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return physical_cores()


def debug() -> bool:
    return os.environ.get("QRUN_DEBUG", "") not in ("", "0", "false", "no")


# Free disk `qrun convert` leaves untouched beyond what it will write (the system and other programs need room too).
DEFAULT_KEEP_FREE_BYTES = 256 << 20


def keep_free_bytes() -> int:
    """Disk reserve for `qrun convert`'s free-space check: QRUN_KEEP_FREE_BYTES, then DEFAULT_KEEP_FREE_BYTES."""
    value = os.environ.get("QRUN_KEEP_FREE_BYTES", "").strip()
    return int(value) if value.isdigit() else DEFAULT_KEEP_FREE_BYTES


def repack_weights(flag: bool | None = None) -> bool:
    """llama.cpp's CPU weight repacking (llama_model_params.use_extra_bufts): flag, then QRUN_REPACK, then OFF.

    Off by default: on 2-core CPUs it trades ~10 % decode for 1.5-1.8x slower prompts, +3 GB anonymous memory and
    ~4 s more load (PERF-FACTS), and on CPUs whose AMX the kernel does not enable for the process (seen on this
    project's Xeon machines) llama.cpp's AMX buffer type dies with SIGILL (`tilezero`) on the first Q4 matmul.
    """
    if flag is not None:
        return flag
    return os.environ.get("QRUN_REPACK", "") not in ("", "0", "false", "no")
