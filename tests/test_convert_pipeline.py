"""convert_model end to end on the tiny checkpoints: manifests, skip on rerun, resume after a kill, disk check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from gguf import GGUFReader

from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.convert.pipeline import convert_model, find_converted, gguf_path_for
from qrun.errors import DiskSpaceError
from qrun.fsutil import sha256_file
from qrun.gguf_file import read_header

MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")


def _names(folder: Path) -> list[str]:
    """The files in an output folder, without the hidden lock files runs leave (workspace.lock_path)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def _copy_outputs(src_dir: Path, dst_dir: Path) -> Path:
    """A private copy of a fixture's ggufs folder (fixtures are shared and read-only); copy2 keeps mtimes."""
    shutil.copytree(src_dir, dst_dir, copy_function=shutil.copy2)
    return dst_dir


@pytest.mark.parametrize("model", MODELS)
def test_manifest_describes_the_file(model, tiny_ggufs, tiny_checkpoints):
    paths = tiny_ggufs[model]  # built by convert_model(quant="Q4_K_M", keep_f16=True)
    q4, f16 = paths["Q4_K_M"], paths["F16"]
    manifest = json.loads(mf.manifest_path_for(q4).read_text())
    assert manifest["schema_version"] == mf.SCHEMA_VERSION
    assert (manifest["model"], manifest["quant"], manifest["gguf"]) == (model, "Q4_K_M", q4.name)
    assert manifest["sha256"] == sha256_file(q4)
    assert manifest["size_bytes"] == q4.stat().st_size
    assert (manifest["unquantized_type"], manifest["unquantized_size_bytes"]) == ("F16", f16.stat().st_size)
    assert manifest["source"]["kind"] == "local"
    assert manifest["source"]["path"] == str(Path(tiny_checkpoints[model]).resolve())
    assert manifest["source"]["fingerprint"] == ws.fingerprint(Path(tiny_checkpoints[model]), _spec(model))
    assert manifest["versions"]["llama_cpp_python"] == "0.3.36" and manifest["versions"]["gguf"] == "0.19.0"
    assert set(manifest["steps"]) == {"convert", "quantize", "hash"}
    for step in manifest["steps"].values():
        assert step["wall_s"] > 0 and step["peak_rss_bytes"] >= step["peak_anon_bytes"] > 0
    # Type counts add up to the file's own tensor count (read by the runner's independent header parser).
    types = manifest["tensor_types"]
    assert sum(t["tensors"] for t in types.values()) == manifest["tensor_count"] == read_header(q4).n_tensors
    assert sum(t["params"] for t in types.values()) == manifest["params"]
    assert set(types) <= {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} and "Q4_K" in types
    assert 4.5 <= manifest["bits_per_weight"] <= 6.6
    f16_manifest = json.loads(mf.manifest_path_for(f16).read_text())
    assert f16_manifest["quant"] == "F16" and f16_manifest["sha256"] == sha256_file(f16)
    assert set(f16_manifest["tensor_types"]) == {"F16", "F32"} and set(f16_manifest["steps"]) == {"convert", "hash"}
    assert f16_manifest["params"] == manifest["params"]
    assert mf.check_manifest(q4).ok and mf.check_manifest(f16).ok
    assert not list(q4.parent.glob("*.partial")) and not list(q4.parent.glob("*intermediate*"))


