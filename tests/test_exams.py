"""Exam readers (C-Eval's and CMMLU's CSV layouts) on self-made files in tests/data/exams, malformed files one error
line each, and the download path through the REAL hub clients: their caches are populated by hand in the layouts
the libraries read offline (as tests/test_download.py does for checkpoints)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from conftest import DATA_DIR

from qrun.bench import exams
from qrun.cli import main
from qrun.convert import download as hub_download
from qrun.errors import DownloadError, UsageError

EXAMS = DATA_DIR / "exams"
CEVAL, CMMLU = exams.get_suite("ceval"), exams.get_suite("cmmlu")
COMMIT = "9a8b7c6d5e4f30211203948576afbecd01234567"


def test_ceval_layout_reads_subjects_answers_and_quoted_fields():
    questions = exams.load(CEVAL, EXAMS / "ceval", split="val")
    assert list(questions) == ["chinese_history", "computer_network"]
    network = questions["computer_network"]
    assert [q.answer for q in network] == ["C", "B", "A", "C"]
    assert network[3].question == '下列说法正确的是："ping"命令使用的协议是____。'  # CSV-quoted, "" unescaped
    assert network[3].options == ("UDP", "TCP", "ICMP", "ARP") and network[3].id == "3" and network[3].line == 5
    assert exams.dev_examples(CEVAL, EXAMS / "ceval", "computer_network", 2)[1].answer == "B"
    assert exams.subject_title(exams.find_root(CEVAL, EXAMS / "ceval"), "computer_network") == "计算机网络"
    assert exams.subject_title(None, "high_school_physics") == "high school physics"


def test_cmmlu_layout_takes_ids_from_the_unnamed_index_column():
    questions = exams.load(CMMLU, EXAMS / "cmmlu", split="test", subjects=["astronomy"])
    assert list(questions) == ["astronomy"]
    assert [(q.id, q.answer, q.options[1]) for q in questions["astronomy"]] == [("0", "A", "金星"), ("1", "B", "距离")]


def test_splits_and_subjects_are_checked():
    with pytest.raises(UsageError, match="test split has no answers"):
        exams.load(CEVAL, EXAMS / "ceval", split="test")
    with pytest.raises(UsageError, match="no split 'val'"):
        exams.load(CMMLU, EXAMS / "cmmlu", split="val")
    with pytest.raises(UsageError, match="no subject law"):
        exams.load(CEVAL, EXAMS / "ceval", split="val", subjects=["law"])
    with pytest.raises(UsageError, match="unknown exam suite 'mmlu'"):
        exams.get_suite("mmlu")
    # C-Eval's test files (no answer column) are still read: a split without answers is not a broken file
    assert (
        exams.read_csv(CEVAL, EXAMS / "ceval/test/computer_network_test.csv", subject="x", split="test")[0].answer
        is None
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


HEADER = "id,question,A,B,C,D,answer\n"
MALFORMED = {
    # name: (file content as bytes, what the one error line must say)
    "missing column": ("id,question,A,B,C,answer\n0,问题,甲,乙,丙,A\n".encode(), ["line 1", "no column 'D'"]),
    "answer not in ABCD": ((HEADER + "0,问题,甲,乙,丙,丁,A\n1,问题,甲,乙,丙,丁,E\n").encode(), ["line 3", "'E'"]),
    "empty file": (b"", ["empty"]),
    "header only": (HEADER.encode(), ["no questions"]),
    "bad encoding": ((HEADER + "0,问题,甲,乙,丙,丁,A\n").encode("gbk"), ["line 2", "not UTF-8"]),
    "short row": ((HEADER + "0,问题,甲,乙\n").encode(), ["line 2", "row 1 has 4 fields"]),
    "unclosed quote": ((HEADER + '0,"问题,甲,乙,丙,丁,A\n').encode(), ["not CSV"]),
    "empty question": ((HEADER + "0,问题,甲,乙,丙,丁,A\n1,  ,,,,,B\n").encode(), ["line 3", "row 2 has no question"]),
    "a column twice": (
        "id,question,question,A,B,C,D,answer\n0,问,题,甲,乙,丙,丁,A\n".encode(),
        ["line 1", "'question' twice"],
    ),
}


CMMLU_HEADER = ",Question,A,B,C,D,Answer\n"
CMMLU_MALFORMED = {  # the same faults in CMMLU's layout: unnamed index column, capitalised names
    "answer not in ABCD": (
        (CMMLU_HEADER + "0,问题,甲,乙,丙,丁,A\n1,问题,甲,乙,丙,丁,E\n").encode(),
        ["line 3", "row 2's answer is 'E'"],
    ),
    "short row": ((CMMLU_HEADER + "0,问题,甲,乙\n").encode(), ["line 2", "row 1 has 4 fields"]),
    "missing column": (",Question,A,B,C,Answer\n0,问题,甲,乙,丙,A\n".encode(), ["line 1", "no column 'D'"]),
    "bad encoding": ((CMMLU_HEADER + "0,问题,甲,乙,丙,丁,A\n").encode("gbk"), ["line 2", "not UTF-8"]),
}
LAYOUT_CASES = [("ceval", case) for case in MALFORMED] + [("cmmlu", case) for case in CMMLU_MALFORMED]


@pytest.mark.parametrize(("suite", "case"), LAYOUT_CASES)
def test_malformed_csv_is_one_error_naming_file_and_line(suite, case, tmp_path, tiny_gguf):
    data = _copy(EXAMS / suite, tmp_path / suite)
    if suite == "ceval":
        bad = data / "val" / "computer_network_val.csv"
        content, needles = MALFORMED[case]
    else:
        bad = data / "test" / "astronomy.csv"
        content, needles = CMMLU_MALFORMED[case]
    bad.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_text('{"earlier": true}\n', encoding="utf-8")
    gguf = str(tiny_gguf("qwen-7b-chat", "Q4_K_M"))
    result = CliRunner().invoke(main, ["eval", suite, gguf, "--data", str(data), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and " — " in lines[0], lines
    assert str(bad) in lines[0] and all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in result.output
    assert (out / "eval.json").read_text(encoding="utf-8") == '{"earlier": true}\n'  # earlier output untouched
    assert sorted(p.name for p in out.iterdir()) == ["eval.json"]  # nothing partial left


def test_wrong_layout_is_one_error_line(tmp_path, tiny_gguf):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(EXAMS / "ceval/val/computer_network_val.csv", flat)  # CSVs without the split folders
    gguf = str(tiny_gguf("qwen-7b-chat", "Q4_K_M"))
    cases = (
        ("ceval", flat, [f"{flat} is not in C-Eval's layout"]),
        ("cmmlu", EXAMS / "cmmlu" / "test", ["is not in CMMLU's layout"]),
        ("cmmlu", EXAMS / "ceval", ["C-Eval's columns, not CMMLU's", "qrun eval ceval"]),
    )
    for suite, folder, needles in cases:
        result = CliRunner().invoke(main, ["eval", suite, gguf, "--data", str(folder), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and all(n in lines[0] for n in needles), lines
    assert not (tmp_path / "o").exists()


# -- downloads through the hub clients, offline ----------------------------------------------------------------
def _zip_of(folder: Path, path: Path, top: str) -> Path:
    """A dataset zip like the hubs': the split folders under `top` ("" = at the zip's root)."""
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*.csv")):
            archive.write(file, str(Path(top) / file.relative_to(folder)) if top else str(file.relative_to(folder)))
    return path


def _hf_dataset_cache(cache: Path, repo_id: str) -> Path:
    """huggingface_hub's layout for a dataset repo: datasets--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def test_hf_offline_cache_with_the_zip_is_extracted_once(tmp_path):
    snapshot = _hf_dataset_cache(tmp_path / "hf", "ceval/ceval-exam")
    _zip_of(EXAMS / "ceval", snapshot / "ceval-exam.zip", top="")
    root = exams.download(CEVAL, source="hf", cache_dir=tmp_path / "hf", local_only=True)
    assert root.parent == Path(os.environ["QRUN_HOME"]) / "exams" / "ceval"  # split folders at the zip's root
    assert sorted(exams.load(CEVAL, root, split="val")) == ["chinese_history", "computer_network"]
    mtime = root.stat().st_mtime_ns
    assert exams.download(CEVAL, source="hf", cache_dir=tmp_path / "hf", local_only=True) == root
    assert root.stat().st_mtime_ns == mtime  # not extracted again
    with pytest.raises(DownloadError, match="haonan-li/cmmlu"):  # not cached: the client's own offline failure
        exams.download(CMMLU, source="hf", cache_dir=tmp_path / "hf", local_only=True)


