"""Faults and hostile input for bench, tune, report, text input and numeric options: real processes, real signals,
real files. Each case ends in exit code 1 and one `Error:` line (or works), leaves no partial file, and keeps
earlier outputs byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrun import settings
from qrun.bench import tune, tune_log

QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
DEEPSEEK = "deepseek-llm-7b-chat"


def qrun(
    *args, input: bytes | None = None, env: dict | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `qrun ARGS...` in a fresh process; args may be bytes (passed to the OS as they are)."""
    return subprocess.run(
        QRUN + list(args), input=input, capture_output=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr
    return stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative name -> bytes): compared before and after a fault."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- numbers ---------------------------------------------------------------------------------------------------------

TOO_MANY = str(settings.max_threads() + 1)


@pytest.mark.parametrize(
    "args",
    [
        ["--threads", "1000000"],
        ["--threads", TOO_MANY],
        ["--threads-batch", "1000000"],
        ["--threads", "99999999999999999999999999"],
        ["--threads-batch", str(2**63)],
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--top-p", "nan"],
        ["--top-p", "-inf"],
    ],
)
def test_ask_refuses_absurd_numbers_in_one_line(tiny_gguf, tmp_path, args):
    # 1,000,000 threads reached llama.cpp and ended in std::bad_alloc; NaN sampling passed every check
    gguf = tiny_gguf(DEEPSEEK)
    proc = qrun("ask", str(gguf), "你好", "--max-tokens", "2", *args)
    assert_one_error_line(proc, args[0])
    assert proc.stdout == b""


def test_qrun_threads_env_above_the_bound_is_one_line(tiny_gguf):
    proc = qrun("ask", str(tiny_gguf(DEEPSEEK)), "你好", "--max-tokens", "2", env={"QRUN_THREADS": "1000000"})
    assert_one_error_line(proc, "QRUN_THREADS=1000000", f"({settings.max_threads()}:")
    proc = qrun("ask", str(tiny_gguf(DEEPSEEK)), "你好", "--max-tokens", "2", env={"QRUN_THREADS": "²"})
    assert_one_error_line(proc, "QRUN_THREADS")


def test_the_bound_is_generous_but_finite():
    assert settings.max_threads() == min(4 * (os.cpu_count() or 1), settings.THREADS_CAP)
    assert settings.check_threads(str(settings.max_threads())) == settings.max_threads()
    assert settings.check_thread_list("0, 1") == [0, 1]


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--threads", f"1,{TOO_MANY}"],
        ["bench", "--threads-batch", "1000000"],
        ["tune", "--threads", "1000000"],
        ["tune", "--threads-batch", TOO_MANY],
        ["chat", DEEPSEEK, "--threads", "1000000"],
        ["chat", DEEPSEEK, "--top-p", "nan"],
    ],
)
def test_every_command_shares_the_thread_bound(tmp_path, args):
    proc = qrun(*args, "--ggufs", str(tmp_path), input=b"", cwd=tmp_path)
    assert_one_error_line(proc, "--t")
    assert not (tmp_path / "bench-results").exists()


