"""Bad input from a second hostile pass over serve, eval, report, rm and completion, kept as regression tests: each
is one `Error:` line and exit code 1 (or an OpenAI error object with status 400 from the server), never a
traceback, a silent wrong setting, a wrong score or a lost output. One real server process serves the module."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import Server, http

from qrun.cli import main

DATA = Path(__file__).parent / "data" / "exams"
HI = [{"role": "user", "content": "hi"}]


def _one_error_line(result, *words: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and " — " in errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# -- qrun serve ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-ggufs")
    gguf = tiny_gguf("deepseek-llm-7b-chat")
    for path in (gguf, gguf.with_suffix(".json")):
        (folder / path.name).symlink_to(path)
    running = Server(["--ggufs", str(folder), "--threads", "1", "--ctx", "512"], tmp_path_factory.mktemp("home"))
    yield running
    assert running.stop() == 0, running.log()


def _post(server, body=None, *, content: bytes | None = None):
    return http("POST", server.url + "/v1/chat/completions", json_body=body, content=content)


def test_serve_refuses_what_it_would_ignore_and_survives_deep_json(server):
    # `[[[[...` 100,000 deep: json's recursion limit was a 500 with a traceback in the server's log
    deep = b'{"model": "deepseek", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = _post(server, content=deep)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json", reply.text
    # penalties and JSON mode were accepted and silently not applied (even "presence_penalty": "a")
    for field, value in (
        ("frequency_penalty", 5),
        ("frequency_penalty", 1.5),
        ("presence_penalty", "a"),
        ("response_format", {"type": "json_object"}),
        ("response_format", "json"),
    ):
        reply = _post(server, {"model": "deepseek", "messages": HI, field: value})
        assert reply.status_code == 400, (field, value, reply.text)
        assert reply.json()["error"]["param"] == field, reply.text
    # what changes nothing is still accepted (clients send these defaults)
    fine = {"frequency_penalty": 0, "presence_penalty": 0.0, "response_format": {"type": "text"}}
    reply = _post(server, {"model": "deepseek", "messages": HI, "max_tokens": 2, **fine})
    assert reply.status_code == 200, reply.text
    assert "Traceback" not in server.log(), server.log()


def test_serve_long_stop_strings_do_not_hold_the_worker(server):
    # four 200,000-character stop strings (0.8 MB, under the body limit): 20 tokens took 37 s, each token slicing
    # every prefix of every stop string, while every other request waited
    started = time.monotonic()
    reply = _post(server, {"model": "deepseek", "messages": HI, "max_tokens": 20, "stop": ["x" * 200_000] * 4})
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 10, "a long stop string still costs seconds per token"


def test_serve_flags_out_of_range_are_one_line(tiny_gguf, tmp_path, monkeypatch):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    gguf = tiny_gguf("deepseek-llm-7b-chat")
    for path in (gguf, gguf.with_suffix(".json")):
        (folder / path.name).symlink_to(path)
    base = ["serve", "deepseek", "--ggufs", str(folder), "--threads", "1"]
    # 70000 listened on 70000 % 65536 = 4464; -1 blamed --host
    for port in ("70000", "-1", "65536"):
        _one_error_line(CliRunner().invoke(main, [*base, "--port", port]), "--port", "0 to 65535")
    # an empty key served with no key at all; a non-ASCII one could never be sent in a header
    for key in ("", "   ", "k€y"):
        _one_error_line(CliRunner().invoke(main, [*base, "--port", "0", "--api-key", key]), "--api-key")
    # an empty QRUN_API_KEY still means "no key" (Click reads an empty variable as unset): the port is what is wrong
    monkeypatch.setenv("QRUN_API_KEY", "")
    _one_error_line(CliRunner().invoke(main, [*base, "--port", "70000"]), "--port")


# -- qrun eval -----------------------------------------------------------------------------------------------------
def _exam_copy(tmp_path: Path, suite: str) -> Path:
    return Path(shutil.copytree(DATA / suite, tmp_path / suite))


def test_eval_refuses_repeated_ids_and_names_a_too_long_question(tmp_path, tiny_gguf):
    gguf = str(tiny_gguf("qwen-7b-chat"))
    data = _exam_copy(tmp_path, "cmmlu")
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_text('{"earlier": true}\n', encoding="utf-8")
    bad = data / "test" / "agronomy.csv"
    # two rows with id 0: both were scored with the second row's prompt, the first against its own key
    bad.write_text(",Question,A,B,C,D,Answer\n0,甲?,a,b,c,d,B\n0,乙?,a,b,c,d,C\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "cmmlu", gguf, "--data", str(data), "--out", str(out)])
    _one_error_line(result, str(bad), "line 3", "repeats id '0' of line 2", "own id")
    assert (out / "eval.json").read_text(encoding="utf-8") == '{"earlier": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["eval.json"]
    # zero-shot, a question longer than the training context was told to "use fewer --shots"
    bad.write_text(",Question,A,B,C,D,Answer\n0," + "长" * 6000 + ",a,b,c,d,B\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "cmmlu", gguf, "--data", str(data), "--out", str(tmp_path / "o2")])
    line = _one_error_line(result, "question 0 of agronomy", f"remove it from {bad} (line 2)")
    assert "--shots" not in line and "with its examples" not in line


def test_eval_refuses_an_earlier_eval_json_with_a_malformed_result(tmp_path, tiny_gguf):
    gguf = str(tiny_gguf("qwen-7b-chat"))
    out = tmp_path / "out"
    out.mkdir()
    # a hand-edited result without model and quant: a KeyError traceback after every question was scored
    earlier = {
        "kind": "qrun-eval",
        "schema": 1,
        "suite": "ceval",
        "split": "val",
        "shots": 0,
        "results": [{"model": 5}],
    }
    text = json.dumps(earlier)
    (out / "eval.json").write_text(text, encoding="utf-8")
    args = ["eval", "ceval", gguf, "--data", str(DATA / "ceval"), "--out", str(out), "--limit", "1"]
    _one_error_line(CliRunner().invoke(main, args), "eval.json", "not a `qrun eval` result", "--out")
    assert (out / "eval.json").read_text(encoding="utf-8") == text
    # the folder's lock file (qrun.lifeline.owned_folder) stays by design; no records file was started
    assert sorted(p.name for p in out.iterdir() if p.name != ".eval.lock") == ["eval.json"]


# -- qrun report ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_doc(tiny_gguf, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("eval-out")
    args = ["eval", "ceval", str(tiny_gguf("qwen-7b-chat")), "--data", str(DATA / "ceval"), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--limit", "1"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "eval.json").read_text(encoding="utf-8"))


def _damaged(doc: dict, change) -> dict:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def test_report_names_damaged_eval_and_quality_fields(eval_doc, tmp_path):
    quality = {
        "kind": "qrun-quality",
        "schema": 1,
        "reference": {"quant": "F16"},
        "results": [{"model": eval_doc["results"][0]["model"], "quant": "Q4_K_M", "kl_mean": 0.1}],
    }
    cases = [
        # (document, words of the one error line)
        (_damaged(eval_doc, lambda d: d.pop("schema")), ["field schema is None", "re-run `qrun eval`"]),
        (_damaged(eval_doc, lambda d: d.update(schema="1")), ["field schema is '1'"]),
        (_damaged(eval_doc, lambda d: d["results"][0].update(ci95=5)), ["results[0].ci95"]),
        (_damaged(eval_doc, lambda d: d["results"][0].update(ci95=["a", 1])), ["results[0].ci95"]),
        (_damaged(eval_doc, lambda d: d.update(suite={"x": 1})), ["field suite"]),
        (_damaged(quality, lambda d: d.update(reference="F16")), ["field reference", "re-run `qrun quality`"]),
    ]
    for i, (doc, words) in enumerate(cases):
        path = tmp_path / f"damaged-{i}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        out = tmp_path / f"report-{i}"
        result = CliRunner().invoke(main, ["report", str(path), "--out", str(out)])
        _one_error_line(result, str(path), *words)
        assert not out.exists(), i
    # an eval.json cut short is not recognised as one: the hint named only `qrun bench`'s results.json
    cut = tmp_path / "eval.json"
    cut.write_text(json.dumps(eval_doc)[:200], encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(cut), "--out", str(tmp_path / "cut")])
    _one_error_line(result, str(cut), "eval.json", "`qrun eval`")
    assert not (tmp_path / "cut").exists()
    # the undamaged pair still makes a report
    (tmp_path / "eval.json").write_text(json.dumps(eval_doc), encoding="utf-8")
    (tmp_path / "quality.json").write_text(json.dumps(quality), encoding="utf-8")
    paths = [str(tmp_path / "eval.json"), str(tmp_path / "quality.json")]
    result = CliRunner().invoke(main, ["report", *paths, "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "C-Eval accuracy" in (tmp_path / "ok" / "report.md").read_text(encoding="utf-8")


# -- qrun rm and qrun completion ------------------------------------------------------------------------------------
def test_rm_reports_a_wrong_model_before_asking(tmp_path):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    # stdin is not a terminal here: "add --yes" came first, and with --yes the real problem
    for args, words in (
        (["rm", "llama"], ["unknown model 'llama'"]),
        (["rm", "deepseek", "--quant", "Q3"], ["unknown --quant 'Q3'"]),
        (["rm", "deepseek"], ["no deepseek-llm-7b-chat files"]),
    ):
        _one_error_line(CliRunner().invoke(main, [*args, "--ggufs", str(folder)]), *words)


def test_completion_errors_are_one_line():
    # Click's "Choose from:\n\tbash,\n\tzsh,..." was four lines
    _one_error_line(CliRunner().invoke(main, ["completion"]), "Missing argument", "bash, zsh, fish")
    _one_error_line(CliRunner().invoke(main, ["completion", "tcsh"]), "'tcsh' is not one of")
