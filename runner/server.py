"""`qrun serve`'s ASGI app (starlette, run by uvicorn): OpenAI's chat and completions endpoints over qrun's runner.

Prompts are built by the runner's chat formats (Engine.prompt_ids), never by a GGUF's template; generation is
Engine.generate on the worker thread of qrun.runner.server_models. This module only speaks HTTP: it checks keys
and bodies (runner/server_api.py), queues a Job, and turns the worker's events into a JSON answer or server-sent
events. A client that goes away cancels its job (watched while it waits and while it streams).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from qrun import registry, settings
from qrun.errors import PromptError, QrunError, UsageError
from qrun.runner import server_api as api
from qrun.runner.server_metrics import Metrics
from qrun.runner.server_models import Job, ModelPool, QueueFull, ShuttingDown

MAX_BODY_BYTES = 1 << 20  # a 32k-token context of Chinese text is ~100 KB of UTF-8; 1 MiB leaves room for JSON


def _error(err: api.BadRequest, headers: dict | None = None) -> JSONResponse:
    body = api.error_body(err.message, type_=err.type, param=err.param, code=err.code)
    return JSONResponse(body, status_code=err.status, headers=headers)


def create_app(
    pool: ModelPool,
    *,
    api_key: str | None = None,
    max_tokens_limit: int,
    max_body_bytes: int = MAX_BODY_BYTES,
    log: Callable[[str], None] = lambda _m: None,
) -> Starlette:
    """The app. pool.start() runs at startup and pool.close() at shutdown (the app's lifespan)."""
    metrics = Metrics(log)
    pool.on_done = metrics.done
    names = list(pool.served)
    key = api_key.encode("utf-8") if api_key else None

    def authorized(request: Request) -> bool:
        if key is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), key)

    def guarded(endpoint: str, handler):
        async def run(request: Request) -> Response:
            try:
                if not authorized(request):
                    raise api.BadRequest(
                        "a valid API key is required: send Authorization: Bearer <key>",
                        code="invalid_api_key",
                        status=401,
                    )
                response = await handler(request)
            except api.BadRequest as err:
                extra = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
                if err.status == 429:
                    extra = {"Retry-After": str(pool.retry_after_s())}
                response = _error(err, extra)
            metrics.count(endpoint, response.status_code)
            return response

        return run

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": names, **pool.status()})

    async def list_models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(n) for n in names]})

    async def get_model(request: Request) -> Response:
        return JSONResponse(_model_card(api.model_name({"model": request.path_params["model"]}, names)))

    async def metrics_text(_request: Request) -> Response:
        text = metrics.render({**pool.status(), "loads_total": pool.loads_total})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        too_big = api.BadRequest(f"the request body is over {max_body_bytes} bytes", status=413)
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise too_big
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > max_body_bytes:
                raise too_big
        return api.parse_json(bytes(body))

    async def generate(request: Request, kind: str) -> Response:
        data = await read_json(request)
        name = api.model_name(data, names)
        spec = registry.get(name)
        limits = {
            "max_tokens_limit": max_tokens_limit,
            "default_max_tokens": min(spec.generation.max_tokens, max_tokens_limit),
        }
        params = api.sampling(data, **limits)
        seed = settings.DEFAULT_SEED if params["seed"] is None else params["seed"]  # `qrun ask`'s default too
        job = Job(name, asyncio.get_running_loop(), kind=kind, seed=seed, stop=params["stop"])
        job.sampling, job.logit_bias = params["sampling"], params["logit_bias"]
        if kind == "chat":
            job.system, job.messages = api.chat_messages(data, chat_format=spec.chat_format)
        else:
            job.text = api.completion_prompt(data)
        try:
            pool.submit(job)
        except QueueFull as err:
            raise api.BadRequest(err.one_line(), code="queue_full", status=429) from None
        except ShuttingDown as err:
            raise api.BadRequest(err.one_line(), code="server_stopping", status=503) from None
        gone = asyncio.ensure_future(_disconnected(request))
        over = False  # the worker is done with the job, or the stream owns it (and cancels it if it ends early)
        try:
            first = await _next_event(job, gone)
            if first is None:
                return Response(status_code=499)  # nobody reads it: the connection is closed
            over = first[0] == "error"
            _raise_for(first)
            rid, extra = api.new_id(kind), {}
            if params["return_token_ids"]:
                extra["prompt_token_ids"] = first[1]["prompt_ids"]
            if params["stream"]:
                gone.cancel()  # StreamingResponse listens for the disconnect itself from here
                stream = _sse(pool, job, kind, rid, extra, include_usage=params["include_usage"])
                over = True
                return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            parts = []
            while True:
                event = await _next_event(job, gone)
                if event is None:
                    return Response(status_code=499)
                over = event[0] in ("end", "error")
                _raise_for(event)
                if event[0] == "text":
                    parts.append(event[1])
                elif event[0] == "end":
                    end = event[1]
                    if end["cancelled"]:
                        raise api.BadRequest(f"the answer was cut: {end['cancelled']}", code="cancelled", status=503)
                    if params["return_token_ids"]:
                        extra["choice"] = {"token_ids": end["token_ids"]}
                    use = api.usage(end["prompt_tokens"], end["completion_tokens"])
                    return JSONResponse(api.response(kind, rid, name, "".join(parts), end["finish_reason"], use, extra))
        finally:
            gone.cancel()
            if not over:  # the client left, or this handler was cancelled: the job must not run on for nobody
                pool.cancel(job, "client disconnected")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    @asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            await asyncio.to_thread(pool.close)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"no route {request.method} {request.url.path}" if status in (404, 405) else str(exc)
        return _error(api.BadRequest(message, status=status))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", guarded("models", list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", guarded("models", get_model), methods=["GET"]),
        Route("/metrics", guarded("metrics", metrics_text), methods=["GET"]),
        Route("/v1/chat/completions", guarded("chat", chat), methods=["POST"]),
        Route("/v1/completions", guarded("completions", completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})