@pytest.mark.parametrize("tool", ["bandwidth", "compute_peak", "realscale"])
def test_measurement_tools_share_the_thread_bound(tool):
    proc = subprocess.run(
        [sys.executable, "-m", f"tools.perf.{tool}", "--threads", "1000000"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # argparse's usage error
    assert f"is more threads than qrun allows on this machine ({settings.max_threads()}" in proc.stderr


# -- bench: a killed parent, a folder in use, earlier measurements -------------------------------------------------

import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402


@pytest.fixture()
def deepseek_ggufs(tiny_gguf, tmp_path) -> Path:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / f"{DEEPSEEK}-Q4_K_M.gguf").symlink_to(tiny_gguf(DEEPSEEK))
    return folder


@pytest.fixture()
def one_question_suite(tmp_path) -> Path:
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "one", seed["questions"][:1]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    return path


def _events(out: Path, event: str) -> int:
    path = out / "measurements.jsonl"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return sum(1 for line in text.splitlines() if line.endswith("}") and json.loads(line)["event"] == event)


def _reps(out: Path) -> int:
    return _events(out, "rep")


def _start_long_bench(
    ggufs: Path, out: Path, suite: Path, *, max_tokens: int = 32, wait_for: str = "rep"
) -> tuple[subprocess.Popen, int]:
    """A `qrun bench` that measures for minutes; returns it and its worker's pid once `wait_for` is on disk."""
    proc = subprocess.Popen(
        QRUN
        + [
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
            "1000",
            "--max-tokens",
            str(max_tokens),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stderr:
        if "worker pid" in line:
            worker = int(line.rsplit("pid", 1)[1])
            break
    else:
        raise AssertionError(f"no worker started (exit {proc.wait()})")
    deadline = time.time() + 60
    while _events(out, wait_for) < 1:
        assert proc.poll() is None and time.time() < deadline, f"the worker never got to {wait_for!r}"
        time.sleep(0.05)
    return proc, worker


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # dead, waiting for init to reap it
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _kill_if_alive(pid: int) -> None:
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            process.kill()
    except psutil.NoSuchProcess:
        pass


def test_sigkill_of_bench_ends_its_worker_and_the_next_run_cleans_up(deepseek_ggufs, tmp_path, one_question_suite):
    out = tmp_path / "out"
    # killed during a 3000-token answer (about 25 s for the tiny model on one thread): the worker writes nothing
    # until it ends, so only being tied to its parent (not a broken stderr pipe) stops it within seconds
    proc, worker = _start_long_bench(deepseek_ggufs, out, one_question_suite, max_tokens=3000, wait_for="warmup")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    try:
        assert _gone_within(worker, 5), "the worker outlived its killed `qrun bench` by 5 s"
    finally:
        _kill_if_alive(worker)  # never leave it measuring if the assertion failed
    assert (out / ".jobs").is_dir() and _events(out, "warmup") == 1  # what the dead run left
    before = snapshot(out)

    again = qrun(
        "bench",
        "deepseek",
        "--ggufs",
        str(deepseek_ggufs),
        "--out",
        str(out),
        "--suite",
        str(one_question_suite),
        "--threads",
        "1",
        "--max-tokens",
        "2",
    )
    assert_one_error_line(again, "measurements.jsonl holds the measurements of an earlier run", "--force")
    assert snapshot(out) == before  # the earlier measurements survive, byte for byte

    forced = qrun(
        "bench",
        "deepseek",
        "--ggufs",
        str(deepseek_ggufs),
        "--out",
        str(out),
        "--suite",
        str(one_question_suite),
        "--threads",
        "1",
        "--max-tokens",
        "2",
        "--force",
    )
    assert forced.returncode == 0, forced.stderr.decode()
    assert b"note: removing" in forced.stderr and not (out / ".jobs").exists()
    assert not list(out.glob(".*.tmp")) and _reps(out) == 1
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"][0]["status"] == "ok"


def test_a_second_bench_into_a_folder_in_use_is_refused(deepseek_ggufs, tmp_path, one_question_suite):
    out = tmp_path / "out"
    proc, worker = _start_long_bench(deepseek_ggufs, out, one_question_suite)
    try:
        second = qrun(
            "bench",
            "deepseek",
            "--ggufs",
            str(deepseek_ggufs),
            "--out",
            str(out),
            "--suite",
            str(one_question_suite),
            "--threads",
            "1",
            "--max-tokens",
            "2",
            "--force",
        )
        assert_one_error_line(second, f"is in use by another `qrun bench` (pid {proc.pid})")
        assert (out / ".jobs").is_dir() and psutil.pid_exists(worker)  # the live run's files were not touched
        reps = _reps(out)
        deadline = time.time() + 30
        while _reps(out) <= reps:  # and it goes on measuring into the same file
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130 and _reps(out) > reps
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["partial"] is True


def test_the_parent_watch_works_without_prctl(tmp_path):
    # the fallback for kernels without PR_SET_PDEATHSIG: a thread that polls os.getppid()
    grandchild = "import time; from qrun.lifeline import tie_to_parent; tie_to_parent(use_prctl=False); time.sleep(120)"
    middle = (
        "import subprocess, sys, time; from qrun.lifeline import child_env; "
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], env=child_env()); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    time.sleep(1.0)  # let the grandchild start its watch
    assert psutil.pid_exists(pid)
    proc.kill()
    proc.wait(timeout=10)
    try:
        assert _gone_within(pid, 5)
    finally:
        _kill_if_alive(pid)


# -- tune: an unwritable qrun home, an interrupted tune ----------------------------------------------------------

TUNE = ["tune", "deepseek", "--threads", "1", "--no-repack", "--no-mmap", "--no-flash-attn", "--repeat", "2", "--force"]


@pytest.fixture()
def converted_deepseek(tiny_gguf, tmp_path) -> dict:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / f"{DEEPSEEK}-Q4_K_M.gguf").symlink_to(tiny_gguf(DEEPSEEK))
    return {"QRUN_GGUF_DIR": str(folder), "QRUN_HOME": str(tmp_path / "home")}


@pytest.mark.parametrize("home", ["a-file", "a-file/qrun"])
def test_tune_with_an_unwritable_home_is_refused_before_measuring(converted_deepseek, tmp_path, home):
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    env = {**converted_deepseek, "QRUN_HOME": str(tmp_path / home)}
    started = time.monotonic()
    proc = qrun(*TUNE, env=env)
    assert_one_error_line(proc, "cannot write to the qrun home", "QRUN_HOME")
    assert time.monotonic() - started < 20  # nothing was measured (one grid point alone loads a model)
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "not a folder"


def _point_lines(home: Path) -> list[dict]:
    path = home / "tune-points.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.endswith("}") and json.loads(line)["event"] == "point"
    ]


