"""OpenAI's wire format for `qrun serve`: request bodies checked into qrun's terms, and the response objects.

Field names and shapes follow OpenAI's API reference for /v1/chat/completions and /v1/completions (and what the
official `openai` Python client parses). Every problem is a BadRequest that the server answers with OpenAI's
error object: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid

from qrun import registry
from qrun.errors import QrunError
from qrun.runner import formats
from qrun.runner.engine import MAX_SEED
from qrun.text import utf8_problem

MAX_STOP_STRINGS = 4  # OpenAI's limit on `stop`
MAX_TEMPERATURE = 2.0  # OpenAI's range for temperature is 0 to 2
SYSTEM_ROLES = ("system", "developer")  # "developer" is OpenAI's newer name for the system message


class BadRequest(Exception):
    """A request the server answers with an error object (400 unless told)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status
        self.type = "invalid_request_error" if status < 500 else "server_error"


def error_body(message: str, *, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_qrun_error(err: QrunError, *, status: int = 400) -> BadRequest:
    return BadRequest(err.one_line(), status=status)


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:  # json's decoder recurses per nesting level: `[[[[...` deeper than the stack
        raise BadRequest("the request body nests JSON too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _text(value, param: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{param} must be a string", param=param)
    problem = utf8_problem(value)
    if problem:
        raise BadRequest(f"{param} is not valid UTF-8 text: {problem}", param=param)
    return value


def _number(data: dict, key: str, *, low: float, high: float, low_open: bool = False):
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a number, got {value!r}", param=key)
    if value > high or value < low or (low_open and value == low):
        bounds = f"{'above' if low_open else 'from'} {low:g} {'to' if not low_open else 'and at most'} {high:g}"
        raise BadRequest(f"{key} must be {bounds}, got {value}", param=key)
    return float(value)


def _integer(data: dict, key: str, *, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}", param=key)
    if not low <= value <= high:
        raise BadRequest(f"{key} must be from {low} to {high}, got {value}", param=key)
    return value


def model_name(data: dict, served: list[str]) -> str:
    """The canonical name of the model the request names (a name or alias). Raises BadRequest 404."""
    value = data.get("model")
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("model is required: the name of a served model", param="model")
    try:
        name = registry.get(value).name
    except QrunError:
        name = None
    if name not in served:
        raise BadRequest(
            f"the model {value!r} does not exist here; served models: {', '.join(served)}",
            param="model",
            code="model_not_found",
            status=404,
        )
    return name


def sampling(data: dict, *, max_tokens_limit: int, default_max_tokens: int) -> dict:
    """The job's sampling fields: max_tokens, temperature, top_p, top_k (None = the model's default), seed, stop,
    logit_bias, stream, include_usage, return_token_ids."""
    if data.get("n") not in (None, 1):
        raise BadRequest("only n=1 is supported (one llama.cpp context answers one request at a time)", param="n")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    if isinstance(data.get(key), int) and not isinstance(data.get(key), bool) and data[key] < 1:
        raise BadRequest(f"{key} must be at least 1, got {data[key]}", param=key)
    max_tokens = _integer(data, key, low=1, high=max_tokens_limit)
    stop = data.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (_text(stop, "stop"),)
    elif isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS:
        stops = tuple(_text(s, "stop") for s in stop)
    else:
        raise BadRequest(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings", param="stop")
    if any(not s for s in stops):
        raise BadRequest("stop strings must not be empty", param="stop")
    bias = data.get("logit_bias")
    logit_bias = None
    if bias is not None:
        if not isinstance(bias, dict):
            raise BadRequest("logit_bias must map token ids to numbers from -100 to 100", param="logit_bias")
        logit_bias = {}
        for token, value in bias.items():
            if not re.fullmatch(r"[0-9]{1,10}", token) or value is None:
                raise BadRequest(
                    f"logit_bias must map token ids to numbers, got {token!r}: {value!r}", param="logit_bias"
                )
            logit_bias[int(token)] = float(_number({"logit_bias": value}, "logit_bias", low=-100, high=100) or 0.0)
    for flag in ("stream", "return_token_ids"):
        if data.get(flag) is not None and not isinstance(data.get(flag), bool):
            raise BadRequest(f"{flag} must be true or false", param=flag)
    for penalty in ("frequency_penalty", "presence_penalty"):
        # OpenAI's range is -2 to 2; this server's sampling has no such penalty, and 0 is the same as none
        if _number(data, penalty, low=-2, high=2):
            raise BadRequest(f"{penalty} is not supported by qrun serve: leave it out or send 0", param=penalty)
    response_format = data.get("response_format")
    if response_format is not None and response_format not in ({"type": "text"},):
        # json_object and json_schema need constrained decoding, which is not done here: refused, not ignored
        raise BadRequest('only response_format {"type": "text"} is supported', param="response_format")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    return {
        "sampling": {
            "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
            "temperature": _number(data, "temperature", low=0, high=MAX_TEMPERATURE),
            "top_p": _number(data, "top_p", low=0, high=1, low_open=True),
            "top_k": _integer(data, "top_k", low=0, high=1 << 30),
        },
        "seed": _integer(data, "seed", low=0, high=MAX_SEED),
        "stop": stops,
        "logit_bias": logit_bias,
        "stream": bool(data.get("stream")),
        "include_usage": bool(options.get("include_usage")),
        "return_token_ids": bool(data.get("return_token_ids")),
    }


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    param = f"messages[{i}].content"
    if isinstance(content, list):  # content parts: only text parts are something these models can read
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"{param}: only text parts are supported", param=param)
            texts.append(_text(part.get("text"), param))
        return "".join(texts)
    return _text(content, param)


def chat_messages(data: dict, *, chat_format: str) -> tuple[str | None, list[dict]]:
    """(system, user/assistant messages) of a chat request, checked against the model's chat format.
    No system message = the model's own default (Qwen's), as `qrun ask` without --system."""
    for unsupported in ("tools", "functions", "logprobs"):
        if data.get(unsupported):
            raise BadRequest(f"{unsupported} is not supported by qrun serve", param=unsupported)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    system: str | None = None
    turns: list[dict] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role in SYSTEM_ROLES:
            if turns or system is not None:
                raise BadRequest("one system message is allowed, and only first", param=f"messages[{i}].role")
            system = _content(message, i)
        elif role in formats.ROLES:
            turns.append({"role": role, "content": _content(message, i)})
        else:
            raise BadRequest(
                f"messages[{i}].role {role!r} is not supported: use system, user or assistant",
                param=f"messages[{i}].role",
            )
    try:
        formats.segments_for(chat_format, turns, system=system)
    except QrunError as err:
        raise BadRequest(err.one_line(), param="messages") from None
    return system, turns


def completion_prompt(data: dict) -> str:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    for unsupported, harmless in (("echo", (None, False)), ("suffix", (None, "")), ("logprobs", (None,))):
        if data.get(unsupported) not in harmless:
            raise BadRequest(f"{unsupported} is not supported", param=unsupported)
    if data.get("best_of") not in (None, 1):
        raise BadRequest("only best_of=1 is supported", param="best_of")
    text = _text(prompt, "prompt")
    if not text:
        raise BadRequest("prompt is empty", param="prompt")
    return text


# -- responses ------------------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(kind: str, rid: str, model: str, text: str, finish: str, use: dict, extra: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
    body = {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{**choice, "logprobs": None, **extra.get("choice", {})}],
        "usage": use,
    }
    body.update({k: v for k, v in extra.items() if k != "choice"})
    return body


def chunk(kind: str, rid: str, model: str, *, text=None, role=False, finish=None, use=None, extra=None) -> str:
    """One server-sent event of a streamed answer."""
    if use is not None:
        choices = []
    elif kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    body = {
        "id": rid,
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **({"usage": use} if use is not None else {}),
        **(extra or {}),
    }
    return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"


def error_event(message: str, *, code: str) -> str:
    """An error inside a stream: the `openai` client raises APIError for an event carrying "error"."""
    return "data: " + json.dumps(error_body(message, type_="server_error", code=code), ensure_ascii=False) + "\n\n"
