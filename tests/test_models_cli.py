"""`qrun show`, `qrun rm` and the foreign GGUFs of `qrun models`, on the tiny models converted for real."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf.quants import quantize

from qrun import registry
from qrun.cli import main
from qrun.convert import manifest as mf
from qrun.convert import workspace as ws
from qrun.runner.engine import Engine

MODELS = ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _folder_of(tiny_ggufs, model: str, into: Path) -> Path:
    """A private copy of the tiny model's F16 and Q4_K_M (with manifests) to show or delete."""
    into.mkdir(parents=True, exist_ok=True)
    for quant in ("F16", "Q4_K_M"):
        path = tiny_ggufs[model][quant]
        for src in (path, mf.manifest_path_for(path)):
            shutil.copy2(src, into / src.name)
    return into


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix != ".lock"}


def write_foreign_gguf(path: Path, *, arch: str = "llama") -> Path:
    """A small GGUF as another tool writes it (gguf-py's writer, no qrun.model key): one Q8_0, one F32 tensor."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("Someone else's 1B")
    writer.add_context_length(512)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    q8 = quantize(np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- show -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_show_a_converted_model(model, tiny_ggufs, tiny_checkpoints, tmp_path):
    folder = _folder_of(tiny_ggufs, model, tmp_path / "ggufs")
    spec = registry.get(model)
    result = run("show", spec.aliases[0], "--ggufs", str(folder), "--json")
    assert result.exit_code == 0, result.output
    infos = json.loads(result.stdout)
    assert [i["quant"] for i in infos] == ["F16", "Q4_K_M"]
    with Engine.load(folder / f"{model}-Q4_K_M.gguf", vocab_only=True) as engine:
        expected_stops = [{"id": engine.token_id(text), "text": text} for text in spec.stop_tokens]
    for info in infos:
        manifest = mf.read_manifest(info["file"])
        assert info["model"] == model and info["foreign"] is False
        assert info["chat_format"] == spec.chat_format and info["architecture"] == spec.gguf_arch
        assert info["stop_tokens"] == expected_stops  # resolved in the file's own vocabulary, as the runner does
        assert info["tensor_types"] == manifest["tensor_types"]
        assert info["bits_per_weight"] == manifest["bits_per_weight"] and info["params"] == manifest["params"]
        assert info["size_bytes"] == Path(info["file"]).stat().st_size == manifest["size_bytes"]
        assert info["source"] == {**manifest["source"], "kind": "local"}
        assert info["source"]["path"] == str(tiny_checkpoints[model])
        assert info["manifest"]["data"] == manifest and info["manifest"]["status"] == "unverified"  # a copy
    assert set(infos[0]["tensor_types"]) == {"F16", "F32"} and "Q4_K" in infos[1]["tensor_types"]

    text = run("show", model, "--quant", "q4_k_m", "--ggufs", str(folder))
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"{model}  Q4_K_M  {folder / f'{model}-Q4_K_M.gguf'}")
    assert "F16  " not in text.stdout.splitlines()[0]
    stops = ", ".join(f"{t['id']} {t['text']}" for t in expected_stops)
    for fragment in (
        f"stop tokens     {stops}",
        f"chat format     {spec.chat_format}",
        f"local folder {tiny_checkpoints[model]}",
        f"{infos[1]['bits_per_weight']:.2f} bits/weight",
        f"sha256          {infos[1]['manifest']['data']['sha256']}",
    ):
        assert fragment in text.stdout, (fragment, text.stdout)
    q4k = infos[1]["tensor_types"]["Q4_K"]
    assert f"Q4_K    {q4k['tensors']}" in text.stdout


def test_show_names_the_hub_and_revision_a_download_came_from(tiny_ggufs, tmp_path):
    folder = _folder_of(tiny_ggufs, "chatglm3-6b", tmp_path / "ggufs")
    gguf_path = folder / "chatglm3-6b-Q4_K_M.gguf"
    manifest = mf.read_manifest(gguf_path)
    # the source block `qrun convert chatglm3 --revision v1.0` records (convert/download.py DownloadResult)
    manifest["source"] = {
        "kind": "hub",
        "hub": "modelscope",
        "repo_id": "ZhipuAI/chatglm3-6b",
        "requested_revision": "v1.0",
        "revision": "v1.0",
        "path": "/cache/modelscope/ZhipuAI/chatglm3-6b",
        "fingerprint": "0" * 32,
    }
    mf.write_manifest(gguf_path, manifest)
    result = run("show", "chatglm3", "--quant", "Q4_K_M", "--ggufs", str(folder))
    assert result.exit_code == 0, result.output
    assert "source          ModelScope ZhipuAI/chatglm3-6b revision v1.0, cached at /cache/modelscope/" in result.stdout
    [info] = json.loads(run("show", "chatglm3", "--quant", "Q4_K_M", "--ggufs", str(folder), "--json").stdout)
    assert info["source"] == manifest["source"]


def test_show_a_foreign_gguf_by_path(tmp_path):
    path = write_foreign_gguf(tmp_path / "elsewhere.gguf")
    result = run("show", str(path), "--json")
    assert result.exit_code == 0, result.output
    [info] = json.loads(result.stdout)
    assert info["foreign"] is True and info["model"] is None and info["chat_format"] is None
    assert info["architecture"] == "llama" and info["general_name"] == "Someone else's 1B"
    assert info["manifest"]["status"] == "missing" and info["source"] is None
    # Q8_0: 34-byte blocks of 32 weights; F32: 4 bytes a weight
    assert info["tensor_types"]["Q8_0"] == {"tensors": 1, "params": 4096, "bytes": 4352, "bits_per_weight": 8.5}
    assert info["tensor_types"]["F32"] == {"tensors": 1, "params": 2048, "bytes": 8192, "bits_per_weight": 32.0}
    assert info["bits_per_weight"] == round((4352 + 8192) * 8 / 6144, 4)

    text = run("show", str(path))
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("foreign GGUF")
    assert "not made by `qrun convert`: its model is not guessed" in text.stdout
    assert "chat format     unknown (foreign GGUF)" in text.stdout and "stop tokens" not in text.stdout


def test_show_a_renamed_qrun_gguf_knows_its_model(tiny_ggufs, tmp_path):
    renamed = tmp_path / "my-glm.gguf"
    shutil.copy2(tiny_ggufs["chatglm3-6b"]["Q4_K_M"], renamed)
    [info] = json.loads(run("show", str(renamed), "--json").stdout)
    assert info["model"] == "chatglm3-6b" and info["foreign"] is False and info["manifest"]["status"] == "missing"
    assert [t["text"] for t in info["stop_tokens"]] == ["</s>", "<|user|>", "<|observation|>"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show", "llama3"], ["unknown model 'llama3'", "qwen-7b-chat"]),
        (["show", "qwen"], ["qwen-7b-chat is not converted in", "run `qrun convert qwen-7b-chat`"]),
        (["show", "qwen", "--quant", "Q9"], ["unknown --quant 'Q9'"]),
        (["show", "deepseek", "--quant", "Q8_0"], ["Q8_0 is not converted", "--quant Q8_0`"]),
    ],
)
def test_show_bad_input_is_one_line(args, fragments, tmp_path):
    assert_one_error_line(run(*args, "--ggufs", str(tmp_path / "empty")), *fragments)


def test_show_a_file_that_is_not_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"not a model")
    assert_one_error_line(run("show", str(bad)), "not a GGUF file")
    assert_one_error_line(run("show", str(bad), "--quant", "Q8_0"), "--quant picks one of a model's GGUFs")


# --- rm -------------------------------------------------------------------------------------------------------------
def test_rm_one_quant_keeps_the_others_byte_for_byte(tiny_ggufs, tmp_path):
    model = "deepseek-llm-7b-chat"
    folder = _folder_of(tiny_ggufs, model, tmp_path / "ggufs")
    before = _snapshot(folder)
    result = run("rm", "deepseek", "--quant", "Q4_K_M", "--ggufs", str(folder), "--yes")
    assert result.exit_code == 0, result.output
    gone = [f"{model}-Q4_K_M.gguf", f"{model}-Q4_K_M.json"]
    assert result.stdout.splitlines() == [f"deleted {folder / name}" for name in gone]
    assert _snapshot(folder) == {k: v for k, v in before.items() if k not in gone}
    assert_one_error_line(
        run("rm", "deepseek", "--quant", "Q4_K_M", "--ggufs", str(folder), "--yes"),
        f"no {model} Q4_K_M files in {folder}",
    )


def test_rm_without_quant_removes_every_file_of_the_model_only(tiny_ggufs, tmp_path):
    folder = _folder_of(tiny_ggufs, "qwen-7b-chat", tmp_path / "ggufs")
    _folder_of(tiny_ggufs, "chatglm3-6b", folder)
    # what an interrupted convert leaves: an intermediate and its marker
    intermediate = ws.intermediate_path(registry.get("qwen"), folder, "BF16")
    shutil.copy2(folder / "qwen-7b-chat-F16.gguf", intermediate)
    ws.marker_path(intermediate).write_text("{}")
    mf.manifest_path_for(folder / "qwen-7b-chat-Q8_0.gguf").write_text("{}")  # a manifest left without its GGUF
    glm_before = {k: v for k, v in _snapshot(folder).items() if k.startswith("chatglm3")}
    result = run("rm", "qwen", "--ggufs", str(folder), "-y")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 7
    assert _snapshot(folder) == glm_before


def test_rm_without_a_terminal_needs_yes(tiny_ggufs, tmp_path):
    folder = _folder_of(tiny_ggufs, "chatglm3-6b", tmp_path / "ggufs")
    before = _snapshot(folder)
    assert_one_error_line(run("rm", "chatglm3", "--ggufs", str(folder)), "stdin is not a terminal", "add --yes")
    assert _snapshot(folder) == before


_HOLD_LOCK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from qrun import registry\n"
    "from qrun.convert import workspace as ws\n"
    "with ws.output_lock(registry.get(sys.argv[1]), Path(sys.argv[2]), say=print):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.read()\n"
)


def test_rm_refuses_while_a_convert_holds_the_models_lock(tiny_ggufs, tmp_path):
    model = "chatglm3-6b"
    folder = _folder_of(tiny_ggufs, model, tmp_path / "ggufs")
    before = _snapshot(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, model, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--quant", "F16"]):
            assert_one_error_line(
                run("rm", model, "--ggufs", str(folder), "--yes", *extra),
                f"a `qrun convert` of {model} is writing in {folder}; nothing was removed",
                "wait for it to finish",
            )
        assert _snapshot(folder) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run("rm", model, "--ggufs", str(folder), "--yes", "--quant", "F16").exit_code == 0  # lock released


def _rm_on_a_terminal(folder: Path, answer: bytes) -> str:
    """`qrun rm` in a pseudo-terminal, typing `answer` at its prompt; returns what the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the pseudo-terminal
        os.execv(
            sys.executable, [sys.executable, "-m", "qrun", "rm", "qwen", "--quant", "Q4_K_M", "--ggufs", str(folder)]
        )
    shown, deadline, answered = b"", time.monotonic() + 120, False
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
        if not answered and b"Delete these" in shown:
            os.write(fd, answer)
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, shown
    return shown.decode("utf-8", errors="replace")