def test_a_killed_tune_loses_no_measurement_and_the_rerun_reuses_them(converted_deepseek):
    home = Path(converted_deepseek["QRUN_HOME"])
    home.mkdir()
    earlier_profile = home / "tune-profile.json"
    earlier_profile.write_text('{"schema": 1, "note": "an earlier profile"}\n', encoding="utf-8")
    proc = subprocess.Popen(
        QRUN + TUNE, env={**os.environ, **converted_deepseek}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while len(_point_lines(home)) < 2:
        assert proc.poll() is None and time.time() < deadline, "the tune measured nothing"
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert all(_gone_within(w.pid, 5) for w in workers)  # its grid point's process died with it
    measured = _point_lines(home)
    assert len(measured) >= 2 and all(p["result"]["load_s"] > 0 for p in measured)
    assert earlier_profile.read_text(encoding="utf-8") == '{"schema": 1, "note": "an earlier profile"}\n'
    log_before = (home / "tune-points.jsonl").read_bytes()

    rerun = qrun(*TUNE, env=converted_deepseek, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    stderr = rerun.stderr.decode()
    assert f"{len(measured)} measurement(s) of an interrupted tune" in stderr
    assert stderr.count("(measured by the interrupted tune)") == len(measured)
    assert (home / "tune-points.jsonl").read_bytes().startswith(log_before)  # the record is only appended to
    doc = json.loads(earlier_profile.read_text(encoding="utf-8"))
    grid = doc["models"][DEEPSEEK]["grid"]
    # the mmap-off point, llama.cpp's defaults and qrun's own defaults, 2 repetitions each
    assert sum(s["n"] for s in grid) == 3 * 2
    # a finished tune is not reused: the next one measures afresh
    os.environ["QRUN_HOME"] = str(home)  # (the autouse fixture restores it)
    assert tune_log.PointLog(workloads=tune.WORKLOADS, n_ctx=None).reusable == 0


# -- report: a bench folder is never rewritten; wrong types are one line -----------------------------------------

import copy  # noqa: E402

from helpers import bench_doc  # noqa: E402
from qrun.bench import report, results  # noqa: E402
from qrun.bench import suite as suites  # noqa: E402
from qrun.errors import QrunError  # noqa: E402


@pytest.fixture()
def bench_folder(tmp_path) -> Path:
    folder = tmp_path / "bench-results"
    report.write_outputs([bench_doc()], folder, results_json=True)
    return folder


def test_report_never_rewrites_a_bench_folder(bench_folder, tmp_path):
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("model,question_id,score\nqwen,seed-4,1\n", encoding="utf-8")
    before = snapshot(bench_folder)
    results_json = str(bench_folder / "results.json")
    for args in (
        ["--verdicts", str(verdicts)],
        ["--suite", "seed"],
        [],
        ["--out", str(bench_folder)],
        ["--verdicts", str(verdicts), "--out", str(bench_folder)],
    ):
        proc = qrun("report", results_json, *args, cwd=tmp_path)
        assert_one_error_line(proc, "give --out")
        assert snapshot(bench_folder) == before
    out = tmp_path / "rescored"
    proc = qrun("report", results_json, "--verdicts", str(verdicts), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["accuracy-vs-speed.png", "report.md", "results.csv"]
    assert "1.00 (verdict)" in (out / "report.md").read_text(encoding="utf-8")
    assert snapshot(bench_folder) == before  # written only under --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-results", "rescored", "v.csv"]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: d.update(schema_version="1"), "schema_version is '1', not a whole number"),
        (lambda d: d.update(machine=None), "field machine is not an object"),
        (lambda d: d.update(config=None), "field config is not an object"),
        (lambda d: d["machine"].update(ram_bytes="8 GB"), "machine.ram_bytes"),
        (lambda d: d["runs"][0]["summary"].update(accuracy="high"), "runs[0].summary.accuracy"),
    ],
)
def test_results_json_with_wrong_types_is_one_line(tmp_path, damage, needle):
    doc = json.loads(json.dumps(bench_doc(), ensure_ascii=False))
    damage(doc)
    damaged = tmp_path / "results.json"
    damaged.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    before = damaged.read_bytes()
    proc = qrun("report", str(damaged), "--out", str(tmp_path / "out"))
    assert_one_error_line(proc, f"{damaged} is damaged", needle)
    assert not (tmp_path / "out").exists() and damaged.read_bytes() == before


def _field_paths(doc: dict) -> list[tuple[tuple, str]]:
    """(parent path, key) of every field the report reads, down to a question's repetitions and criteria."""
    q = doc["runs"][0]["questions"][0]
    nested = [
        (),
        ("machine",),
        ("config",),
        ("suite",),
        ("suite", "definition"),
        ("runs", 0, "questions", 0),
        ("runs", 0, "questions", 0, "score"),
        ("runs", 0, "questions", 0, "median"),
        ("runs", 0, "questions", 0, "spread"),
        ("runs", 0, "questions", 0, "spread", "gen_tokens_per_s"),
        ("runs", 0, "questions", 0, "repetitions", 0),
        ("runs", 0, "questions", 0, "score", "criteria", 0),
    ]
    for r in (0, 1):
        nested += [("runs", r), ("runs", r, "summary"), ("runs", r, "summary", "range"), ("runs", r, "settings")]
        nested += [("runs", r, "failure")] if doc["runs"][r].get("failure") else []
    assert q["score"]["criteria"]
    out = []
    for parent in nested:
        obj = doc
        for step in parent:
            obj = obj[step]
        out += [(parent, key) for key in obj]
    return out


def test_no_wrong_type_anywhere_in_results_json_crashes_the_report(tmp_path):
    # every field the report reads, set to every JSON type (and removed): a BenchError naming it, or a report
    base = json.loads(json.dumps(bench_doc(), ensure_ascii=False))
    seed = suites.load("seed")
    path = tmp_path / "results.json"
    crashes = []
    for parent, key in _field_paths(base):
        for value in ("x", None, ["a"], 1.5, {"a": 1}, True, KeyError):
            doc = copy.deepcopy(base)
            obj = doc
            for step in parent:
                obj = obj[step]
            if value is KeyError:
                del obj[key]
            else:
                obj[key] = value
            path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
            try:
                loaded = [results.load(path)]
                loaded += [copy.deepcopy(loaded[0]), copy.deepcopy(loaded[0])]
                results.rescore([loaded[1]], seed, None)
                results.rescore([loaded[2]], None, None)
                report.render_markdown(loaded), report.render_csv(loaded), report.render_table(loaded)
            except QrunError:
                pass
            except Exception as err:  # noqa: BLE001 - the point of the test
                crashes.append(f"{'.'.join(map(str, parent))}.{key} = {value!r}: {type(err).__name__}: {err}")
    assert not crashes, "\n".join(crashes[:20])


# -- text that is not UTF-8 ------------------------------------------------------------------------------------------


def test_a_prompt_argument_that_is_not_utf8_is_one_line(tiny_gguf):
    gguf = str(tiny_gguf(DEEPSEEK))
    for prompt in (b"\xff\xfe", "你好".encode() + b"\xc3"):  # a stray byte, a truncated sequence
        proc = qrun("ask", gguf, prompt, "--max-tokens", "2")
        assert_one_error_line(proc, "the prompt is not valid UTF-8 text: byte 0x")
        assert proc.stdout == b""
    proc = qrun("ask", gguf, "你好", "--system", b"\xed\xa0\x80", "--max-tokens", "2")  # an encoded surrogate
    assert_one_error_line(proc, "--system is not valid UTF-8 text")
    proc = qrun("ask", gguf, b"\xff", "--show-prompt")
    assert_one_error_line(proc, "the prompt is not valid UTF-8 text")


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])  # the C locale hides bad bytes as surrogates; UTF-8 raises
def test_stdin_that_is_not_utf8_is_one_line(tiny_gguf, locale):
    proc = qrun(
        "ask",
        str(tiny_gguf(DEEPSEEK)),
        "-",
        "--max-tokens",
        "2",
        input="你好".encode() + b"\xff\n",
        env={"LC_ALL": locale, "LANG": locale, "PYTHONUTF8": "0"},
    )
    assert_one_error_line(proc, "the prompt on stdin is not valid UTF-8 text: byte 0xff at byte 7")


