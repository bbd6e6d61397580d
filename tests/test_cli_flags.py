"""How the flags of `qrun ask/chat/bench/convert/tune` become library calls (no model is loaded).

In the style of huggingface_hub's tests/test_cli.py (TestDownloadCommand): the library function each command drives
is replaced where the command looks it up, and the test asserts the exact arguments it received. The library
functions themselves are tested with real models elsewhere (test_ask.py, test_chat.py, test_bench.py, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

import qrun.bench.run as bench_run
import qrun.bench.tune as tune_lib
import qrun.convert.cli as convert_cli
import qrun.runner.cli as runner_cli
from qrun import registry, settings
from qrun.bench import cli as bench_cli
from qrun.bench import tune_cli
from qrun.cli import main

# Every load flag given, in its non-default form, and what the library must receive for it.
LOAD_FLAGS = [
    "--threads",
    "3",
    "--threads-batch",
    "5",
    "--repack",
    "--no-mmap",
    "--flash-attn",
    "--kv-type",
    "q8_0",
    "--ctx",
    "1000",
    "--quant",
    "Q8_0",
    "--ggufs",
    "some/ggufs",
]
LOAD_KWARGS = dict(
    threads=3,
    threads_batch=5,
    repack=True,
    use_mmap=False,
    flash_attn=True,
    kv_type="q8_0",
    ctx=1000,
    quant="Q8_0",
    ggufs_dir="some/ggufs",
)
DEFAULT_LOAD_KWARGS = dict(
    threads=None,
    threads_batch=None,
    repack=None,
    use_mmap=None,
    flash_attn=None,
    kv_type=None,
    ctx=None,
    quant=None,
    ggufs_dir=None,
)
# The "off" spelling of each boolean flag: an explicit False, not None (None lets the profile decide).
OFF_FLAGS = ["--no-repack", "--mmap", "--no-flash-attn"]
OFF_KWARGS = dict(repack=False, use_mmap=True, flash_attn=False)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def patch_call(monkeypatch, cli_module, lib_module, name: str, **mock_kwargs) -> mock.Mock:
    """Replace lib_module.<name> with a Mock, and cli_module.<name> too when the command imported the name itself
    (`from lib import name` binds it in the CLI module; `import lib` or a call-time import looks it up in lib)."""
    fake = mock.Mock(**mock_kwargs)
    if getattr(cli_module, name, None) is getattr(lib_module, name):
        monkeypatch.setattr(cli_module, name, fake)
    monkeypatch.setattr(lib_module, name, fake)
    return fake


def assert_one_error_line(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0]


# --- qrun ask -----------------------------------------------------------------------------------------------------
ASK_RESULT = {
    "answer": "你好",
    "model": "qwen-7b-chat",
    "gguf": "x.gguf",
    "sha256": None,
    "settings": {},
    "stats": {
        "load_s": 0.1,
        "prompt_tokens": 3,
        "prompt_tokens_per_s": 30.0,
        "ttft_s": 0.1,
        "gen_tokens": 2,
        "gen_tokens_per_s": 20.0,
        "peak_rss_bytes": 1 << 20,
        "peak_anon_bytes": 1 << 20,
        "stop_reason": "eos",
    },
}


@pytest.fixture
def ask(monkeypatch):
    return patch_call(monkeypatch, runner_cli, runner_cli.ask_lib, "ask", return_value=ASK_RESULT)


def _ask_call(**overrides) -> mock._Call:
    kwargs = dict(
        system=None,
        max_tokens=None,
        temperature=None,
        top_p=None,
        top_k=None,
        seed=settings.DEFAULT_SEED,
        **DEFAULT_LOAD_KWARGS,
        truncate=False,
        with_sha256=False,
        on_text=mock.ANY,
        notice=mock.ANY,
        as_model=None,
    )
    kwargs.update(overrides)
    return mock.call("qwen", "你好", **kwargs)


def test_ask_defaults_leave_every_setting_to_the_library(ask):
    result = invoke("ask", "qwen", "你好")
    assert result.exit_code == 0, result.output
    assert ask.call_args_list == [_ask_call()]
    assert callable(ask.call_args.kwargs["on_text"])  # streamed: the answer goes out as it is generated


def test_ask_passes_every_load_flag(ask):
    result = invoke("ask", "qwen", "你好", *LOAD_FLAGS)
    assert result.exit_code == 0, result.output
    assert ask.call_args_list == [_ask_call(**LOAD_KWARGS)]


def test_ask_off_flags_are_explicit_false_not_unset(ask):
    result = invoke("ask", "qwen", "你好", *OFF_FLAGS)
    assert result.exit_code == 0, result.output
    assert ask.call_args_list == [_ask_call(**OFF_KWARGS)]


def test_ask_sampling_and_output_flags(ask):
    result = invoke(
        "ask",
        "qwen",
        "你好",
        "--system",
        "简短",
        "--max-tokens",
        "7",
        "--temperature",
        "0",
        "--top-p",
        "0.5",
        "--top-k",
        "4",
        "--seed",
        "9",
        "--truncate",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert ask.call_args_list == [
        _ask_call(
            system="简短",
            max_tokens=7,
            temperature=0.0,
            top_p=0.5,
            top_k=4,
            seed=9,
            truncate=True,
            with_sha256=True,
            on_text=None,
        )
    ]
    assert json.loads(result.stdout) == ASK_RESULT


def test_ask_zero_threads_is_passed_on_as_zero(ask):
    """0 = "the default" is the library's rule (resolve.check_threads), not the command's."""
    assert invoke("ask", "qwen", "你好", "--threads", "0", "--threads-batch", "0").exit_code == 0
    assert ask.call_args_list == [_ask_call(threads=0, threads_batch=0)]


def test_ask_bad_number_is_one_error_line_and_no_call(ask):
    result = invoke("ask", "qwen", "你好", "--threads", "two")
    assert_one_error_line(result, "--threads", "'two'")
    ask.assert_not_called()


# --- qrun chat ----------------------------------------------------------------------------------------------------
@pytest.fixture
def chat(monkeypatch):
    engine = mock.MagicMock(spec=["spec", "__enter__", "__exit__"])
    engine.spec = registry.get("qwen")
    engine.__enter__.return_value = engine
    load_engine = patch_call(monkeypatch, runner_cli, runner_cli.ask_lib, "load_engine", return_value=engine)
    session = patch_call(monkeypatch, runner_cli, runner_cli.chat_lib, "ChatSession")
    run_chat = patch_call(monkeypatch, runner_cli, runner_cli.chat_lib, "run_chat")
    return load_engine, session, run_chat, engine


def _chat_load_call(**overrides) -> mock._Call:
    kwargs = dict(**DEFAULT_LOAD_KWARGS, seed=settings.DEFAULT_SEED, notice=mock.ANY, as_model=None)
    kwargs.update(overrides)
    return mock.call("qwen", **kwargs)


def test_chat_defaults(chat):
    load_engine, session, run_chat, engine = chat
    result = invoke("chat", "qwen")
    assert result.exit_code == 0, result.output
    assert load_engine.call_args_list == [_chat_load_call()]
    generation = registry.get("qwen").generation
    assert session.call_args_list == [
        mock.call(
            engine,
            system=None,
            seed=settings.DEFAULT_SEED,
            notice=mock.ANY,
            sampling=dict(
                max_tokens=generation.max_tokens,
                temperature=generation.temperature,
                top_p=generation.top_p,
                top_k=generation.top_k,
            ),
        )
    ]
    # stdin is read as bytes and decoded by qrun (a bad byte is one error line, not the end of the session)
    assert run_chat.call_args_list == [mock.call(session.return_value, stdin=mock.ANY, log=mock.ANY)]
    engine.__exit__.assert_called_once()  # the model is freed when the chat ends


def test_chat_passes_every_load_flag_and_sampling_flag(chat):
    load_engine, session, _, engine = chat
    result = invoke(
        "chat",
        "qwen",
        *LOAD_FLAGS,
        "--system",
        "你是助手",
        "--max-tokens",
        "9",
        "--temperature",
        "0.3",
        "--top-p",
        "0.9",
        "--top-k",
        "5",
        "--seed",
        "7",
    )
    assert result.exit_code == 0, result.output
    assert load_engine.call_args_list == [_chat_load_call(**LOAD_KWARGS, seed=7)]
    assert session.call_args_list == [
        mock.call(
            engine,
            system="你是助手",
            seed=7,
            notice=mock.ANY,
            sampling=dict(max_tokens=9, temperature=0.3, top_p=0.9, top_k=5),
        )
    ]


def test_chat_off_flags(chat):
    load_engine = chat[0]
    assert invoke("chat", "qwen", *OFF_FLAGS).exit_code == 0
    assert load_engine.call_args_list == [_chat_load_call(**OFF_KWARGS)]


def test_chat_bad_sampling_flag_fails_before_loading(chat):
    load_engine = chat[0]
    result = invoke("chat", "qwen", "--top-p", "0")
    assert_one_error_line(result, "--top-p")
    load_engine.assert_not_called()


# --- qrun bench ---------------------------------------------------------------------------------------------------
@pytest.fixture
def run_bench(monkeypatch):
    return patch_call(monkeypatch, bench_cli, bench_run, "run_bench", return_value={"runs": []})


def _bench_config(run_bench) -> bench_run.BenchConfig:
    assert run_bench.call_count == 1
    (config,), kwargs = run_bench.call_args
    assert set(kwargs) == {"force"}
    return config


def test_bench_defaults(run_bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("bench")
    assert result.exit_code == 0, result.output
    assert _bench_config(run_bench) == bench_run.BenchConfig(
        models=[],
        quant=None,
        suite=settings.DEFAULT_SUITE,
        threads=[],
        repeat=1,
        max_tokens=512,
        n_ctx=None,
        ggufs_dir=None,
        out_dir="bench-results",
        verdicts=None,
        use_mmap=None,
        extra_settings={},
        command="qrun bench",
    )
    assert run_bench.call_args.kwargs == {"force": False}


def test_bench_passes_every_load_flag(run_bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "qwen",
        "chatglm3",
        "--threads",
        "1,2",
        "--threads-batch",
        "5",
        "--repack",
        "--no-mmap",
        "--flash-attn",
        "--kv-type",
        "Q8_0",
        "--ctx",
        "1000",
        "--quant",
        "q4_k_m",
        "--ggufs",
        "g",
        "--suite",
        "s.json",
        "--repeat",
        "3",
        "--max-tokens",
        "64",
        "--out",
        "o",
        "--force",
        "--verdicts",
        "v.csv",
    ]
    result = invoke("bench", *args)
    assert result.exit_code == 0, result.output
    assert _bench_config(run_bench) == bench_run.BenchConfig(
        models=["qwen", "chatglm3"],
        quant="Q4_K_M",
        suite="s.json",
        threads=[1, 2],
        repeat=3,
        max_tokens=64,
        n_ctx=1000,
        ggufs_dir="g",
        out_dir="o",
        verdicts="v.csv",
        use_mmap=False,
        extra_settings={"n_threads_batch": 5, "repack": True, "flash_attn": True, "kv_type": "q8_0"},
        command="qrun bench " + " ".join(args),
    )
    assert run_bench.call_args.kwargs == {"force": True}


def test_bench_off_flags_are_recorded_as_false(run_bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("bench", *OFF_FLAGS).exit_code == 0
    config = _bench_config(run_bench)
    assert config.use_mmap is True
    assert config.extra_settings == {"repack": False, "flash_attn": False}


def test_bench_zero_threads_means_physical_cores(run_bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("bench", "--threads", "0,1", "--threads-batch", "0").exit_code == 0
    config = _bench_config(run_bench)
    assert config.threads == [settings.physical_cores(), 1]
    assert config.extra_settings == {}  # --threads-batch 0 = same as --threads: not a setting of its own


@pytest.mark.parametrize(
    "args, words",
    [
        (["--threads", "1,x"], ["--threads", "'x'"]),
        (["--kv-type", "q4"], ["--kv-type", "'q4'"]),
        (["--threads-batch", "-1"], ["--threads-batch"]),
    ],
)
def test_bench_bad_flag_is_one_error_line_and_no_run(run_bench, args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(invoke("bench", *args), *words)
    run_bench.assert_not_called()


# --- qrun convert -------------------------------------------------------------------------------------------------
def _convert_result(model, quant):
    return {
        "model": model,
        "quant": quant,
        "size_bytes": 1000,
        "bits_per_weight": 4.5,
        "path": f"{model}.gguf",
        "status": "converted",
        "steps": {},
    }


@pytest.fixture
def convert_model(monkeypatch):
    return patch_call(
        monkeypatch,
        convert_cli,
        convert_cli,
        "convert_model",
        side_effect=lambda name, **kw: _convert_result(name, kw["quant"]),
    )


def _convert_call(model, **overrides) -> mock._Call:
    kwargs = dict(
        from_dir=None,
        source="modelscope",
        revision=None,
        quant=settings.DEFAULT_QUANT,
        out_dir=None,
        keep_f16=False,
        threads=None,
        progress=mock.ANY,
    )
    kwargs.update(overrides)
    return mock.call(model, **kwargs)


def test_convert_defaults_convert_all_three_models(convert_model):
    result = invoke("convert")
    assert result.exit_code == 0, result.output
    assert convert_model.call_args_list == [_convert_call(spec.name) for spec in registry.MODELS]


def test_convert_passes_every_flag(convert_model, tmp_path):
    result = invoke(
        "convert",
        "qwen",
        "--from",
        str(tmp_path),
        "--quant",
        "q8_0",
        "--ggufs",
        "out",
        "--keep-f16",
        "--threads",
        "3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert convert_model.call_args_list == [
        _convert_call("qwen-7b-chat", from_dir=str(tmp_path), quant="Q8_0", out_dir="out", keep_f16=True, threads=3)
    ]
    assert json.loads(result.stdout) == [_convert_result("qwen-7b-chat", "Q8_0")]


def test_convert_out_is_the_old_name_of_ggufs(convert_model):
    result = invoke("convert", "qwen", "--out", "out")
    assert result.exit_code == 0, result.output
    assert convert_model.call_args_list == [_convert_call("qwen-7b-chat", out_dir="out")]
    assert result.stderr.splitlines() == [
        "note: `qrun convert --out` is now --ggufs, as in every other command; --out still works"
    ]
    # both, naming the same folder, is fine; two folders is one error line and nothing converted
    assert invoke("convert", "qwen", "--out", "out", "--ggufs", "out").exit_code == 0
    convert_model.reset_mock()
    assert_one_error_line(invoke("convert", "qwen", "--out", "a", "--ggufs", "b"), "--out", "--ggufs")
    convert_model.assert_not_called()


def test_convert_hub_flags_and_aliases(convert_model):
    result = invoke("convert", "deepseek", "chatglm3", "deepseek-llm-7b-chat", "--source", "hf", "--revision", "v1")
    assert result.exit_code == 0, result.output
    # aliases resolve to the canonical name, and a model named twice is converted once
    assert convert_model.call_args_list == [
        _convert_call(name, source="hf", revision="v1") for name in ("deepseek-llm-7b-chat", "chatglm3-6b")
    ]


@pytest.mark.parametrize(
    "args, words",
    [
        (["qwen", "--quant", "Q3"], ["Q3"]),
        (["qwen", "--source", "ftp"], ["--source", "'ftp'"]),
        (["qwen", "chatglm3", "--from", "."], ["--from", "exactly one MODEL"]),
        (["qwen", "--threads", "-1"], ["--threads"]),
        (["qwen", "--quant", "BF16", "--keep-f16"], ["--keep-f16"]),
    ],
)
def test_convert_bad_flag_is_one_error_line_and_no_call(convert_model, args, words):
    assert_one_error_line(invoke("convert", *args), *words)
    convert_model.assert_not_called()


# --- qrun tune ----------------------------------------------------------------------------------------------------
@pytest.fixture
def run_tune(monkeypatch, tmp_path):
    return patch_call(
        monkeypatch, tune_cli, tune_lib, "run_tune", return_value=({"models": {}}, Path(tmp_path) / "profile.json")
    )


def _tune_call(*models, **overrides) -> mock._Call:
    kwargs = dict(
        quants=None,
        threads=None,
        threads_batch=None,
        repack=None,
        use_mmap=None,
        flash_attn=None,
        kv_types=None,
        repeat=3,
        force=False,
        ggufs_dir=None,
        command=mock.ANY,
    )
    kwargs.update(overrides)
    return mock.call(tuple(models), **kwargs)


def test_tune_defaults(run_tune):
    result = invoke("tune")
    assert result.exit_code == 0, result.output
    assert run_tune.call_args_list == [_tune_call()]


def test_tune_passes_every_flag(run_tune):
    result = invoke(
        "tune",
        "qwen",
        "deepseek",
        "--quant",
        "Q4_0,Q4_K_M",
        "--quant",
        "Q8_0",
        "--threads",
        "1,2",
        "--threads-batch",
        "2",
        "--repack",
        "--no-mmap",
        "--repeat",
        "5",
        "--force",
        "--ggufs",
        "g",
    )
    assert result.exit_code == 0, result.output
    assert run_tune.call_args_list == [
        _tune_call(
            "qwen",
            "deepseek",
            quants=["Q4_0", "Q4_K_M", "Q8_0"],
            threads=[1, 2],
            threads_batch=[2],
            repack=True,
            use_mmap=False,
            repeat=5,
            force=True,
            ggufs_dir="g",
        )
    ]


def test_tune_off_flags_measure_only_that_setting(run_tune):
    assert invoke("tune", "--no-repack", "--mmap").exit_code == 0
    assert run_tune.call_args_list == [_tune_call(repack=False, use_mmap=True)]


@pytest.mark.parametrize("flag", ["--threads", "--threads-batch"])
def test_tune_bad_thread_list_is_one_error_line_and_no_run(run_tune, flag):
    assert_one_error_line(invoke("tune", flag, "0,2"), flag, "'0,2'")
    run_tune.assert_not_called()
