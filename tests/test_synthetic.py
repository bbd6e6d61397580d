"""Random-weight checkpoints: real configs shrunk, real tokenizer files, real HF tensor names, streamed writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qrun.convert.checkpoint import Checkpoint
from qrun.convert.safetensors_io import SafetensorsFile, bf16_bits_to_f32, f32_to_bf16_bits
from qrun.convert.synthetic import TINY_OVERRIDES, hf_tensor_shapes, write_random_checkpoint
from tiny_models import MODELS, TOKENIZERS_DIR

REAL_VOCAB = {"qwen-7b-chat": 151936, "chatglm3-6b": 65024, "deepseek-llm-7b-chat": 102400}
COPIED = {
    "qwen-7b-chat": ["qwen.tiktoken", "tokenizer_config.json", "generation_config.json"],
    "chatglm3-6b": ["tokenizer.model", "tokenizer_config.json"],
    "deepseek-llm-7b-chat": ["tokenizer.json", "tokenizer_config.json", "generation_config.json"],
}


@pytest.mark.parametrize("model", MODELS)
def test_tiny_checkpoint_has_real_tokenizer_real_vocab_and_shrunk_config(tiny_checkpoints, model):
    folder = tiny_checkpoints[model]
    config = json.loads((folder / "config.json").read_text())
    real = json.loads((TOKENIZERS_DIR / model / "config.json").read_text())
    assert config == {**real, **TINY_OVERRIDES[model]}
    for name in COPIED[model]:
        assert (folder / name).read_bytes() == (TOKENIZERS_DIR / model / name).read_bytes(), name
    reader = SafetensorsFile(folder / "model.safetensors")
    assert [(n, reader.shape(n)) for n in reader.names()] == hf_tensor_shapes(model, config)
    assert {e["dtype"] for e in reader.entries.values()} == {"BF16"}
    embedding = hf_tensor_shapes(model, config)[0]
    assert embedding[1] == (REAL_VOCAB[model], 256)


def test_tiny_shapes_follow_the_brief(tiny_checkpoints):
    shapes = {
        m: dict(hf_tensor_shapes(m, json.loads((tiny_checkpoints[m] / "config.json").read_text()))) for m in MODELS
    }
    assert shapes["qwen-7b-chat"]["transformer.h.1.mlp.w1.weight"] == (512, 256)  # 1024 // 2 per branch
    assert shapes["qwen-7b-chat"]["transformer.h.1.attn.c_attn.weight"] == (768, 256)
    assert shapes["chatglm3-6b"]["transformer.encoder.layers.1.self_attention.query_key_value.weight"] == (
        (4 + 2 * 2) * 64,
        256,
    )  # 4 query heads + 2 key and 2 value groups, of 64
    assert shapes["chatglm3-6b"]["transformer.encoder.layers.1.mlp.dense_h_to_4h.weight"] == (1024, 256)
    assert shapes["deepseek-llm-7b-chat"]["model.layers.1.mlp.gate_proj.weight"] == (512, 256)
    assert all(not any(".2." in n for n in s) and any(".1." in n for n in s) for s in shapes.values())  # 2 layers


@pytest.mark.parametrize(
    "model, billions", [("qwen-7b-chat", 7.72), ("chatglm3-6b", 6.24), ("deepseek-llm-7b-chat", 6.91)]
)
def test_full_size_shapes_have_the_published_parameter_counts(model, billions):
    config = json.loads((TOKENIZERS_DIR / model / "config.json").read_text())
    params = sum(math.prod(shape) for name, shape in hf_tensor_shapes(model, config) if "inv_freq" not in name)
    assert params / 1e9 == pytest.approx(billions, abs=0.01)


def test_values_norms_weights_and_rope_buffer(tiny_checkpoints):
    checkpoint = Checkpoint(tiny_checkpoints["chatglm3-6b"])
    norm = checkpoint.read("transformer.encoder.layers.0.input_layernorm.weight")
    assert abs(norm.mean() - 1.0) < 0.02 and 0.05 < norm.std() < 0.15
    weight = checkpoint.read("transformer.encoder.layers.0.mlp.dense_4h_to_h.weight")
    assert abs(weight.mean()) < 0.01 and weight.std() > 0.01
    # the real buffer: 1 / 10000^(2i/dim) for the 32 rotary dims of a 64-wide head
    want = 1.0 / 10000.0 ** (np.arange(0, 32, 2, dtype=np.float32) / 32)
    inv_freq = checkpoint.read("transformer.rotary_pos_emb.inv_freq")
    assert np.array_equal(inv_freq, bf16_bits_to_f32(f32_to_bf16_bits(want)))


def test_same_seed_same_bytes_other_seed_other_values(tmp_path):
    model, small = "deepseek-llm-7b-chat", {**TINY_OVERRIDES["deepseek-llm-7b-chat"], "vocab_size": 512}
    paths = [
        write_random_checkpoint(
            model, tmp_path / name, tokenizer_dir=TOKENIZERS_DIR / model, config_overrides=small, seed=seed
        )
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    a, b, c = ((p / "model.safetensors").read_bytes() for p in paths)
    assert a == b and a != c


@pytest.mark.parametrize("dtype, stored, tolerance", [("f16", "F16", 1e-3), ("f32", "F32", 0.0)])
def test_other_storage_dtypes_hold_the_same_values(tmp_path, dtype, stored, tolerance):
    model, small = "qwen-7b-chat", {**TINY_OVERRIDES["qwen-7b-chat"], "vocab_size": 512, "padded_vocab_size": 512}
    ref = write_random_checkpoint(
        model, tmp_path / "ref", tokenizer_dir=TOKENIZERS_DIR / model, config_overrides=small, dtype="f32"
    )
    other = write_random_checkpoint(
        model, tmp_path / dtype, tokenizer_dir=TOKENIZERS_DIR / model, config_overrides=small, dtype=dtype
    )
    reader = SafetensorsFile(other / "model.safetensors")
    assert {e["dtype"] for e in reader.entries.values()} == {stored}
    a, b = Checkpoint(ref), Checkpoint(other)
    for name in a.names():
        assert np.allclose(a.read(name), b.read(name), rtol=tolerance, atol=tolerance * 0.02), name


def test_qwen_overrides_follow_the_config_schema(tmp_path):
    # The Dec-2023 config names the same settings hidden_size / intermediate_size ...: overrides must land there.
    later = TOKENIZERS_DIR / "qwen-7b-chat" / "related-qwen-7b-base-2023-12"
    folder = write_random_checkpoint(
        "qwen",
        tmp_path / "q",
        tokenizer_dir=later,
        config_overrides={**TINY_OVERRIDES["qwen-7b-chat"], "vocab_size": 512},
    )
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_hidden_layers"],
        config["intermediate_size"],
    ) == (256, 4, 2, 1024)
    assert not {"n_embd", "n_head", "n_layer", "ffn_hidden_size"} & set(config)
