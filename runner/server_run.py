"""Start and stop `qrun serve`: which models it offers, the listening socket, and uvicorn with clean signals.

uvicorn installs its own SIGINT/SIGTERM handler while it serves (uvicorn/server.py capture_signals): the first
signal asks it to stop accepting and to wait for open responses, a second Ctrl-C to stop waiting. Its handle_exit is
extended here to stop the model pool too (queued requests answered 503, the running generation cancelled at its
next token), so that wait is short. uvicorn then restores the previous handlers and raises the signal again for
them; inside its event loop, qrun's handler (qrun/interrupts.py) would turn that into a KeyboardInterrupt amid the
loop's teardown, so capture_signals here restores the handlers without raising: a stop by signal is the normal end
of a server, exit code 0 and one line saying which signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from qrun import registry, settings
from qrun.errors import NotConvertedError, UsageError
from qrun.gguf_file import read_header
from qrun.runner import resolve
from qrun.runner.engine import spec_for_header
from qrun.runner.server import create_app
from qrun.runner.server_models import ModelPool, Served


def served_models(models, *, quant=None, ggufs_dir=None, as_model=None, notice=lambda _m: None, **load) -> dict:
    """{canonical name: Served} for MODEL names, aliases or .gguf paths; none given = every converted model.

    load: the load-setting flags of qrun.runner.resolve.resolve (threads, threads_batch, repack, use_mmap, ctx,
    flash_attn, kv_type), resolved once here.
    Raises:
        UsageError / UnknownModelError / NotConvertedError / GGUFError: bad flags, names or files.
    """
    if as_model is not None and (len(models) != 1 or not resolve.is_path(models[0])):
        raise UsageError("--as names the model of one .gguf path", "give exactly one .gguf path with --as")
    served: dict[str, Served] = {}
    for model in models or registry.names():
        try:
            gguf, settings_ = resolve.resolve(
                model, quant=quant, ggufs_dir=ggufs_dir, as_model=as_model, notice=notice, **load
            )
        except NotConvertedError:
            if models:
                raise
            continue  # serving every converted model: this one is not
        name = spec_for_header(read_header(gguf), gguf, as_model=as_model).name
        if name in served:
            raise UsageError(f"{name} is named twice ({served[name].gguf} and {gguf})", "serve one GGUF per model")
        served[name] = Served(name, gguf, settings_, as_model)
    if not served:
        folder = settings.gguf_dir(ggufs_dir)
        raise NotConvertedError(
            f"no converted model in {folder}", "run `qrun convert MODEL` first, or name .gguf files to serve"
        )
    return served


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0 = any free port). Raises UsageError when the address is unusable."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UsageError(
            f"cannot listen on {host}: {reason}", "give --host an IP address or a local host name"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {err.strerror}", "pick another --port, or stop what uses it"
        ) from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, pool: ModelPool, on_listen: Callable[[], None]):
        super().__init__(config)
        self.pool, self.on_listen = pool, on_listen
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped_by: str | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            self.on_listen()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        if self.stopped_by is None:
            self.stopped_by = signal.Signals(sig).name
            if self.loop is not None:  # from a signal handler: only schedule (pool.stop takes a lock)
                self.loop.call_soon_threadsafe(self.pool.stop)
        elif sig == signal.SIGINT:
            # a second Ctrl-C: uvicorn stops waiting and skips the app's shutdown, then logs the cancelled lifespan
            # task as an error with its traceback; the user asked for exactly that, so it is not an error
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        super().handle_exit(sig, frame)


def serve(
    served: dict[str, Served],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = 16,
    max_models: int = 0,
    max_tokens_limit: int = settings.DEFAULT_CTX_TOKENS,
    notice: Callable[[str], None] = lambda _m: None,
) -> str | None:
    """Serve until SIGINT or SIGTERM; returns the signal's name ("SIGTERM"), None if uvicorn stopped by itself.

    Raises:
        UsageError: the address cannot be listened on, or a limit is below 1.
    """
    for flag, value, least in (("--max-queue", max_queue, 1), ("--max-tokens-limit", max_tokens_limit, 1)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if max_models < 0:
        raise UsageError(f"--max-models must be 0 (as many as fit in memory) or more, got {max_models}")
    if not 0 <= port <= 65535:  # the socket layer would take 70000 as 70000 % 65536 = 4464 without a word
        raise UsageError(f"--port must be from 0 to 65535, got {port}", "pick a TCP port; 0 = any free one")
    if api_key is not None and not (api_key.strip() and api_key.isascii() and api_key.isprintable()):
        # an empty key would silently serve without one; HTTP headers carry ASCII, so no client could send others
        raise UsageError(
            "--api-key (or QRUN_API_KEY) is empty or not printable ASCII",
            "give a key of ASCII letters, digits and punctuation, or leave it out to ask for none",
        )
    sock = listen_socket(host, port)
    if not is_loopback(host) and not api_key:
        notice(f"note: listening on {host} without --api-key: anyone who reaches this port can use the models")
    pool = ModelPool(served, max_queue=max_queue, max_models=max_models, notice=notice)
    app = create_app(pool, api_key=api_key, max_tokens_limit=max_tokens_limit, log=notice)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def on_listen() -> None:
        notice(f"qrun serve: listening on http://{shown}:{bound_port}/v1 — models: {', '.join(served)}")

    server = _Server(config, pool=pool, on_listen=on_listen)
    try:
        server.run(sockets=[sock])
    finally:
        pool.close()
        sock.close()
    return server.stopped_by
