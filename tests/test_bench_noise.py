"""`qrun bench` beside real CPU hogs: every load and answer is judged by the noise rule, and the run is marked."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from qrun import measure
from qrun.cli import main
from tests.noise_helpers import cpu_hogs

MODEL, QUANT = "deepseek-llm-7b-chat", "Q4_K_M"


def _bench(tmp_path, tiny_gguf, *, repeat: int) -> tuple[dict, str, str]:
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    (ggufs / f"{MODEL}-{QUANT}.gguf").symlink_to(tiny_gguf(MODEL, QUANT))
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "two", seed["questions"][2:4]
    suite = tmp_path / "two.json"
    suite.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "deepseek",
            "--ggufs",
            str(ggufs),
            "--out",
            str(out),
            "--suite",
            str(suite),
            "--threads",
            "1",
            "--repeat",
            str(repeat),
            "--max-tokens",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return doc["runs"][0], result.stdout, (out / "report.md").read_text(encoding="utf-8")


def test_a_bench_run_beside_cpu_hogs_is_marked_noisy_and_keeps_every_sample(tmp_path, tiny_gguf):
    tiny_gguf(MODEL, QUANT)  # built before the hogs start
    with cpu_hogs(3, seconds=180):
        run, stdout, md = _bench(tmp_path, tiny_gguf, repeat=2)
    reps = [r for q in run["questions"] for r in q["repetitions"]]
    assert len(reps) == 2 * 2 and len(run["load_samples"]) == 2  # nothing dropped
    for sample in reps + run["load_samples"]:
        assert sample["noisy"] in (True, False, None) and sample["noise_reason"]
        assert sample["window_s"] > 0 and sample["logical_cpus"] >= 1 and sample["own_cpu_s"] >= 0
    noisy = [s for s in reps + run["load_samples"] if s["noisy"]]
    assert noisy, [(s["noise_reason"], s["window_s"]) for s in reps + run["load_samples"]]
    assert all(s["other_cpu_fraction"] > measure.NOISY_OTHER_CPU_FRACTION for s in noisy)
    assert run["noisy"] is True and run["noise"]["samples"] == 6 and run["noise"]["noisy"] == len(noisy)
    mark = f"NOISY {len(noisy)}/6"
    assert mark in stdout and measure.NOISE_RULE in stdout
    assert mark in md and measure.NOISE_RULE in md


def test_load_time_is_measured_on_every_repetition_with_a_spread(tmp_path, tiny_gguf):
    run, stdout, md = _bench(tmp_path, tiny_gguf, repeat=3)
    loads = run["load_samples"]
    assert [s["rep"] for s in loads] == [1, 2, 3] and all(s["load_s"] > 0 for s in loads)
    values = [s["load_s"] for s in loads]
    assert run["load_spread"]["n"] == 3 and run["load_spread"]["min"] == min(values)
    assert run["load_spread"]["max"] == max(values) and run["load_s"] == sorted(values)[1]
    assert f"{run['load_s']:.2f} ({min(values):.2f}–{max(values):.2f})" in md
    # each repetition's answers follow their own load: rep n of every question comes after load n
    for q in run["questions"]:
        assert [r["rep"] for r in q["repetitions"]] == [1, 2, 3]
        for r in q["repetitions"]:
            assert loads[r["rep"] - 1]["time_unix"] <= r["time_unix"]