def _chat(gguf: Path, *lines: bytes) -> subprocess.CompletedProcess:
    return qrun(
        "chat",
        str(gguf),
        "--ctx",
        "256",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        input=b"".join(line + b"\n" for line in lines),
    )


def test_chat_survives_bad_lines_and_keeps_its_history(tiny_gguf):
    gguf = tiny_gguf(DEEPSEEK)
    overlong = "长" * 600  # more tokens than the 256-token context holds on its own
    hostile = _chat(gguf, "你好".encode(), b"\xff\xfe", b"\xed\xa0\x80", overlong.encode(), "再见".encode())
    clean = _chat(gguf, "你好".encode(), "再见".encode())
    fresh = _chat(gguf, "再见".encode())
    assert hostile.returncode == 0 and clean.returncode == 0, hostile.stderr.decode()
    errors = [line for line in hostile.stderr.decode().split(">>> ") if line.startswith("Error:")]
    assert len(errors) == 3 and all(e.count("\n") == 1 for e in errors), errors
    assert "this message is not valid UTF-8 text: byte 0xff" in errors[0]
    assert "this message is not valid UTF-8 text" in errors[1]
    assert "the context holds 256" in errors[2] and "the history is kept" in errors[2]
    assert "dropped the oldest" not in hostile.stderr.decode()
    # both turns answered, the second with the first still in its prompt: the same answers as without the bad lines
    assert hostile.stdout == clean.stdout and hostile.stdout.count(b"\n") == 2
    assert clean.stdout.split(b"\n")[1] != fresh.stdout.split(b"\n")[0]  # (the history does change the answer)


