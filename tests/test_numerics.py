"""The F16 GGUF that qrun writes computes what the ORIGINAL model computes.

For each architecture, llama.cpp's logits on the tiny F16 GGUF are compared at every position with the float32
numpy reference in tests/reference_forward.py, which reads the HF checkpoint by its own tensor names and follows
the published modeling code. A wrong q/k permutation, swapped FFN branches or a missing rope key moves the logits
by 40-200 % (see test_tolerance_catches_conversion_mistakes), far outside the tolerance.

Tolerance: the reference runs on the same f16-rounded matrices the GGUF stores, so what remains is llama.cpp's
arithmetic: activations rounded to f16 before every F16 matmul, an f16 KV cache, another summation order. Measured
on these 2-layer models (weights ~N(0, 0.05)): 5e-4..7.5e-4 of the largest logit per position, ~1e-3 against
unrounded f32 weights. MAX_REL_ERR = 2e-3 leaves ~3x headroom; the mistakes below sit at 0.4..2 (200x and more).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference_forward as rf
from helpers import PROMPT_IDS
from tiny_models import llama_cpp_logits

MODELS = tuple(PROMPT_IDS)

MAX_REL_ERR = 2e-3  # max |llama.cpp - reference| over the vocab / max |reference|, per position


def relative_errors(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)


@pytest.fixture(scope="module")
def f16_checkpoint(tiny_checkpoints):
    """Factory: model -> (config, weights with matrices rounded to f16 as the F16 GGUF stores them), loaded once."""
    cache = {}

    def get(model):
        if model not in cache:
            config, weights = rf.load_checkpoint(tiny_checkpoints[model])
            cache[model] = (config, rf.round_matrices_to_f16(weights))
        return cache[model]

    return get


@pytest.fixture(scope="module")
def logits_pair(tiny_ggufs, f16_checkpoint):
    """Factory: model -> (llama.cpp logits of the F16 GGUF, reference logits), computed once per module."""
    cache = {}

    def get(model):
        if model not in cache:
            ids = PROMPT_IDS[model]
            got = llama_cpp_logits(tiny_ggufs[model]["F16"], ids)
            cache[model] = (got, rf.logits_from_weights(*f16_checkpoint(model), ids))
        return cache[model]

    return get


@pytest.mark.parametrize("model", MODELS)
def test_f16_gguf_matches_reference_forward(model, logits_pair):
    got, ref = logits_pair(model)
    assert got.shape == ref.shape, "GGUF vocabulary size differs from the checkpoint's output rows"
    # Logits must be spread out, or agreement would say little (weights ~N(0, 0.02) give ~0.3; see tiny_models).
    assert ref.std() > 0.5
    errors = relative_errors(got, ref)
    worst = int(errors.argmax())
    assert errors.max() < MAX_REL_ERR, (
        f"position {worst}: relative error {errors[worst]:.2e} (all: {np.round(errors, 5)})"
    )
    # Greedy choice agrees everywhere, up to ties within the tolerance.
    rows = np.arange(len(ref))
    margin = MAX_REL_ERR * np.abs(ref).max(axis=1)
    assert (ref[rows, got.argmax(axis=1)] >= ref.max(axis=1) - margin).all()


# The mistakes a converter can make, written as the reference forward each would amount to. llama.cpp's logits must
# be far from every one of them: this is what shows MAX_REL_ERR is tight enough to catch them. Breaking the real
# converter these ways once (permute_for_rope made the identity; Qwen's w1/w2 plans swapped; ChatGLM's
# rope_dimension_count dropped) made test_f16_gguf_matches_reference_forward fail with errors 0.90, 1.02 and 0.48.
def _rope_halves_as_interleaved(monkeypatch, weights):
    monkeypatch.setattr(rf, "_rope_halves", rf._rope_interleaved)  # = q/k rows not permuted for llama.cpp
    return weights


def _rope_interleaved_as_halves(monkeypatch, weights):
    monkeypatch.setattr(rf, "_rope_interleaved", rf._rope_halves)
    return weights


def _chatglm_rope_on_whole_head(monkeypatch, weights):
    original = rf._rope_interleaved  # = rope.dimension_count left at head_dim instead of head_dim/2
    monkeypatch.setattr(rf, "_rope_interleaved", lambda x, rot_dim, base: original(x, x.shape[-1], base))
    return weights


def _qwen_w1_w2_swapped(monkeypatch, weights):
    swapped = dict(weights)
    for name in weights:
        if name.endswith("mlp.w1.weight"):
            w2 = name.replace("mlp.w1.", "mlp.w2.")
            swapped[name], swapped[w2] = weights[w2], weights[name]
    return swapped


MISTAKES = {
    "qwen-7b-chat": [_rope_halves_as_interleaved, _qwen_w1_w2_swapped],
    "chatglm3-6b": [_rope_interleaved_as_halves, _chatglm_rope_on_whole_head],
    "deepseek-llm-7b-chat": [_rope_halves_as_interleaved],
}


@pytest.mark.parametrize(
    ("model", "mistake"),
    [(m, f) for m, fs in MISTAKES.items() for f in fs],
    ids=[f"{m}-{f.__name__.strip('_')}" for m, fs in MISTAKES.items() for f in fs],
)
def test_tolerance_catches_conversion_mistakes(model, mistake, logits_pair, f16_checkpoint, monkeypatch):
    got, _ = logits_pair(model)
    config, weights = f16_checkpoint(model)
    wrong = rf.logits_from_weights(config, mistake(monkeypatch, weights), PROMPT_IDS[model])
    assert relative_errors(got, wrong).max() > 10 * MAX_REL_ERR
    assert (got.argmax(axis=1) != wrong.argmax(axis=1)).any()


# --- BF16: what `qrun convert` writes by default from a bf16 checkpoint before quantizing -----------------------
# The GGUF holds the checkpoint's bf16 bits unchanged, so the reference runs on the unrounded weights. llama.cpp's
# BF16 matmul rounds activations to bf16 (8 mantissa bits against f16's 11), which costs precision against the F16
# path: measured 3.5e-3..7.7e-3 of the largest logit on these models; BF16_MAX_REL_ERR leaves ~2x headroom, stays
# 20x below the smallest conversion mistake above (0.4).
BF16_MAX_REL_ERR = 1.5e-2


@pytest.fixture(scope="module")
def bf16_ggufs(tiny_checkpoints, tmp_path_factory):
    from qrun.convert.pipeline import convert_model

    out = tmp_path_factory.mktemp("bf16")
    cache = {}

    def get(model):
        if model not in cache:
            cache[model] = convert_model(model, from_dir=tiny_checkpoints[model], quant="BF16", out_dir=out)
        return cache[model]

    return get


@pytest.mark.parametrize("model", MODELS)
def test_bf16_gguf_keeps_the_bits_and_matches_reference_forward(model, bf16_ggufs, tiny_checkpoints):
    manifest = bf16_ggufs(model)
    assert set(manifest["tensor_types"]) == {"BF16", "F32"} and manifest["unquantized_type"] == "BF16"
    config, weights = rf.load_checkpoint(tiny_checkpoints[model])
    ids = PROMPT_IDS[model]
    got, ref = llama_cpp_logits(manifest["path"], ids), rf.logits_from_weights(config, weights, ids)
    errors = relative_errors(got, ref)
    assert errors.max() < BF16_MAX_REL_ERR, f"relative errors {np.round(errors, 5)}"
    margin = BF16_MAX_REL_ERR * np.abs(ref).max(axis=1)
    assert (ref[np.arange(len(ref)), got.argmax(axis=1)] >= ref.max(axis=1) - margin).all()


@pytest.mark.parametrize("model", MODELS)
def test_engine_logits_match_reference_forward(model, tiny_ggufs, logits_pair):
    """Engine.logits (what quality and eval score with) gives the reference forward's logits at every position,
    across batches of n_batch tokens, and first_position selects a suffix of the same rows."""
    from qrun.runner.engine import Engine

    _, ref = logits_pair(model)
    ids = PROMPT_IDS[model]
    with Engine.load(tiny_ggufs[model]["F16"], n_ctx=256, n_threads=2, repack=False) as engine:
        engine.n_batch = 5  # several batches: positions and logits must continue across them
        got = engine.logits(ids)
        tail = engine.logits(ids, first_position=len(ids) - 2)
    assert got.shape == ref.shape
    assert relative_errors(got, ref).max() < MAX_REL_ERR
    # the same rows up to float rounding (fewer output rows take another matmul kernel path)
    assert relative_errors(tail, got[-2:]).max() < 1e-4
