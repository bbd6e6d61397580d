"""Human verdicts are tied to the answer they were written for: keyed by model, quant and question, optionally by
the answer's hash; one that matches nothing is listed. Saved results built by tests/helpers.py (no engine)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from helpers import ANSWERS, bench_lines
from qrun.bench import report, results, verdicts
from qrun.bench import suite as suites
from qrun.cli import main
from qrun.errors import SuiteError

Q4_SEED4 = ANSWERS["seed-4"]  # "明明喜欢白白。": the wrong way round
Q8_SEED4 = "白白喜欢明明。"


def _two_quants_doc() -> dict:
    """qwen at Q4_K_M and Q8_0: the same answers except seed-4, where the two texts differ."""
    seed = suites.load("seed")
    doc = results.new_document(
        command="qrun bench",
        machine={"hostname": "box"},
        suite=seed,
        verdicts_path=None,
        config={"max_tokens": 64, "repeat": 2},
    )
    q8 = bench_lines("qwen-7b-chat/Q8_0/t2", "qwen-7b-chat", gen_tps=5.0, answers={**ANSWERS, "seed-4": Q8_SEED4})
    q8[0].update(quant="Q8_0", gguf="/g/qwen-7b-chat-Q8_0.gguf")
    lines = bench_lines("qwen-7b-chat/Q4_K_M/t2", "qwen-7b-chat", gen_tps=6.0) + q8
    doc["runs"] = [
        results.build_run(run_id, lines, failure=None, suite=seed, verdicts=None)
        for run_id in ("qwen-7b-chat/Q4_K_M/t2", "qwen-7b-chat/Q8_0/t2")
    ]
    return doc


def _saved(tmp_path) -> tuple[dict, str]:
    doc = _two_quants_doc()
    report.write_outputs([doc], tmp_path / "bench", results_json=True)
    return doc, str(tmp_path / "bench" / "results.json")


def _seed4(doc: dict) -> dict[str, dict]:
    return {
        run["quant"]: next(q for q in run["questions"] if q["question_id"] == "seed-4")["score"] for run in doc["runs"]
    }


def _csv(tmp_path, text: str):
    path = tmp_path / "verdicts.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_verdict_keyed_to_a_quant_applies_to_that_answer_only(tmp_path):
    doc = _two_quants_doc()
    rubric = _seed4(doc)
    assert rubric["Q4_K_M"]["score"] == 0.0 and rubric["Q8_0"]["score"] == 0.75  # the rubric tells them apart
    table = verdicts.load(_csv(tmp_path, "model,quant,question_id,answer_sha256,score\nqwen,Q4_K_M,seed-4,,0.5\n"))
    assert results.apply_verdicts(doc["runs"], table) == []
    got = _seed4(doc)
    assert got["Q4_K_M"]["score"] == 0.5 and got["Q4_K_M"]["source"] == "verdict"
    assert got["Q4_K_M"]["rubric_score"] == 0.0 and got["Q4_K_M"]["verdict"]["line"] == 2
    assert got["Q8_0"] == rubric["Q8_0"]  # Q8_0's answer, another text, keeps the rubric's score
    assert doc["runs"][0]["summary"]["accuracy"] == pytest.approx((0.8 + 0.4 + 1.0 + 0.5 + 0.0) / 5)

    # keyed by the answer's hash instead: the same answer, whatever the quant column says ("*")
    digest = verdicts.answer_sha256(Q4_SEED4)
    table = verdicts.load(_csv(tmp_path, f"qwen-7b-chat,*,seed-4,{digest[:12]},0.25\n"))
    assert results.apply_verdicts(doc["runs"], table) == []
    got = _seed4(doc)
    assert got["Q4_K_M"]["score"] == 0.25 and got["Q8_0"] == rubric["Q8_0"]


def test_a_stale_answer_hash_applies_to_nothing_and_is_listed(tmp_path):
    doc, path = _saved(tmp_path)
    stale = verdicts.answer_sha256("明明喜欢白白，白白不知道。")  # the answer a verdict was once written for
    vfile = _csv(
        tmp_path, f"model,quant,question_id,answer_sha256,score\nqwen,Q4_K_M,seed-4,{stale},1\nqwen,Q4_K_M,seed-9,,1\n"
    )
    out = tmp_path / "with-verdicts"
    result = CliRunner().invoke(main, ["report", path, "--verdicts", str(vfile), "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Verdicts that matched nothing" in md and "(verdict)" not in md
    mine = verdicts.answer_sha256(Q4_SEED4)[:12]
    assert f"answer_sha256 {stale[:12]} is not the answer's ({mine}): the answer changed" in md
    assert "no answer of that model, quant and question" in md  # seed-9: no such question in the results
    warnings = [line for line in result.stderr.splitlines() if "matched no answer" in line]
    assert warnings == [
        f"warning: 2 verdict(s) matched no answer (line(s) 2, 3); why each did not is under "
        f'"Verdicts that matched nothing" in {out / "report.md"}'
    ]
    assert "0.44" in result.stdout and "by verdict" not in result.stdout


def test_an_old_three_column_file_applies_only_where_its_answers_are_one_text(tmp_path):
    doc, path = _saved(tmp_path)
    vfile = _csv(tmp_path, "model,question_id,score\nqwen,seed-4,1\nqwen,seed-2,1\n")
    result = CliRunner().invoke(
        main, ["report", path, "--verdicts", str(vfile), "--json", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)  # --json: the results document, nothing else on stdout
    assert got["schema"] == "qrun-bench-results" and got["verdicts"] == str(vfile)
    seed2 = [next(q for q in run["questions"] if q["question_id"] == "seed-2")["score"] for run in got["runs"]]
    assert [s["source"] for s in seed2] == ["verdict", "verdict"]  # both quants gave the same seed-2 text
    assert [s["source"] for s in _seed4(got).values()] == ["rubric", "rubric"]  # two texts: which one?
    (unmatched,) = got["verdicts_unmatched"]
    assert unmatched["line"] == 2 and unmatched["reason"].startswith("ambiguous: 2 different answers")
    assert "3-column verdicts (model,question_id,score): each applies only where all the answers" in result.stderr


def test_the_template_carries_every_answers_hash_and_round_trips(tmp_path):
    doc, path = _saved(tmp_path)
    template = tmp_path / "v.csv"
    result = CliRunner().invoke(main, ["report", path, "--verdicts-template", str(template)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(template.read_text(encoding="utf-8"))))
    assert len(rows) == 2 * 5 and all(r["score"] == "" for r in rows)
    q8 = next(r for r in rows if r["quant"] == "Q8_0" and r["question_id"] == "seed-4")
    assert q8["answer"] == Q8_SEED4 and q8["answer_sha256"] == verdicts.answer_sha256(Q8_SEED4)
    assert q8["rubric_score"] == "0.75" and q8["model"] == "qwen-7b-chat"
    assert verdicts.load(template).items == []  # nothing filled in yet: no verdicts

    q8["score"] = "0.5"  # a person fills in one line
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    filled = tmp_path / "filled.csv"
    filled.write_text(buf.getvalue(), encoding="utf-8")
    table = verdicts.load(filled)
    assert results.apply_verdicts(doc["runs"], table) == []
    assert [(q, s["score"], s["source"]) for q, s in _seed4(doc).items()] == [
        ("Q4_K_M", 0.0, "rubric"),
        ("Q8_0", 0.5, "verdict"),
    ]

    before = template.read_bytes()
    again = CliRunner().invoke(main, ["report", path, "--verdicts-template", str(template)])
    assert again.exit_code == 1 and again.stderr == (
        f"Error: {template} already exists — give --verdicts-template a new file name\n"
    )
    assert template.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qwen,Q4_K_M,seed-4,abc,1\n", "line 1: answer_sha256 'abc' is not 12-64 hex digits"),
        ("model,quant,question_id,answer_sha256,score\nqwen,Q3,seed-4,,1\n", "line 2: unknown quant 'Q3'"),
        ("qwen,Q4_K_M,seed-4,1\n", "line 1: expected 5 fields (model,quant,question_id,answer_sha256,score) or 3"),
        ("model,quant,score\nqwen,Q4_K_M,1\n", "line 1: the header lacks column(s) question_id"),
    ],
)
def test_bad_verdict_lines_are_named(tmp_path, text, expected):
    with pytest.raises(SuiteError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        verdicts.load(_csv(tmp_path, text))


def test_qrun_score_applies_quant_keyed_verdicts_to_their_lines_only(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps(item, ensure_ascii=False) + "\n"
            for item in [
                {"question_id": "seed-4", "answer": Q4_SEED4, "model": "qwen", "quant": "Q4_K_M"},
                {"question_id": "seed-4", "answer": Q8_SEED4, "model": "qwen", "quant": "Q8_0"},
            ]
        ),
        encoding="utf-8",
    )
    vfile = _csv(tmp_path, "qwen,Q8_0,seed-4,,0.5\n")
    result = CliRunner().invoke(main, ["score", str(answers), "--json", "--verdicts", str(vfile)])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert [(s["quant"], s["score"], s["source"]) for s in scored] == [
        ("Q4_K_M", 0.0, "rubric"),
        ("Q8_0", 0.5, "verdict"),
    ]
    assert scored[0]["answer_sha256"] == verdicts.answer_sha256(Q4_SEED4)