def test_a_suite_or_answers_file_that_is_not_text_is_one_line(tmp_path):
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    raw = json.dumps(seed, ensure_ascii=False).encode()
    cases = {
        "bad-byte.json": raw.replace("冬天".encode(), b"\xff", 1),
        "surrogate.json": raw.replace("冬天".encode(), b"\\ud800", 1),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        proc = qrun("bench", "--suite", str(tmp_path / name), "--ggufs", str(tmp_path), cwd=tmp_path)
        assert_one_error_line(proc, str(tmp_path / name))
    answers = tmp_path / "answers.jsonl"
    answers.write_bytes(b'{"question_id": "seed-1", "answer": "\xff"}\n')
    assert_one_error_line(qrun("score", str(answers)), "cannot read answers file", "UTF-8")
    answers.write_bytes(b'{"question_id": "seed-1", "answer": "\\ud800 \\udcff"}\n')  # scored as the text it is
    proc = qrun("score", str(answers), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["score"] == 0.0
    assert not (tmp_path / "bench-results").exists()


# -- a tuning profile with wrong types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        {"n_threads": "two"},
        {"n_threads_batch": 10**9},
        {"repack": "yes"},
    ],
)
def test_a_profile_with_wrong_types_is_ignored_with_a_notice(converted_deepseek, spoil):
    from qrun.runner import profile

    home = Path(converted_deepseek["QRUN_HOME"])
    os.environ.update(converted_deepseek)  # (the autouse fixture restores both)
    gguf = Path(converted_deepseek["QRUN_GGUF_DIR"]) / f"{DEEPSEEK}-Q4_K_M.gguf"
    doc = profile.new_document(command="test")
    settings_ = {"quant": "Q4_K_M", "repack": False, "use_mmap": True, "n_threads": 1, "n_threads_batch": 1, **spoil}
    doc["models"][DEEPSEEK] = {
        "chat": {"settings": settings_, "evidence": {}, "gguf": {"name": gguf.name, "size_bytes": gguf.stat().st_size}}
    }
    profile.write(doc)
    before = (home / "tune-profile.json").read_bytes()
    proc = qrun("ask", "deepseek", "你好", "--max-tokens", "2", "--json", env=converted_deepseek)
    assert proc.returncode == 0, proc.stderr.decode()
    notices = proc.stderr.decode().splitlines()
    assert len(notices) == 1 and notices[0].startswith(
        f"note: ignoring the tuning profile's {DEEPSEEK} entry: malformed"
    ), notices
    sources = json.loads(proc.stdout)["settings"]["source"]
    assert {v for k, v in sources.items() if k != "n_ctx"} == {"default"} and sources["n_ctx"] == "work"
    assert (home / "tune-profile.json").read_bytes() == before
