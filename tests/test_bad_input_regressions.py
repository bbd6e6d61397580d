"""Bad input that review found mishandled, kept as regression tests: each must stay one `Error:` line (or the
right behaviour), never a traceback or a silent wrong setting."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import bench_doc
from qrun.bench import report
from qrun.cli import main


def _one_error_line(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1, result.stderr


# Was defect R-P2-1: `--out` naming an existing FILE crashes with a FileExistsError traceback
# (convert/pipeline.py `out.mkdir(...)`, bench/run.py `out_dir.mkdir(...)`, bench/report.py write_outputs).
def test_convert_out_that_is_a_file_is_one_error_line(tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["convert", "qwen", "--from", str(tmp_path), "--ggufs", str(a_file)])
    _one_error_line(result)


def test_report_out_that_is_a_file_is_one_error_line(tmp_path):
    results_json = tmp_path / "results.json"
    results_json.write_text(json.dumps(bench_doc(), ensure_ascii=False), encoding="utf-8")
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["report", str(results_json), "--out", str(a_file)])
    _one_error_line(result)


def test_report_on_a_damaged_results_file_is_one_error_line(tmp_path):
    doc = json.loads(json.dumps(bench_doc(), ensure_ascii=False))
    del doc["runs"][0]["questions"][0]["median"]
    damaged = tmp_path / "results.json"
    damaged.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(damaged), "--out", str(tmp_path / "out")])
    _one_error_line(result)


# Was defect R-P2-3: `qrun ask MODEL -` keeps the trailing newline that `echo`/a file gives stdin, so the prompt ids
# differ
# from the same question typed as an argument (DeepSeek: "你好\n" + "\n\n" = three newlines before "Assistant:").
def test_prompt_from_stdin_equals_the_same_prompt_as_an_argument(tiny_gguf):
    gguf = str(tiny_gguf("deepseek-llm-7b-chat"))
    typed = CliRunner().invoke(main, ["ask", gguf, "你好", "--show-prompt", "--json"])
    piped = CliRunner().invoke(main, ["ask", gguf, "-", "--show-prompt", "--json"], input="你好\n")
    assert typed.exit_code == 0 and piped.exit_code == 0
    assert json.loads(piped.stdout)["prompt_token_ids"] == json.loads(typed.stdout)["prompt_token_ids"]


# Was defect R-P3-1: a bad --threads-batch is reported as "--threads must be at least 1" (the loader called
# check_threads(threads_batch), whose message hard-coded --threads); tests/test_load_settings.py does not check the
# name.
def test_bad_threads_batch_error_names_its_own_flag(tiny_gguf):
    result = CliRunner().invoke(main, ["ask", str(tiny_gguf("deepseek-llm-7b-chat")), "hi", "--threads-batch", "-2"])
    assert result.exit_code == 1
    assert "--threads-batch" in result.stderr, result.stderr


def test_machine_table_rows_keep_two_columns():
    doc = bench_doc()
    doc["machine"]["llama_cpp_system_info"] = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 |"
    markdown = report.render_markdown([doc])
    row = next(line for line in markdown.splitlines() if line.startswith("| llama.cpp system info"))
    unescaped_pipes = row.replace("\\|", "").count("|")
    assert unescaped_pipes == 3, row


def test_score_of_an_empty_answers_file_is_an_error(tmp_path):
    empty = tmp_path / "answers.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(empty)])
    _one_error_line(result)


# Was defect R-P1-1: QRUN_REPACK=off / False / NO / OFF turns repacking ON (qrun/settings.py repack_weights and
# the profile resolver compared case-sensitively against ("", "0", "false", "no")). On an Intel VM whose AMX traps
# that is a SIGILL: `QRUN_REPACK=off qrun ask deepseek hi` dies with "Illegal instruction", exit 132, no message.
# Same parser for QRUN_DEBUG ("off" turns tracebacks on).
@pytest.mark.parametrize("value", ["off", "False", "NO", "Off"])
def test_qrun_repack_off_words_mean_off(value, monkeypatch):
    from qrun import settings

    monkeypatch.setenv("QRUN_REPACK", value)
    assert settings.repack_weights(None) is False
    monkeypatch.setenv("QRUN_DEBUG", value)
    assert settings.debug() is False


def test_suite_with_a_misspelt_rubric_key_is_refused(tmp_path):
    suite = tmp_path / "mine.json"
    suite.write_text(
        json.dumps(
            {
                "name": "mine",
                "questions": [
                    {
                        "id": "q1",
                        "question": "1+1=?",
                        "rubric": [{"id": "two", "weight": 1, "patterns": ["2"], "contradict": ["3"]}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": "q1", "answer": "3"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(answers), "--suite", str(suite)])
    _one_error_line(result)
    assert "contradict" in result.stderr
