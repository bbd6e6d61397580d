"""`qrun convert` and `qrun models` through Click's CliRunner: outputs, and one clean line for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.convert import manifest as mf


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _linked_checkpoint(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A checkpoint folder of symlinks to the shared fixture's files (cheap, and the fixture stays untouched)."""
    dst.mkdir(parents=True)
    for path in Path(src).iterdir():
        if path.name not in skip:
            (dst / path.name).symlink_to(path)
    return dst


def test_convert_from_prints_summary_and_reruns_as_up_to_date(tiny_ggufs, tiny_checkpoints, tmp_path):
    model = "deepseek-llm-7b-chat"
    out = tmp_path / "out"
    shutil.copytree(tiny_ggufs[model]["Q4_K_M"].parent, out, copy_function=shutil.copy2)
    result = run("convert", "deepseek", "--from", str(tiny_checkpoints[model]), "--ggufs", str(out), "--keep-f16")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith(model)]
    assert "up to date" in result.stdout and str(out / f"{model}-Q4_K_M.gguf") in result.stdout
    as_json = run("convert", "deepseek", "--from", str(tiny_checkpoints[model]), "--ggufs", str(out), "--json")
    assert as_json.exit_code == 0, as_json.output
    [manifest] = json.loads(as_json.stdout)
    assert manifest["status"] == "up_to_date" and manifest["quant"] == "Q4_K_M"
    assert manifest["sha256"] == mf.read_manifest(out / f"{model}-Q4_K_M.gguf")["sha256"]


def test_convert_quant_f16_writes_only_the_f16(tiny_checkpoints, tmp_path):
    model = "chatglm3-6b"
    out = tmp_path / "out"
    result = run(
        "convert", "chatglm3", "--from", str(tiny_checkpoints[model]), "--ggufs", str(out), "--quant", "F16", "--json"
    )
    assert result.exit_code == 0, result.output
    [manifest] = json.loads(result.stdout)
    assert manifest["quant"] == "F16" and manifest["status"] == "converted"
    assert set(manifest["tensor_types"]) == {"F16", "F32"} and "quantize" not in manifest["steps"]
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".lock") == [
        "chatglm3-6b-F16.gguf",
        "chatglm3-6b-F16.json",
    ]


def test_models_lists_registry_and_local_files(tiny_ggufs, tmp_path):
    ggufs = tmp_path / "ggufs"
    shutil.copytree(tiny_ggufs["qwen-7b-chat"]["Q4_K_M"].parent, ggufs, copy_function=shutil.copy2)
    f16 = ggufs / "qwen-7b-chat-F16.gguf"
    with open(f16, "ab") as f:  # the file changed after its manifest was written
        f.write(b"\0")
    mf.manifest_path_for(ggufs / "qwen-7b-chat-Q4_K_M.gguf").unlink()
    (ggufs / "notes.gguf").write_bytes(b"not ours")

    table = run("models", "--ggufs", str(ggufs))
    assert table.exit_code == 0, table.output
    for text in (
        "qwen-7b-chat",
        "chatglm3-6b",
        "deepseek-llm-7b-chat",
        "qwen/Qwen-7B-Chat",
        "THUDM/chatglm3-6b",
        "ZhipuAI/chatglm3-6b",
        "deepseek-ai/deepseek-llm-7b-chat",
        "chatml-qwen",
        "llama",
    ):
        assert text in table.stdout
    assert "notes.gguf" not in table.stdout

    listing = json.loads(run("models", "--ggufs", str(ggufs), "--json").stdout)
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["chatglm3-6b"]["aliases"] == ["chatglm3", "chatglm"]
    assert by_name["chatglm3-6b"]["converted"] == []
    local = {f["quant"]: f for f in by_name["qwen-7b-chat"]["converted"]}
    assert set(local) == {"F16", "Q4_K_M"}
    assert local["F16"]["manifest"] == "stale" and "size" in local["F16"]["manifest_note"]
    assert local["Q4_K_M"]["manifest"] == "missing"
    assert local["Q4_K_M"]["size_bytes"] == (ggufs / "qwen-7b-chat-Q4_K_M.gguf").stat().st_size


def test_models_with_nothing_converted(tmp_path):
    result = run("models", "--ggufs", str(tmp_path / "none"))
    assert result.exit_code == 0 and "nothing yet" in result.stdout


