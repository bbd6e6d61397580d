"""Random-weight Hugging Face checkpoints of the three models, for tests and benchmarks without downloads.

A checkpoint is the model's real config.json (optionally shrunk by TINY_OVERRIDES) and real tokenizer files, plus
safetensors weights under the model's real Hugging Face tensor names and shapes. The tensor layout here is written
from the models' own modeling code, independently of the converters, so a converter bug cannot hide in both.
Weights are generated and written tensor by tensor in row blocks: a full 7B shape needs little RAM.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qrun import registry
from qrun.convert.safetensors_io import write_safetensors
from qrun.convert.vocab_bpe import byte_to_unicode
from qrun.fsutil import write_json_atomic

# Shrunk configs: 2 layers, hidden 256, 4 heads of 64, FFN 512 per branch (a multiple of 256, so Q4_K blocks are
# real), the REAL vocab sizes so the real tokenizers fit. Key names follow the configs in tests/data/tokenizers;
# synonyms of the other Qwen schema are translated when applied (see _apply_overrides).
TINY_OVERRIDES: dict[str, dict] = {
    "qwen-7b-chat": {
        "n_embd": 256,
        "n_head": 4,
        "kv_channels": 64,
        "n_layer": 2,
        "ffn_hidden_size": 1024,
    },  # Qwen's config counts both MLP branches: 2 x 512
    "chatglm3-6b": {
        "hidden_size": 256,
        "num_attention_heads": 4,
        "kv_channels": 64,
        "multi_query_group_num": 2,
        "num_layers": 2,
        "ffn_hidden_size": 512,
    },
    "deepseek-llm-7b-chat": {
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 512,
    },
}
_QWEN_SYNONYMS = {
    "n_embd": "hidden_size",
    "n_head": "num_attention_heads",
    "n_layer": "num_hidden_layers",
    "ffn_hidden_size": "intermediate_size",
}
_QWEN_SYNONYMS.update({v: k for k, v in list(_QWEN_SYNONYMS.items())})
_EXTRA_FILES = ("tokenizer_config.json", "generation_config.json")
_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
_BLOCK_ELEMENTS = 1 << 22  # values generated per step (16 MB of f32)


# The real full-size configs (public hyper-parameters). Sources: Qwen-7B-Chat config.json (Aug-2023 key names),
# THUDM/chatglm3-6b config.json, deepseek-llm-7b-chat config (the values llama.cpp's GGUF of it carries).
# Vocabulary-dependent keys are filled in by the writers of tokenizer folders (write_byte_bpe_tokenizer_dir below,
# qrun/demo/checkpoints.py).
BASE_CONFIGS: dict[str, dict] = {
    "qwen-7b-chat": {
        "activation": "swiglu",
        "apply_residual_connection_post_layernorm": False,
        "architectures": ["QWenLMHeadModel"],
        "attn_pdrop": 0.0,
        "bf16": False,
        "fp16": False,
        "fp32": False,
        "bias_dropout_fusion": True,
        "embd_pdrop": 0.0,
        "ffn_hidden_size": 22016,
        "initializer_range": 0.02,
        "kv_channels": 128,
        "layer_norm_epsilon": 1e-06,
        "model_type": "qwen",
        "n_embd": 4096,
        "n_head": 32,
        "n_layer": 32,
        "n_positions": 6144,
        "no_bias": True,
        "onnx_safe": None,
        "params_dtype": "torch.bfloat16",
        "pos_emb": "rotary",
        "resid_pdrop": 0.1,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": 2048,
        "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer",
        "use_cache": True,
        "use_flash_attn": "auto",
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
    },
    "chatglm3-6b": {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": 13696,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": 4096,
        "kv_channels": 128,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": 32,
        "num_layers": 28,
        "original_rope": True,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 8192,
        "use_cache": True,
        "torch_dtype": "float16",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    "deepseek-llm-7b-chat": {
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 30,
        "num_key_value_heads": 32,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    },
}


def _apply_overrides(config: dict, overrides: dict) -> dict:
    config = dict(config)
    for key, value in overrides.items():
        if key not in config and _QWEN_SYNONYMS.get(key) in config:
            key = _QWEN_SYNONYMS[key]
        config[key] = value
    return config


def _pick(config: dict, *keys: str):
    return next(config[k] for k in keys if config.get(k) is not None)


def _llama_tensors(c: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    # transformers LlamaForCausalLM
    e, v, ff = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    hd = e // c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    yield "model.embed_tokens.weight", (v, e)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (e,)
        yield p + "self_attn.q_proj.weight", (e, e)
        yield p + "self_attn.k_proj.weight", (kv * hd, e)
        yield p + "self_attn.v_proj.weight", (kv * hd, e)
        yield p + "self_attn.o_proj.weight", (e, e)
        yield p + "post_attention_layernorm.weight", (e,)
        yield p + "mlp.gate_proj.weight", (ff, e)
        yield p + "mlp.up_proj.weight", (ff, e)
        yield p + "mlp.down_proj.weight", (e, ff)
    yield "model.norm.weight", (e,)
    yield "lm_head.weight", (v, e)


def _qwen_tensors(c: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    # Qwen modeling_qwen.py: c_attn Linear(e, 3*kv_channels*heads, bias), w1/w2 Linear(e, ffn/2), c_proj back
    e, v = _pick(c, "hidden_size", "n_embd"), c["vocab_size"]
    proj = c["kv_channels"] * _pick(c, "num_attention_heads", "n_head")
    half = _pick(c, "intermediate_size", "ffn_hidden_size") // 2
    yield "transformer.wte.weight", (v, e)
    for i in range(_pick(c, "num_hidden_layers", "n_layer")):
        p = f"transformer.h.{i}."
        yield p + "ln_1.weight", (e,)
        yield p + "attn.c_attn.weight", (3 * proj, e)
        yield p + "attn.c_attn.bias", (3 * proj,)
        yield p + "attn.c_proj.weight", (e, proj)
        yield p + "ln_2.weight", (e,)
        yield p + "mlp.w1.weight", (half, e)
        yield p + "mlp.w2.weight", (half, e)
        yield p + "mlp.c_proj.weight", (e, half)
    yield "transformer.ln_f.weight", (e,)
    yield "lm_head.weight", (v, e)


def _chatglm_tensors(c: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    # ChatGLM3 modeling_chatglm.py: MQA query_key_value with bias, dense_h_to_4h = 2*ffn (gate‖up)
    e, v, ff, hd = c["hidden_size"], c["padded_vocab_size"], c["ffn_hidden_size"], c["kv_channels"]
    heads, groups = c["num_attention_heads"], c["multi_query_group_num"]
    yield "transformer.embedding.word_embeddings.weight", (v, e)
    yield "transformer.rotary_pos_emb.inv_freq", (hd // 4,)  # RotaryEmbedding(kv_channels // 2): dim/2 freqs
    for i in range(c["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        yield p + "input_layernorm.weight", (e,)
        yield p + "self_attention.query_key_value.weight", ((heads + 2 * groups) * hd, e)
        yield p + "self_attention.query_key_value.bias", ((heads + 2 * groups) * hd,)
        yield p + "self_attention.dense.weight", (e, heads * hd)
        yield p + "post_attention_layernorm.weight", (e,)
        yield p + "mlp.dense_h_to_4h.weight", (2 * ff, e)
        yield p + "mlp.dense_4h_to_h.weight", (e, ff)
    yield "transformer.encoder.final_layernorm.weight", (e,)
    yield "transformer.output_layer.weight", (v, e)


_TENSORS = {"llama": _llama_tensors, "qwen": _qwen_tensors, "chatglm": _chatglm_tensors}


def hf_tensor_shapes(model: str, config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(Hugging Face name, shape) of every tensor of `model` as `config` describes it, in file order."""
    return list(_TENSORS[registry.get(model).gguf_arch](config))


