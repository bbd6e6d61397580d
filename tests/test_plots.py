"""The report's PNG plots: the numbers handed to matplotlib come from real bench results, and the files are PNGs."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import bench_doc
from qrun.bench import plots, report
from qrun.cli import main

MODELS = ("chatglm3-6b", "deepseek-llm-7b-chat")
QUANT = "Q4_K_M"
THREADS = (1, 2)


def assert_png(path: Path, *, width: int, height: int) -> None:
    """A PNG file: its signature, an IHDR chunk first (with a valid CRC) of the expected size, and PIL decodes it."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(data[12 : 16 + length])
    assert struct.unpack(">II", data[16:24]) == (width, height)
    assert data.endswith(b"IEND\xaeB`\x82")
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.size == (width, height)


@pytest.fixture(scope="module")
def bench_out(tiny_ggufs, tmp_path_factory) -> Path:
    """A real `qrun bench` of two tiny models at two thread counts, on two questions (module-wide: read only)."""
    root = tmp_path_factory.mktemp("plots-bench")
    ggufs = root / "ggufs"
    ggufs.mkdir()
    for model in MODELS:
        (ggufs / f"{model}-{QUANT}.gguf").symlink_to(tiny_ggufs[model][QUANT])
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "two", seed["questions"][2:4]
    suite = root / "two.json"
    suite.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    out = root / "out"
    args = ["bench", "--ggufs", str(ggufs), "--out", str(out), "--quant", QUANT, "--suite", str(suite)]
    args += ["--threads", ",".join(map(str, THREADS)), "--repeat", "1", "--max-tokens", "6"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def _runs(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]


def test_bench_draws_both_plots_from_its_results(bench_out):
    runs = _runs(bench_out)
    assert sorted((r["model"], r["settings"]["n_threads"]) for r in runs) == [(m, t) for m in MODELS for t in THREADS]
    assert all(r["status"] == "ok" and r["summary"]["gen_tokens_per_s"] for r in runs)
    md = (bench_out / "report.md").read_text(encoding="utf-8")
    assert "## Plots" in md
    assert "![Accuracy against generation speed (bubble area = peak RSS)](accuracy-vs-speed.png)" in md
    assert "![Generation speed against threads](speed-vs-threads.png)" in md
    assert "kl-per-quant.png" not in md and not (bench_out / "kl-per-quant.png").exists()
    assert_png(bench_out / "accuracy-vs-speed.png", width=800, height=550)
    assert_png(bench_out / "speed-vs-threads.png", width=800, height=500)


def test_accuracy_bubbles_are_each_models_fastest_run(bench_out, tmp_path):
    runs = _runs(bench_out)
    fastest = {model: max((r for r in runs if r["model"] == model), key=_speed) for model in MODELS}
    assert all(len({_speed(r) for r in runs if r["model"] == m}) == 2 for m in MODELS)  # the choice matters
    rows = plots.plot_rows([json.loads((bench_out / "results.json").read_text(encoding="utf-8"))])
    for order, ordered_rows in (("as measured", rows), ("reversed", rows[::-1])):
        series = plots.plot_accuracy_speed(ordered_rows, tmp_path / "a.png")
        chosen = [fastest[label.split(" ")[0]] for label in series["labels"]]
        assert sorted(r["model"] for r in chosen) == sorted(MODELS), order
        assert series["x"] == [_speed(r) for r in chosen], order
        assert series["y"] == [r["summary"]["accuracy"] for r in chosen]
        assert series["peak_rss_bytes"] == [r["peak_rss_bytes"] for r in chosen]
        largest = max(r["peak_rss_bytes"] for r in chosen)
        assert series["sizes"] == [plots.MAX_BUBBLE_AREA_PT2 * r["peak_rss_bytes"] / largest for r in chosen]
        assert max(series["sizes"]) == plots.MAX_BUBBLE_AREA_PT2
        assert series["labels"] == [f"{r['model']} {QUANT} ({r['peak_rss_bytes'] / 2**20:.0f} MiB)" for r in chosen]
        assert_png(tmp_path / "a.png", width=800, height=550)


def _speed(run: dict) -> float:
    return run["summary"]["gen_tokens_per_s"]


def test_threads_plot_has_one_line_per_model(bench_out, tmp_path):
    runs = _runs(bench_out)
    series = plots.plot_threads(
        plots.plot_rows([json.loads((bench_out / "results.json").read_text())]), tmp_path / "t.png"
    )
    assert series == {
        "series": [
            {
                "label": f"{model} {QUANT}",
                "x": list(THREADS),
                "y": [
                    next(r for r in runs if r["model"] == model and r["settings"]["n_threads"] == t)["summary"][
                        "gen_tokens_per_s"
                    ]
                    for t in THREADS
                ],
            }
            for model in MODELS
        ]
    }
    assert_png(tmp_path / "t.png", width=800, height=500)


def test_qrun_report_writes_and_embeds_the_plots(bench_out, tmp_path):
    out = tmp_path / "again"
    result = CliRunner().invoke(main, ["report", str(bench_out / "results.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "accuracy-vs-speed.png") in result.stderr and str(out / "speed-vs-threads.png") in result.stderr
    for name in ("accuracy-vs-speed.png", "speed-vs-threads.png"):
        assert f"]({name})" in (out / "report.md").read_text(encoding="utf-8")
        assert (out / name).read_bytes() == (bench_out / name).read_bytes()  # same results, same picture
    assert not list(out.glob(".*.tmp"))


def test_one_thread_count_draws_no_threads_plot_and_drops_a_stale_one(tmp_path):
    doc = bench_doc()  # saved results: qwen finished at 2 threads, chatglm3 failed
    (tmp_path / plots.THREADS_PNG).write_bytes(b"from an earlier report")
    drawn = plots.write_plots([doc], tmp_path)
    assert [d["file"].name for d in drawn] == [plots.ACCURACY_SPEED_PNG]
    qwen = doc["runs"][0]
    assert drawn[0]["series"]["x"] == [qwen["summary"]["gen_tokens_per_s"]]  # the failed run is left out
    assert drawn[0]["series"]["y"] == [pytest.approx(0.44)]
    assert not (tmp_path / plots.THREADS_PNG).exists()


def test_no_finished_run_draws_nothing(tmp_path):
    doc = bench_doc()
    doc["runs"] = doc["runs"][1:]  # only the failed one
    paths = report.write_outputs([doc], tmp_path, results_json=False)
    assert sorted(paths) == ["csv", "report"] and "## Plots" not in paths["report"].read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.png"))


KL_ROWS = [
    {"model": "qwen-7b-chat", "quant": "Q8_0", "kl_mean": 0.0012, "kl_p99": 0.011},
    {"model": "qwen-7b-chat", "quant": "Q4_K_M", "kl_mean": 0.021, "kl_p99": 0.19},
    {"model": "chatglm3-6b", "quant": "Q4_K_M", "kl_mean": 0.034, "kl_p99": 0.25},
    {"model": "chatglm3-6b", "quant": "Q4_0", "kl_mean": 0.061},
    {"model": "deepseek-llm-7b-chat", "quant": "Q4_0", "kl_mean": None},  # no quality result: not drawn
]


def test_kl_per_quant_draws_each_rows_numbers(tmp_path):
    series = plots.plot_kl(KL_ROWS, tmp_path / "kl.png")
    assert series == {
        "quants": ["Q8_0", "Q4_K_M", "Q4_0"],
        "series": [
            {
                "label": "qwen-7b-chat",
                "quants": ["Q8_0", "Q4_K_M"],
                "kl_mean": [0.0012, 0.021],
                "kl_p99": [0.011, 0.19],
            },
            {"label": "chatglm3-6b", "quants": ["Q4_K_M", "Q4_0"], "kl_mean": [0.034, 0.061], "kl_p99": [0.25, None]},
        ],
    }
    assert_png(tmp_path / "kl.png", width=800, height=500)
    assert plots.plot_kl([{"model": "x", "quant": "Q4_0", "kl_mean": None}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    zero = plots.plot_kl([{"model": "x", "quant": "BF16", "kl_mean": 0.0, "kl_p99": 0.0}], tmp_path / "zero.png")
    assert zero["series"][0]["kl_mean"] == [0.0]  # the reference against itself: linear axis, still drawn
    assert_png(tmp_path / "zero.png", width=800, height=500)


def test_report_embeds_the_kl_plot_with_quality_rows(tmp_path):
    paths = report.write_outputs([bench_doc()], tmp_path, results_json=False, quality_rows=KL_ROWS)
    assert paths[f"plot:{plots.KL_PNG}"] == tmp_path / plots.KL_PNG
    assert "![KL divergence per quant](kl-per-quant.png)" in paths["report"].read_text(encoding="utf-8")
    assert_png(tmp_path / plots.KL_PNG, width=800, height=500)