def test_unknown_model_lists_valid_names():
    line = assert_one_error_line(run("convert", "llama3", "--from", "."), "unknown model 'llama3'")
    for name in ("qwen-7b-chat", "chatglm3-6b", "deepseek-llm-7b-chat", "qwen", "chatglm3", "deepseek"):
        assert name in line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["convert", "qwen", "chatglm3", "--from", "."], ["--from needs exactly one MODEL, got 2"]),
        (["convert", "--from", "."], ["--from needs exactly one MODEL, got 0"]),
        (["convert", "qwen", "--quant", "Q3_K"], ["unknown --quant 'Q3_K'", "Q4_K_M"]),
        (["convert", "qwen", "--source", "github"], ["unknown --source 'github'", "modelscope, hf"]),
        (["convert", "qwen", "--threads", "-2"], ["--threads must be >= 0"]),
        (["convert", "qwen", "--from", "/nonexistent/ckpt"], ["/nonexistent/ckpt does not exist"]),
    ],
)
def test_bad_options_are_one_line(args, fragments):
    assert_one_error_line(run(*args), *fragments)


def test_checkpoint_problems_are_one_line(tiny_checkpoints, tmp_path):
    qwen = Path(tiny_checkpoints["qwen-7b-chat"])
    out = tmp_path / "out"
    no_config = _linked_checkpoint(qwen, tmp_path / "no-config", skip=("config.json",))
    assert_one_error_line(run("convert", "qwen", "--from", str(no_config), "--ggufs", str(out)), "config.json")

    no_tokenizer = _linked_checkpoint(qwen, tmp_path / "no-tokenizer", skip=("qwen.tiktoken",))
    assert_one_error_line(run("convert", "qwen", "--from", str(no_tokenizer), "--ggufs", str(out)), "qwen.tiktoken")

    # The DeepSeek checkpoint handed in as ChatGLM3: the architecture in config.json does not match.
    deepseek = Path(tiny_checkpoints["deepseek-llm-7b-chat"])
    assert_one_error_line(run("convert", "chatglm3", "--from", str(deepseek), "--ggufs", str(out)), "LlamaForCausalLM")

    truncated = _linked_checkpoint(qwen, tmp_path / "truncated", skip=("model.safetensors",))
    shard = qwen / "model.safetensors"
    with open(shard, "rb") as src, open(truncated / shard.name, "wb") as dst:
        dst.write(src.read(shard.stat().st_size // 2))
    assert_one_error_line(run("convert", "qwen", "--from", str(truncated), "--ggufs", str(out)), "model.safetensors")
    assert not any(p.name.endswith((".gguf", ".partial")) for p in out.iterdir())


def test_not_enough_disk_is_one_line(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("QRUN_KEEP_FREE_BYTES", str(shutil.disk_usage(tmp_path).free + 10**12))
    out = tmp_path / "out"
    result = run("convert", "chatglm3", "--from", str(tiny_checkpoints["chatglm3-6b"]), "--ggufs", str(out))
    assert_one_error_line(result, f"not enough free disk in {out}", "F16 intermediate", "Q4_K_M output")


def test_models_verify_accepts_plain_copies_by_sha256(tiny_ggufs, tmp_path):
    ggufs = tmp_path / "ggufs"
    ggufs.mkdir()
    for gguf in tiny_ggufs["deepseek-llm-7b-chat"].values():  # plain copies: new mtimes
        shutil.copy(gguf, ggufs)
        shutil.copy(mf.manifest_path_for(gguf), ggufs)

    def statuses(*extra):
        listing = json.loads(run("models", "--ggufs", str(ggufs), "--json", *extra).stdout)
        return {f["quant"]: f["manifest"] for m in listing["models"] for f in m["converted"]}

    assert statuses() == {"F16": "unverified", "Q4_K_M": "unverified"}
    assert "qrun models --verify" in run("models", "--ggufs", str(ggufs)).stdout
    assert statuses("--verify") == {"F16": "ok", "Q4_K_M": "ok"}


def test_a_missing_from_folder_creates_no_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QRUN_GGUF_DIR", raising=False)
    assert_one_error_line(run("convert", "qwen", "--from", str(tmp_path / "typo")), "typo does not exist")
    assert list(tmp_path.iterdir()) == []  # no empty ./ggufs left by a mistyped --from
