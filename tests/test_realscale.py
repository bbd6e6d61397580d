"""The real-scale benchmark script (tools/perf/realscale*.py, tools/perf/bandwidth.py) on a small shape.

The full-size run takes an hour and ~50 GB of disk (docs/performance.md); here the same code paths run on a
ChatGLM3 shape with hidden 512 and 2 layers: checkpoint -> convert -> I/O floor -> load -> bench -> report.
The perf tooling is not part of the installed package (it runs from a checkout), so its tests are all `slow`.
"""

from __future__ import annotations

import json
import math
import stat
import sys
from pathlib import Path

import pytest

from qrun import measure
from qrun.convert import synthetic
from qrun.convert.safetensors_io import SafetensorsFile
from qrun.errors import DiskSpaceError
from tools.perf import bandwidth, compute_peak, realscale, realscale_ckpt, realscale_report, realscale_tasks

pytestmark = pytest.mark.slow

TOKENIZERS = Path(__file__).parent / "data" / "tokenizers"
SMALL = {
    "hidden_size": 512,
    "num_attention_heads": 4,
    "kv_channels": 128,
    "multi_query_group_num": 2,
    "num_layers": 2,
    "ffn_hidden_size": 1024,
}


def _tensors(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        f = SafetensorsFile(path)
        for name in f.names():
            e = f.entries[name]
            with open(path, "rb") as fh:
                fh.seek(f.data_start + e["begin"])
                out[name] = (e["dtype"], e["shape"], path.name, fh.read(e["end"] - e["begin"]))
    return out


# One model: the tiled writer takes names and shapes from synthetic.hf_tensor_shapes for every model alike, and
# ChatGLM3 has the special case (rotary inv_freq buffer) and the smallest vocabulary (Qwen's takes ~20 s here).
@pytest.mark.parametrize("model", ["chatglm3-6b"])
def test_tiled_checkpoint_has_the_layout_of_synthetic(tmp_path, model):
    overrides = dict(synthetic.TINY_OVERRIDES[model])
    shard = 40 << 20  # forces several shards and an index
    realscale_ckpt.write_tiled_checkpoint(
        model, tmp_path / "t", tokenizer_dir=TOKENIZERS / model, config_overrides=overrides, shard_max_bytes=shard
    )
    synthetic.write_random_checkpoint(
        model, tmp_path / "r", tokenizer_dir=TOKENIZERS / model, config_overrides=overrides, shard_max_bytes=shard
    )
    tiled, rand = _tensors(tmp_path / "t"), _tensors(tmp_path / "r")
    assert list(tiled) == list(rand)
    assert len({v[2] for v in tiled.values()}) > 1
    for name in tiled:
        assert tiled[name][:3] == rand[name][:3], name  # dtype, shape, shard file
        if math.prod(tiled[name][1]) <= realscale_ckpt._SMALL_ELEMENTS:
            assert tiled[name][3] == rand[name][3], name  # norms, biases: synthetic.py's exact values
    for meta in ("config.json", "model.safetensors.index.json"):
        assert json.loads((tmp_path / "t" / meta).read_text()) == json.loads((tmp_path / "r" / meta).read_text())
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(p.name for p in (tmp_path / "r").iterdir())


def test_small_shape_end_to_end(tmp_path, capsys):
    work = tmp_path / "work"
    base = [
        "--work",
        str(work),
        "--models",
        "chatglm3",
        "--threads",
        "1",
        "--repeat",
        "1",
        "--config-overrides",
        json.dumps({"chatglm3": SMALL}),
    ]
    assert realscale.main(base + ["--steps", "checkpoint,convert,iofloor,load,bench", "--delete-as-you-go"]) == 0
    doc = json.loads((work / "results" / "realscale.json").read_text())
    m = doc["models"]["chatglm3-6b"]
    assert m["checkpoint"]["fill"] == "tiled" and m["checkpoint"]["bytes"] > 0
    # qrun's own step alone first (BF16: the checkpoint is bf16), then each 4-bit type quantized from that file
    assert list(m["convert"]) == ["BF16", "Q4_K_M", "Q4_0"]
    assert "quantize" not in m["convert"]["BF16"]["steps"] and m["convert"]["BF16"]["unquantized_type"] == "BF16"
    quantized = {q: c for q, c in m["convert"].items() if q != "BF16"}
    for quant, c in quantized.items():
        assert c["steps"]["convert"]["reused"] is True and c["steps"]["quantize"]["wall_s"] > 0
        assert (work / "ggufs" / f"chatglm3-6b-{quant}.gguf").stat().st_size == c["size_bytes"]
    assert not list((work / "ggufs").glob("*16*"))  # the unquantized file is removed
    assert not (work / "checkpoints" / "chatglm3-6b").exists()  # --delete-as-you-go
    assert m["iofloor"]["read_bytes"] == m["checkpoint"]["bytes"]
    assert m["iofloor"]["page_cache_dropped"] is False  # only with --drop-caches (it slows the whole machine)
    assert m["iofloor"]["write_bytes"] == sum(c["size_bytes"] for c in quantized.values())
    assert {r["kind"] for r in m["load"]} == {"qrun", "llama.cpp"} and all(r["load_s"] > 0 for r in m["load"])
    assert all(r["noisy"] in (True, False, None) and r["window_s"] > 0 for r in m["load"])  # judged, kept
    b = m["bench"]
    assert b["pp_suite"]["prompt_tokens"] == 512
    assert b["pp"]["1"]["prompt_tokens"] == 512 and b["pp"]["1"]["median"] > 0
    assert b["tg"]["1"]["gen_tokens"] == [128] and b["tg"]["1"]["median"] > 0
    assert 0 < b["weights_read_per_token_bytes"] < b["gguf_size_bytes"]
    md = (work / "results" / "realscale.md").read_text()
    assert "| chatglm3-6b | Q4_K_M |" in md and "| chatglm3-6b | 1 |" in md
    assert b["pp"]["1"]["noise"]["samples"] == 1 and b["tg"]["1"]["noise"]["samples"] == 1
    assert "noise (qrun reps)" in md and measure.NOISE_RULE in md
    # a second run measures nothing again (everything is recorded) and keeps the results
    assert realscale.main(base + ["--steps", "convert,iofloor"]) == 0
    assert (
        json.loads((work / "results" / "realscale.json").read_text())["models"]["chatglm3-6b"]["convert"]
        == m["convert"]
    )


def test_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    class Usage:
        free = 20 << 30

    monkeypatch.setattr(realscale.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(DiskSpaceError, match=r"needs about \d+\.\d GiB .* only 20\.0 GiB are free"):
        realscale.Run(realscale.parse_args(["--work", str(tmp_path), "--steps", "checkpoint,convert"])).check_disk(
            ["qwen-7b-chat", "chatglm3-6b"]
        )
    # ~52.6 GiB: outputs of all (~22) + one checkpoint and one F16 at a time (Qwen: ~28.7) + 2; all at once ~77
    Usage.free = 55 << 30
    realscale.Run(realscale.parse_args(["--work", str(tmp_path), "--delete-as-you-go"])).check_disk(
        ["qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat"]
    )
    with pytest.raises(DiskSpaceError):
        realscale.Run(realscale.parse_args(["--work", str(tmp_path)])).check_disk(
            ["qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat"]
        )


def test_llama_bench_command_and_parsing(tmp_path):
    # Stands in for the llama-bench binary: records its argv, prints rows in llama-bench's -o json format.
    rows = [
        {
            "n_prompt": 512,
            "n_gen": 0,
            "n_threads": t,
            "avg_ts": 10.0 * t,
            "stddev_ts": 0.5,
            "samples_ts": [9.0 * t, 10.0 * t, 11.5 * t],
            "build_commit": "abc",
            "cpu_info": "cpu",
        }
        for t in (1, 2)
    ]
    rows += [
        {
            "n_prompt": 0,
            "n_gen": 128,
            "n_threads": t,
            "avg_ts": 3.0 * t,
            "stddev_ts": 0.1,
            "samples_ts": [3.0 * t, 2.0 * t, 4.0 * t],
            "build_commit": "abc",
            "cpu_info": "cpu",
        }
        for t in (1, 2)
    ]
    script = tmp_path / "llama-bench"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(tmp_path / 'argv')!r}, 'w').write("
        f"json.dumps(sys.argv[1:]))\nprint(json.dumps({rows!r}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    out = realscale_tasks.llama_bench(str(script), Path("m.gguf"), threads=[1, 2], repeat=3, repack=False)
    argv = json.loads((tmp_path / "argv").read_text())
    assert argv == [
        "-m",
        "m.gguf",
        "-p",
        "512",
        "-n",
        "128",
        "-r",
        "3",
        "-t",
        "1,2",
        "-fa",
        "off",
        "-lm",
        "mmap",
        "--repack",
        "0",
        "-o",
        "json",
    ]
    assert out["pp"]["2"]["median"] == 20.0 and out["tg"]["1"]["median"] == 3.0
    doc = {
        "machine": {},
        "runs": [],
        "bandwidth": [
            {
                "threads": 1,
                "copy": {"median_gb_per_s": 30.0, "best_gb_per_s": 31},
                "triad": {"median_gb_per_s": 20.0, "best_gb_per_s": 21},
                "loadavg": [0.1],
            }
        ],
        "models": {
            "m": {
                "llama_bench": out,
                "bench": {
                    "weights_read_per_token_bytes": 3e9,
                    "pp": {"1": {"prompt_tokens_per_s": [9.5, 9.6, 9.4], "median": 9.5, "loadavg_1m": [0.2]}},
                    "tg": {"1": {"gen_tokens_per_s": [2.9, 2.8, 3.0], "median": 2.9, "loadavg_1m": [0.3]}},
                },
            }
        },
    }
    md = realscale_report.render(doc)
    assert (
        "| m | 1 | 9.50 (9.40–9.60) | 10.00 (9.00–11.50) | 0.950 | 2.90 (2.80–3.00) | 3.00 (2.00–4.00) | 0.967 |" in md
    )
    # ceiling 30 GB/s / 3 GB = 10 tok/s: qrun at 0.29 of it, llama-bench at 0.30
    assert "| m | 1 | 3.00 | 30.0 | 10.00 | 2.90 | 0.290 | 3.00 | 0.300 |" in md


def test_bandwidth_measures_both_kernels():
    rows = bandwidth.measure_all(thread_counts=[1, 2], array_bytes=8 << 20, repeat=2)
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        for kernel in ("copy", "triad"):
            assert 0 < r[kernel]["min_gb_per_s"] <= r[kernel]["median_gb_per_s"] <= r[kernel]["best_gb_per_s"]


def test_compute_peak_and_the_prompt_fraction(tmp_path):
    got = compute_peak.measure(threads=1, size=256, repeat=2)
    assert got["threads"] == 1 and 0 < got["min_gflop_per_s"] <= got["median_gflop_per_s"] <= got["best_gflop_per_s"]
    # 2 x 6.5e9 weights x 20 tok/s = 260 GFLOP/s achieved against a 130 GFLOP/s SGEMM: fraction 2.0 (int8 > f32)
    doc = {
        "machine": {},
        "runs": [],
        "compute": [{**got, "median_gflop_per_s": 130.0, "best_gflop_per_s": 131.0}],
        "models": {
            "m": {"matmul_weights": 6.5e9, "bench": {"pp": {"1": {"prompt_tokens_per_s": [20.0], "median": 20.0}}}}
        },
    }
    md = realscale_report.render(doc)
    assert "| 1 | 130.0 (131.0) |" in md
    assert "| m | 1 | 6.50 | 20.00 | 260.0 | 130.0 | 2.000 | — | — |" in md
