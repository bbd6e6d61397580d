"""Progress: bars with ETA on a pseudo-terminal, whole lines without one, fed the real counts of real steps
(bytes and tensors of a real conversion, answers of real bench workers, grid points of a real tune), and hubs that
fail at once, in one line naming QRUN_OFFLINE, when offline."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from fcntl import ioctl
from pathlib import Path

import gguf
import pytest
from tqdm import tqdm

from qrun import progress as progress_mod
from qrun.bench import tune
from qrun.bench.run import BenchConfig, run_bench
from qrun.convert.pipeline import convert_model

MODEL = "chatglm3-6b"
QRUN = [sys.executable, "-c", "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main()"]
# a terminal bar: "quantize:  41%|████     | 7/17 tensors [00:02<00:03, 3.27 tensors/s]" (elapsed<remaining = ETA)
TTY_BAR = re.compile(r"(\w[\w ]*): +(\d+)%\|[^|]*\| (\S+)/(\S+) ?(\w*) \[\d\d:\d\d<(\d\d:\d\d|\?), ")
PLAIN_LINE = re.compile(r"^(\w[\w ]*): +(\d+)% (\S+)/(\S+?) ?([a-z]*) \[\d\d:\d\d<\d\d:\d\d, +[\d.?]+ ?\w+/s\]$")


class Recorded(progress_mod.Bar):
    """A plain Bar on a buffer that remembers what it was fed (every Bar made goes to Recorded.made)."""

    made: list[Recorded] = []

    def __init__(self, total, desc, **kwargs):
        super().__init__(total, desc, stream=io.StringIO(), terminal=False, **kwargs)
        self.fed: list[int] = []
        self.totals = [self.total]
        Recorded.made.append(self)

    def advance_to(self, done):
        self.fed.append(done)
        super().advance_to(done)

    def set_total(self, total):
        super().set_total(total)
        self.totals.append(self.total)


@pytest.fixture
def recorded():
    Recorded.made = []
    return Recorded.made


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """(tensor count, tensor data bytes) of a GGUF, from its header."""
    tensors = gguf.GGUFReader(path).tensors
    return len(tensors), sum(int(t.n_bytes) for t in tensors)


# -- the bar itself ----------------------------------------------------------------------------------------------
def test_plain_mode_prints_a_line_per_tenth_and_at_the_end_never_a_carriage_return():
    clock = [0.0]
    out = io.StringIO()
    with progress_mod.Bar(291, "quantize", unit="tensors", stream=out, terminal=False, clock=lambda: clock[0]) as bar:
        for _ in range(291):
            clock[0] += 0.5
            bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 10 == bar.lines
    parsed = [PLAIN_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(2)) // 10 for m in parsed] == list(range(1, 11))  # one per 10 % step
    assert lines[-1].startswith("quantize: 100% 291/291 tensors [02:25<00:00,")
    assert "[00:15<02:10,  2.00 tensors/s]" in lines[0]  # elapsed < remaining: the ETA from the rate so far


def test_plain_mode_also_prints_after_a_quiet_half_minute():
    clock = [0.0]
    out = io.StringIO()
    bar = progress_mod.Bar(10_000, "bench", unit="answers", stream=out, terminal=False, clock=lambda: clock[0])
    for _ in range(5):  # 5 answers, 31 s apart: far from a 10 % step, but a log must not go silent for minutes
        clock[0] += progress_mod.PLAIN_EVERY_S + 1
        bar.update()
    bar.close()
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == [
        f"bench:   0% {n}/10000 answers" for n in range(1, 6)
    ]


def test_hub_bars_become_whole_lines_when_stderr_is_not_a_terminal(capfd):
    # a real tqdm bar, drawn as the hub clients draw theirs (tqdm.auto on sys.stderr), while stderr is a pipe
    with progress_mod.plain_hub_bars():
        print("a hub's warning", file=sys.stderr)
        with tqdm(total=100, desc="model.safetensors", unit="B", mininterval=0) as bar:
            for _ in range(100):
                bar.update(1)
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0] == "a hub's warning"
    percents = [int(re.search(r"(\d+)%", line).group(1)) for line in lines[1:]]
    assert percents == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100]  # each step once, then the closing line


# -- convert: bytes, then tensors ------------------------------------------------------------------------------------
def test_convert_feeds_the_bytes_of_every_tensor_written(tiny_checkpoints, tmp_path, recorded):
    out = tmp_path / "out"
    convert_model(
        MODEL, from_dir=tiny_checkpoints[MODEL], out_dir=out, quant="F16", progress=progress_mod.StepBars(Recorded)
    )
    [convert] = recorded
    n_tensors, f16_bytes = _tensor_bytes(out / f"{MODEL}-F16.gguf")
    assert (convert.desc, convert.unit, convert.totals) == ("convert", "B", [f16_bytes])
    assert convert.fed == sorted(convert.fed) and convert.fed[-1] == f16_bytes and len(convert.fed) == n_tensors
    last = convert.stream.getvalue().splitlines()[-1]
    assert last.startswith(f"convert: 100% {tqdm.format_sizeof(f16_bytes)}B/{tqdm.format_sizeof(f16_bytes)}B [")


def _run_on_pty(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """A real qrun process with stderr on a 120x30 pseudo-terminal and stdout on a pipe -> (code, stdout, stderr)."""
    controller, terminal = pty.openpty()
    ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(QRUN + args, stdout=subprocess.PIPE, stderr=terminal, env={**os.environ, **env})
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    stdout = proc.stdout.read().decode()
    return proc.wait(timeout=60), stdout, seen.decode("utf-8", errors="replace")


def test_convert_draws_bars_with_eta_on_a_terminal_and_lines_in_a_log(tiny_checkpoints, tmp_path):
    """Bars fed the tensors llama.cpp's quantizer reports, up to the tensor count of the file it wrote."""
    ckpt = str(tiny_checkpoints[MODEL])
    code, stdout, stderr = _run_on_pty(
        ["convert", "chatglm3", "--from", ckpt, "--out", str(tmp_path / "tty"), "--threads", "1"], {}
    )
    assert code == 0, stderr
    n_tensors, _ = _tensor_bytes(tmp_path / "tty" / f"{MODEL}-Q4_K_M.gguf")
    bars = {}
    for redraw in re.split(r"[\r\n]", stderr):
        match = TTY_BAR.search(redraw)
        if match:
            bars.setdefault(match.group(1), []).append(match.groups())
    assert set(bars) == {"convert", "quantize"}, stderr
    # a bar redrawn in place, ending at 100 % of the tensors of the file written
    assert bars["quantize"][-1][1:5] == ("100", str(n_tensors), str(n_tensors), "tensors")
    assert bars["convert"][-1][1] == "100" and bars["convert"][-1][2].endswith("MB")
    assert stdout.startswith(f"{MODEL}  Q4_K_M") and "%" not in stdout  # stdout stays the summary alone

    proc = subprocess.run(
        QRUN + ["convert", "chatglm3", "--from", ckpt, "--out", str(tmp_path / "log"), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if PLAIN_LINE.match(line)]
    quantize = [PLAIN_LINE.match(line).groups() for line in lines if line.startswith("quantize:")]
    assert quantize[-1][1:5] == ("100", str(n_tensors), str(n_tensors), "tensors")
    assert len(quantize) <= 11  # a line per 10 % step at most (plus none per tensor)
    assert any(line.startswith("convert: 100% ") for line in lines), proc.stderr


# -- bench: runs x questions -------------------------------------------------------------------------------------
def test_bench_bar_counts_the_answers_workers_measured(tiny_gguf, tmp_path, recorded):
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    (ggufs / f"{MODEL}-Q4_K_M.gguf").symlink_to(tiny_gguf(MODEL, "Q4_K_M"))
    seed = json.loads((Path(__file__).parents[1] / "bench" / "suites" / "seed.json").read_text(encoding="utf-8"))
    seed["name"], seed["questions"] = "two", seed["questions"][:2]
    suite = tmp_path / "two.json"
    suite.write_text(json.dumps(seed, ensure_ascii=False), encoding="utf-8")
    lines: list[str] = []
    config = BenchConfig(
        suite=str(suite), threads=[1, 2], repeat=1, max_tokens=2, ggufs_dir=str(ggufs), out_dir=str(tmp_path / "out")
    )
    run_bench(config, progress=lines.append, meter=Recorded)
    [bar] = recorded
    measured = [
        e
        for e in map(json.loads, (tmp_path / "out" / "measurements.jsonl").read_text(encoding="utf-8").splitlines())
        if e["event"] == "rep"
    ]
    assert bar.totals == [2 * 2] == [len(measured)]  # 2 runs (threads 1 and 2) x 2 questions
    assert bar.n == 4 and bar.fed == sorted(bar.fed) and bar.fed[-1] == 4
    assert {1, 3} <= set(bar.fed)  # it moved while each worker answered, not only when it ended
    assert bar.stream.getvalue().splitlines()[-1].startswith("bench: 100% 4/4 answers")
    assert any("worker pid" in line for line in lines)  # the text lines still go to the caller


# -- tune: grid points -------------------------------------------------------------------------------------------
def test_tune_bar_counts_grid_points_including_an_excluded_one(tiny_gguf, tmp_path, monkeypatch, recorded):
    monkeypatch.setenv("QRUN_THREADS", "1")  # qrun's default point is then the grid's one point per file
    broken = tmp_path / f"{MODEL}-Q4_0.gguf"
    broken.write_bytes(tiny_gguf(MODEL, "Q4_K_M").read_bytes()[:4096])  # a truncated file: its point fails
    lines: list[str] = []
    entry = tune.tune_model(
        MODEL,
        [("Q4_K_M", tiny_gguf(MODEL, "Q4_K_M")), ("Q4_0", broken)],
        grid={
            "repack": (False,),
            "use_mmap": (True,),
            "threads": (1,),
            "threads_batch": None,
            "attention": ((False, "f16"),),
        },
        repeat=2,
        progress=lines.append,
        meter=Recorded,
    )
    [bar] = recorded
    assert [s["status"].split(":")[0] for s in entry["grid"]] == ["ok", "failed"]
    assert bar.desc == f"tune {MODEL}" and bar.unit == "points"
    assert bar.totals == [len(tune.schedule(entry["grid"], 2))] == [4]  # 2 points x 2 repetitions
    assert bar.fed == [1, 2, 3, 4] and len([line for line in lines if "(excluded)" in line]) == 1
    assert bar.stream.getvalue().splitlines()[-1].startswith(f"tune {MODEL}: 100% 4/4 points")


# -- offline hubs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"QRUN_OFFLINE": "1"}, "QRUN_OFFLINE=1 and the ModelScope cache has no complete copy"),
        ({"MODELSCOPE_ENDPOINT": "http://127.0.0.1:9"}, "ModelScope is unreachable (127.0.0.1:9: connection refused)"),
        ({"MODELSCOPE_ENDPOINT": "https://hub.invalid"}, "ModelScope is unreachable (hub.invalid:443: name resolution"),
    ],
)
def test_an_offline_hub_fails_at_once_in_one_line_naming_qrun_offline(tmp_path, env, names):
    started = time.monotonic()
    proc = subprocess.run(
        QRUN + ["convert", "qwen"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MODELSCOPE_CACHE": str(tmp_path / "empty-cache"), **env},
    )
    elapsed_s = time.monotonic() - started
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("[download] qwen/Qwen-7B-Chat from ModelScope") and len(lines) == 2, proc.stderr
    assert lines[1].startswith("Error: could not download qwen/Qwen-7B-Chat from ModelScope: ") and names in lines[1]
    assert " — " in lines[1] and "QRUN_OFFLINE" in lines[1].split(" — ", 1)[1] and "--from DIR" in lines[1]
    # ModelScope's own client spent ~23 s on retries here; the interpreter and the hub libraries' imports take
    # most of what is left
    assert elapsed_s < 8, elapsed_s
