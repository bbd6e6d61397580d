"""The Q4_K_M GGUF of each tiny model loads in llama.cpp, generates greedily and deterministically, and still
computes nearly what the F16 GGUF computes (4-bit rounding perturbs logits, it must not scramble them)."""

from __future__ import annotations

import numpy as np
import pytest

from test_numerics import PROMPT_IDS
from tiny_models import llama_cpp_logits, load_failure, open_llama

MODELS = tuple(PROMPT_IDS)
N_GEN_TOKENS = 8


@pytest.fixture(scope="module")
def q4_gguf(tiny_ggufs):
    """Factory: model -> its Q4_K_M path, after a child process proved llama.cpp can run it (else the test fails
    with the reason instead of taking the whole session down)."""
    probed = {}

    def get(model):
        if model not in probed:
            path = tiny_ggufs[model]["Q4_K_M"]
            probed[model] = (path, load_failure(path))
        path, failure = probed[model]
        if failure:
            pytest.fail(f"{path.name}: {failure}")
        return path

    return get


def greedy_ids(llm, prompt_ids: list[int], n_tokens: int) -> list[int]:
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == n_tokens:
            break
    return out


@pytest.mark.parametrize("model", MODELS)
def test_q4_k_m_generates_greedily_and_deterministically(model, q4_gguf):
    prompt = PROMPT_IDS[model]
    llm = open_llama(q4_gguf(model))
    try:
        first = greedy_ids(llm, prompt, N_GEN_TOKENS)
        llm.reset()
        second = greedy_ids(llm, prompt, N_GEN_TOKENS)
    finally:
        llm.close()
    assert len(first) == N_GEN_TOKENS
    assert first == second
    # Greedy means the argmax of the logits after the prompt (computed here in a separate all-logits pass).
    logits = llama_cpp_logits(q4_gguf(model), prompt)
    assert first[0] == int(logits[-1].argmax())
    assert all(0 <= t < logits.shape[1] for t in first)


@pytest.mark.parametrize("model", MODELS)
def test_q4_k_m_logits_track_f16(model, tiny_ggufs, q4_gguf):
    prompt = PROMPT_IDS[model]
    q4 = llama_cpp_logits(q4_gguf(model), prompt)
    f16 = llama_cpp_logits(tiny_ggufs[model]["F16"], prompt)
    assert q4.shape == f16.shape
    centered_f16 = f16 - f16.mean(axis=1, keepdims=True)
    centered_q4 = q4 - q4.mean(axis=1, keepdims=True)
    cosine = (centered_f16 * centered_q4).sum(axis=1) / (
        np.linalg.norm(centered_f16, axis=1) * np.linalg.norm(centered_q4, axis=1)
    )
    assert cosine.min() > 0.9, np.round(cosine, 3)
    top1_agreement = (f16.argmax(axis=1) == q4.argmax(axis=1)).mean()
    assert top1_agreement >= 0.5, top1_agreement