def _values(name: str, shape: tuple[int, ...], *, seed: int, config: dict, weight_std: float) -> Iterator[np.ndarray]:
    """Row blocks of one tensor's random values; each tensor has its own stream, so order does not matter."""
    if name.endswith("inv_freq"):  # the real buffer's values: 1 / base^(2i/dim), dim = kv_channels // 2
        dim = 2 * shape[0]
        base = 10000.0 * float(config.get("rope_ratio") or 1.0)
        yield 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
        return
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    is_norm = len(shape) == 1 and ("norm" in name or name.split(".")[-2] in ("ln_1", "ln_2", "ln_f"))
    row_elements = math.prod(shape[1:])
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(1, row_elements))
    rows = shape[0] if shape else 1
    for start in range(0, rows, rows_per_block):
        n = min(rows_per_block, rows - start) * row_elements
        block = rng.standard_normal(n, dtype=np.float32)
        # norms ~1 (spread so a swapped norm changes the output), weights and biases ~N(0, weight_std)
        yield 1.0 + 0.1 * block if is_norm else weight_std * block


def write_random_checkpoint(
    model: str,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    config_overrides: dict | None = None,
    dtype: str = "bf16",
    seed: int = 0,
    shard_max_bytes: int = 2 << 30,
    weight_std: float = 0.02,
) -> Path:
    """Write a random-weight checkpoint of `model` to `out_dir` and return `out_dir`.

    Args:
        model: a registry name or alias.
        tokenizer_dir: folder with the model's real config.json and tokenizer files (copied into out_dir).
        config_overrides: applied to that config.json (e.g. TINY_OVERRIDES[name]); None keeps the full size.
        dtype: "bf16" (default, as the real checkpoints), "f16" or "f32".
        shard_max_bytes: above this, weights are split into model-0000i-of-0000N.safetensors plus
            model.safetensors.index.json, as transformers does.
        weight_std: spread of the random weights and biases (0.02 = the models' initializer_range; larger values
            make attention less uniform, so numeric tests see rope mistakes more clearly).
    """
    spec = registry.get(model)
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    config = _apply_overrides(config, config_overrides or {})
    write_json_atomic(out_dir / "config.json", config)
    for name in dict.fromkeys((*spec.tokenizer_files, *_EXTRA_FILES)):
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)

    st_dtype = _DTYPES[dtype]
    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[st_dtype]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    shard_bytes = 0
    for name, shape in hf_tensor_shapes(spec.name, config):
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and shard_bytes + nbytes > shard_max_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((name, shape))
        shard_bytes += nbytes

    def make(name, shape):
        return _values(name, shape, seed=seed, config=config, weight_std=weight_std)

    if len(shards) == 1:
        write_safetensors(out_dir / "model.safetensors", shards[0], make, dtype=st_dtype)
        return out_dir
    weight_map, total = {}, 0
    for i, specs in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out_dir / file_name, specs, make, dtype=st_dtype)
        weight_map.update({name: file_name for name, _ in specs})
        total += sum(math.prod(shape) * itemsize for _, shape in specs)
    write_json_atomic(
        out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return out_dir


# DeepSeek-LLM's BOS/EOS texts (full-width bar U+FF5C and U+2581), as in its tokenizer.json.
_DEEPSEEK_BOS, _DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# llama.cpp refuses a "gpt2" vocabulary without merges (it finds no tokenizer.ggml.merges key), so a few are added.
_BYTE_BPE_MERGES = (("h", "e"), ("l", "l"), ("Ġ", "w"))
BYTE_BPE_MODEL = "deepseek-llm-7b-chat"  # the model whose tokenizer format write_byte_bpe_tokenizer_dir writes


def write_byte_bpe_tokenizer_dir(out_dir: str | Path) -> Path:
    """Write a tokenizer folder of BYTE_BPE_MODEL whose vocabulary is the 256 bytes plus three merges, with the
    model's full-size config.json (BASE_CONFIGS), and return out_dir: any text tokenizes (byte by byte), and no
    tokenizer library or file of the real model is needed. For write_random_checkpoint(tokenizer_dir=...).

    The files have the real formats: tokenizer.json (byte-level BPE, GPT-2 byte alphabet, BOS/EOS as special added
    tokens after the vocabulary, no normalizer), tokenizer_config.json naming BOS/EOS, config.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {text: i for i, text in enumerate(byte_to_unicode())}
    for left, right in _BYTE_BPE_MERGES:
        vocab[left + right] = len(vocab)
    bos_id, eos_id = len(vocab), len(vocab) + 1
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, text in ((bos_id, _DEEPSEEK_BOS), (eos_id, _DEEPSEEK_EOS))
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": [f"{left} {right}" for left, right in _BYTE_BPE_MERGES],
        },
    }
    write_json_atomic(out_dir / "tokenizer.json", tokenizer)
    write_json_atomic(
        out_dir / "tokenizer_config.json",
        {"add_bos_token": True, "add_eos_token": False, "bos_token": _DEEPSEEK_BOS, "eos_token": _DEEPSEEK_EOS},
    )
    vocab_size = -(-(eos_id + 1) // 64) * 64  # embedding rows padded to a multiple of 64, as the real models pad
    write_json_atomic(
        out_dir / "config.json",
        {**BASE_CONFIGS[BYTE_BPE_MODEL], "vocab_size": vocab_size, "bos_token_id": bos_id, "eos_token_id": eos_id},
    )
    return out_dir
