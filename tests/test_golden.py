"""The tiny models' GGUFs and greedy ids against the golden files in tests/data/golden (see golden.py and the
README.md there). A failure lists what changed; after an intended change run `python tests/golden.py --update` and
review `git diff tests/data/golden/`."""

from __future__ import annotations

import copy

import pytest

import golden
from tiny_models import MODELS

REGENERATE = "intended? regenerate with `python tests/golden.py --update` and review `git diff tests/data/golden/`"


@pytest.fixture(scope="module")
def fresh(tiny_ggufs):
    """{model: golden document of the files built in this session} (computed on first use per model)."""
    docs: dict[str, dict] = {}

    def get(model: str) -> dict:
        if model not in docs:
            docs[model] = golden.build(tiny_ggufs[model], model)
        return docs[model]

    return get


@pytest.mark.parametrize("model", MODELS)
def test_gguf_keys_and_tensors_match_golden(model, fresh):
    lines = golden.diff_files(golden.load(model), fresh(model))
    assert not lines, (
        f"{model}'s GGUFs differ from {golden.golden_path(model).name}:\n" + "\n".join(lines) + f"\n{REGENERATE}"
    )


@pytest.mark.parametrize("quant", golden.QUANTS)
@pytest.mark.parametrize("model", MODELS)
def test_greedy_ids_match_golden(model, quant, fresh):
    expected, actual = golden.load(model), fresh(model)
    if not golden.same_build(expected, actual) and golden.clear_steps(expected["greedy"][quant]["margins"], quant) == 0:
        # the documented fallback (README.md): on another llama.cpp build only clear margins are compared
        pytest.skip(
            f"{model} {quant}: another llama.cpp build than the golden file's and no golden step with a "
            f"margin >= {golden.CLEAR_MARGIN[quant]}; prompt ids and tensors are still checked"
        )
    lines = golden.diff_greedy(expected, actual, quants=(quant,))
    assert not lines, (
        f"{model} {quant} greedy run differs from {golden.golden_path(model).name}:\n"
        + "\n".join(lines)
        + f"\n{REGENERATE}"
    )


@pytest.mark.parametrize("model", MODELS)
def test_golden_files_pin_enough_clear_greedy_steps(model):
    """The fallback comparison on another build must still check the F16 ids: enough leading steps are clear."""
    doc = golden.load(model)
    f16 = doc["greedy"]["F16"]
    assert len(f16["ids"]) == len(f16["margins"]) > 0
    assert golden.clear_steps(f16["margins"], "F16") >= golden.MIN_CLEAR_STEPS, f16["margins"]
    assert doc["greedy"]["n_threads"] == golden.GREEDY_THREADS == 1
    assert doc["greedy"]["build"]["llama_cpp_python"] == "0.3.36"  # the pin in setup.cfg


def test_quantizing_with_one_thread_writes_the_golden_tensors(tiny_ggufs, tmp_path):
    """The session's Q4_K_M files are quantized with up to 2 threads; one thread must give the same bytes."""
    from qrun.convert.quantize import quantize_gguf

    model = "chatglm3-6b"  # the smallest vocabulary: the quickest to quantize
    out = tmp_path / f"{model}-Q4_K_M.gguf"
    quantize_gguf(tiny_ggufs[model]["F16"], out, "Q4_K_M", threads=1)
    assert golden.describe_gguf(out) == golden.load(model)["files"]["Q4_K_M"]


# --- the comparison itself: it reports what changed, and fails when it should --------------------------------------
def _changed_copy():
    doc = copy.deepcopy(golden.load("chatglm3-6b"))
    q4 = doc["files"]["Q4_K_M"]
    q4["metadata"]["chatglm.rope.freq_base"]["value"] = 500000.0
    del q4["metadata"]["tokenizer.ggml.add_bos_token"]
    q4["metadata"]["qrun.extra"] = {"type": "STRING", "value": "x"}
    q4["tensors"][1]["sha256"] = "0" * 64
    q4["tensors"][2]["type"] = "Q8_0"
    q4["tensors"].pop()
    return doc


def test_diff_files_names_each_change():
    expected = golden.load("chatglm3-6b")
    changed = _changed_copy()
    names = [t["name"] for t in expected["files"]["Q4_K_M"]["tensors"]]
    lines = golden.diff_files(expected, changed)
    assert "Q4_K_M metadata ~ chatglm.rope.freq_base: " in "\n".join(lines)
    assert any(line.startswith("Q4_K_M metadata - tokenizer.ggml.add_bos_token") for line in lines)
    assert any(line.startswith("Q4_K_M metadata + qrun.extra = ") for line in lines)
    assert any(line.startswith(f"Q4_K_M tensor ~ {names[1]}: sha256 ") for line in lines)
    assert any(line.startswith(f"Q4_K_M tensor ~ {names[2]}: type ") for line in lines)
    assert any(line.startswith(f"Q4_K_M tensor - {names[-1]}") for line in lines)
    assert len(lines) == 6, lines
    assert golden.diff_files(expected, copy.deepcopy(expected)) == []


def test_diff_greedy_is_exact_on_the_same_build_and_uses_clear_margins_on_another():
    expected = golden.load("deepseek-llm-7b-chat")
    f16 = expected["greedy"]["F16"]
    n_clear = golden.clear_steps(f16["margins"], "F16")
    assert golden.diff_greedy(expected, copy.deepcopy(expected)) == []

    last_changed = copy.deepcopy(expected)
    last_changed["greedy"]["F16"]["ids"][-1] += 1
    lines = golden.diff_greedy(expected, last_changed)
    assert len(lines) == 1 and lines[0].startswith(f"F16 greedy ids differ from step {len(f16['ids']) - 1} ")

    other_build = copy.deepcopy(last_changed)
    other_build["greedy"]["build"]["system_info"] += " | OTHER = 1"
    # the last step changed: caught on another build too when all steps are clear, else tolerated
    assert bool(golden.diff_greedy(expected, other_build)) == (n_clear == len(f16["ids"]))
    other_build["greedy"]["F16"]["ids"][0] += 1  # a clear first step must always match
    assert golden.diff_greedy(expected, other_build)[0].startswith("F16 greedy ids differ from step 0 ")

    prompt_changed = copy.deepcopy(expected)
    prompt_changed["greedy"]["Q4_K_M"]["prompt_ids"].append(2)
    assert golden.diff_greedy(expected, prompt_changed)[0].startswith("Q4_K_M prompt ids changed")
