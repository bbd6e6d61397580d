"""Ctrl-C and SIGTERM that take effect within a second, even while llama.cpp is inside one long C call.

Python runs a signal handler only between bytecodes of the main thread, so a KeyboardInterrupt waits until
llama_decode returns: 40 s and more for a long prompt on a 7B model. llama.cpp asks an abort callback after every
graph node and a progress callback while loading (llama.h: llama_context_params.abort_callback,
llama_model_params.progress_callback). Those callbacks are Python functions called on the main thread, so the
signal handler runs inside them. During such a call the handler only records the signal (raising inside a ctypes
callback would be printed and ignored); the callback tells llama.cpp to stop, and the caller raises
KeyboardInterrupt once the C call has returned. Outside C calls the handler raises at once, as Python's own does.

SIGTERM is handled like Ctrl-C where install(sigterm=True) was called (qrun's command line and its worker
processes): interrupted work is recorded as partial instead of being lost to the default kill.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class _State:
    pending_signal: int | None = None  # a signal that arrived during a C call, not yet raised
    native_depth = 0  # > 0 while llama.cpp runs a call that polls abort_requested()


_state = _State()


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state.native_depth > 0:
        _state.pending_signal = signum
        return
    raise KeyboardInterrupt


def install(*, sigterm: bool = False) -> None:
    """Route SIGINT (and SIGTERM if asked) through qrun's handler. A no-op outside the main thread, and for a
    signal whose handler someone else already replaced (an embedding program keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
    if sigterm and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _handler)


def is_standard(handler: object) -> bool:
    """True for Python's own SIGINT handler and qrun's: code that temporarily takes SIGINT over (the quantizer)
    may do so, and put `handler` back after."""
    return handler is signal.default_int_handler or handler is _handler


def request_abort(signum: int = signal.SIGINT) -> None:
    """Stop the llama.cpp call running now, from another thread, as a signal would: a server cancelling the work of
    its worker thread (qrun serve). The call's native_call then raises KeyboardInterrupt on that thread; if no call
    runs, the next one is stopped, so the caller clears it (clear_abort) once the work it meant has ended."""
    _state.pending_signal = signum


def clear_abort() -> None:
    _state.pending_signal = None


def abort_requested() -> bool:
    """True once a signal arrived during a native call: llama.cpp's callbacks poll this."""
    return _state.pending_signal is not None


class native_call:
    """Wrap one llama.cpp call that polls abort_requested(); on leaving, a signal that arrived meanwhile is raised
    as KeyboardInterrupt (and consumed: the next call starts clean)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _state.native_depth += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        _state.native_depth -= 1
        if _state.native_depth == 0 and _state.pending_signal is not None:
            _state.pending_signal = None
            if exc_type is None or not issubclass(exc_type, KeyboardInterrupt):
                raise KeyboardInterrupt
