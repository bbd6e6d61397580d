"""report.md / results.csv / the merged table from saved results (built by tests/helpers.py: no engine needed)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from helpers import bench_doc
from qrun.bench import report, results
from qrun.cli import main
from qrun.errors import BenchError


def test_build_run_medians_spread_summary_and_scores():
    doc = bench_doc()
    qwen, glm = doc["runs"]
    assert qwen["status"] == "ok" and glm["status"] == "failed"
    q3 = qwen["questions"][2]
    assert q3["question_id"] == "seed-3" and q3["answers_identical"]
    assert q3["median"]["gen_tokens_per_s"] == pytest.approx(7.5)  # reps 7.0 and 8.0
    assert q3["spread"]["gen_tokens_per_s"] == {
        "min": 7.0,
        "max": 8.0,
        "stdev": pytest.approx(0.7071, abs=1e-4),
        "n": 2,
    }
    assert [q["score"]["score"] for q in qwen["questions"]] == [0.8, 0.4, 1.0, 0.0, 0.0]
    assert qwen["questions"][3]["score"]["contradicted"] == ["baibai-likes-mingming"]
    assert qwen["summary"]["accuracy"] == pytest.approx(0.44) and qwen["summary"]["questions_total"] == 5
    assert qwen["peak_rss_bytes"] == 6981 * 2**20 and qwen["peak_anon_bytes"] == 2953 * 2**20
    assert glm["summary"]["questions_answered"] == 1 and glm["peak_anon_bytes"] == 2953 * 2**20


def test_markdown_and_csv(tmp_path):
    doc = bench_doc(partial=True)
    paths = report.write_outputs([doc], tmp_path, results_json=True)
    md = paths["report"].read_text(encoding="utf-8")
    assert "PARTIAL RESULTS" in md and "qrun bench --threads 2" in md
    assert "peak anon" in md and "includes the mmap'd GGUF" in md
    assert "FAILED (1/5 answered)" in md and "worker died of SIGKILL" in md and "`Killed`" in md
    assert "7.5 (7.0–8.0)" in md  # a question's gen tok/s median and range
    assert "明明喜欢白白。" in md and "contradicted: baibai-likes-mingming" in md
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert [(r["model"], r["question_id"]) for r in rows] == [
        *(("qwen-7b-chat", f"seed-{i}") for i in range(1, 6)),
        ("chatglm3-6b", "seed-3"),
    ]
    assert float(rows[0]["gen_tokens_per_s_median"]) == 7.5 and rows[0]["score_source"] == "rubric"
    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert saved["schema"] == "qrun-bench-results" and saved["schema_version"] == 1 and saved["partial"] is True


def test_qrun_report_regenerates_and_merges_with_verdicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    report.write_outputs([bench_doc("box-a")], a, results_json=True)
    report.write_outputs([bench_doc("box-b")], b, results_json=True)
    (a / "report.md").unlink()
    (a / "results.csv").unlink()
    result = CliRunner().invoke(main, ["report", str(a / "results.json")])
    assert result.exit_code == 0, result.output
    assert (a / "report.md").exists() and "qwen-7b-chat" in result.stdout and "machine" not in result.stdout

    verdicts = tmp_path / "v.csv"
    verdicts.write_text("model,question_id,score\nqwen,seed-4,1\n", encoding="utf-8")
    out = tmp_path / "merged"
    result = CliRunner().invoke(
        main,
        ["report", str(a / "results.json"), str(b / "results.json"), "--out", str(out), "--verdicts", str(verdicts)],
    )
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "machine" in table and "box-a" in table and "box-b" in table
    assert "0.64 (1 by verdict)" in table  # qwen: seed-4 0 -> 1 by verdict: (0.8+0.4+1+1+0)/5
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Machine: box-a" in md and "## Machine: box-b" in md and "1.00 (verdict)" in md


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda d: d["runs"][0].update(questions={}), "runs[0].questions is not a list"),
        (lambda d: d["runs"][1].pop("summary"), "runs[1].summary is missing"),
        (lambda d: d["runs"][0]["questions"][2]["spread"].update(ttft_s=3), "runs[0].questions[2].spread.ttft_s"),
        (lambda d: d["runs"][0]["questions"][0]["score"].pop("score"), "runs[0].questions[0].score.score is missing"),
        (lambda d: d.update(runs=None), "field runs is not a list"),
    ],
)
def test_a_damaged_results_file_names_the_field(tmp_path, damage, field):
    doc = json.loads(json.dumps(bench_doc(), ensure_ascii=False))
    damage(doc)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(BenchError, match=f"{path} is damaged") as err:
        results.load(path)
    assert field in err.value.message and "qrun bench" in err.value.hint


def test_answers_cut_by_max_tokens_are_marked():
    doc = bench_doc()
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
