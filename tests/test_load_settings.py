"""The load knobs (--mmap/--no-mmap, --repack/--no-repack, --threads-batch) really reach llama.cpp.

Checked through memory accounting in fresh processes: reading the GGUF instead of mapping it, or repacking its
quantized weights, puts a copy of the weights in anonymous memory; mapping it without repacking does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gguf
import pytest
from click.testing import CliRunner

from qrun.cli import main
from qrun.runner import cpu_probe
from qrun.runner.engine import system_info

_LOAD_AND_MEASURE = """
import json, sys
from qrun.measure import anon_bytes
from qrun.runner.engine import Engine
before = anon_bytes()
engine = Engine.load(sys.argv[1], n_ctx=256, n_threads=1, use_mmap=sys.argv[2] == "1", repack=sys.argv[3] == "1")
print(json.dumps({"anon_growth_bytes": anon_bytes() - before}))
"""


def _anon_growth_bytes(gguf, *, use_mmap: bool, repack: bool) -> int:
    # a fresh process per setting: nothing mapped or allocated by an earlier load can hide the difference
    # Loading alone never runs a repacked matmul, so the once-per-machine crash check (runner/cpu_probe.py, which
    # refuses --repack on VMs whose AMX kernels trap) is skipped: this measures the load, not a generation.
    env = {**os.environ, cpu_probe._CHILD_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_MEASURE, str(gguf), str(int(use_mmap)), str(int(repack))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    ).stdout
    return json.loads(out)["anon_growth_bytes"]


def test_no_mmap_reads_the_weights_into_anonymous_memory(tiny_gguf):
    gguf = tiny_gguf("qwen-7b-chat", "F16")  # ~160 MB of F16 embeddings: far above allocator noise
    size = gguf.stat().st_size
    mapped = _anon_growth_bytes(gguf, use_mmap=True, repack=False)
    read = _anon_growth_bytes(gguf, use_mmap=False, repack=False)
    # (both also hold the KV cache and compute buffers, ~50 MB here for Qwen's 152k-token output layer)
    assert read - mapped > 0.8 * size


def _repacked_on_every_x86_bytes(gguf_path) -> int:
    """Bytes of the tensors llama.cpp's CPU repacking takes on any x86-64 CPU with AVX2: the 2-D Q4_0 weights of
    matrix products whose row count is a multiple of 8 (its Q4_0 8x8 layout; ggml-cpu/repack.cpp in the pinned
    llama.cpp). The token embedding is a row lookup, not a product, and stays mapped. CPUs with AMX take more tensor
    types into their own buffer, so this is a lower bound that holds on AMD and Intel alike."""
    reader = gguf.GGUFReader(str(gguf_path))
    return sum(
        int(t.n_bytes)
        for t in reader.tensors
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_0
        and len(t.shape) == 2
        and t.name != "token_embd.weight"
        and int(t.shape[1]) % 8 == 0
    )


def test_repack_copies_quantized_weights_into_anonymous_memory(tiny_models):
    if "AVX2 = 1" not in system_info():
        pytest.skip("llama.cpp repacks Q4_0 for AVX2 on x86; this build has no AVX2 kernels to repack for")
    # a DeepSeek shape whose MLP (3 x 256 x 8192 per layer) outweighs allocator noise: ~7 MB of repackable Q4_0
    gguf_path = tiny_models.shaped_gguf("wide-mlp", "deepseek-llm-7b-chat", {"intermediate_size": 8192}, "Q4_0")
    expected = _repacked_on_every_x86_bytes(gguf_path)
    assert expected > 4 << 20
    plain = _anon_growth_bytes(gguf_path, use_mmap=True, repack=False)
    repacked = _anon_growth_bytes(gguf_path, use_mmap=True, repack=True)
    assert repacked - plain > 0.9 * expected, (repacked - plain, expected)


def test_ask_json_reports_the_load_settings_it_used(tiny_gguf):
    gguf = tiny_gguf("deepseek-llm-7b-chat")
    result = CliRunner().invoke(
        main,
        [
            "ask",
            str(gguf),
            "hi",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
            "--threads",
            "1",
            "--threads-batch",
            "2",
            "--no-mmap",
            "--no-repack",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert (settings["threads"], settings["threads_batch"], settings["use_mmap"], settings["repack"]) == (
        1,
        2,
        False,
        False,
    )


@pytest.mark.parametrize("args", [["--threads-batch", "-1"], ["--threads-batch", "x"]])
def test_bad_threads_batch_is_one_line(tiny_gguf, args):
    result = CliRunner().invoke(main, ["ask", str(tiny_gguf("deepseek-llm-7b-chat")), "hi", *args])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1