def test_modelscope_cache_with_csv_folders_and_a_zip_with_a_top_folder(tmp_path, monkeypatch):
    cache = tmp_path / "ms"
    snapshot = cache / "datasets" / "opencompass--cmmlu" / "snapshots" / "master"
    shutil.copytree(EXAMS / "cmmlu", snapshot)
    monkeypatch.setenv("QRUN_OFFLINE", "1")  # local_only from QRUN_OFFLINE, as `qrun convert` does
    root = exams.download(CMMLU, source="modelscope", cache_dir=cache)
    assert root == snapshot and list(exams.load(CMMLU, root, split="test")) == ["agronomy", "astronomy"]
    # a zip whose split folders sit under one top folder (cmmlu_v1_0_1.zip's own name is the zip's)
    zipped = cache / "datasets" / "opencompass--ceval-exam" / "snapshots" / "master"
    zipped.mkdir(parents=True)
    _zip_of(EXAMS / "ceval", zipped / "ceval-exam.zip", top="ceval-exam")
    root = exams.download(CEVAL, source="modelscope", cache_dir=cache)
    assert root.name == "ceval-exam" and (root / "val" / "computer_network_val.csv").is_file()


def test_qrun_eval_downloads_through_huggingface_hub_offline(tmp_path, tiny_gguf):
    """The whole command in a fresh process: HF_HUB_OFFLINE=1 and HF_HUB_CACHE, read by huggingface_hub itself."""
    snapshot = _hf_dataset_cache(tmp_path / "hf", "haonan-li/cmmlu")
    _zip_of(EXAMS / "cmmlu", snapshot / "cmmlu_v1_0_1.zip", top="")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf"),
        QRUN_HOME=str(tmp_path / "home"),
    )
    out = tmp_path / "out"
    gguf = str(tiny_gguf("deepseek-llm-7b-chat", "Q4_K_M"))
    command = [sys.executable, "-m", "qrun", "eval", "cmmlu", gguf, "--source", "hf", "--limit", "1"]
    proc = subprocess.run(
        [*command, "--threads", "2", "--out", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "haonan-li/cmmlu" in proc.stderr and (out / "eval.json").is_file()
    assert "deepseek-llm-7b-chat" in proc.stdout and "/2" in proc.stdout  # one question of each of two subjects


# -- no network: one line naming QRUN_OFFLINE at once, as `qrun convert` (tests/test_progress.py) ----------------
@pytest.mark.parametrize("source", ["modelscope", "hf"])
@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"QRUN_OFFLINE": "1"}, "QRUN_OFFLINE=1 and the {hub} cache has no complete copy"),
        # a refused port and a host that cannot resolve (.invalid, RFC 6761), through each client's endpoint setting
        ({"ENDPOINT": "http://127.0.0.1:9"}, "{hub} is unreachable (127.0.0.1:9: connection refused)"),
        ({"ENDPOINT": "https://hub.invalid"}, "{hub} is unreachable (hub.invalid:443: name resolution failed)"),
    ],
    ids=["QRUN_OFFLINE", "refused", "invalid-host"],
)
def test_eval_without_network_fails_at_once_in_one_line_naming_qrun_offline(tmp_path, tiny_gguf, source, env, names):
    hub, repo = ("ModelScope", "opencompass/cmmlu") if source == "modelscope" else ("Hugging Face", "haonan-li/cmmlu")
    endpoint_var = "MODELSCOPE_ENDPOINT" if source == "modelscope" else "HF_ENDPOINT"
    setting = {endpoint_var if name == "ENDPOINT" else name: value for name, value in env.items()}
    clean = {k: v for k, v in os.environ.items() if k not in ("QRUN_OFFLINE", "HF_HUB_OFFLINE", endpoint_var)}
    caches = {"MODELSCOPE_CACHE": str(tmp_path / "ms-cache"), "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    ggufs = tiny_gguf("qwen-7b-chat", "Q4_K_M").parent
    out = tmp_path / "out"
    command = [sys.executable, "-m", "qrun", "eval", "cmmlu", "qwen", "--source", source, "--ggufs", str(ggufs)]
    started = time.monotonic()
    proc = subprocess.run(
        [*command, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **caches, "QRUN_HOME": str(tmp_path / "home"), **setting},
    )
    elapsed_s = time.monotonic() - started
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"[download] CMMLU ({repo}) from {hub}" and len(lines) == 2, proc.stderr
    error = lines[1]
    assert error.startswith(f"Error: could not download CMMLU ({repo}) from {hub}: ") and names.format(hub=hub) in error
    what, fix = error.split(" — ")  # exactly one separator: nothing of the hub's own message cut into the line
    assert "QRUN_OFFLINE" in fix and "--data DIR" in fix, error
    assert not out.exists() and not (tmp_path / "home" / "exams").exists()  # nothing written, nothing extracted
    # ModelScope's client alone spent ~23 s on retries here; the interpreter and the hub libraries' imports take
    # most of what is left
    assert elapsed_s < 8, elapsed_s


def test_a_long_hub_error_is_summarised_at_a_word_without_an_open_bracket():
    """A real urllib3 failure (a refused local port) whose message runs past the limit, as the hub clients raise."""
    with pytest.raises(requests.RequestException) as caught:
        requests.get("http://127.0.0.1:9/api/v1/datasets/opencompass/cmmlu/repo/files?Revision=master", timeout=2)
    text = " ".join(str(caught.value).split())
    assert len(text) > 120, text  # long enough that a cut is needed below
    summary = hub_download.hub_error_summary(caught.value, limit=120)
    assert len(summary) <= 120 and summary.endswith("...") and summary[:-3] == summary[:-3].rstrip()
    body = summary[:-3]
    # cut where a word ends (its trailing ":" dropped) or before a "(", never inside a word
    assert text.startswith(body) and text[len(body)] in " ,;:(", (body, text)
    assert body.count("(") == body.count(")"), body
    assert hub_download.hub_error_summary(ValueError("short  message\n here")) == "short message here"
