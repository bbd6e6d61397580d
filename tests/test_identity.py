"""Bench results carry the GGUF's own sha256 (hashed by the worker from the file), its quant and size; `--json`
on bench and tune prints one JSON document on stdout and nothing else there. Real files, real worker processes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qrun.convert.manifest import manifest_path_for

MODEL = "deepseek-llm-7b-chat"
QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]


@pytest.fixture()
def one_question_suite(tmp_path) -> Path:
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "one", seed["questions"][2:3]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    return path


def _qrun(*args: str) -> subprocess.CompletedProcess:
    """A real `qrun` process: stdout is the process's own file descriptor 1, not a captured sys.stdout."""
    return subprocess.run(QRUN + list(args), capture_output=True, text=True, timeout=300, env=dict(os.environ))


def _bench_json(ggufs: Path, out: Path, suite: Path) -> dict:
    proc = _qrun(
        "bench",
        "--ggufs",
        str(ggufs),
        "--out",
        str(out),
        "--suite",
        str(suite),
        "--threads",
        "1",
        "--max-tokens",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the document and nothing else
    assert doc == json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "gen tok/s" not in proc.stdout and "qrun bench: 1 run(s)" in proc.stderr
    return doc


def test_results_carry_the_files_own_sha256_which_changes_with_the_file(tiny_gguf, tmp_path, one_question_suite):
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    gguf = ggufs / f"{MODEL}-Q4_K_M.gguf"
    src = tiny_gguf(MODEL, "Q4_K_M")
    shutil.copy(src, gguf)
    shutil.copy(manifest_path_for(src), manifest_path_for(gguf))  # the manifest `qrun convert` wrote
    before = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert json.loads(manifest_path_for(gguf).read_text(encoding="utf-8"))["sha256"] == before

    first = _bench_json(ggufs, tmp_path / "first", one_question_suite)["runs"][0]
    assert first["status"] == "ok" and first["gguf_sha256"] == before
    assert first["quant"] == first["quant_in_file"] == "Q4_K_M"
    assert first["gguf_size_bytes"] == gguf.stat().st_size and first["gguf_sha256_s"] >= 0
    assert first["manifest_sha256_matches"] is True

    # one byte of the last tensor's data changes: the file still loads, and its identity must follow it; the
    # manifest that still claims the old hash is compared, reported, and not believed
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0x01
    gguf.write_bytes(bytes(data))
    after = hashlib.sha256(bytes(data)).hexdigest()
    assert after != before
    proc = _qrun(
        "bench",
        "--ggufs",
        str(ggufs),
        "--out",
        str(tmp_path / "second"),
        "--suite",
        str(one_question_suite),
        "--threads",
        "1",
        "--max-tokens",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)["runs"][0]
    assert second["status"] == "ok" and second["gguf_sha256"] == after
    assert second["manifest_sha256_matches"] is False
    assert f"is not the file its manifest describes (sha256 {after[:12]}, manifest {before[:12]})" in proc.stderr

    out = tmp_path / "second"
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text(encoding="utf-8"))))
    assert [r["gguf_sha256"] for r in rows] == [after]
    assert rows[0]["answer_sha256"] == json.loads(proc.stdout)["runs"][0]["questions"][0]["answer_sha256"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"| {after[:12]} (not its manifest's) " in md and before[:12] not in md
    events = [json.loads(line) for line in (out / "measurements.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events][:3] == ["start", "identity", "load"]  # hashed before loading


def test_tune_json_is_the_profile_and_its_path(tiny_gguf, tmp_path):
    folder = Path(os.environ["QRUN_GGUF_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODEL}-Q4_K_M.gguf").symlink_to(tiny_gguf(MODEL, "Q4_K_M"))
    proc = _qrun(
        "tune",
        MODEL,
        "--threads",
        "1",
        "--no-repack",
        "--mmap",
        "--no-flash-attn",
        "--repeat",
        "1",
        "--force",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    path = Path(doc.pop("profile_path"))
    assert doc == json.loads(path.read_text(encoding="utf-8"))
    assert doc["models"][MODEL]["chat"]["evidence"]["decision"]["keep_default"] is True  # one repetition
    assert "tok/s median" not in proc.stdout and "qrun tune:" in proc.stderr