def test_tensor_summary_agrees_with_gguf_reader(tmp_path):
    """The manifest's fast header parser against gguf-py's GGUFReader on a file with a vocabulary-like string
    array, several key types and F32/F16/Q8_0 tensors."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    path = tmp_path / "mixed.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(3000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(3000)])
    writer.add_uint32("llama.block_count", 1)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_string("general.name", "mixed")
    rng = np.random.default_rng(0)
    writer.add_tensor("a", rng.standard_normal((64, 32)).astype(np.float32))
    writer.add_tensor("b", rng.standard_normal((256, 64)).astype(np.float16))
    q8 = quantize(rng.standard_normal((8, 256)).astype(np.float32), GGMLQuantizationType.Q8_0)
    writer.add_tensor("c", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("d", rng.standard_normal((5,)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader_tensors = GGUFReader(path).tensors
    summary = mf.tensor_summary(path)
    assert (
        {n: t["tensors"] for n, t in summary["tensor_types"].items()}
        == dict(Counter(t.tensor_type.name for t in reader_tensors))
        == {"F32": 2, "F16": 1, "Q8_0": 1}
    )
    assert summary["tensor_data_bytes"] == sum(int(t.n_bytes) for t in reader_tensors)
    assert summary["params"] == sum(int(t.n_elements) for t in reader_tensors) == 64 * 32 + 256 * 64 + 8 * 256 + 5
    assert summary["tensor_types"]["Q8_0"]["bits_per_weight"] == 8.5


def _spec(model):
    from qrun import registry

    return registry.get(model)


def test_rerun_is_up_to_date_and_copies_are_verified_by_sha256(tiny_ggufs, tiny_checkpoints, tmp_path, capfd):
    model = "deepseek-llm-7b-chat"
    out = _copy_outputs(tiny_ggufs[model]["Q4_K_M"].parent, tmp_path / "out")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.gguf")}
    result = convert_model(model, from_dir=tiny_checkpoints[model], out_dir=out, keep_f16=True)
    assert result["status"] == "up_to_date" and result["path"] == str(out / f"{model}-Q4_K_M.gguf")
    assert "up to date" in capfd.readouterr().err
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.gguf")} == before
    # The copies were hashed once; their manifests now record them, so the next check needs no hashing.
    assert mf.check_manifest(out / f"{model}-Q4_K_M.gguf").status == "ok"
    # A plain copy changes mtimes: the sha256 in the manifest decides.
    copied = tmp_path / "copied"
    shutil.copytree(out, copied, copy_function=shutil.copy)
    check = mf.check_manifest(copied / f"{model}-Q4_K_M.gguf")
    assert check.status == "unverified" and "qrun models --verify" in check.reason
    assert mf.check_manifest(copied / f"{model}-Q4_K_M.gguf", verify_sha256=True).status == "ok"
    with open(copied / f"{model}-Q4_K_M.gguf", "r+b") as f:  # same size, other bytes: hashing tells
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    assert mf.check_manifest(copied / f"{model}-Q4_K_M.gguf", verify_sha256=True).status == "stale"
    shutil.copy(out / f"{model}-Q4_K_M.gguf", copied / f"{model}-Q4_K_M.gguf")  # undo the damage (a copy again)
    again = convert_model(model, from_dir=tiny_checkpoints[model], out_dir=copied, keep_f16=True)
    assert again["status"] == "up_to_date"


def test_other_quant_reuses_the_kept_f16(tiny_ggufs, tiny_checkpoints, tmp_path, capfd):
    model = "chatglm3-6b"
    out = tmp_path / "out"
    out.mkdir()
    f16 = tiny_ggufs[model]["F16"]
    for path in (f16, mf.manifest_path_for(f16)):
        shutil.copy2(path, out / path.name)
    result = convert_model(model, from_dir=tiny_checkpoints[model], out_dir=out, quant="q8_0", threads=2)
    assert "reusing chatglm3-6b-F16.gguf" in capfd.readouterr().err
    assert result["status"] == "converted" and result["quant"] == "Q8_0"
    assert result["steps"]["convert"]["reused"] is True
    assert set(result["tensor_types"]) == {"Q8_0", "F32"}
    assert _names(out) == sorted(
        ["chatglm3-6b-F16.gguf", "chatglm3-6b-F16.json", "chatglm3-6b-Q8_0.gguf", "chatglm3-6b-Q8_0.json"]
    )
    found = [(spec.name, quant, manifest is not None) for spec, quant, _, manifest in find_converted(out)]
    assert found == [("chatglm3-6b", "F16", True), ("chatglm3-6b", "Q8_0", True)]


def _qrun_process(args: list[str], env: dict) -> subprocess.Popen:
    code = "from qrun.cli import main; main(" + repr(args) + ")"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """Ctrl-C behaves as in a terminal even when the suite runs as a background job (`cmd &` starts it with
    SIGINT ignored, and an ignored signal stays ignored across exec: Python would then never raise
    KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _partials(path: Path) -> list[Path]:
    """The partial files of `path` (fsutil.partial_path: `<name>.<pid>-<random>.partial`)."""
    return sorted(path.parent.glob(path.name + ".*.partial"))


def _kill_when_exists(proc: subprocess.Popen, path: Path, timeout_s: float = 90, sig=signal.SIGKILL) -> int:
    """Send `sig` to `proc` as soon as a partial of `path` appears (a writer's file: the step is under way)."""
    deadline = time.monotonic() + timeout_s
    while not _partials(path):
        assert proc.poll() is None, f"finished before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.002)
    proc.send_signal(sig)
    return proc.wait(timeout=30)


def test_kill_mid_convert_and_mid_quantize_then_rerun_completes(tiny_checkpoints, tmp_path):
    model, out = "chatglm3-6b", tmp_path / "out"
    args = ["convert", "chatglm3", "--from", str(tiny_checkpoints[model]), "--ggufs", str(out), "--threads", "1"]
    final = gguf_path_for(model, "Q4_K_M", out)
    intermediate = ws.intermediate_path(_spec(model), out, "BF16")  # the tiny checkpoints are bf16, like the real

    _kill_when_exists(_qrun_process(args, {}), intermediate)
    assert not final.exists() and not intermediate.exists()

    _kill_when_exists(_qrun_process(args, {}), final)
    assert not final.exists()  # killed mid-quantize: only the .partial and the complete intermediate are there
    assert intermediate.is_file() and ws.marker_path(intermediate).is_file()
    for partial in _partials(final):
        os.unlink(partial)

    # Ctrl-C mid-quantize: llama.cpp cannot be interrupted, so qrun removes the partial and exits 130 at once.
    code = _kill_when_exists(_qrun_process(args, {}), final, sig=signal.SIGINT)
    assert code == 130
    assert _names(out) == [intermediate.name, ws.marker_path(intermediate).name]

    _kill_when_exists(_qrun_process(args, {}), final)
    [leftover] = _partials(final)

    proc = _qrun_process(args, {})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"removed leftover of an interrupted run: {leftover.name}" in stderr
    assert "reusing the complete BF16 intermediate" in stderr
    assert stdout.startswith("chatglm3-6b  Q4_K_M")
    assert _names(out) == ["chatglm3-6b-Q4_K_M.gguf", "chatglm3-6b-Q4_K_M.json"]
    manifest = mf.check_manifest(final)
    assert manifest.ok and manifest.manifest["steps"]["convert"]["reused"] is True
    assert manifest.manifest["sha256"] == sha256_file(final)


def test_ctrl_c_during_convert_leaves_nothing(tiny_checkpoints, tmp_path):
    model, out = "chatglm3-6b", tmp_path / "out"

    def interrupt(step, **info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_model(model, from_dir=tiny_checkpoints[model], out_dir=out, progress=interrupt)
    assert _names(out) == []


def test_not_enough_disk_fails_before_writing(tiny_checkpoints, tiny_ggufs, tmp_path, monkeypatch):
    model, out = "deepseek-llm-7b-chat", tmp_path / "out"
    # Estimates are upper bounds of the real files.
    n_params = ws.estimate_params(Path(tiny_checkpoints[model]))
    assert ws.estimate_gguf_bytes(n_params, "F16") >= tiny_ggufs[model]["F16"].stat().st_size
    assert ws.estimate_gguf_bytes(n_params, "Q4_K_M") >= tiny_ggufs[model]["Q4_K_M"].stat().st_size
    free_bytes = shutil.disk_usage(tmp_path).free
    monkeypatch.setenv("QRUN_KEEP_FREE_BYTES", str(free_bytes + 10**12))  # more than the disk has free
    with pytest.raises(DiskSpaceError) as err:
        convert_model(model, from_dir=tiny_checkpoints[model], out_dir=out)
    assert _names(out) == []
    line = err.value.one_line()
    assert f"not enough free disk in {out}" in line
    f16_gb = ws.estimate_gguf_bytes(n_params, "F16") / 1e9
    q4_gb = ws.estimate_gguf_bytes(n_params, "Q4_K_M") / 1e9
    assert f"BF16 intermediate {f16_gb:.2f} GB + Q4_K_M output {q4_gb:.2f} GB" in line
    assert "--ggufs DIR" in line


@pytest.mark.parametrize(("dtype", "weight_type"), [("bf16", "BF16"), ("f16", "F16"), ("f32", "F16")])
def test_quantizes_from_the_checkpoints_own_type(tmp_path, dtype, weight_type, capfd):
    """A bf16 checkpoint goes through an exact BF16 intermediate (its bits copied, no float arithmetic), others
    through F16; the manifest records which, and the intermediate is gone afterwards."""
    from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint
    from tiny_models import TOKENIZERS_DIR

    model, out = "deepseek-llm-7b-chat", tmp_path / "out"
    folder = write_random_checkpoint(
        model,
        tmp_path / "ckpt",
        tokenizer_dir=TOKENIZERS_DIR / model,
        config_overrides=TINY_OVERRIDES[model],
        dtype=dtype,
    )
    assert ws.natural_weight_type(Path(folder)) == weight_type
    manifest = convert_model(model, from_dir=folder, quant="Q8_0", out_dir=out, threads=1)
    assert manifest["unquantized_type"] == weight_type
    assert f"-> {weight_type} GGUF" in capfd.readouterr().err
    assert _names(out) == [f"{model}-Q8_0.gguf", f"{model}-Q8_0.json"]


def test_keep_f16_with_bf16_output_is_refused(tiny_checkpoints, tmp_path):
    from qrun.errors import UsageError

    with pytest.raises(UsageError, match="--keep-f16"):
        convert_model(
            "chatglm3-6b", from_dir=tiny_checkpoints["chatglm3-6b"], quant="BF16", keep_f16=True, out_dir=tmp_path
        )
    assert list(tmp_path.iterdir()) == []
