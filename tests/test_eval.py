"""`qrun eval` on the tiny real-vocabulary models: option log-probabilities against the numpy reference forward,
the answer tokens of each chat format, Wilson intervals, --shots, resuming, and report's merge by sha256."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA_DIR

import reference_forward as rf
from helpers import bench_doc
from qrun.bench import eval as ev
from qrun.bench import merge, report
from qrun.cli import main
from qrun.fsutil import sha256_file
from qrun.runner.engine import Engine

EXAMS = DATA_DIR / "exams"
MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")
# the token each format's assistant reply starts with for "A" (see bench/eval.py) and what the context ends with
LETTER_TOKEN_A = {"qwen-7b-chat": "A", "chatglm3-6b": "▁A", "deepseek-llm-7b-chat": "ĠA"}
CONTEXT_END = {"qwen-7b-chat": "Ċ", "chatglm3-6b": "<0x0A>", "deepseek-llm-7b-chat": ":"}


def run_eval_cli(*args: str):
    result = CliRunner().invoke(main, ["eval", *args, "--threads", "2"])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


def test_wilson_interval_known_values():
    # 0/10: upper bound z²/(n+z²); 5/10 and 10/10 as tabulated for the Wilson score interval
    assert ev.wilson_interval(0, 10) == pytest.approx([0.0, 0.27753], abs=1e-5)
    assert ev.wilson_interval(5, 10) == pytest.approx([0.23659, 0.76341], abs=1e-5)
    assert ev.wilson_interval(10, 10) == pytest.approx([0.72247, 1.0], abs=1e-5)
    z2 = 1.959963984540054**2  # closed forms at the ends: k = 0 gives [0, z²/(n+z²)], k = n gives [n/(n+z²), 1]
    assert ev.wilson_interval(0, 263) == pytest.approx([0.0, z2 / (263 + z2)], abs=1e-12)
    assert ev.wilson_interval(263, 263) == pytest.approx([263 / (263 + z2), 1.0], abs=1e-12)
    assert ev.wilson_interval(0, 0) == [0.0, 1.0]


def test_summarize_and_prediction_is_argmax():
    records = [
        {"subject": "a", "prediction": "A", "answer": "A"},
        {"subject": "a", "prediction": "B", "answer": "A"},
        {"subject": "b", "prediction": "C", "answer": "C"},
        {"subject": "b", "prediction": "D", "answer": "D"},
    ]
    s = ev.summarize(records)
    assert (s["accuracy"], s["n_correct"], s["n_questions"]) == (0.75, 3, 4)
    assert s["ci95"] == ev.wilson_interval(3, 4)
    assert s["subjects"]["a"] == {"accuracy": 0.5, "ci95": ev.wilson_interval(1, 2), "n_questions": 2, "n_correct": 1}
    row = np.array([0.0, 2.0, -1.0, 2.5, 0.1], dtype=np.float32)
    expected = row.astype(np.float64) - np.log(np.exp(row.astype(np.float64)).sum())
    assert ev.log_softmax(row) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_option_logprobs_match_the_numpy_reference_forward(model, tiny_gguf, tiny_checkpoints, tmp_path):
    """Every question's four option log-probabilities equal a log-softmax of the numpy reference forward's last row
    (F16 weights) within 1e-3; the prediction is their argmax; the letter tokens are each format's own."""
    gguf = tiny_gguf(model, "F16")
    out = tmp_path / "out"
    args = ["--data", str(EXAMS / "ceval"), "--out", str(out), "--limit", "2", "--json"]
    result = run_eval_cli("ceval", str(gguf), *args)
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert (doc["kind"], doc["schema"], doc["suite"], doc["split"], doc["shots"]) == ("qrun-eval", 1, "ceval", "val", 0)
    (res,) = doc["results"]
    assert res["gguf_sha256"] == sha256_file(gguf) and res["size_bytes"] == gguf.stat().st_size
    assert res["n_questions"] == 4 and set(res["subjects"]) == {"chinese_history", "computer_network"}
    config, weights = rf.load_checkpoint(tiny_checkpoints[model])
    weights = rf.round_matrices_to_f16(weights)
    with Engine.load(gguf, n_ctx=512, n_threads=2, repack=False) as engine:
        assert [engine.token_text(t) for t in res["questions"][0]["option_token_ids"]] == [
            LETTER_TOKEN_A[model].replace("A", letter) for letter in "ABCD"
        ]
        first = res["questions"][0]
        assert engine.token_text(first["prompt_ids"][-1]) == CONTEXT_END[model]
    worst_vs_same, worst_vs_ref, worst_added = 0.0, 0.0, 0.0
    with Engine.load(gguf, n_ctx=512, n_threads=2, repack=False) as engine:
        for q in res["questions"]:
            ids, options, got = q["prompt_ids"], q["option_token_ids"], np.array(q["option_logprobs"])
            assert q["prediction"] == "ABCD"[int(np.argmax(got))]
            # (1) from the same logits: numpy's log-softmax of Engine.logits' last row for the recorded prompt ids
            row = engine.logits(ids, first_position=len(ids) - 1)[-1].astype(np.float64)
            same = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
            worst_vs_same = max(worst_vs_same, float(np.abs(got - same[options]).max()))
            # (2) from the numpy reference forward (F16 weights), independent of llama.cpp
            ref_row = rf.logits_from_weights(config, weights, ids)[-1].astype(np.float64)
            ref = ref_row - (ref_row.max() + np.log(np.exp(ref_row - ref_row.max()).sum()))
            worst_vs_ref = max(worst_vs_ref, float(np.abs(got - ref[options]).max()))
            # what scoring adds to the logits' own difference from the reference (the logits' difference itself is
            # test_numerics' subject: up to 2e-3 x max|logit|, about 1.5e-3 at these option tokens)
            worst_added = max(worst_added, float(np.abs((got - ref[options]) - (row - ref_row)[options]).max()))
    assert worst_vs_same < 1e-3 and worst_added < 1e-3, (worst_vs_same, worst_added)
    assert worst_vs_ref < 2.5e-3, worst_vs_ref
    n_correct = sum(q["prediction"] == q["answer"] for q in res["questions"])
    assert (res["n_correct"], res["accuracy"]) == (n_correct, n_correct / 4)
    assert res["ci95"] == pytest.approx(ev.wilson_interval(n_correct, 4))
    keys = {(q["subject"], q["answer"]) for q in res["questions"]}
    assert keys == {("computer_network", "C"), ("computer_network", "B"), ("chinese_history", "A")}


