"""Does llama.cpp's weight repacking run on this CPU? Asked once per machine, in a child process.

Repacking (llama_model_params.use_extra_bufts) also enables llama.cpp's AMX kernels where the CPU advertises AMX.
Some virtual machines advertise AMX (cpuinfo flags, the kernel's XCOMP permission) without the hypervisor enabling
the tile registers, and the first batched Q4 matmul then dies with SIGILL (`tilezero`) — the whole process, with no
message (seen on a KVM "Intel Xeon Processor"; on the same VM the probe child has also died of SIGSEGV). A crash cannot
be caught in-process, so before a model is loaded with repacking on such a CPU, a tiny model is run with it in a child
process and the verdict is cached.

When AMX is what crashes, a second child repeats the run with AMX denied (runner/amx_guard.py): if that works,
repacking stays available with llama.cpp's AVX-512/AVX2 kernels, and every process that repacks on this machine
denies AMX to itself first.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

from qrun import child, settings
from qrun.errors import UsageError
from qrun.fsutil import write_json_atomic
from qrun.runner import amx_guard

# Set in the child so its own Engine.load does not probe again.
_CHILD_ENV = "QRUN_CPU_PROBE_CHILD"

_PROBE_VERSION = 2  # part of the cache key: verdicts of older probes lack "repack_without_amx_ok"
_CHILD_TIMEOUT_S = 300


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _needs_probe(system_info: str) -> bool:
    # only the AMX kernels were seen to trap; the plain AVX2/AVX-512 repacked kernels run wherever the build does
    return "AMX_INT8 = 1" in system_info


def _run_probe(notice) -> dict:
    from qrun.convert import synthetic
    from qrun.convert.pipeline import convert_model

    root = settings.qrun_home() / "cpu-probe"
    notice(
        "note: this CPU advertises AMX; checking once, in a child process, that llama.cpp's repacked (AMX) "
        "kernels run here"
    )
    # the tiny shape of the test suite with a byte-level vocabulary (no tokenizer library needed); any architecture
    # exercises the matmuls
    model = synthetic.BYTE_BPE_MODEL
    tokenizer_dir = synthetic.write_byte_bpe_tokenizer_dir(root / "checkpoints" / "tokenizers" / model)
    checkpoint = synthetic.write_random_checkpoint(
        model,
        root / "checkpoints" / model,
        tokenizer_dir=tokenizer_dir,
        config_overrides=synthetic.TINY_OVERRIDES[model],
        seed=0,
    )
    gguf = convert_model(model, from_dir=checkpoint, quant="Q4_0", out_dir=root / "ggufs")["path"]
    verdict = _run_child(gguf)
    if not verdict["repack_ok"] and amx_guard.supported():
        notice("note: llama.cpp's AMX kernels crash here; checking repacking with AMX denied (AVX-512 kernels)")
        verdict["repack_without_amx_ok"] = _run_child(gguf, "deny-amx")["repack_ok"]
    return verdict


def _run_child(gguf, *args: str) -> dict:
    """The verdict of one probe child (runner/cpu_probe_child.py) on gguf; args: "deny-amx" or nothing."""
    done = child.run(
        "qrun.runner.cpu_probe_child", [str(gguf), *args], timeout_s=_CHILD_TIMEOUT_S, env_extra={_CHILD_ENV: "1"}
    )
    if done.timed_out:  # no verdict to cache: a hang says nothing about the kernels
        raise UsageError(
            f"the repacking check did not finish within {_CHILD_TIMEOUT_S} s",
            "run again when the machine is less busy, or drop --repack (and unset QRUN_REPACK)",
        )
    return {
        "repack_ok": done.returncode == 0,
        "exit": done.signal_name or done.returncode,
        "stderr_tail": done.stderr.strip().splitlines()[-1:] or [],
    }


def check_repack(system_info: str, *, notice=lambda _msg: None, force_probe: bool = False) -> dict:
    """Make sure repacking can run in this process: probe (once per machine, cached) if unsure; where only AMX
    crashes, deny AMX to this process (amx_guard) so repacking uses the AVX-512/AVX2 kernels; else raise.

    Call it before the first model load with repacking in the process (llama.cpp requests AMX at that load).

    Returns:
        The verdict {"repack_ok", "exit", ..., "amx_denied"} ({"repack_ok": True, "probed": False} where no probe is
        needed).

    Raises:
        UsageError: repacking crashes here even without AMX.
    """
    if os.environ.get(_CHILD_ENV) or not (force_probe or _needs_probe(system_info)):
        return {"repack_ok": True, "probed": False}
    key = {
        "cpu": _cpu_model(),
        "llama_cpp_python": metadata.version("llama-cpp-python"),
        "system_info": system_info,
        "probe_version": _PROBE_VERSION,
    }
    cache = settings.qrun_home() / "cpu-probe.json"
    verdict = None
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            verdict = cached["verdict"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    if verdict is None:
        verdict = _run_probe(notice)
        write_json_atomic(cache, {"key": key, "verdict": verdict})
    if not verdict["repack_ok"] and verdict.get("repack_without_amx_ok") and amx_guard.deny_amx():
        return {**verdict, "probed": True, "amx_denied": True}
    if not verdict["repack_ok"]:
        raise UsageError(
            f"llama.cpp's repacked weights crash on this CPU ({verdict['exit']} in a test run: it advertises AMX "
            f"but the machine does not enable it)",
            "drop --repack (and unset QRUN_REPACK); qrun runs without repacking by default",
        )
    return {**verdict, "probed": True, "amx_denied": False}
