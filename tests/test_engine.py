"""The engine on the tiny real-vocabulary GGUFs: file validation, llama.cpp's own load errors, n_ctx rounding,
reproducible sampling, KV-cache reset, stop ids, control tokens and UTF-8 streaming."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from qrun import registry
from qrun.errors import GGUFError, UsageError
from qrun.gguf_file import read_header
from qrun.runner.engine import Engine, TextStream, aligned_ctx

THREADS = 1  # tests share 2 cores with each other's builds: one thread avoids OpenMP spin-wait collapse
PROMPT = [{"role": "user", "content": "你好，请介绍一下你自己。"}]


@pytest.fixture(scope="module")
def engines(tiny_gguf):
    loaded = {}

    def get(model):
        if model not in loaded:
            loaded[model] = Engine.load(tiny_gguf(model), n_ctx=512, n_threads=THREADS)
        return loaded[model]

    yield get
    for engine in loaded.values():
        engine.close()


# -- file validation ---------------------------------------------------------------------------------------------------


def test_missing_and_non_files_are_refused(tmp_path):
    with pytest.raises(GGUFError, match="not found"):
        Engine.load(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="not a file"):
        Engine.load(tmp_path)
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        Engine.load(text)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        Engine.load(tmp_path / "empty.gguf")


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.001])
def test_truncated_gguf_is_refused_before_llama_cpp(tiny_gguf, tmp_path, keep):
    src = tiny_gguf("deepseek-llm-7b-chat")
    data = src.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFError, match="truncated"):
        Engine.load(cut)


def test_header_of_a_real_tiny_gguf(tiny_gguf):
    path = tiny_gguf("qwen-7b-chat")
    header = read_header(path)
    assert header.metadata["qrun.model"] == "qwen-7b-chat"
    assert header.architecture == "qwen"
    assert path.stat().st_size - 32 < header.data_end_bytes <= path.stat().st_size  # at most the final padding
    manifest = json.loads(path.with_suffix(".json").read_text())  # gguf.GGUFReader takes ~30 s on Qwen's vocab
    assert header.n_tensors == manifest["tensor_count"]


def test_llama_cpp_reason_is_reported(tmp_path):
    # A well-formed, complete GGUF that llama.cpp refuses: no hyperparameters.
    path = tmp_path / "hollow.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("qrun.model", "deepseek-llm-7b-chat")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError) as err:
        Engine.load(path)
    assert "key not found in model: llama." in err.value.one_line()  # llama.cpp's own words


def test_unknown_architecture_is_refused(tmp_path):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="no chat format"):
        Engine.load(path)


# -- context ----------------------------------------------------------------------------------------------------------


def test_ctx_is_rounded_to_a_multiple_of_256_and_prompts_in_the_gap_work(tiny_gguf):
    assert [aligned_ctx(n) for n in (1, 256, 257, 300, 4096)] == [256, 256, 512, 512, 4096]
    with Engine.load(tiny_gguf("deepseek-llm-7b-chat"), n_ctx=300, n_threads=THREADS) as engine:
        assert engine.n_ctx == 512 and engine.n_ctx_requested == 300
        ids = engine.tokenize("数" * 20)
        prompt = [100000] + ids * (400 // len(ids))  # 300 < len < 512: llama-cpp-python 0.3.36 crashed here
        assert 300 < len(prompt) < 512
        generation = engine.generate(prompt, max_tokens=4).run()
        assert generation.stats.prompt_tokens == len(prompt)
        with pytest.raises(UsageError, match="context holds 512"):
            engine.generate([100000] * 600, max_tokens=4)


def test_ctx_above_training_and_below_one_are_refused(tiny_gguf):
    path = tiny_gguf("deepseek-llm-7b-chat")
    trained = read_header(path).context_length
    with pytest.raises(UsageError, match=f"{trained} tokens"):
        Engine.load(path, n_ctx=trained + 256)
    with pytest.raises(UsageError):
        Engine.load(path, n_ctx=0)


# -- sampling ---------------------------------------------------------------------------------------------------------


def test_greedy_is_reproducible_and_the_kv_cache_is_cleared(engines):
    engine = engines("deepseek-llm-7b-chat")
    ids = engine.prompt_ids(PROMPT)
    first = engine.generate(ids, max_tokens=12).run()
    # a different prompt sharing the prefix: Llama.generate would reuse the cache and skip the shared part
    engine.generate(ids[:-2] + engine.tokenize(" other"), max_tokens=5).run()
    again = engine.generate(ids, max_tokens=12).run()
    assert first.token_ids == again.token_ids and first.text == again.text
    assert first.stats.prompt_tokens == again.stats.prompt_tokens == len(ids)


def test_seeded_sampling_is_reproducible_and_differs_by_seed(engines):
    engine = engines("deepseek-llm-7b-chat")
    ids = engine.prompt_ids(PROMPT)
    runs = [
        engine.generate(ids, max_tokens=16, temperature=1.5, top_p=0.95, top_k=0, seed=s).run().token_ids
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("model", registry.names())
def test_generation_stops_at_each_stop_id(model, engines):
    engine = engines(model)
    spec = registry.get(model)
    ids = engine.prompt_ids(PROMPT)
    for text, stop_id in zip(spec.stop_tokens, spec.stop_token_ids):
        generation = engine.generate(ids, max_tokens=20, logit_bias={stop_id: 1000.0})
        pieces = list(generation)
        assert generation.stats.stop_reason == ("eos" if stop_id == engine.eos_id else "stop_token"), text
        assert pieces == [] and generation.text == "" and generation.token_ids == []
        assert generation.stats.gen_tokens == 1


@pytest.mark.parametrize(
    "model, control", [("chatglm3-6b", "[gMASK]"), ("chatglm3-6b", "<|assistant|>"), ("qwen-7b-chat", "<|extra_0|>")]
)
def test_control_tokens_never_reach_the_text(model, control, engines):
    engine = engines(model)
    control_id = engine.token_id(control)
    generation = engine.generate(engine.prompt_ids(PROMPT), max_tokens=5, logit_bias={control_id: 1000.0}).run()
    assert generation.token_ids == [control_id] * 5
    assert generation.text == "" and generation.stats.stop_reason == "max_tokens"


def test_stats_are_filled(engines):
    engine = engines("qwen-7b-chat")
    generation = engine.generate(
        engine.prompt_ids(PROMPT), max_tokens=8, logit_bias={i: -1000.0 for i in engine.stop_ids}
    ).run()
    stats = generation.stats
    assert stats.stop_reason == "max_tokens" and stats.gen_tokens == 8 and len(generation.token_ids) == 8
    for field in ("ttft_s", "prompt_tokens_per_s", "gen_tokens_per_s", "total_s", "peak_rss_bytes"):
        assert getattr(stats, field) > 0, field


# -- UTF-8 streaming --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, text", [("deepseek-llm-7b-chat", "🦙龘"), ("qwen-7b-chat", "🦙龘"), ("chatglm3-6b", "🦙龘")]
)
def test_characters_split_across_tokens_stream_whole(model, text, engines):
    engine = engines(model)
    ids = engine.tokenize(text)
    pieces = [engine.piece(i) for i in ids]
    split = [p for p in pieces if not _is_utf8(p)]
    assert split, f"{text!r} is not split into partial-UTF-8 tokens by this vocabulary: pick another character"
    stream = TextStream()
    out = [stream.feed(p) for p in pieces] + [stream.feed(b"", final=True)]
    assert "".join(out) == text
    assert all("\ufffd" not in o for o in out)


def test_text_stream_starts_at_the_first_visible_character():
    stream = TextStream()
    assert [stream.feed(b) for b in (b"\n", b" ", b" Hi", b" there\n")] == ["", "", "Hi", " there\n"]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
