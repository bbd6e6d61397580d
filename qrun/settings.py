"""Defaults in one place. Precedence everywhere: command-line flag, then QRUN_* environment variable, then the
constant here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

# Default 4-bit type: the usual llama.cpp choice for 7B chat models (quality close to Q5, size ~4.1-4.4 GB).
DEFAULT_QUANT = "Q4_K_M"
# Types `qrun convert --quant` accepts; each is a llama.cpp ftype (LLAMA_FTYPE_MOSTLY_<name>, F16 = MOSTLY_F16).
QUANTS = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K")
# The two that qrun's converter writes itself; every other type is llama.cpp's quantizer run on one of these.
UNQUANTIZED = ("F16", "BF16")


def check_quant(quant: str | None) -> str:
    """A --quant value in canonical spelling ("q4_k_m" -> "Q4_K_M").

    Raises:
        UsageError: not one of QUANTS.
    """
    from qrun.errors import UsageError

    name = (quant or "").strip().upper()
    if name not in QUANTS:
        raise UsageError(f"unknown --quant {quant!r}", f"use one of: {', '.join(QUANTS)}")
    return name


DEFAULT_CTX_TOKENS = 4096
# llama.cpp rounds n_ctx up to a multiple of this (and llama-cpp-python 0.3.36 then sizes its own buffers from the
# unrounded value and crashes on prompts in the gap), so qrun only ever asks for multiples of it.
CTX_ALIGN_TOKENS = 256

DEFAULT_SUITE = "seed"
DEFAULT_SEED = 42


_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("", "0", "false", "no", "off")


def env_bool(name: str, default: bool = False) -> bool:
    """A yes/no QRUN_* variable: 1/true/yes/on or 0/false/no/off (any case); unset = default.

    Raises:
        UsageError: any other value (a typo must not silently mean "on").
    """
    from qrun.errors import UsageError

    value = os.environ.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise UsageError(f"{name}={value!r} is not a yes/no value", f"set {name} to 1 or 0 (or unset it)")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """A whole-number QRUN_* variable; unset or empty = default.

    Raises:
        UsageError: not a whole number >= minimum.
    """
    from qrun.errors import UsageError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    # isdecimal, not isdigit: "²" is a digit that int() refuses
    if not (value.isascii() and value.isdecimal()) or int(value) < minimum:
        raise UsageError(f"{name}={value!r} is not a whole number >= {minimum}", f"fix or unset {name}")
    return int(value)


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def gguf_dir(flag: str | os.PathLike | None = None) -> Path:
    """Where converted models live: the --ggufs flag, then QRUN_GGUF_DIR, then ./ggufs."""
    if flag:
        return Path(flag).expanduser()
    return env_path("QRUN_GGUF_DIR", Path("ggufs"))


def qrun_home() -> Path:
    """qrun's own state (download cache, demo, tuning profile): QRUN_HOME, then ~/.cache/qrun."""
    return env_path("QRUN_HOME", Path.home() / ".cache" / "qrun")


def physical_cores() -> int:
    """Physical cores of this machine. More llama.cpp threads than cores collapse its speed (its workers spin-wait:
    8 threads on 2 vCPUs cost 28 % of prompt and 61 % of decode speed even on a quiet machine)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# The most threads any option accepts: 4x the logical CPUs (room to measure oversubscription), never more than
# THREADS_CAP. llama.cpp sizes per-thread state from the count before it checks anything (1,000,000 threads ends
# the process in std::bad_alloc), and ggml's thread pool holds at most GGML_MAX_N_THREADS = 512 (ggml.h).
THREADS_PER_CPU_LIMIT = 4
THREADS_CAP = 512


def max_threads() -> int:
    """The largest thread count qrun passes on (see THREADS_PER_CPU_LIMIT, THREADS_CAP)."""
    return min(THREADS_PER_CPU_LIMIT * (os.cpu_count() or 1), THREADS_CAP)


def check_threads(value, *, flag: str = "--threads") -> int:
    """A thread count as given (int or text): 0 = the physical core count, else 1..max_threads().

    Every place that reads a thread count (ask, chat, bench, tune, QRUN_THREADS, the realscale tools) calls this,
    so the bound is the same everywhere.

    Raises:
        UsageError: not a whole number, negative, or above max_threads().
    """
    from qrun.errors import UsageError

    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or (text.isascii() and text.isdecimal())):
        raise UsageError(f"{flag} must be a whole number of threads (0 = physical cores), got {value!r}", "e.g. 2")
    n = int(text)
    if n < 0:
        raise UsageError(f"{flag} must be at least 1 (0 = physical cores), got {n}")
    if n > max_threads():
        shown = text if len(text) <= 24 else text[:12] + "..." + text[-6:]
        setting = f"{flag}=" if flag.startswith("QRUN_") else f"{flag} "
        raise UsageError(
            f"{setting}{shown} is more threads than qrun allows on this machine ({max_threads()}: "
            f"{THREADS_PER_CPU_LIMIT} x {os.cpu_count() or 1} logical CPUs, at most {THREADS_CAP})",
            f"use at most the {physical_cores()} physical cores, e.g. {setting}{physical_cores()}",
        )
    return n


def check_thread_list(value: str | None, *, flag: str = "--threads", zero_ok: bool = True) -> list[int]:
    """ "1,2" -> [1, 2], each checked by check_threads; None/"" -> []. zero_ok=False: 0 is refused too.

    Raises:
        UsageError: an empty list, a part that is not a thread count, or 0 where it is not allowed.
    """
    from qrun.errors import UsageError

    if value is None or not str(value).strip():
        return []
    parts = [part.strip() for part in str(value).split(",") if part.strip()]
    if not parts:
        raise UsageError(f"{flag} takes thread counts separated by commas, got {value!r}", f"e.g. {flag} 1,2")
    out = [check_threads(part, flag=flag) for part in parts]
    if not zero_ok and 0 in out:
        raise UsageError(f"{flag} takes positive integers separated by commas, got {value!r}", f"e.g. {flag} 1,2")
    return out


def default_threads() -> int:
    """--threads default: QRUN_THREADS, then the physical core count ("threads 0" also means that).

    Raises:
        UsageError: QRUN_THREADS is not a thread count (see check_threads).
    """
    value = os.environ.get("QRUN_THREADS", "").strip()
    return (check_threads(value, flag="QRUN_THREADS") if value else 0) or physical_cores()


def debug() -> bool:
    try:
        return env_bool("QRUN_DEBUG")
    except Exception:  # the error reporter itself must not fail on a typo: a bad value means "show it"
        return True


# Free disk `qrun convert` leaves untouched beyond what it will write (the system and other programs need room too).
DEFAULT_KEEP_FREE_BYTES = 256 << 20


def keep_free_bytes() -> int:
    """Disk reserve for `qrun convert`'s free-space check: QRUN_KEEP_FREE_BYTES, then DEFAULT_KEEP_FREE_BYTES."""
    return env_int("QRUN_KEEP_FREE_BYTES", DEFAULT_KEEP_FREE_BYTES)


