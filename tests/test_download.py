"""Downloads, tested without network through the REAL hub libraries: their local caches / offline modes are
populated by hand in the layouts the libraries read, and an unreachable hub is a closed loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from qrun import registry
from qrun.convert.download import (
    PICKLE_PATTERNS,
    SAFETENSORS_PATTERNS,
    base_patterns,
    download_checkpoint,
)
from qrun.errors import DownloadError

COMMIT = "3f1b9a7c0d2e4f6a8b0c1d2e3f4a5b6c7d8e9f01"
UNREACHABLE = "http://127.0.0.1:9"  # discard port on loopback: connection refused at once


def _write_snapshot(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _checkpoint_files(n_shards: int = 1) -> dict[str, bytes]:
    files = {
        "config.json": b"{}",
        "generation_config.json": b"{}",
        "tokenizer_config.json": b"{}",
        "qwen.tiktoken": b"IQ== 0\n",
    }
    if n_shards == 1:
        files["model.safetensors"] = b"x" * 16
    else:
        shards = [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]
        files.update({name: b"x" * 16 for name in shards})
        index = {"weight_map": {f"w{i}": name for i, name in enumerate(shards)}}
        files["model.safetensors.index.json"] = json.dumps(index).encode()
    return files


def _hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """The layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return _write_snapshot(repo / "snapshots" / commit, files)


def _modelscope_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "master") -> Path:
    """The layout modelscope(-hub) reads with local_files_only: models/<org>--<name>/snapshots/<revision>/."""
    return _write_snapshot(cache / "models" / repo_id.replace("/", "--") / "snapshots" / revision, files)


def test_patterns_select_only_what_conversion_needs():
    # Qwen-7B-Chat's real file list (hub listing): code, images and docs must not be fetched, nor .bin twins.
    listing = [
        "config.json",
        "configuration_qwen.py",
        "generation_config.json",
        "modeling_qwen.py",
        "qwen.tiktoken",
        "tokenization_qwen.py",
        "tokenizer_config.json",
        "README.md",
        "assets/logo.jpg",
        "model.safetensors.index.json",
        *[f"model-0000{i}-of-00008.safetensors" for i in range(1, 9)],
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "cpp_kernels.py",
    ]
    spec = registry.get("qwen")
    chosen = set(filter_repo_objects(listing, allow_patterns=[*base_patterns(spec), *SAFETENSORS_PATTERNS]))
    assert chosen == {
        "config.json",
        "generation_config.json",
        "qwen.tiktoken",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        *[f"model-0000{i}-of-00008.safetensors" for i in range(1, 9)],
    }
    pickles = set(filter_repo_objects(listing, allow_patterns=list(PICKLE_PATTERNS)))
    assert pickles == {"pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"}
    assert "tokenizer.model" in base_patterns(registry.get("chatglm3"))
    assert "tokenizer.json" in base_patterns(registry.get("deepseek"))


def test_hf_offline_cache_resolves_through_huggingface_hub(tmp_path):
    snapshot = _hf_cache(tmp_path / "hf", "Qwen/Qwen-7B-Chat", _checkpoint_files(n_shards=2))
    spec = registry.get("qwen")
    result = download_checkpoint(spec, source="hf", cache_dir=tmp_path / "hf", local_only=True)
    assert result.path == snapshot
    assert (result.hub, result.repo_id, result.revision, result.requested_revision) == (
        "hf",
        "Qwen/Qwen-7B-Chat",
        COMMIT,
        None,
    )
    pinned = download_checkpoint(spec, source="hf", revision=COMMIT, cache_dir=tmp_path / "hf", local_only=True)
    assert pinned.path == snapshot and pinned.requested_revision == COMMIT
    assert pinned.to_source()["kind"] == "hub"
    with pytest.raises(DownloadError, match="at revision v9") as err:
        download_checkpoint(spec, source="hf", revision="v9", cache_dir=tmp_path / "hf", local_only=True)
    assert "--from DIR" in err.value.one_line()


def test_incomplete_snapshot_names_the_missing_shard(tmp_path):
    files = _checkpoint_files(n_shards=2)
    del files["model-00002-of-00002.safetensors"]
    _hf_cache(tmp_path / "hf", "Qwen/Qwen-7B-Chat", files)
    with pytest.raises(DownloadError, match="lacks model-00002-of-00002.safetensors"):
        download_checkpoint(registry.get("qwen"), source="hf", cache_dir=tmp_path / "hf", local_only=True)