def test_rm_asks_on_a_terminal(tiny_ggufs, tmp_path):
    folder = _folder_of(tiny_ggufs, "qwen-7b-chat", tmp_path / "ggufs")
    before = _snapshot(folder)
    shown = _rm_on_a_terminal(folder, b"n\n")
    assert "qwen-7b-chat-Q4_K_M.gguf" in shown and "Delete these 2 file(s)? [y/N]" in shown
    assert "Nothing deleted." in shown and _snapshot(folder) == before
    shown = _rm_on_a_terminal(folder, b"y\n")
    assert f"deleted {folder / 'qwen-7b-chat-Q4_K_M.gguf'}" in shown
    assert sorted(_snapshot(folder)) == ["qwen-7b-chat-F16.gguf", "qwen-7b-chat-F16.json"]


# --- models: foreign GGUFs ------------------------------------------------------------------------------------------
def test_models_lists_foreign_ggufs(tiny_ggufs, tmp_path):
    folder = _folder_of(tiny_ggufs, "deepseek-llm-7b-chat", tmp_path / "ggufs")
    foreign = write_foreign_gguf(folder / "other-llama.gguf")
    cut = folder / "cut.gguf"
    cut.write_bytes(foreign.read_bytes()[:2000])  # a download that stopped
    (folder / "notes.gguf").write_bytes(b"not a GGUF at all")
    shutil.copy2(folder / "deepseek-llm-7b-chat-F16.gguf", folder / "deepseek-llm-7b-chat-F16.intermediate.gguf")

    listing = json.loads(run("models", "--ggufs", str(folder), "--json").stdout)
    by_file = {Path(f["file"]).name: f for f in listing["foreign"]}
    assert sorted(by_file) == ["cut.gguf", "other-llama.gguf"]
    assert by_file["other-llama.gguf"] == {
        "file": str(foreign),
        "size_bytes": foreign.stat().st_size,
        "architecture": "llama",
        "name": "Someone else's 1B",
        "qrun_model": None,
        "error": None,
    }
    assert by_file["cut.gguf"]["architecture"] is None and "truncated" in by_file["cut.gguf"]["error"]
    deepseek = next(m for m in listing["models"] if m["name"] == "deepseek-llm-7b-chat")
    assert [Path(f["file"]).name for f in deepseek["converted"]] == [
        "deepseek-llm-7b-chat-F16.gguf",
        "deepseek-llm-7b-chat-Q4_K_M.gguf",
    ]

    table = run("models", "--ggufs", str(folder))
    assert table.exit_code == 0, table.output
    foreign_part = table.stdout.split("Foreign GGUFs in")[1]
    lines = {line.split()[0]: line for line in foreign_part.splitlines()[3:]}
    assert sorted(lines) == ["cut.gguf", "other-llama.gguf"]
    assert lines["other-llama.gguf"].split()[1:4] == ["llama", f"{foreign.stat().st_size / 1e3:.1f}", "kB"]
    assert "unreadable:" in lines["cut.gguf"] and "notes.gguf" not in table.stdout