def repack_weights(flag: bool | None = None) -> bool:
    """llama.cpp's CPU weight repacking (llama_model_params.use_extra_bufts): flag, then QRUN_REPACK, then OFF.

    Off by default: it keeps a second, anonymous copy of the quantized weights and lengthens every load, and on small
    CPUs it trades faster decoding for slower prompt processing (measure it: `qrun tune`); on VMs that advertise
    AMX without enabling it, llama.cpp's AMX buffer type behind the same switch dies with SIGILL (`tilezero`) on
    the first batched Q4 matmul (README "Settings": seen on a KVM "Intel Xeon Processor" with amx_int8 in
    /proc/cpuinfo).
    """
    if flag is not None:
        return flag
    return env_bool("QRUN_REPACK")


# KV cache types llama.cpp's CPU backend runs (llama.h ggml_type; q8_0 for V needs flash attention).
KV_TYPES = ("f16", "q8_0")
# The load settings, in the order tables and --json show them.
LOAD_KEYS = ("quant", "n_threads", "n_threads_batch", "repack", "use_mmap", "n_ctx", "flash_attn", "kv_type")


@dataclass(frozen=True)
class LoadSettings:
    """How one GGUF is loaded, fully resolved, with where each value came from.

    Built by qrun.runner.resolve (flag > QRUN_* env > tuning profile > default) and nowhere else; Engine.load
    applies it as it is. `sources` maps each key of LOAD_KEYS to "flag" | "env" | "profile" | "work" (n_ctx sized
    to the prompt and answer) | "default".
    """

    n_threads: int
    n_threads_batch: int
    repack: bool = False
    use_mmap: bool = True
    n_ctx: int | None = None  # None: DEFAULT_CTX_TOKENS, capped at the model's training context
    flash_attn: bool = False
    kv_type: str = "f16"
    quant: str | None = None  # None: a .gguf path used as given
    sources: dict = field(default_factory=dict, compare=False)

    @classmethod
    def default(cls, **given) -> LoadSettings:
        """The defaults, with `given` values on top (tests and tools that load a file directly)."""
        named = {k for k, v in given.items() if v is not None}
        threads = given.pop("n_threads", None) or physical_cores()
        batch = given.pop("n_threads_batch", None) or threads
        values = cls(n_threads=threads, n_threads_batch=batch, **{k: v for k, v in given.items() if v is not None})
        return replace(values, sources={k: "flag" if k in named else "default" for k in LOAD_KEYS})

    def to_dict(self) -> dict:
        """{key: value for LOAD_KEYS} plus "source": {key: where it came from}."""
        return {**{k: getattr(self, k) for k in LOAD_KEYS}, "source": dict(self.sources)}

    @classmethod
    def from_dict(cls, data: dict) -> LoadSettings:
        return cls(**{k: data[k] for k in LOAD_KEYS if k in data}, sources=dict(data.get("source") or {}))

    def with_value(self, key: str, value, source: str) -> LoadSettings:
        return replace(self, **{key: value}, sources={**self.sources, key: source})