def test_modelscope_local_cache_resolves_through_modelscope(tmp_path):
    cache = tmp_path / "ms"
    snapshot = _modelscope_cache(cache, "qwen/Qwen-7B-Chat", _checkpoint_files())
    result = download_checkpoint(registry.get("qwen"), source="modelscope", cache_dir=cache, local_only=True)
    assert result.path == snapshot
    assert (result.hub, result.repo_id, result.revision) == ("modelscope", "qwen/Qwen-7B-Chat", "master")
    with pytest.raises(DownloadError, match="could not download ZhipuAI/chatglm3-6b from ModelScope"):
        download_checkpoint(registry.get("chatglm3"), source="modelscope", cache_dir=cache, local_only=True)


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Python code in a fresh interpreter: the hub libraries read their environment once per process."""
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


_DOWNLOAD_QWEN = (
    "from qrun import registry; from qrun.convert.download import download_checkpoint; "
    "r = download_checkpoint(registry.get('qwen'), source='modelscope'); print(r.path); print(r.revision)"
)


def test_modelscope_offline_env_and_unreachable_hub_use_a_complete_cache(tmp_path):
    cache = tmp_path / "ms"
    snapshot = _modelscope_cache(cache, "qwen/Qwen-7B-Chat", _checkpoint_files())
    offline = _run_python(_DOWNLOAD_QWEN, {"MODELSCOPE_CACHE": str(cache), "QRUN_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.split() == [str(snapshot), "master"]
    # ModelScope's own client has no cache fallback (it retries ~7 s, then fails); qrun falls back when complete.
    unreachable = _run_python(_DOWNLOAD_QWEN, {"MODELSCOPE_CACHE": str(cache), "MODELSCOPE_ENDPOINT": UNREACHABLE})
    assert unreachable.returncode == 0, unreachable.stderr
    assert unreachable.stdout.split() == [str(snapshot), "master"]
    assert "ModelScope unreachable" in unreachable.stderr and "127.0.0.1" in unreachable.stderr


def _run_qrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from qrun.cli import main; sys.argv[0] = 'qrun'; main(" + repr(args) + ")"
    return _run_python(code, env)


def test_unreachable_hub_is_one_clean_error_line(tmp_path):
    proc = _run_qrun(
        ["convert", "qwen", "--source", "hf"],
        {
            "HF_ENDPOINT": UNREACHABLE,
            "HF_HUB_CACHE": str(tmp_path / "empty-hf"),
            "QRUN_GGUF_DIR": str(tmp_path / "ggufs"),
            "QRUN_DEBUG": "0",
        },
    )
    assert proc.returncode == 1, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, proc.stderr
    assert "could not download Qwen/Qwen-7B-Chat from Hugging Face" in error_lines[0]
    assert "--from DIR" in error_lines[0] and "--source modelscope" in error_lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_convert_from_the_hf_cache_offline_records_the_commit(tiny_checkpoints, tmp_path):
    ckpt = Path(tiny_checkpoints["chatglm3-6b"])
    snapshot = _hf_cache(tmp_path / "hf", "THUDM/chatglm3-6b", {})
    for path in ckpt.iterdir():  # the hub cache holds symlinks to blobs; here to the fixture's files
        (snapshot / path.name).symlink_to(path)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "QRUN_GGUF_DIR": str(tmp_path / "ggufs")}
    proc = _run_qrun(["convert", "chatglm3", "--source", "hf", "--quant", "F16", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    [manifest] = json.loads(proc.stdout)
    source = manifest["source"]
    assert (source["kind"], source["hub"], source["repo_id"], source["revision"]) == (
        "hub",
        "hf",
        "THUDM/chatglm3-6b",
        COMMIT,
    )
    assert source["path"] == str(snapshot)
    assert set(manifest["steps"]) == {"download", "convert", "hash"}
    pinned = _run_qrun(["convert", "chatglm3", "--source", "hf", "--quant", "F16", "--revision", COMMIT], env)
    assert pinned.returncode == 0 and "up to date" in pinned.stdout, pinned.stderr
    other = _run_qrun(["convert", "chatglm3", "--source", "hf", "--quant", "F16", "--revision", "v2"], env)
    assert other.returncode == 1 and "Error: could not download THUDM/chatglm3-6b" in other.stderr
