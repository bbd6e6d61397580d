"""`qrun serve` as users meet it: a real server process on a free loopback port, the official `openai` client, the
tiny GGUFs of the three models, real llama.cpp generation, real disconnects and signals.

Three servers: `main` (all three models, no key, queue of 8), `small` (a key, a queue of 2, one model loaded at a
time) and one per signal test. Long generations suppress the stop tokens with logit_bias so that they run for
seconds on a tiny model.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from serve_helpers import Reply, Server, http

from qrun.cli import main as qrun_main
from qrun.gguf_file import read_header
from qrun.runner.server_memory import fit_loaded, kv_cache_bytes
from qrun.runner.server_models import StopText

MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
ALIASES = {"qwen-7b-chat": "qwen", "chatglm3-6b": "chatglm3", "deepseek-llm-7b-chat": "deepseek"}
LOAD = ["--threads", "1", "--ctx", "512"]
KEY = "s3cret-key"
DEEPSEEK_EOS = "100001"  # <｜end▁of▁sentence｜>: biased away so a generation runs to max_tokens
LONG = {"max_tokens": 3500, "logit_bias": {DEEPSEEK_EOS: -100}}


@pytest.fixture(scope="module")
def ggufs(tiny_gguf, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-ggufs")
    for model in MODELS:
        src = tiny_gguf(model)
        for path in (src, src.with_suffix(".json")):
            if path.exists():
                (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def main(ggufs, tmp_path_factory):
    server = Server(["--ggufs", str(ggufs), *LOAD, "--max-queue", "8"], tmp_path_factory.mktemp("home"))
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def small(ggufs, tmp_path_factory):
    args = ["deepseek", "chatglm3", "--ggufs", str(ggufs), "--threads", "1", "--ctx", "4096"]
    server = Server([*args, "--max-queue", "2", "--max-models", "1"], tmp_path_factory.mktemp("home"), api_key=KEY)
    yield server
    assert server.stop() == 0, server.log()


def qrun_ask(*args) -> dict:
    result = CliRunner().invoke(qrun_main, ["ask", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- listing and exact answers ------------------------------------------------------------------------------------
def test_lists_the_served_models(main):
    client = main.client()
    assert [m.id for m in client.models.list()] == list(MODELS)
    assert client.models.retrieve("qwen").id == "qwen-7b-chat"  # an alias names the canonical model
    health = main.health()
    assert health["status"] == "ok" and health["models"] == list(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_greedy_chat_equals_qrun_ask_streamed_and_not(main, ggufs, model):
    prompt, system, settings = "你好，请介绍一下你自己。", "Be brief.", ["--temperature", "0", "--seed", "7"]
    asked = qrun_ask(ALIASES[model], prompt, "--ggufs", str(ggufs), *LOAD, *settings, "--max-tokens", "16")
    shown = qrun_ask(ALIASES[model], prompt, "--ggufs", str(ggufs), "--show-prompt")
    with_system = qrun_ask(
        ALIASES[model], prompt, "--system", system, "--ggufs", str(ggufs), *LOAD, *settings, "--max-tokens", "16"
    )
    client = main.client()
    messages = [{"role": "user", "content": prompt}]
    request = dict(model=ALIASES[model], messages=messages, temperature=0, seed=7, max_tokens=16)
    answer = client.chat.completions.create(**request, extra_body={"return_token_ids": True})
    assert answer.choices[0].message.content == asked["answer"]
    assert answer.model == model
    assert answer.prompt_token_ids == shown["prompt_token_ids"]  # the opt-in extension: the prompt as run
    assert answer.usage.prompt_tokens == len(shown["prompt_token_ids"])
    assert answer.choices[0].finish_reason == ("length" if asked["stats"]["stop_reason"] == "max_tokens" else "stop")
    stream_options = {"stream": True, "stream_options": {"include_usage": True}}
    chunks = list(client.chat.completions.create(**request, **stream_options, extra_body={"return_token_ids": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == asked["answer"]
    assert chunks[0].prompt_token_ids == shown["prompt_token_ids"]
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    system_request = {**request, "messages": [{"role": "system", "content": system}, *messages]}
    assert client.chat.completions.create(**system_request).choices[0].message.content == with_system["answer"]


def test_raw_completion_and_stop_strings(main):
    client = main.client()
    request = dict(model="deepseek", temperature=0, max_tokens=24, logit_bias={DEEPSEEK_EOS: -100})
    full = client.completions.create(prompt="The weather today", **request)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 24
    assert full.usage.prompt_tokens == 4  # BOS + 3 plain tokens: no chat format around a raw prompt
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.completions.create(prompt="The weather today", stop=[stop, "never appears"], **request)
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(prompt="The weather today", stop=stop, stream=True, **request)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_eight_concurrent_clients_across_models_are_all_answered(main):
    client = main.client()

    def ask(i: int) -> tuple[str, str]:
        model = MODELS[i % 3]
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "1+1=?"}], temperature=0, max_tokens=16
        )
        return model, answer.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    by_model: dict[str, set[str]] = {}
    for model, text in answers:
        by_model.setdefault(model, set()).add(text)
    assert all(len(texts) == 1 for texts in by_model.values()), by_model  # greedy: the same answer each time
    assert sorted(main.health()["loaded"]) == sorted(MODELS)  # tiny models: memory holds all three


# -- bad requests ---------------------------------------------------------------------------------------------------
def _error(response: Reply, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, "seed"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"²": 1}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 101}}, "logit_bias"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ],
)
def test_bad_parameters_get_400_with_openai_error(main, body, param):
    error = _error(http("POST", main.url + "/v1/chat/completions", json_body={"model": "qwen", **body}), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_bad_json_unknown_model_and_limits(main):
    url = main.url + "/v1/chat/completions"
    assert _error(http("POST", url, content=b'{"model": "qwen", '), 400)["code"] == "invalid_json"
    assert _error(http("POST", url, content=b"[1, 2]"), 400)["message"]
    with pytest.raises(openai.NotFoundError) as err:
        main.client().chat.completions.create(model="llama-70b", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found" and all(m in err.value.message for m in MODELS)
    with pytest.raises(openai.BadRequestError) as err:
        main.client().chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert err.value.param == "max_tokens"
    assert "over 1048576 bytes" in _oversized_body(main.url)
    assert _error(http("GET", main.url + "/v1/nothing"), 404)["message"]
    no_such_token = {"model": "deepseek", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"999999": 5}}
    assert "use token ids from 0 to" in _error(http("POST", url, json_body=no_such_token), 400)["message"]
    too_long = {"model": "deepseek", "messages": [{"role": "user", "content": "你好" * 600}]}
    assert "context holds 512" in _error(http("POST", url, json_body=too_long, timeout=60), 400)["message"]


def _oversized_body(url: str) -> str:
    """The answer to a request declaring a 2 MiB body, read before sending it (the server must not wait for it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n{")
        reply = b""
        while b"}}" not in reply:
            data = sock.recv(65536)
            assert data, reply
            reply += data
    assert reply.startswith(b"HTTP/1.1 413 "), reply
    return reply.decode()


def test_metrics_are_prometheus_text(main):
    main.client().chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    text = http("GET", main.url + "/metrics").text
    assert "# TYPE qrun_requests_total counter" in text
    assert re.search(r'qrun_completion_tokens_total\{model="qwen-7b-chat"\} [1-9]', text)
    assert re.search(r'qrun_requests_total\{endpoint="chat",status="400"\} [1-9]', text)
    line = main.wait_for_log("qrun serve: chat qwen-7b-chat")
    assert re.search(r"prompt \d+ tokens, generated \d+ tokens, ttft [\d.]+ s, [\d.]+ tokens/s", line)


# -- key, queue, disconnects, switching ---------------------------------------------------------------------------
def test_api_key_guards_every_endpoint_but_health(small):
    for path in ("/v1/models", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = http("GET", small.url + path, headers=headers)
            assert _error(response, 401)["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        small.client(api_key="wrong").chat.completions.create(model="deepseek", messages=[])
    assert http("GET", small.url + "/health").json()["status"] == "ok"
    assert [m.id for m in small.client().models.list()] == ["deepseek-llm-7b-chat", "chatglm3-6b"]


def test_a_full_queue_answers_429_and_a_disconnect_frees_the_worker(small):
    client = small.client()
    messages = [{"role": "user", "content": "写一首很长的诗"}]
    long_stream = client.chat.completions.create(model="deepseek", messages=messages, stream=True, **LONG)
    next(iter(long_stream))  # the long answer is running
    quick = dict(messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=8)
    with ThreadPoolExecutor(2) as pool:
        # two more wait, one for the other model: its load must not drop the queued deepseek request
        waiting = [pool.submit(client.chat.completions.create, model=m, **quick) for m in ("chatglm3", "deepseek")]
        deadline = time.monotonic() + 30
        while small.health()["queued"] < 2:
            assert time.monotonic() < deadline, small.health()
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model="deepseek", **quick)
        assert err.value.code == "queue_full" and int(err.value.response.headers["retry-after"]) >= 1
        closed_at = time.monotonic()
        long_stream.close()  # the client goes away mid-answer
        answers = [f.result(timeout=60) for f in waiting]
    answered_s = time.monotonic() - closed_at
    assert all(a.choices[0].message.content for a in answers)
    line = small.wait_for_log("cancelled (client disconnected)")
    generated = int(re.search(r"generated (\d+) tokens", line).group(1))
    assert generated < LONG["max_tokens"] / 2, line
    # the rest of the long answer is thousands of tokens; the two queued answers are 8 tokens and one load
    assert answered_s < 10, (answered_s, small.log())
    assert "unloading deepseek-llm-7b-chat to make room for chatglm3-6b" in small.log()  # --max-models 1
    assert re.search(r"qrun_cancelled_total 1\b", http("GET", small.url + "/metrics", headers=_auth()).text)


def test_a_client_that_leaves_before_a_plain_answer_cancels_it(main):
    body = {"model": "deepseek", "messages": [{"role": "user", "content": "写一首很长的诗"}], **LONG}
    data = json.dumps(body).encode()
    host, port = main.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        sock.sendall(head.encode() + data)
        deadline = time.monotonic() + 30
        while main.health()["running"] != "deepseek-llm-7b-chat":
            assert time.monotonic() < deadline, main.log()
            time.sleep(0.01)
    line = main.wait_for_log("cancelled (client disconnected)")
    assert int(re.search(r"generated (\d+) tokens", line).group(1)) < 400, line  # the context allows ~500


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


# -- signals ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_stream_cancels_it_and_exits_cleanly(ggufs, tmp_path, sig):
    args = ["deepseek", "--ggufs", str(ggufs), "--threads", "1", "--ctx", "4096", "--api-key", "flag-key"]
    server = Server(args, tmp_path)
    client = server.client(api_key="flag-key")
    messages = [{"role": "user", "content": "写一首很长的诗"}]
    stream = client.chat.completions.create(model="deepseek", messages=messages, stream=True, **LONG)
    received = [next(iter(stream))]
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(client.chat.completions.create, model="deepseek", messages=messages, max_tokens=4)
        while server.health()["queued"] < 1:
            time.sleep(0.02)
        t0 = time.monotonic()
        server.proc.send_signal(sig)
        with pytest.raises(openai.APIError) as err:
            received.extend(stream)
        assert "server stopping" in err.value.message
        with pytest.raises(openai.InternalServerError) as queued_err:  # 503: queued work is answered, not dropped
            queued.result(timeout=30)
        assert queued_err.value.status_code == 503
    assert server.stop(None) == 0, server.log()
    assert time.monotonic() - t0 < 10
    assert len(received) < LONG["max_tokens"] / 2
    assert "cancelled (server stopping)" in server.log()
    assert server.lines[-1] == f"qrun serve: stopped ({signal.Signals(sig).name})"
    assert "Traceback" not in server.log()


def test_bad_flags_are_one_error_line(ggufs, tmp_path):
    for args, needle in (
        (["llama-70b"], "unknown model"),
        (["qwen", "--ggufs", str(tmp_path)], "qrun convert qwen-7b-chat"),
        (["--ggufs", str(tmp_path)], "no converted model"),
        (["deepseek", "--ggufs", str(ggufs), "--max-queue", "0"], "--max-queue"),
        (["deepseek", "--ggufs", str(ggufs), "--host", "256.1.1.1"], "cannot listen"),
    ):
        result = CliRunner().invoke(qrun_main, ["serve", *args, "--port", "0"])
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (args, lines)


# -- the pieces without a server ------------------------------------------------------------------------------------
def test_stop_strings_hold_back_only_what_could_start_one():
    stop = StopText(("END", "\n\n"))
    assert stop.feed("Hello E") == ("Hello ", False)  # "E" may begin "END"
    assert stop.feed("N") == ("", False)
    assert stop.feed("X more\n") == ("ENX more", False)
    assert stop.feed("\nafter") == ("", True)  # the stop string and what follows are not part of the answer
    assert StopText(()).feed("anything") == ("anything", False)
    tail = StopText(("END",))
    assert tail.feed("ab EN") == ("ab ", False) and tail.flush() == "EN"  # the answer ended: held text is sent


def test_memory_rule_unloads_least_recently_used_until_the_new_model_fits():
    gib = 1 << 30
    loaded = [("qwen-7b-chat", 6 * gib), ("chatglm3-6b", 5 * gib)]  # least recently used first
    assert fit_loaded(loaded, 6 * gib, free_bytes=20 * gib, max_models=0) == []  # 6 + 5 + 6 + 1 reserve <= 20
    assert fit_loaded(loaded, 6 * gib, free_bytes=16 * gib, max_models=0) == ["qwen-7b-chat"]  # 5 + 6 + 1 <= 16
    assert fit_loaded(loaded, 6 * gib, free_bytes=8 * gib, max_models=0) == ["qwen-7b-chat", "chatglm3-6b"]
    assert fit_loaded(loaded, 1 * gib, free_bytes=64 * gib, max_models=2) == ["qwen-7b-chat"]
    assert fit_loaded([], 99 * gib, free_bytes=8 * gib, max_models=0) == []  # too big even alone: loaded anyway


def test_kv_cache_size_from_the_gguf_shape(tiny_gguf):
    header = read_header(tiny_gguf("chatglm3-6b"))  # 2 layers, 2 KV heads of 64 (multi-query groups)
    assert kv_cache_bytes(header, n_ctx=512, kv_type="f16") == 2 * 512 * 2 * (64 + 64) * 2


@pytest.mark.slow
def test_sigterm_stops_a_long_prompt_evaluation_inside_llama_cpp(tiny_models, tmp_path):
    """A 3,200-token prompt on a 6-layer, 512-wide shape takes seconds on one thread inside llama_decode calls of 512
    tokens (tests/test_interrupt.py measures it): the cancel must reach into the call, not wait for the next token."""
    gguf = tiny_models.shaped_gguf(
        "long-prompt",
        "deepseek-llm-7b-chat",
        {"hidden_size": 512, "num_hidden_layers": 6, "intermediate_size": 1408},
        "Q4_0",
    )
    server = Server([str(gguf), "--threads", "1", "--ctx", "4096"], tmp_path)
    prompt = "你好，世界。今天天气怎么样？" * 400
    stream = server.client().chat.completions.create(
        model="deepseek", messages=[{"role": "user", "content": prompt}], stream=True, max_tokens=4
    )
    next(iter(stream))  # the role chunk: sent once the prompt is built, before llama.cpp evaluates it
    time.sleep(1.0)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(openai.APIError):
        list(stream)
    assert server.stop(None) == 0, server.log()
    assert time.monotonic() - t0 < 2.0, server.log()
    line = server.wait_for_log("cancelled (server stopping)")
    assert "generated 0 tokens" in line, line