def _model_card(name: str) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "qrun",
        "aliases": list(registry.get(name).aliases),
    }


def _raise_for(event: tuple) -> None:
    """An "error" event from the worker as the HTTP error it means."""
    if event[0] != "error":
        return
    err = event[1]
    if isinstance(err, ShuttingDown):
        raise api.BadRequest(err.one_line(), code="server_stopping", status=503)
    if isinstance(err, PromptError | UsageError):  # the request's messages or options
        raise api.from_qrun_error(err)
    # the server's side: a GGUF that no longer loads, or a bug
    raise api.BadRequest(err.one_line() if isinstance(err, QrunError) else str(err), status=500)


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (ASGI http.disconnect), after the body was read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next_event(job: Job, gone: asyncio.Future) -> tuple | None:
    """The worker's next event for job, or None once the client is gone."""
    get = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    return None


async def _sse(pool: ModelPool, job: Job, kind: str, rid: str, extra: dict, *, include_usage: bool):
    """The answer as server-sent events; ends with `data: [DONE]`. Closed early (the client left): cancel."""
    finished = False
    try:
        yield api.chunk(kind, rid, job.model, role=True, extra=extra)
        while True:
            event, value = await job.events.get()
            if event == "text" and value:
                yield api.chunk(kind, rid, job.model, text=value)
            elif event == "error":
                finished = True
                yield api.error_event(value.one_line(), code="generation_failed")
                return
            elif event == "end":
                finished = True
                if value["cancelled"]:
                    yield api.error_event(f"the answer was cut: {value['cancelled']}", code="cancelled")
                    return
                yield api.chunk(kind, rid, job.model, finish=value["finish_reason"])
                if include_usage:
                    use = api.usage(value["prompt_tokens"], value["completion_tokens"])
                    yield api.chunk(kind, rid, job.model, use=use)
                yield "data: [DONE]\n\n"
                return
    finally:
        if not finished:
            pool.cancel(job, "client disconnected")
