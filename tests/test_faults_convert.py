"""Faults around `qrun convert` and converted files: concurrent runs, kills over existing outputs, files changed in
place, hostile checkpoints, unwritable or full folders, foreign GGUFs. Real processes, signals and files.

Every failure is exit 1 and one `Error:` line; no partial file is left; earlier outputs survive byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.convert import manifest as mf
from qrun.fsutil import sha256_file

CHATGLM, DEEPSEEK = "chatglm3-6b", "deepseek-llm-7b-chat"


# -- helpers ---------------------------------------------------------------------------------------------------------
def run(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, list(args))


def one_error_line(exit_code: int, stderr: str, *fragments: str) -> str:
    assert exit_code == 1, (exit_code, stderr)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_cli_error(result, *fragments: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return one_error_line(result.exit_code, result.stderr, *fragments)


def qrun_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`qrun ARGS` as its own process (the console script's code path), Ctrl-C behaving as in a terminal."""
    code = "from qrun.cli import main; main(" + repr(list(args)) + ")"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".partial", ".tmp")))


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout_s: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None:
            assert proc.poll() is None, f"process ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every GGUF and manifest in `folder` (lock files excluded)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.suffix in (".gguf", ".json")}


def copy_pair(gguf: Path, folder: Path) -> Path:
    """A GGUF and its manifest copied into `folder` (copy2 keeps the mtime, not the inode: a copy all the same)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(gguf, folder)
    shutil.copy2(mf.manifest_path_for(gguf), folder)
    return folder / gguf.name


def fresh_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint with new mtimes: another fingerprint, so converting it redoes the work."""
    shutil.copytree(src, dst, copy_function=shutil.copy)
    return dst


