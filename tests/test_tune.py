"""`qrun tune` and its profile: the grid, the choice rule, a real tiny tune run, and how loaders use the profile."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from qrun import measure
from qrun.bench import tune
from qrun.bench.tune_cli import tune_cmd
from qrun.cli import main
from qrun.errors import BenchError
from qrun.runner import profile

MODEL = "deepseek-llm-7b-chat"


# -- grid and schedule ---------------------------------------------------------------------------------------------
def test_grid_is_every_combination():
    grid = tune.make_grid(quants=["Q4_0", "Q4_K_M"], repack=(False, True), use_mmap=(True, False), threads=(1, 2))
    # x 3 attention settings: no flash attention (f16 KV), flash attention with f16 or q8_0 KV
    assert len(grid) == 2 * 2 * 2 * 2 * 2 * 3
    assert len({tune.point_id(p) for p in grid}) == len(grid)
    assert grid[0] == {
        "quant": "Q4_0",
        "repack": False,
        "use_mmap": True,
        "n_threads": 1,
        "n_threads_batch": 1,
        "flash_attn": False,
        "kv_type": "f16",
    }
    assert not any(p["kv_type"] == "q8_0" and not p["flash_attn"] for p in grid)


def test_schedule_interleaves_repetitions_and_rotates_the_start():
    order = tune.schedule(["a", "b", "c"], 2)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0)]


def test_default_threads_never_exceed_the_cores():
    assert tune.default_threads_values(2) == [1, 2]
    assert tune.default_threads_values(1) == [1]


# -- choice rule on synthetic measurements ---------------------------------------------------------------------------
def _point(quant="Q4_K_M", repack=False, mmap=True, t=2, tb=2):
    return {
        "quant": quant,
        "repack": repack,
        "use_mmap": mmap,
        "n_threads": t,
        "n_threads_batch": tb,
        "flash_attn": False,
        "kv_type": "f16",
    }


NO_FLASH_ATTN = ((False, "f16"),)


def _run(gen, pp, rss_mib, anon_mib=50, load_s=0.5):
    return {
        "chat.gen_tokens_per_s": gen,
        "prompt.prompt_tokens_per_s": pp,
        "peak_rss_bytes": rss_mib << 20,
        "peak_anon_bytes": anon_mib << 20,
        "load_s": load_s,
        "loadavg_1m": 0.1,
    }


def test_summary_has_median_and_spread():
    s = tune.summarize(_point(), [_run(10, 30, 100), _run(12, 31, 100), _run(11, 35, 100)], None)
    assert s["status"] == "ok" and s["n"] == 3
    assert s["chat.gen_tokens_per_s"] == {"median": 11, "min": 10, "max": 12, "spread": 2, "values": [10, 12, 11]}
    assert s["noise"] == {"samples": 3, "noisy": 0, "unknown": 3}  # these fake runs carry no noise verdict
    assert s["loadavg_1m"] == [0.1, 0.1, 0.1]


def test_choice_per_workload_ties_go_to_less_memory_and_failures_never_win():
    fast_fat = tune.summarize(_point(repack=True), [_run(10.0, 20, 7000), _run(10.4, 21, 7000)], None)
    close_lean = tune.summarize(_point(), [_run(9.6, 35, 4200), _run(10.1, 36, 4200)], None)  # ranges overlap
    slow = tune.summarize(_point(t=1, tb=1), [_run(6.0, 18, 4100), _run(6.1, 18.5, 4100)], None)
    crashed = tune.summarize(_point(mmap=False), [], "SIGILL")
    chat = tune.choose([fast_fat, close_lean, slow, crashed], "chat")
    assert chat["id"] == close_lean["id"]  # 10.1 >= 10.0: a tie within the spread, and 2.8 GB less memory
    assert chat["fastest"] == fast_fat["id"] and chat["ties"] == [fast_fat["id"]]
    prompt = tune.choose([fast_fat, close_lean, slow, crashed], "prompt")
    assert prompt["id"] == close_lean["id"] and prompt["ties"] == []
    # no overlap: the faster point wins even though it uses more memory
    clear = tune.summarize(_point(repack=True), [_run(12.0, 20, 7000), _run(12.5, 20, 7000)], None)
    assert tune.choose([clear, close_lean], "chat")["id"] == clear["id"]
    assert crashed["status"] == "failed: SIGILL"
    assert tune.choose([crashed], "chat") is None


def test_a_crashing_point_is_recorded_once_and_excluded(tmp_path, monkeypatch):
    monkeypatch.setenv("QRUN_THREADS", "2")  # qrun's default point (2 threads, no repacking, mmap) is in the grid
    gguf = tmp_path / f"{MODEL}-Q4_K_M.gguf"
    gguf.write_bytes(b"x" * 10)
    calls = []

    def fake_measure(path, point, n_ctx=None):
        calls.append(tune.point_id(point))
        if point["repack"]:
            return None, "SIGILL"
        return {**_run(5.0 + point["n_threads"], 20, 100), "peak_rss_bytes": 100 << 20}, None

    entry = tune.tune_model(
        MODEL,
        [("Q4_K_M", gguf)],
        grid={
            "repack": (False, True),
            "use_mmap": (True,),
            "threads": (1, 2),
            "threads_batch": None,
            "attention": NO_FLASH_ATTN,
        },
        repeat=2,
        progress=lambda _: None,
        measure=fake_measure,
    )
    repack_calls = [c for c in calls if "/repack/" in c]
    assert sorted(repack_calls) == sorted(set(repack_calls)) and len(repack_calls) == 4  # never retried
    assert len(calls) == 4 * 2 + 4  # 4 healthy points x 2 reps + 4 crashing points once
    assert entry["chat"]["settings"]["n_threads"] == 2 and entry["chat"]["settings"]["repack"] is False
    # the grid's pick (2 threads, 1 for prompts) is faster in both repetitions, but 2 a side claim nothing
    assert entry["chat"]["settings"]["n_threads_batch"] == 2
    assert entry["chat"]["evidence"]["decision"]["grid_choice"] == "Q4_K_M/norepack/mmap/t2/tb1/nofa/kv-f16"
    assert entry["chat"]["evidence"]["decision"]["reason"].startswith("not measured enough")
    assert {s["status"] for s in entry["grid"] if s["settings"]["repack"]} == {"failed: SIGILL"}


def _three_points_measure(calls):
    """Fake measurements: the 1-thread grid point is fast, llama.cpp's defaults slow and heavy, qrun's in between;
    each repetition a little different (the separation rule needs spreads)."""

    def fake_measure(path, point, n_ctx=None):
        calls.append(point)
        jitter = 0.1 * (len(calls) % 3)
        gen = {1: 10.0, 4: 4.0}.get(point["n_threads_batch"], 5.0) + jitter
        return {
            **_run(gen, 4 * gen, 3000 if point["repack"] else 1000),
            "peak_anon_bytes": 1 << 30,
            "load_s": 2.0 if point["repack"] else 0.5,
        }, None

    return fake_measure


def test_defaults_are_measured_alongside_and_ratios_are_given_only_where_repetitions_separate(tmp_path, monkeypatch):
    monkeypatch.setenv("QRUN_THREADS", "2")
    gguf = tmp_path / f"{MODEL}-Q4_K_M.gguf"
    gguf.write_bytes(b"x" * 10)
    defaults = tune.llama_cpp_defaults(cpus=4)
    assert defaults == {
        "repack": True,
        "use_mmap": True,
        "n_threads": 2,
        "n_threads_batch": 4,
        "flash_attn": False,
        "kv_type": "f16",
        "n_ctx": 4096,
    }
    entry = tune.tune_model(
        MODEL,
        [("Q4_K_M", gguf)],
        grid={
            "repack": (False,),
            "use_mmap": (True,),
            "threads": (1,),
            "threads_batch": None,
            "attention": NO_FLASH_ATTN,
        },
        repeat=3,
        baseline=defaults,
        progress=lambda _: None,
        measure=_three_points_measure([]),
    )
    qrun_default = _point(t=2, tb=2)
    assert [s["settings"] for s in entry["grid"]] == [_point(t=1, tb=1), {"quant": "Q4_K_M", **defaults}, qrun_default]
    assert entry["llama_cpp_defaults"] == defaults
    for workload in ("chat", "prompt"):
        assert entry[workload]["settings"] == _point(t=1, tb=1)  # every repetition beats qrun's defaults
        decision = entry[workload]["evidence"]["decision"]
        assert decision["keep_default"] is False and decision["speed"]["verdict"] == "better"
        assert decision["default_point"] == "Q4_K_M/norepack/mmap/t2/tb2/nofa/kv-f16"
        vs = entry[workload]["evidence"]["vs_llama_cpp_defaults"]
        assert vs["point"] == "Q4_K_M/repack/mmap/t2/tb4/nofa/kv-f16/ctx4096" and vs["status"] == "ok"
        # equal anonymous memory on both sides: inside the noise, so no ratio for it
        assert vs["separation"]["peak_anon_bytes"]["verdict"] == "inside the noise"
        assert vs["ratios"] == pytest.approx(
            {
                "chat.gen_tokens_per_s": 10.1 / 4.1,
                "prompt.prompt_tokens_per_s": 10.1 / 4.1,
                "peak_rss_bytes": 1 / 3,
                "load_s": 0.25,
            }
        )


def test_one_repetition_keeps_the_defaults_and_claims_no_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("QRUN_THREADS", "2")
    gguf = tmp_path / f"{MODEL}-Q4_K_M.gguf"
    gguf.write_bytes(b"x" * 10)
    entry = tune.tune_model(
        MODEL,
        [("Q4_K_M", gguf)],
        grid={
            "repack": (False,),
            "use_mmap": (True,),
            "threads": (1,),
            "threads_batch": None,
            "attention": NO_FLASH_ATTN,
        },
        repeat=1,
        baseline=tune.llama_cpp_defaults(cpus=4),
        progress=lambda _: None,
        measure=_three_points_measure([]),
    )
    for workload in ("chat", "prompt"):
        chosen = entry[workload]
        assert chosen["settings"] == _point(t=2, tb=2)  # twice as fast once is not shown faster: defaults kept
        decision = chosen["evidence"]["decision"]
        assert decision["keep_default"] is True and decision["grid_choice"] == "Q4_K_M/norepack/mmap/t1/tb1/nofa/kv-f16"
        assert decision["reason"].startswith("not measured enough: 1 and 1 repetition(s)")
        vs = chosen["evidence"]["vs_llama_cpp_defaults"]
        assert vs["ratios"] == {}
        assert {v["verdict"] for v in vs["separation"].values()} == {"not measured enough"}


def _summary(point, gens, rss_mib=1000):
    return tune.summarize(point, [_run(g, 4 * g, rss_mib) for g in gens], None)


def test_the_default_is_kept_when_the_difference_is_inside_the_noise():
    default = _summary(_point(t=2), [10.0, 10.5, 11.0])
    overlapping = _summary(_point(t=1, tb=1), [10.8, 11.5, 12.0])  # faster median, but 10.8 < 11.0
    decision = tune.decide(dict(overlapping, id=overlapping["id"]), default, "chat")
    assert decision["keep_default"] is True and decision["speed"]["verdict"] == "inside the noise"
    assert "inside the noise" in decision["reason"] and "keeping qrun's defaults" in decision["reason"]
    separated = _summary(_point(t=1, tb=1), [11.2, 11.5, 12.0])
    assert tune.decide(separated, default, "chat")["keep_default"] is False
    lighter = _summary(_point(mmap=False), [10.2, 10.6, 10.9], rss_mib=600)  # as fast, less memory every time
    decision = tune.decide(lighter, default, "chat")
    assert decision["keep_default"] is False and "peak RSS 0.60x" in decision["reason"]
    slower = _summary(_point(t=1, tb=1), [5.0, 5.1, 5.2])
    assert tune.decide(slower, default, "chat")["keep_default"] is True
    assert tune.decide(default, default, "chat")["reason"] == "qrun's defaults measured best"
    crashed = tune.summarize(_point(t=2), [], "SIGILL")
    assert tune.decide(separated, crashed, "chat")["keep_default"] is False


def test_busy_machine_refuses_unless_forced(monkeypatch):
    monkeypatch.setattr(tune, "MAX_LOAD_PER_CORE", -1.0)  # any load counts as busy
    with pytest.raises(BenchError, match="busy"):
        tune.check_load(force=False, progress=lambda _: None)
    said = []
    tune.check_load(force=True, progress=said.append)
    assert said and said[0].startswith("warning: the machine is busy")


# -- a real tune run on a tiny model, and the loaders using its profile --------------------------------------------
@pytest.fixture
def converted(tiny_gguf):
    folder = os.environ["QRUN_GGUF_DIR"]
    os.makedirs(folder, exist_ok=True)
    src = tiny_gguf(MODEL, "Q4_K_M")
    dst = os.path.join(folder, src.name)
    os.symlink(src, dst)
    return dst


def test_real_tiny_tune_writes_a_profile_that_ask_uses(converted):
    result = CliRunner().invoke(
        tune_cmd, [MODEL, "--threads", "1", "--no-repack", "--mmap", "--repeat", "1", "--force"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(profile.profile_path().read_text(encoding="utf-8"))
    assert doc["schema"] == profile.SCHEMA and doc["machine"] == profile.machine_key()
    entry = doc["models"][MODEL]
    # the three attention settings at 1 thread, repack off, mmap on (flash attention and a q8_0 KV cache really
    # load and run); then llama-cpp-python's defaults, measured for comparison (repack on: where AMX traps it runs
    # with AMX denied; where repacking crashes anyway, it fails)
    assert [s["status"] for s in entry["grid"]][:3] == ["ok", "ok", "ok"]
    assert [(s["settings"]["flash_attn"], s["settings"]["kv_type"]) for s in entry["grid"][:3]] == list(tune.ATTENTION)
    assert entry["grid"][3]["settings"] == {"quant": "Q4_K_M", **tune.llama_cpp_defaults()}
    defaults = tune.qrun_defaults("Q4_K_M")  # measured too (appended unless it is a grid point): what ask uses
    assert defaults in [s["settings"] for s in entry["grid"]]
    # one repetition claims nothing: no ratio anywhere, "not measured enough" instead, and qrun's defaults kept
    assert "tuned / llama.cpp's defaults" in result.output and "not measured enough" in result.output
    assert re.search(r"\d\.\d\dx", result.output) is None, result.output
    for workload in ("chat", "prompt"):
        vs = entry[workload]["evidence"]["vs_llama_cpp_defaults"]
        assert vs["point"] == entry["grid"][3]["id"] and vs["status"] == entry["grid"][3]["status"]
        if vs["status"] == "ok":
            assert vs["ratios"] == {} and set(vs["separation"]) == set(tune.COMPARED)
            assert {v["verdict"] for v in vs["separation"].values()} == {"not measured enough"}
        chosen = entry[workload]
        assert chosen["settings"] == defaults
        assert chosen["gguf"]["name"] == f"{MODEL}-Q4_K_M.gguf"
        evidence = chosen["evidence"]
        assert evidence["decision"]["keep_default"] is True or evidence["decision"]["grid_choice"] == tune.point_id(
            defaults
        )
        assert evidence["noise"]["samples"] == 1 and evidence["noise_rule"] == measure.NOISE_RULE
        metric = evidence[evidence["metric"]]
        assert metric["median"] > 0 and metric["spread"] == 0
    for summary in entry["grid"]:
        if summary["status"] == "ok":  # every measurement's windows were judged: load and both workloads
            assert set(summary["noise_samples"][0]) == {"load", "chat", "prompt"}
    got = _ask_settings(["deepseek"])
    assert (got["threads"], got["threads_batch"], got["repack"], got["use_mmap"]) == (
        defaults["n_threads"],
        defaults["n_threads_batch"],
        defaults["repack"],
        defaults["use_mmap"],
    )
    # the profile kept qrun's defaults (nothing was shown better): ask says "default", not "profile"
    assert "profile" not in got["source"].values() and got["source"]["n_ctx"] == "work"


def _write_profile(**chat_settings):
    doc = profile.new_document(command="test")
    gguf = profile.settings.gguf_dir() / f"{MODEL}-Q4_K_M.gguf"
    settings = {
        "quant": "Q4_K_M",
        "repack": False,
        "use_mmap": False,
        "n_threads": 1,
        "n_threads_batch": 2,
        **chat_settings,
    }
    doc["models"][MODEL] = {
        "chat": {"settings": settings, "evidence": {}, "gguf": {"name": gguf.name, "size_bytes": gguf.stat().st_size}}
    }
    profile.write(doc)
    return doc


def _ask_settings(args, *, notices=None):
    result = CliRunner().invoke(main, ["ask", *args, "hi", "--max-tokens", "2", "--temperature", "0", "--json"])
    assert result.exit_code == 0, result.output
    if notices is not None:
        notices.extend(line for line in result.stderr.splitlines() if line)
    return json.loads(result.stdout)["settings"]


def test_profile_settings_are_used_and_flags_override_them(converted):
    _write_profile()
    notices: list[str] = []
    got = _ask_settings(["deepseek"], notices=notices)
    assert (got["quant"], got["threads"], got["threads_batch"], got["use_mmap"], got["repack"]) == (
        "Q4_K_M",
        1,
        2,
        False,
        False,
    )
    assert got["source"] == {
        "quant": "default",
        "threads": "profile",
        "threads_batch": "profile",
        "repack": "profile",
        "use_mmap": "profile",
        "n_ctx": "work",
        "flash_attn": "default",
        "kv_type": "default",
    }
    # one line says which settings the profile chose, for which file
    assert notices == [
        f"note: {MODEL}-Q4_K_M.gguf: n_threads=1, n_threads_batch=2, repack=off, use_mmap=off "
        "from the tuning profile (chat; flags override it)"
    ]
    # (--no-repack: repacking on would die of SIGILL on CPUs whose AMX the kernel withholds)
    got = _ask_settings(["deepseek", "--threads-batch", "1", "--mmap", "--no-repack"])
    assert (got["threads"], got["threads_batch"], got["use_mmap"], got["repack"]) == (1, 1, True, False)
    assert {k: got["source"][k] for k in ("threads", "threads_batch", "repack", "use_mmap")} == {
        "threads": "profile",
        "threads_batch": "flag",
        "repack": "flag",
        "use_mmap": "flag",
    }
    # --threads alone: prompt processing follows it (as without a profile)
    got = _ask_settings(["deepseek", "--threads", "2"])
    assert (got["threads"], got["threads_batch"]) == (2, 2) and got["source"]["threads_batch"] == "flag"
    # the same file given by path gets the same profile entry
    got = _ask_settings([converted])
    assert got["threads_batch"] == 2 and got["source"]["use_mmap"] == "profile"


def test_bench_uses_the_profile_chat_settings_unless_flagged(converted):
    from qrun.bench.run import BenchConfig, Target, _load_settings

    _write_profile()
    target = Target(MODEL, "Q4_K_M", profile.settings.gguf_dir() / f"{MODEL}-Q4_K_M.gguf")
    load = _load_settings(BenchConfig(), target, 2, print)
    assert (load.n_threads, load.n_threads_batch, load.repack, load.use_mmap) == (1, 2, False, False)
    assert {load.sources[k] for k in ("n_threads", "n_threads_batch", "repack", "use_mmap")} == {"profile"}
    load = _load_settings(BenchConfig(threads=[2], use_mmap=True), target, 2, print)
    assert (load.n_threads, load.n_threads_batch, load.use_mmap) == (2, 2, True)
    assert load.sources["n_threads"] == "flag" and load.sources["repack"] == "profile"


def _corrupt(path):
    path.write_text("{not json", encoding="utf-8")


def _other_machine(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["machine"]["cpu_model"] = "Some Other CPU"
    path.write_text(json.dumps(doc), encoding="utf-8")


def _unknown_schema(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["schema"] = 99
    path.write_text(json.dumps(doc), encoding="utf-8")


def _model_gone(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["models"][MODEL]["chat"]["gguf"]["name"] = f"{MODEL}-Q4_0.gguf"  # tuned on a quant since deleted
    doc["models"][MODEL]["chat"]["settings"]["quant"] = "Q4_0"
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (_corrupt, "unreadable"),
        (_other_machine, "another machine"),
        (_unknown_schema, "unknown schema"),
        (_model_gone, "no longer converted"),
    ],
)
def test_bad_profiles_are_ignored_with_one_notice(converted, spoil, reason):
    _write_profile()
    spoil(profile.profile_path())
    notices = []
    # --quant auto: the one case where the profile's entry for another file (here: a deleted Q4_0) is looked at
    got = _ask_settings(["deepseek", "--quant", "auto"], notices=notices)
    assert {v for k, v in got["source"].items() if k != "n_ctx"} == {"default"}
    assert got["quant"] == "Q4_K_M" and got["use_mmap"] is True
    assert notices[0].startswith("note: ignoring the tuning profile") and reason in notices[0]
    assert notices[1:] == [f"note: --quant auto: no usable tuning profile for {MODEL}; using Q4_K_M"]


def test_a_profile_never_changes_the_quant_unless_asked(converted, tiny_gguf):
    """A profile measured on Q4_0 chooses nothing for the Q4_K_M a plain `ask` loads; --quant auto takes Q4_0."""
    q4_0 = tiny_gguf(MODEL, "Q4_0")
    shutil.copy(q4_0, profile.settings.gguf_dir() / q4_0.name)
    doc = _write_profile(quant="Q4_0")
    doc["models"][MODEL]["chat"]["gguf"] = {"name": q4_0.name, "size_bytes": q4_0.stat().st_size}
    profile.write(doc)
    notices: list[str] = []
    got = _ask_settings(["deepseek"], notices=notices)
    assert got["quant"] == "Q4_K_M" and got["source"]["quant"] == "default"
    assert "profile" not in got["source"].values() and notices == []
    got = _ask_settings(["deepseek", "--quant", "auto"], notices=notices)
    assert got["quant"] == "Q4_0" and got["source"]["quant"] == "profile" and got["source"]["threads"] == "profile"
    assert notices[0] == (
        f"note: --quant auto: {MODEL}-Q4_0.gguf, the type `qrun tune` measured fastest for chat on this machine"
    )


def test_a_grid_with_nothing_to_measure_is_refused_before_looking_for_models(tmp_path):
    # (no model is converted here: the flags are checked first, so this is the error the user sees)
    result = CliRunner().invoke(main, ["tune", "--no-flash-attn", "--kv-type", "q8_0", "--ggufs", str(tmp_path)])
    assert result.exit_code == 1
    assert "--no-flash-attn with only --kv-type q8_0 leaves nothing to measure" in result.output