def test_shots_put_dev_rows_first_as_earlier_turns(tiny_gguf, tmp_path):
    gguf = tiny_gguf("qwen-7b-chat", "Q4_K_M")
    out = tmp_path / "out"
    args = ["ceval", str(gguf), "--data", str(EXAMS / "ceval"), "--subjects", "computer_network", "--limit", "1"]
    doc = json.loads(run_eval_cli(*args, "--shots", "2", "--out", str(out), "--json").stdout)
    assert doc["shots"] == 2
    (question,) = doc["results"][0]["questions"]
    with open(EXAMS / "ceval/dev/computer_network_dev.csv", encoding="utf-8", newline="") as f:
        dev = list(csv.DictReader(f))[:2]
    with open(EXAMS / "ceval/val/computer_network_val.csv", encoding="utf-8", newline="") as f:
        val = next(csv.DictReader(f))

    def text(row):
        return (
            "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
            f"{row['question']}\nA. {row['A']}\nB. {row['B']}\nC. {row['C']}\nD. {row['D']}\n答案："
        )

    messages = []
    for row in dev:
        messages += [{"role": "user", "content": text(row)}, {"role": "assistant", "content": row["answer"]}]
    messages.append({"role": "user", "content": text(val)})
    with Engine.load(gguf, n_ctx=1024, n_threads=2, repack=False) as engine:
        assert question["prompt_ids"] == engine.prompt_ids(messages)  # Qwen's reply starts right after the prompt
    # more shots than the dev file holds: one line saying how many it has
    result = CliRunner().invoke(main, ["eval", *args, "--shots", "4", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "has 3 questions" in result.stderr


def test_interrupted_eval_resumes_where_it_stopped(tiny_gguf, tmp_path):
    """A real SIGINT in the middle of a run: exit 130, eval.json marked partial, the scored questions kept; the
    next run scores only the rest and ends with the same figures as an uninterrupted run."""
    data = tmp_path / "data"
    for split in ("dev", "test"):
        (data / split).mkdir(parents=True)
    rows = [",Question,A,B,C,D,Answer"] + [
        f"{i},第{i}题：一加{i}等于几？,{i},{i + 1},{i + 2},{i + 3},B" for i in range(120)
    ]
    (data / "test" / "arithmetic.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (data / "dev" / "arithmetic.csv").write_text("\n".join(rows[:3]) + "\n", encoding="utf-8")
    gguf = str(tiny_gguf("deepseek-llm-7b-chat", "Q4_K_M"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "qrun", "eval", "cmmlu", gguf, "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen([*command, "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / ev.RECORDS_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_file() and records.read_text(encoding="utf-8").count("\n") >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "Interrupted."
    assert json.loads((out / "eval.json").read_text(encoding="utf-8"))["partial"] is True
    done_before = len(ev.read_records(records))
    assert 3 <= done_before < 120
    with open(records, "a", encoding="utf-8") as f:
        f.write('{"gguf_sha256": "cut off by a ki')  # as a SIGKILL during a write would leave it
    resumed = subprocess.run([*command, "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"120 questions ({done_before} already scored)" in resumed.stderr
    doc = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert doc["partial"] is False and doc["results"][0]["n_questions"] == 120
    assert len(ev.read_records(records)) == 120  # nothing scored twice
    fresh = run_eval_cli("cmmlu", gguf, "--data", str(data), "--out", str(tmp_path / "fresh"), "--json")
    fresh_result = json.loads(fresh.stdout)["results"][0]
    assert {k: doc["results"][0][k] for k in ("n_correct", "accuracy", "ci95")} == {
        k: fresh_result[k] for k in ("n_correct", "accuracy", "ci95")
    }


def test_report_merges_bench_quality_and_eval_by_sha256(tiny_gguf, tmp_path):
    q4, q8 = tiny_gguf("qwen-7b-chat", "Q4_K_M"), tiny_gguf("qwen-7b-chat", "Q8_0")
    out = tmp_path / "eval"
    run_eval_cli("ceval", str(q4), str(q8), "--data", str(EXAMS / "ceval"), "--out", str(out), "--limit", "2")
    eval_doc = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    sha4, sha8 = sha256_file(q4), sha256_file(q8)
    assert [r["gguf_sha256"] for r in eval_doc["results"]] == [sha4, sha8]
    bench = bench_doc()
    bench["runs"][0]["gguf_sha256"] = sha4  # the bench's qwen Q4_K_M run measured the same file
    report.write_outputs([bench], tmp_path / "bench", results_json=True)
    quality = {
        "kind": "qrun-quality",
        "schema": 1,
        "model": "qwen-7b-chat",
        "reference": {"quant": "BF16", "gguf": "/g/qwen-7b-chat-BF16.gguf", "gguf_sha256": "b" * 64},
        "text": {"name": "default"},
        "ctx_tokens": 512,
        "top_k": 32,
        "results": [
            {"model": "qwen-7b-chat", "quant": "Q4_K_M", "gguf": str(q4), "gguf_sha256": sha4, "size_bytes": 1,
             "kl_mean": 0.0123, "kl_median": 0.01, "kl_p99": 0.2, "top1_agreement": 0.93, "ppl": 9.1,
             "ref_ppl": 8.9, "chunks": []},
            {"model": "qwen-7b-chat", "quant": "Q6_K", "gguf": "/g/q6.gguf", "gguf_sha256": "c" * 64,
             "size_bytes": 6 * 2**20, "kl_mean": 0.004, "kl_median": 0.003, "kl_p99": 0.05, "top1_agreement": 0.98,
             "ppl": 8.95, "ref_ppl": 8.9, "chunks": []},
        ],
    }  # fmt: skip
    (tmp_path / "quality.json").write_text(json.dumps(quality), encoding="utf-8")
    inputs = [str(tmp_path / "bench/results.json"), str(tmp_path / "quality.json"), str(out / "eval.json")]
    result = CliRunner().invoke(main, ["report", *inputs, "--out", str(tmp_path / "merged"), "--json"])
    assert result.exit_code == 0, result.output
    rows = {(r["model"], r["quant"]): r for r in json.loads(result.stdout)["by_gguf"]}
    assert set(rows) == {("qwen-7b-chat", "Q4_K_M"), ("chatglm3-6b", "Q4_K_M"), ("qwen-7b-chat", "Q8_0"),
                         ("qwen-7b-chat", "Q6_K")}  # fmt: skip
    both = rows[("qwen-7b-chat", "Q4_K_M")]  # bench + quality + eval, one row
    assert both["gguf_sha256"] == sha4 and both["accuracy"] == eval_doc["results"][0]["accuracy"]
    assert (both["kl_mean"], both["kl_p99"], both["reference_quant"]) == (0.0123, 0.2, "BF16")
    assert both["gen_tokens_per_s"] == bench["runs"][0]["summary"]["gen_tokens_per_s"]
    assert both["prompt_tokens_per_s"] == 20.0 and both["peak_rss_bytes"] == 6981 * 2**20
    assert both["size_bytes"] == 4 * 2**30  # bench's record of the file comes first
    only_eval, only_quality = rows[("qwen-7b-chat", "Q8_0")], rows[("qwen-7b-chat", "Q6_K")]
    assert only_eval["accuracy"] is not None and only_eval["kl_mean"] is None and only_eval["gen_tokens_per_s"] is None
    assert only_quality["accuracy"] is None and only_quality["kl_mean"] == 0.004
    md = (tmp_path / "merged" / "report.md").read_text(encoding="utf-8")
    section = md[md.index("## By GGUF") : md.index("## Summary")]
    assert "KL vs BF16 mean" in section and "C-Eval accuracy (95% CI)" in section and "0.0123" in section
    line_q6 = next(line for line in section.splitlines() if "| Q6_K" in line)
    assert line_q6.count("—") >= 4  # no accuracy, speeds or memory for a file only `qrun quality` saw
    # an eval.json alone is a report too; a damaged one is one error line
    alone = CliRunner().invoke(main, ["report", str(out / "eval.json"), "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 0 and "## By GGUF" in (tmp_path / "alone" / "report.md").read_text(encoding="utf-8")
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({"kind": "qrun-eval", "schema": 1, "results": [{"model": 1}]}), encoding="utf-8")
    bad = CliRunner().invoke(main, ["report", str(damaged), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "results[0] has no model and quant" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_merged_rows_take_the_fastest_finished_bench_run():
    doc = bench_doc()
    slow = json.loads(json.dumps(doc["runs"][0]))
    slow["summary"]["gen_tokens_per_s"] = 1.0
    doc["runs"].insert(0, slow)
    rows = merge.merged_rows([doc], [], [])
    qwen = next(r for r in rows if r["model"] == "qwen-7b-chat")
    assert qwen["gen_tokens_per_s"] == doc["runs"][1]["summary"]["gen_tokens_per_s"] > 1.0
    glm = next(r for r in rows if r["model"] == "chatglm3-6b")  # failed run: no speeds
    assert glm["gen_tokens_per_s"] is None and glm["size_bytes"] == 4 * 2**30


def test_eval_json_is_written_atomically_under_its_lock(tmp_path, tiny_gguf):
    """An earlier eval.json is replaced only by a complete one; a second run into the folder is refused."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ev.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        gguf = str(tiny_gguf("qwen-7b-chat", "Q4_K_M"))
        result = CliRunner().invoke(main, ["eval", "ceval", gguf, "--data", str(EXAMS / "ceval"), "--out", str(out)])
    finally:
        os.close(fd)
    assert result.exit_code == 1 and "in use by another `qrun eval`" in result.stderr
    assert sorted(p.name for p in Path(out).iterdir()) == [ev.LOCK_NAME]


def test_changed_questions_are_scored_again(tiny_gguf, tmp_path):
    """Records are reused only for the same conversation: an edited question in another copy of the data is not."""
    data = tmp_path / "ceval"
    shutil.copytree(EXAMS / "ceval", data)
    gguf = str(tiny_gguf("qwen-7b-chat", "Q4_K_M"))
    args = ["ceval", gguf, "--data", str(data), "--subjects", "chinese_history", "--out", str(tmp_path / "out")]
    first = run_eval_cli(*args)
    assert "3 questions (0 already scored)" in first.stderr
    assert "3 questions (3 already scored)" in run_eval_cli(*args).stderr
    path = data / "val" / "chinese_history_val.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("蔡伦,毕昇", "毕昇,蔡伦"), encoding="utf-8")
    assert "3 questions (2 already scored)" in run_eval_cli(*args).stderr


def test_earlier_results_are_kept_or_refused(tiny_gguf, tmp_path):
    """Another GGUF's earlier result in eval.json stays; results of another split or --shots are never replaced."""
    qwen, deepseek = str(tiny_gguf("qwen-7b-chat", "Q4_K_M")), str(tiny_gguf("deepseek-llm-7b-chat", "Q4_K_M"))
    out = tmp_path / "out"
    common = ["--data", str(EXAMS / "cmmlu"), "--limit", "1", "--out", str(out)]
    run_eval_cli("cmmlu", qwen, *common)
    run_eval_cli("cmmlu", deepseek, *common)
    saved = (out / "eval.json").read_bytes()
    assert [r["model"] for r in json.loads(saved)["results"]] == ["qwen-7b-chat", "deepseek-llm-7b-chat"]
    refused = CliRunner().invoke(main, ["eval", "cmmlu", qwen, *common, "--shots", "1"])
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "holds cmmlu test 0-shot results, not cmmlu test 1-shot" in refused.stderr
    assert (out / "eval.json").read_bytes() == saved


def test_merged_rows_keep_two_files_of_one_model_and_quant_apart():
    """Matched by sha256, not by name: a re-converted qwen Q4_K_M (another file) is its own row, and its KL does not
    land on the benched file's row."""
    doc = bench_doc()
    doc["runs"][0]["gguf_sha256"] = "a" * 64
    quality = {"reference": {"quant": "BF16"}, "results": [{"model": "qwen-7b-chat", "quant": "Q4_K_M",
               "gguf_sha256": "d" * 64, "kl_mean": 0.5, "kl_p99": 1.0}]}  # fmt: skip
    rows = [r for r in merge.merged_rows([doc], [quality], []) if r["model"] == "qwen-7b-chat"]
    assert sorted(r["gguf_sha256"] for r in rows) == ["a" * 64, "d" * 64]
    benched = next(r for r in rows if r["gguf_sha256"] == "a" * 64)
    assert benched["kl_mean"] is None and benched["gen_tokens_per_s"] is not None