# -- 1. two runs, one folder -----------------------------------------------------------------------------------------
def test_two_converts_at_once_share_nothing_and_both_succeed(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    args = ("convert", "chatglm3", "--from", str(tiny_checkpoints[CHATGLM]), "--ggufs", str(out), "--threads", "1")
    first, second = qrun_process(*args), qrun_process(*args)
    results = [proc.communicate(timeout=300) for proc in (first, second)]
    for proc, (_stdout, stderr) in zip((first, second), results):
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
    stderrs = [stderr for _, stderr in results]
    # one waited for the other's lock and then found the output made
    assert sum("waiting: another qrun run is writing chatglm3-6b outputs" in e for e in stderrs) == 1, stderrs
    assert sum("is up to date" in e for e in stderrs) == 1, stderrs
    final = out / f"{CHATGLM}-Q4_K_M.gguf"
    assert mf.check_manifest(final).ok and mf.read_manifest(final)["sha256"] == sha256_file(final)
    assert partials(out) == [] and sorted(snapshot(out)) == [final.name, mf.manifest_path_for(final).name]


def test_second_convert_started_mid_quantize_waits_and_leaves_the_first_alone(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    args = ("convert", "chatglm3", "--from", str(tiny_checkpoints[CHATGLM]), "--ggufs", str(out), "--threads", "1")
    first = qrun_process(*args)
    final = out / f"{CHATGLM}-Q4_K_M.gguf"
    wait_for(lambda: any(out.glob(final.name + ".*.partial")), first, what="the first run's quantize partial")
    [first_partial] = out.glob(final.name + ".*.partial")
    assert first_partial.name.startswith(f"{final.name}.{first.pid}-")  # the partial names its owner
    second = qrun_process(*args)
    first_out, second_out = first.communicate(timeout=300), second.communicate(timeout=300)
    assert first.returncode == 0, first_out[1]
    assert second.returncode == 0, second_out[1]
    assert "waiting: another qrun run" in second_out[1] and "is up to date" in second_out[1]
    assert "removed leftover" not in second_out[1]  # the first run's partial was never touched
    assert mf.check_manifest(final).ok and mf.read_manifest(final)["sha256"] == sha256_file(final)
    assert partials(out) == []


@pytest.mark.slow
def test_stale_partial_cleanup_spares_files_of_live_processes(tiny_ggufs, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    final = copy_pair(tiny_ggufs[CHATGLM]["Q4_K_M"], out)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process that is not a qrun run holding the lock
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        live_partial = out / f"{final.name}.{sleeper.pid}-0badc0de.partial"
        dead_partial = out / f"{final.name}.{dead.pid}-deadbeef.partial"
        dead_tmp = out / f".{CHATGLM}-Q4_K_M.json.{dead.pid}.abc123.tmp"
        for path in (live_partial, dead_partial, dead_tmp):
            path.write_bytes(b"half")
        result = run(
            "convert", "chatglm3", "--from", str(tiny_checkpoints[CHATGLM]), "--ggufs", str(out), "--quant", "Q8_0"
        )
        assert result.exit_code == 0, result.output
        assert live_partial.read_bytes() == b"half"
        assert not dead_partial.exists() and not dead_tmp.exists()
        assert f"removed leftover of an interrupted run: {dead_partial.name}" in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


# -- 2. a kill during a re-conversion keeps the old pair -------------------------------------------------------------
@pytest.mark.parametrize("step", [pytest.param("convert", marks=pytest.mark.slow), "quantize"])
def test_kill_during_reconversion_keeps_the_old_pair(step, tiny_ggufs, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    final = copy_pair(tiny_ggufs[CHATGLM]["Q4_K_M"], out)
    before = snapshot(out)
    ckpt = fresh_checkpoint(tiny_checkpoints[CHATGLM], tmp_path / "ckpt")  # new mtimes: a re-conversion
    args = ("convert", "chatglm3", "--from", str(ckpt), "--ggufs", str(out), "--threads", "1")
    proc = qrun_process(*args)
    pattern = "*.intermediate.gguf.*.partial" if step == "convert" else final.name + ".*.partial"
    wait_for(lambda: any(out.glob(pattern)), proc, what=f"the {step} step")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    after = snapshot(out)
    assert {name: after.get(name) for name in before} == before  # GGUF and manifest byte for byte
    assert mf.check_manifest(final, verify_sha256=True).ok  # and still a pair that vouches for the file

    rerun = qrun_process(*args)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "converted in" in stdout
    assert mf.check_manifest(final).ok and mf.read_manifest(final)["source"]["path"] == str(ckpt)
    assert partials(out) == []


# -- 5. integrity: a file changed in place ---------------------------------------------------------------------------
def flip_last_byte_keep_mtime(path: Path) -> None:
    """Change a byte of the last tensor's data in place, then give the file its old mtime back (os.utime)."""
    stat = path.stat()
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size


def model_statuses(ggufs: Path, *extra: str) -> tuple[int, dict, str]:
    result = run("models", "--ggufs", str(ggufs), "--json", *extra)
    listing = json.loads(result.stdout)
    return (
        result.exit_code,
        {Path(f["file"]).name: f["manifest"] for m in listing["models"] for f in m["converted"]},
        result.stderr,
    )


def test_verification_is_remembered_and_an_edit_with_restored_mtime_is_caught(tiny_ggufs, tmp_path):
    ggufs = tmp_path / "ggufs"
    q4 = copy_pair(tiny_ggufs[DEEPSEEK]["Q4_K_M"], ggufs)
    f16 = copy_pair(tiny_ggufs[DEEPSEEK]["F16"], ggufs)
    # copies (mtimes kept by copy2, inodes new): not "ok" until hashed
    assert model_statuses(ggufs)[:2] == (0, {f16.name: "unverified", q4.name: "unverified"})
    assert model_statuses(ggufs, "--verify")[:2] == (0, {f16.name: "ok", q4.name: "ok"})
    assert model_statuses(ggufs)[:2] == (0, {f16.name: "ok", q4.name: "ok"})  # remembered, no hashing
    q4_manifest_bytes = mf.manifest_path_for(q4).read_bytes()

    flip_last_byte_keep_mtime(q4)
    code, statuses, _ = model_statuses(ggufs)
    assert (code, statuses) == (0, {f16.name: "ok", q4.name: "unverified"})
    code, statuses, stderr = model_statuses(ggufs, "--verify")
    assert statuses == {f16.name: "ok", q4.name: "stale"}
    one_error_line(
        code, stderr, "1 GGUF file(s) do not match their manifests", q4.name, "sha256 differs", "qrun convert"
    )
    assert mf.manifest_path_for(q4).read_bytes() == q4_manifest_bytes  # a failed check rewrites nothing


@pytest.mark.slow
def test_ask_and_convert_see_an_edit_with_restored_mtime(tiny_ggufs, tiny_checkpoints, tmp_path):
    ggufs = tmp_path / "ggufs"
    q4 = copy_pair(tiny_ggufs[DEEPSEEK]["Q4_K_M"], ggufs)
    copy_pair(tiny_ggufs[DEEPSEEK]["F16"], ggufs)
    assert model_statuses(ggufs, "--verify")[0] == 0
    flip_last_byte_keep_mtime(q4)

    # `ask --json` reports the sha256 of the file it loaded, never the manifest's for a changed file
    answer = run("ask", str(q4), "hi", "--json", "--max-tokens", "2", "--threads", "1", "--ctx", "256")
    assert answer.exit_code == 0, answer.output
    reported = json.loads(answer.stdout)
    assert reported["sha256"] == sha256_file(q4) != mf.read_manifest(q4)["sha256"]

    # and convert does not call it up to date: it makes the file again
    result = run(
        "convert", "deepseek", "--from", str(tiny_checkpoints[DEEPSEEK]), "--ggufs", str(ggufs), "--threads", "1"
    )
    assert result.exit_code == 0, result.output
    assert "up to date" not in result.stdout and "converted in" in result.stdout
    assert mf.check_manifest(q4, hash_always=True).ok


def test_models_verify_exits_1_for_a_missing_or_foreign_manifest(tiny_ggufs, tmp_path):
    ggufs = tmp_path / "ggufs"
    q4 = copy_pair(tiny_ggufs[DEEPSEEK]["Q4_K_M"], ggufs)
    mf.manifest_path_for(q4).unlink()
    code, statuses, stderr = model_statuses(ggufs, "--verify")
    assert statuses == {q4.name: "missing"}
    one_error_line(code, stderr, q4.name, "no manifest")


# -- 3. hostile checkpoints ------------------------------------------------------------------------------------------
def checkpoint_without_weights(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if not path.name.endswith((".safetensors", ".bin", ".index.json")):
            shutil.copy(path, dst / path.name)
    return dst


def with_index(folder: Path, weight_map: dict) -> Path:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def convert_fails(ckpt: Path, out: Path, *fragments: str) -> str:
    """`qrun convert deepseek --from ckpt` in its own process: exit 1, one line, nothing new in `out`."""
    before = snapshot(out) if out.exists() else {}
    proc = qrun_process("convert", "deepseek", "--from", str(ckpt), "--ggufs", str(out), "--threads", "1")
    stdout, stderr = proc.communicate(timeout=120)
    line = one_error_line(proc.returncode, stderr, *fragments)
    assert stdout == ""
    assert snapshot(out) == before and partials(out) == []
    return line


@pytest.fixture
def earlier_output(tiny_ggufs, tmp_path) -> Path:
    """An output folder holding an earlier Q4_K_M pair, which no failing run may touch."""
    copy_pair(tiny_ggufs[DEEPSEEK]["Q4_K_M"], tmp_path / "out")
    return tmp_path / "out"


def _real_shard(tiny_checkpoints) -> Path:
    return Path(tiny_checkpoints[DEEPSEEK]) / "model.safetensors"


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_index_naming_a_shard_outside_the_folder_is_refused(how, tiny_checkpoints, earlier_output, tmp_path):
    ckpt = checkpoint_without_weights(Path(tiny_checkpoints[DEEPSEEK]), tmp_path / "ckpt")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(_real_shard(tiny_checkpoints), outside)
    if how == "dotdot":
        name, fragment = "../outside.safetensors", "outside the checkpoint folder"
    elif how == "absolute":
        name, fragment = str(outside), "outside the checkpoint folder"
    else:
        (ckpt / "model-00001-of-00001.safetensors").symlink_to(outside)
        name, fragment = "model-00001-of-00001.safetensors", "leads outside"
    with_index(ckpt, {"model.embed_tokens.weight": name})
    convert_fails(ckpt, earlier_output, fragment, "model.safetensors.index.json")


def test_index_with_a_shard_name_that_is_not_a_string(tiny_checkpoints, earlier_output, tmp_path):
    ckpt = checkpoint_without_weights(Path(tiny_checkpoints[DEEPSEEK]), tmp_path / "ckpt")
    with_index(ckpt, {"model.embed_tokens.weight": ["a", "b"]})
    convert_fails(ckpt, earlier_output, "not a file name", "['a', 'b']")


@pytest.mark.parametrize("named_by_index", [True, False])
def test_a_fifo_shard_is_refused_at_once(named_by_index, tiny_checkpoints, earlier_output, tmp_path):
    ckpt = checkpoint_without_weights(Path(tiny_checkpoints[DEEPSEEK]), tmp_path / "ckpt")
    name = "model-00001-of-00001.safetensors" if named_by_index else "model.safetensors"
    os.mkfifo(ckpt / name)
    if named_by_index:
        with_index(ckpt, {"model.embed_tokens.weight": name})
    started = time.monotonic()
    convert_fails(ckpt, earlier_output, f"{name} is a FIFO")
    assert time.monotonic() - started < 60


def _rewrite_header(src: Path, dst: Path, edit) -> None:
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _first_two(header: dict) -> tuple[str, str]:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return names[0], names[1]


@pytest.mark.parametrize("damage", ["overlap", "gap", "not_an_object"])
def test_safetensors_with_bad_layout_is_refused(damage, tiny_checkpoints, earlier_output, tmp_path):
    ckpt = checkpoint_without_weights(Path(tiny_checkpoints[DEEPSEEK]), tmp_path / "ckpt")

    def edit(header):
        first, second = _first_two(header)
        if damage == "overlap":  # the second tensor reads the first one's bytes (same size, so sizes still agree)
            size = header[first]["data_offsets"][1] - header[first]["data_offsets"][0]
            header[second]["shape"], header[second]["dtype"] = header[first]["shape"], header[first]["dtype"]
            header[second]["data_offsets"] = list(header[first]["data_offsets"])
            assert size > 0
        elif damage == "gap":  # the first tensor loses its bytes' claim: they belong to no tensor
            del header[first]
        else:
            header[first] = "not an object"

    _rewrite_header(_real_shard(tiny_checkpoints), ckpt / "model.safetensors", edit)
    fragment = {
        "overlap": "overlaps another tensor",
        "gap": "belong to no tensor",
        "not_an_object": "is not a JSON object",
    }[damage]
    convert_fails(ckpt, earlier_output, "model.safetensors", fragment)


def _torch_zip(
    path: Path, *, storage_numel: int, tensor_shape: tuple, write_storage: bool, compression=zipfile.ZIP_STORED
) -> None:
    from helpers import ORDERED_DICT, pickle_int, pickle_str, pickle_tuple

    persistent_id = (
        pickle_tuple(
            [
                pickle_str("storage"),
                b"ctorch\nFloatStorage\n",
                pickle_str("0"),
                pickle_str("cpu"),
                pickle_int(storage_numel),
            ]
        )
        + b"Q"
    )
    args = pickle_tuple(
        [
            persistent_id,
            pickle_int(0),
            pickle_tuple([pickle_int(d) for d in tensor_shape]),
            pickle_tuple([pickle_int(1)] * len(tensor_shape)),
            b"\x89",
            ORDERED_DICT,
        ]
    )
    pkl = (
        b"\x80\x02"
        + ORDERED_DICT
        + b"("
        + pickle_str("model.embed_tokens.weight")
        + b"ctorch._utils\n_rebuild_tensor_v2\n"
        + args
        + b"Ru."
    )
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        if write_storage:
            zf.writestr("archive/data/0", bytes(storage_numel * 4))


def test_bin_with_a_storage_missing_from_the_zip(tiny_checkpoints, earlier_output, tmp_path):
    ckpt = checkpoint_without_weights(Path(tiny_checkpoints[DEEPSEEK]), tmp_path / "ckpt")
    _torch_zip(ckpt / "pytorch_model.bin", storage_numel=4, tensor_shape=(4,), write_storage=False)
    convert_fails(ckpt, earlier_output, "pytorch_model.bin", "storage 0 is not in the file")


def test_bin_decompresses_only_what_its_tensors_need(tmp_path):
    """A deflated storage that claims 400 MB of zeros (a ~400 KB file) behind a 4-element tensor."""
    path = tmp_path / "pytorch_model.bin"
    _torch_zip(path, storage_numel=100_000_000, tensor_shape=(4,), write_storage=True, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1_000_000
    code = (
        "import resource, sys; from qrun.convert.torch_pickle import TorchZipFile\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = TorchZipFile({str(path)!r}); a = r.read('model.embed_tokens.weight')\n"
        "assert a.tolist() == [0.0] * 4\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grown_kib = int(proc.stdout)
    assert grown_kib < 50_000, f"peak memory grew by {grown_kib} KiB reading a 16-byte tensor"


# -- 4. file system --------------------------------------------------------------------------------------------------
@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(dir, "size=..,ro"): a tmpfs there, unmounted afterwards; skips where mounting is not permitted
    (it needs root or CAP_SYS_ADMIN, as in CI containers)."""
    mounted = []

    def mount(folder: Path, options: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_out_that_is_a_file_or_inside_one(tiny_checkpoints, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"keep me")
    ckpt = str(tiny_checkpoints[DEEPSEEK])
    assert_cli_error(
        run("convert", "deepseek", "--from", ckpt, "--ggufs", str(a_file / "sub")),
        f"--ggufs {a_file / 'sub'} is inside a file, not a folder",
        "--ggufs DIR",
    )
    assert_cli_error(
        run("convert", "deepseek", "--from", ckpt, env={"QRUN_GGUF_DIR": str(a_file)}),
        f"QRUN_GGUF_DIR {a_file} is a file, not a folder",
    )
    assert a_file.read_bytes() == b"keep me" and sorted(tmp_path.iterdir()) == [a_file]


def test_read_only_out(tiny_checkpoints, tmp_path, mount_tmpfs):
    out = mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    assert_cli_error(
        run("convert", "deepseek", "--from", str(tiny_checkpoints[DEEPSEEK]), "--ggufs", str(out)),
        f"cannot write in {out}: Read-only file system",
        "--ggufs DIR",
    )


def test_demo_with_an_unwritable_home(tmp_path, mount_tmpfs):
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    assert_cli_error(
        run("demo", "--model", "deepseek", env={"QRUN_HOME": str(a_file / "home")}),
        "the demo folder",
        "inside a file",
        "QRUN_HOME",
    )
    home = mount_tmpfs(tmp_path / "ro-home", "ro,size=1m")
    assert_cli_error(
        run("demo", "--model", "deepseek", env={"QRUN_HOME": str(home)}),
        f"cannot write in the demo folder {home / 'demo'}: Read-only file system",
        "QRUN_HOME",
    )


def test_disk_full_during_the_bf16_step(tiny_ggufs, tiny_checkpoints, tmp_path, mount_tmpfs):
    """The disk fills up (another program's file grows) while the BF16 intermediate is written: one line, the
    partial is removed, the earlier output in the folder is intact."""
    from qrun.convert import workspace as ws

    ckpt = fresh_checkpoint(tiny_checkpoints[DEEPSEEK], tmp_path / "ckpt")  # not what the earlier pair came from
    n_params = ws.estimate_params(ckpt)
    # room for the free-space check (estimates of both files, reserve 0) and the earlier pair, little more
    earlier = tiny_ggufs[DEEPSEEK]["Q4_K_M"]
    size_mb = (
        ws.estimate_gguf_bytes(n_params, "BF16")
        + ws.estimate_gguf_bytes(n_params, "Q4_K_M")
        + 2 * earlier.stat().st_size
    ) // (1 << 20) + 8
    for attempt in range(3):
        out = mount_tmpfs(tmp_path / f"disk{attempt}", f"size={size_mb}m")
        final = copy_pair(earlier, out)
        before = snapshot(out)
        proc = qrun_process(
            "convert",
            "deepseek",
            "--from",
            str(ckpt),
            "--ggufs",
            str(out),
            "--threads",
            "1",
            env={"QRUN_KEEP_FREE_BYTES": "0"},
        )
        wait_for(lambda out=out: any(out.glob("*.intermediate.gguf.*.partial")), proc, what="the BF16 step")
        proc.send_signal(signal.SIGSTOP)
        if any(out.glob("*.intermediate.gguf.*.partial")):
            break
        proc.send_signal(signal.SIGCONT)  # the step finished in between: try again on a fresh disk
        proc.communicate(timeout=120)
    else:
        pytest.fail("could not stop the run during its BF16 step in 3 attempts")
    with open(out / "filler", "wb") as filler:  # everything that is left
        try:
            while True:
                filler.write(bytes(1 << 20))
                filler.flush()
        except OSError:
            pass
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    one_error_line(proc.returncode, stderr, "the disk filled up while writing", "free some space", "--ggufs DIR")
    (out / "filler").unlink()
    assert partials(out) == [] and not any(out.glob("*.intermediate.*"))
    assert snapshot(out) == before and mf.check_manifest(final, verify_sha256=True).ok


# -- 6. GGUFs from elsewhere -----------------------------------------------------------------------------------------
def edited_gguf(src: Path, dst: Path, *args: str) -> Path:
    """`src` rewritten by gguf-py's own gguf_new_metadata script (what a user would run on a foreign GGUF)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", *args, str(src), str(dst)],
        input="YES\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and dst.is_file(), proc.stderr[-2000:]
    return dst


def ask_args(gguf: Path, *extra: str) -> tuple[str, ...]:
    return ("ask", str(gguf), "hi", "--max-tokens", "2", "--threads", "1", "--ctx", "256", *extra)


@pytest.mark.slow
def test_a_gguf_without_qrun_model_key_is_not_guessed(tiny_gguf, tmp_path):
    foreign = edited_gguf(tiny_gguf(DEEPSEEK), tmp_path / "foreign.gguf", "--remove-metadata", "qrun.model")
    line = assert_cli_error(
        run(*ask_args(foreign)), "not made by `qrun convert`", "architecture 'llama'", f"--as {DEEPSEEK}"
    )
    assert "chat format" in line
    assert_cli_error(run(*ask_args(foreign, "--as", "qwen")), "architecture 'llama'", "not qwen-7b-chat's 'qwen'")
    assert_cli_error(run(*ask_args(foreign, "--as", "llama3")), "llama3")
    assert_cli_error(run("ask", "deepseek", "hi", "--as", "deepseek"), "--as deepseek names the model of a .gguf")
    said = run(*ask_args(foreign, "--as", "deepseek", "--json"))
    assert said.exit_code == 0, said.output
    assert json.loads(said.stdout)["model"] == DEEPSEEK
    shown = run("ask", str(foreign), "hi", "--show-prompt", "--as", "deepseek")
    assert shown.exit_code == 0 and "User: hi" in shown.stdout, shown.output


@pytest.mark.slow
def test_a_chat_template_that_does_not_compile_does_not_stop_the_model(tiny_gguf, tmp_path):
    """llama-cpp-python compiles every chat template when loading; qrun never renders one, so it does not let it."""
    broken = edited_gguf(tiny_gguf(DEEPSEEK), tmp_path / "broken.gguf", "--chat-template", "{% if %}")
    result = run(*ask_args(broken, "--temperature", "0"))
    assert result.exit_code == 0 and result.stdout.strip(), result.output


def _gguf_with_alignment(path: Path, value) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("qrun.model", DEEPSEEK)
    if isinstance(value, float):
        writer.add_float32("general.alignment", value)
    else:
        writer.add_int32("general.alignment", value)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("value", [32.0, 0, -32, 24])
def test_a_bad_general_alignment(value, tmp_path):
    path = tmp_path / "aligned.gguf"
    try:
        _gguf_with_alignment(path, value)
    except (ValueError, ZeroDivisionError, AssertionError):
        pytest.skip(f"gguf-py refuses to write alignment {value!r}")
    assert_cli_error(run(*ask_args(path)), f"general.alignment {value!r}", "power of two")
