"""report.md / results.csv / the merged table from saved results (constructed here: no engine needed)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from qrun.bench import machine, report, results
from qrun.bench import suite as suites
from qrun.cli import main
from qrun.errors import BenchError

ANSWERS = {"seed-1": "冬天多穿，夏天少穿。", "seed-2": "眼光太高。", "seed-3": "他不知道。", "seed-4": "明明喜欢白白。",
           "seed-5": "不知道。"}


def _lines(run_id, model, *, gen_tps, answers=ANSWERS, done=True, reps=2):
    lines = [
        {"run_id": run_id, "event": "start", "model": model, "quant": "Q4_K_M", "gguf": f"/g/{model}-Q4_K_M.gguf",
         "gguf_size_bytes": 4 * 2**30, "settings": {"n_threads": 2, "n_threads_batch": 2, "n_ctx": 4096,
                                                    "use_mmap": True}, "rss_before_load_bytes": 50 * 2**20},
        {"run_id": run_id, "event": "load", "load_s": 4.3, "peak_rss_bytes": 6000 * 2**20,
         "peak_anon_bytes": 2900 * 2**20},
    ]
    for qid, answer in answers.items():
        for rep in range(1, reps + 1):
            lines.append({"run_id": run_id, "event": "rep", "question_id": qid, "rep": rep, "answer": answer,
                          "prompt_tokens": 30, "ttft_s": 1.5, "prompt_tokens_per_s": 20.0, "gen_tokens": 11,
                          "gen_tokens_per_s": gen_tps + rep, "total_s": 2.5, "decode_s": 1.0, "zh_chars": 5,
                          "zh_chars_per_s": 5.0, "stop_reason": "eos", "loadavg": [0.5, 0.4, 0.3],
                          "loadavg_1m": 0.5, "peak_rss_bytes": 6981 * 2**20, "peak_anon_bytes": 2953 * 2**20})
    if done:
        lines.append({"run_id": run_id, "event": "done", "peak_rss_bytes": 6981 * 2**20,
                      "peak_anon_bytes": 2953 * 2**20, "memory_note": "rss vs anon"})
    return lines


def _doc(hostname="box-a", *, partial=False, failure=None):
    seed = suites.load("seed")
    fp = dict(machine.fingerprint(), hostname=hostname)
    doc = results.new_document(command="qrun bench --threads 2", machine=fp, suite=seed, verdicts_path=None,
                               config={"max_tokens": 64, "repeat": 2, "warmup_tokens": 16, "temperature": 0.0,
                                       "seed": 42})
    lines = _lines("qwen-7b-chat/Q4_K_M/t2", "qwen-7b-chat", gen_tps=6.0) + \
        _lines("chatglm3-6b/Q4_K_M/t2", "chatglm3-6b", gen_tps=8.0, answers={"seed-3": "我不知道"}, done=False)
    doc["runs"] = [results.build_run("qwen-7b-chat/Q4_K_M/t2", lines, failure=None, suite=seed, verdicts={}),
                   results.build_run("chatglm3-6b/Q4_K_M/t2", lines, suite=seed, verdicts={},
                                     failure=failure or {"exit_code": -9, "signal": 9, "reason": "worker died of "
                                                         "SIGKILL", "last_stderr": "Killed", "interrupted": False})]
    doc["partial"] = partial
    return doc


def test_build_run_medians_spread_summary_and_scores():
    doc = _doc()
    qwen, glm = doc["runs"]
    assert qwen["status"] == "ok" and glm["status"] == "failed"
    q3 = qwen["questions"][2]
    assert q3["question_id"] == "seed-3" and q3["answers_identical"]
    assert q3["median"]["gen_tokens_per_s"] == pytest.approx(7.5)  # reps 7.0 and 8.0
    assert q3["spread"]["gen_tokens_per_s"] == {"min": 7.0, "max": 8.0, "stdev": pytest.approx(0.7071, abs=1e-4),
                                                "n": 2}
    assert [q["score"]["score"] for q in qwen["questions"]] == [0.8, 0.4, 1.0, 0.0, 0.0]
    assert qwen["questions"][3]["score"]["contradicted"] == ["baibai-likes-mingming"]
    assert qwen["summary"]["accuracy"] == pytest.approx(0.44) and qwen["summary"]["questions_total"] == 5
    assert qwen["peak_rss_bytes"] == 6981 * 2**20 and qwen["peak_anon_bytes"] == 2953 * 2**20
    assert glm["summary"]["questions_answered"] == 1 and glm["peak_anon_bytes"] == 2953 * 2**20


def test_markdown_and_csv(tmp_path):
    doc = _doc(partial=True)
    paths = report.write_outputs([doc], tmp_path, results_json=True)
    md = paths["report"].read_text(encoding="utf-8")
    assert "PARTIAL RESULTS" in md and "qrun bench --threads 2" in md
    assert "peak anon" in md and "includes the mmap'd GGUF" in md
    assert "FAILED (1/5 answered)" in md and "worker died of SIGKILL" in md and "`Killed`" in md
    assert "7.5 (7.0–8.0)" in md  # a question's gen tok/s median and range
    assert "明明喜欢白白。" in md and "contradicted: baibai-likes-mingming" in md
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert [(r["model"], r["question_id"]) for r in rows] == [
        *(("qwen-7b-chat", f"seed-{i}") for i in range(1, 6)), ("chatglm3-6b", "seed-3")]
    assert float(rows[0]["gen_tokens_per_s_median"]) == 7.5 and rows[0]["score_source"] == "rubric"
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["schema"] == "qrun-bench-results" and saved["schema_version"] == 1 and saved["partial"] is True


def test_qrun_report_regenerates_and_merges_with_verdicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    report.write_outputs([_doc("box-a")], a, results_json=True)
    report.write_outputs([_doc("box-b")], b, results_json=True)
    (a / "report.md").unlink()
    (a / "results.csv").unlink()
    result = CliRunner().invoke(main, ["report", str(a / "results.json")])
    assert result.exit_code == 0, result.output
    assert (a / "report.md").exists() and "qwen-7b-chat" in result.stdout and "machine" not in result.stdout

    verdicts = tmp_path / "v.csv"
    verdicts.write_text("model,question_id,score\nqwen,seed-4,1\n", encoding="utf-8")
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["report", str(a / "results.json"), str(b / "results.json"), "--out", str(out),
                                       "--verdicts", str(verdicts)])
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "machine" in table and "box-a" in table and "box-b" in table
    assert "0.64 (1 by verdict)" in table  # qwen: seed-4 0 -> 1 by verdict: (0.8+0.4+1+1+0)/5
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Machine: box-a" in md and "## Machine: box-b" in md and "1.00 (verdict)" in md


@pytest.mark.parametrize(("damage", "field"), [
    (lambda d: d["runs"][0].update(questions={}), "runs[0].questions is not a list"),
    (lambda d: d["runs"][1].pop("summary"), "runs[1].summary is missing"),
    (lambda d: d["runs"][0]["questions"][2]["spread"].update(ttft_s=3), "runs[0].questions[2].spread.ttft_s"),
    (lambda d: d["runs"][0]["questions"][0]["score"].pop("score"), "runs[0].questions[0].score.score is missing"),
    (lambda d: d.update(runs=None), "field runs is not a list"),
])
def test_a_damaged_results_file_names_the_field(tmp_path, damage, field):
    doc = json.loads(json.dumps(_doc(), ensure_ascii=False))
    damage(doc)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(BenchError, match=f"{path} is damaged") as err:
        results.load(path)
    assert field in err.value.message and "qrun bench" in err.value.hint


def test_answers_cut_by_max_tokens_are_marked():
    doc = _doc()
    doc["runs"][0]["questions"][4]["stop_reason"] = "max_tokens"
    md = report.render_markdown([doc])
    assert md.count("(cut at 64 tokens)") == 1 and "不知道。 (cut at 64 tokens) |" in md


def test_report_refuses_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(BenchError, match="not a qrun bench results file"):
        results.load(bad)
    result = CliRunner().invoke(main, ["report", str(bad)])
    assert result.exit_code == 1 and "not a qrun bench results file" in result.output
