"""The machine a benchmark ran on: CPU, cores, SIMD flags, RAM, OS, Python, llama.cpp build, qrun version.

Stored with every results.json so numbers from two machines are never confused, and shown in report.md.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import psutil

from qrun import __version__
from qrun.runner.engine import system_info

# SIMD features llama.cpp's CPU kernels choose between (ggml-cpu); others in /proc/cpuinfo are noise here.
_INTERESTING_FLAGS = (
    "sse3",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
    "i8mm",
    "dotprod",
)


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), [f for f in _INTERESTING_FLAGS if f in flags]


def llama_cpp_system_info() -> str:
    """llama.cpp's own description of its build (SIMD paths compiled in), via the runner's engine module."""
    try:
        return " ".join(system_info().split())
    except Exception as err:  # the runner cannot load llama.cpp: say why instead of failing the benchmark
        return f"unavailable ({type(err).__name__}: {err})"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint() -> dict:
    cpu_model, flags = _cpuinfo()
    try:
        loadavg = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        loadavg = []
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "cpu_flags": flags,
        "ram_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "llama_cpp_python": _version("llama-cpp-python"),
        "llama_cpp_system_info": llama_cpp_system_info(),
        "qrun_version": __version__,
        "loadavg_at_start": loadavg,
    }


def label(machine: dict) -> str:
    """A short name for a machine in merged tables."""
    cpu = " ".join(str(machine.get("cpu_model", "?")).replace("(R)", "").replace("(TM)", "").split())
    return f"{machine.get('hostname') or '?'} ({cpu}, {machine.get('logical_cores', '?')} CPUs)"
