"""Quantize an F16 GGUF with llama.cpp's own quantizer (llama_model_quantize through llama-cpp-python).

This and runner/engine.py are the only modules that import llama_cpp. The import happens inside the function so
that `qrun models`, manifests and the converter load without the native library.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from qrun import interrupts, settings
from qrun.errors import ConversionError, GGUFError, UsageError
from qrun.fsutil import commit_file, partial_path

# llama.cpp prints one line per tensor while quantizing: "[  12/ 291]   blk.0.attn_q.weight - [...] ..."
_TENSOR_LINE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\]\s+(\S+)")
_LOG_TAIL_LINES = 20

Progress = Callable[..., None]


def ftype_for(quant: str) -> int:
    """llama.cpp's ftype constant for a qrun QUANT name (LLAMA_FTYPE_MOSTLY_<QUANT>).

    Raises:
        UsageError: QUANT is not one of settings.QUANTS.
    """
    import llama_cpp

    name = settings.check_quant(quant)
    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}"))


@contextlib.contextmanager
def _captured_llama_log(on_line: Callable[[str], None]):
    """Route llama.cpp's log into `on_line` while the block runs, then restore llama-cpp-python's own callback.

    llama.cpp's quantizer logs a line per tensor at INFO level; llama-cpp-python prints everything to stderr until a
    Llama(verbose=False) is created, which would flood the terminal and hide the errors.
    """
    import llama_cpp
    from llama_cpp import _logger

    pending: list[str] = []
    raised: list[BaseException] = []

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p):
        # An exception cannot unwind through llama.cpp (ctypes prints and drops it), and a Ctrl-C arriving during
        # the C call surfaces here: keep the first one for the caller to re-raise when the call returns.
        try:
            pending.append(text.decode("utf-8", errors="replace"))
            joined = "".join(pending)
            if "\n" in joined:
                *lines, rest = joined.split("\n")
                pending[:] = [rest] if rest else []
                for line in lines:
                    if not raised:
                        on_line(line)
        except BaseException as exc:  # noqa: B036 - re-raised by the caller
            raised.append(exc)

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield raised
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        if pending and not raised:
            on_line("".join(pending))


@contextlib.contextmanager
def _ctrl_c_aborts(partial: Path):
    """While the block runs, Ctrl-C removes `partial` and exits with 130 (the shell's code for SIGINT).

    Only when Python's default SIGINT handler is in place and this is the main thread; an application that set
    its own handler keeps it.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not interrupts.is_standard(previous):
        yield
        return

    def abort(signum, frame):
        with contextlib.suppress(OSError):
            partial.unlink()
        sys.stderr.write(f"\nInterrupted: removed {partial.name}; rerun to quantize again.\n")
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, abort)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def quantize_gguf(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    quant: str,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    commit: bool = True,
) -> Path:
    """Quantize `src_path` (an F16 GGUF) to `dst_path` as `quant`, atomically.

    The output is written under a name of this process (fsutil.partial_path) and renamed only when llama.cpp
    reports success, so a crash or kill never leaves a half-written file under the final name. llama.cpp cannot be
    stopped mid-call and a Ctrl-C
    raised inside its log callback would be dropped by ctypes, so Ctrl-C here deletes the partial file and ends
    the process at once (exit 130) instead of raising KeyboardInterrupt.

    Args:
        src_path: F16 (or F32) GGUF written by qrun.convert.gguf_writer.
        dst_path: final output path.
        quant: one of settings.QUANTS (case-insensitive).
        threads: quantizer threads; None or 0 = settings.default_threads().
        progress: optional callback, called as progress("quantize", done=i, total=n, tensor=name) per tensor.
        commit: False = leave the finished file under its partial name for the caller to hash and install
            (convert/manifest.py install_gguf), which then owns it.

    Returns:
        The path written: dst_path, or the finished partial when commit is False.

    Raises:
        UsageError: unknown quant or negative threads.
        GGUFError: src_path does not exist.
        ConversionError: llama.cpp returned an error (message carries the tail of its log).
    """
    import llama_cpp

    src, dst = Path(src_path), Path(dst_path)
    ftype = ftype_for(quant)
    if threads is not None and threads < 0:
        raise UsageError(f"threads must be >= 0, got {threads}", "0 means all physical cores")
    n_threads = threads or settings.default_threads()
    if not src.is_file():
        raise GGUFError(f"cannot quantize {src}: file not found", "convert the model first")

    tmp = partial_path(dst)
    log_tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)

    def on_line(line: str) -> None:
        log_tail.append(line)
        match = _TENSOR_LINE.search(line)
        if match and progress is not None:
            progress("quantize", done=int(match.group(1)), total=int(match.group(2)), tensor=match.group(3))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    try:
        with _captured_llama_log(on_line) as raised, _ctrl_c_aborts(tmp):
            rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
        if raised:
            raise raised[0]
        if rc != 0 or not tmp.is_file():
            errors = [line for line in log_tail if "error" in line.lower() or "failed" in line.lower()]
            detail = (errors or list(log_tail) or ["no log"])[-1].strip()
            raise ConversionError(
                f"llama.cpp could not quantize {src.name} to {quant.upper()} (code {rc}): {detail}",
                "check that the F16 GGUF loads (qrun ask) and that the disk is not full",
            )
        if commit:
            commit_file(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst if commit else tmp
