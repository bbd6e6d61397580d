"""The per-architecture converters and the streaming F16 GGUF writer, on tiny random checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from helpers import write_torch_zip
from qrun import registry
from qrun.convert.archs import permute_for_rope
from qrun.convert.checkpoint import Checkpoint
from qrun.convert.converters import converter_for
from qrun.convert.gguf_writer import write_gguf
from qrun.convert.safetensors_io import BF16_BITS, f32_to_bf16_bits, write_safetensors
from qrun.convert.synthetic import TINY_OVERRIDES, write_random_checkpoint
from qrun.errors import CheckpointError, UnsupportedConfigError
from tiny_models import MODELS, TOKENIZERS_DIR, open_llama

# What llama.cpp expects per layer (src/models/{llama,qwen,chatglm}.cpp), as (gguf name, numpy shape) for the tiny
# shapes: hidden 256, 4 heads of 64, FFN 512 per branch.
EXPECTED_LAYER = {
    "deepseek-llm-7b-chat": [
        ("attn_norm.weight", (256,)),
        ("attn_q.weight", (256, 256)),
        ("attn_k.weight", (256, 256)),
        ("attn_v.weight", (256, 256)),
        ("attn_output.weight", (256, 256)),
        ("ffn_norm.weight", (256,)),
        ("ffn_gate.weight", (512, 256)),
        ("ffn_up.weight", (512, 256)),
        ("ffn_down.weight", (256, 512)),
    ],
    "qwen-7b-chat": [
        ("attn_norm.weight", (256,)),
        ("attn_qkv.weight", (768, 256)),
        ("attn_qkv.bias", (768,)),
        ("attn_output.weight", (256, 256)),
        ("ffn_norm.weight", (256,)),
        ("ffn_up.weight", (512, 256)),
        ("ffn_gate.weight", (512, 256)),
        ("ffn_down.weight", (256, 512)),
    ],
    "chatglm3-6b": [
        ("attn_norm.weight", (256,)),
        ("attn_qkv.weight", (512, 256)),
        ("attn_qkv.bias", (512,)),
        ("attn_output.weight", (256, 256)),
        ("ffn_norm.weight", (256,)),
        ("ffn_up.weight", (1024, 256)),
        ("ffn_down.weight", (256, 512)),
    ],
}
VOCAB = {"qwen-7b-chat": 151936, "chatglm3-6b": 65024, "deepseek-llm-7b-chat": 102400}
EXPECTED_KEYS = {  # arch, context, ffn length, kv heads, rope dims, rope base, rms eps
    "deepseek-llm-7b-chat": ("llama", 4096, 512, 4, 64, 10000.0, 1e-6),
    "qwen-7b-chat": ("qwen", 2048, 1024, 4, 64, 10000.0, 1e-6),
    "chatglm3-6b": ("chatglm", 8192, 512, 2, 32, 10000.0, 1e-5),
}


def read_gguf(path: Path) -> tuple[dict, dict]:
    """(scalar key/values, {tensor name: (numpy shape, ggml type, data view)}) of a GGUF, parsed here with struct.

    gguf.GGUFReader needs 10-40 s per tiny model (a numpy view per vocabulary string), so most checks use this
    small independent parser; test_gguf_reader_opens_the_file runs GGUFReader itself.
    """
    blob = np.memmap(path, mode="r", dtype=np.uint8)
    buf = memoryview(blob)
    pos = 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(buf[pos - n : pos]).decode("utf-8", errors="replace")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(vtype):
        if vtype == 8:
            return string()
        if vtype == 9:
            item_type, count = take("I"), take("Q")
            for _ in range(count):
                value(item_type)
            return None  # arrays are skipped
        return take(scalar[vtype])

    magic, _version, n_tensors, n_kv = take("4sIQQ")
    assert magic == b"GGUF"
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, tuple(reversed(dims)), take("I"), take("Q")))
    data_start = -(-pos // kv.get("general.alignment", 32)) * kv.get("general.alignment", 32)
    tensors = {}
    for name, shape, ggml_type, offset in infos:
        dtype = {0: np.float32, 1: np.float16, 30: np.uint16}[ggml_type]  # 30 = BF16, as its bits
        count = int(np.prod(shape))
        start = data_start + offset
        data = blob[start : start + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        tensors[name] = (shape, ggml_type, data)
    return kv, tensors


@pytest.fixture(scope="module")
def f16_ggufs(tiny_checkpoints, tmp_path_factory):
    """{model: (gguf path, write info, progress calls)} written by write_gguf directly (lazily per model)."""
    out, cache = tmp_path_factory.mktemp("f16"), {}

    def get(model):
        if model not in cache:
            calls = []
            converter = converter_for(registry.get(model), tiny_checkpoints[model])
            info = write_gguf(converter, out / f"{model}-F16.gguf", progress=lambda *a: calls.append(a))
            cache[model] = (out / f"{model}-F16.gguf", info, calls)
        return cache[model]

    return get


def _edited_copy(src: Path, dst: Path, **config_changes) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        (os.link if item.suffix == ".safetensors" else shutil.copyfile)(item, dst / item.name)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _small_vocab_checkpoint(model: str, out: Path, **overrides) -> Path:
    """A tiny checkpoint with a 512-token vocab: cheap when only tensors matter (vocab() is never called)."""
    vocab_key = {"qwen-7b-chat": "vocab_size", "chatglm3-6b": "padded_vocab_size"}.get(model, "vocab_size")
    config = {**TINY_OVERRIDES[model], vocab_key: 512, **overrides}
    if model == "qwen-7b-chat":
        config["padded_vocab_size"] = 512
    return write_random_checkpoint(model, out, tokenizer_dir=TOKENIZERS_DIR / model, config_overrides=config)


# --- what the converters produce --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_gguf_names_shapes_types_and_keys(f16_ggufs, model):
    path, info, _ = f16_ggufs(model)
    kv, tensors = read_gguf(path)
    expected = [("token_embd.weight", (VOCAB[model], 256))]
    expected += [(f"blk.{i}.{name}", shape) for i in range(2) for name, shape in EXPECTED_LAYER[model]]
    expected += [("output_norm.weight", (256,)), ("output.weight", (VOCAB[model], 256))]
    assert [(name, t[0]) for name, t in tensors.items()] == expected
    for name, (shape, ggml_type, _) in tensors.items():  # 2-D weights F16 (1), norms and biases F32 (0)
        assert ggml_type == (1 if len(shape) == 2 else 0), name
    arch, ctx, ff, kv_heads, rope, base, eps = EXPECTED_KEYS[model]
    assert kv["general.architecture"] == arch
    assert kv["general.name"] == model and kv["qrun.model"] == model
    assert (kv[f"{arch}.context_length"], kv[f"{arch}.embedding_length"], kv[f"{arch}.block_count"]) == (ctx, 256, 2)
    assert (
        kv[f"{arch}.feed_forward_length"],
        kv[f"{arch}.attention.head_count"],
        kv[f"{arch}.attention.head_count_kv"],
        kv[f"{arch}.rope.dimension_count"],
    ) == (ff, 4, kv_heads, rope)
    assert kv[f"{arch}.rope.freq_base"] == base
    assert kv[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(eps, rel=1e-6)
    assert kv[f"{arch}.vocab_size"] == VOCAB[model]
    assert info["tensor_count"] == len(expected) and info["file_bytes"] == path.stat().st_size


@pytest.mark.parametrize(
    "model",
    [
        "chatglm3-6b",  # the smallest vocabulary: ~10 s; the other two take 20-40 s each in GGUFReader
        pytest.param("qwen-7b-chat", marks=pytest.mark.slow),
        pytest.param("deepseek-llm-7b-chat", marks=pytest.mark.slow),
    ],
)
def test_gguf_reader_opens_the_file(f16_ggufs, model):
    path, _, _ = f16_ggufs(model)
    reader = gguf.GGUFReader(path)
    _, tensors = read_gguf(path)
    assert [t.name for t in reader.tensors] == list(tensors)
    assert reader.fields["qrun.model"].contents() == model
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embd.tensor_type == gguf.GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(embd.data), tensors["token_embd.weight"][2])


SOURCES = {  # gguf tensor -> (HF tensor, rearrangement) for one layer: the mapping facts under test
    "deepseek-llm-7b-chat": {
        "blk.1.attn_q.weight": ("model.layers.1.self_attn.q_proj.weight", 4),
        "blk.1.attn_k.weight": ("model.layers.1.self_attn.k_proj.weight", 4),
        "blk.1.ffn_gate.weight": ("model.layers.1.mlp.gate_proj.weight", None),
        "output.weight": ("lm_head.weight", None),
    },
    "qwen-7b-chat": {
        "blk.1.ffn_up.weight": ("transformer.h.1.mlp.w1.weight", None),
        "blk.1.ffn_gate.weight": ("transformer.h.1.mlp.w2.weight", None),
        "blk.1.attn_qkv.bias": ("transformer.h.1.attn.c_attn.bias", None),
        "blk.1.ffn_down.weight": ("transformer.h.1.mlp.c_proj.weight", None),
    },
    "chatglm3-6b": {
        "blk.1.ffn_up.weight": ("transformer.encoder.layers.1.mlp.dense_h_to_4h.weight", None),
        "blk.1.attn_qkv.weight": ("transformer.encoder.layers.1.self_attention.query_key_value.weight", None),
        "output_norm.weight": ("transformer.encoder.final_layernorm.weight", None),
    },
}


@pytest.mark.parametrize("model", MODELS)
def test_gguf_values_come_from_the_right_hf_tensors(f16_ggufs, tiny_checkpoints, model):
    path, _, _ = f16_ggufs(model)
    _, tensors = read_gguf(path)
    checkpoint = Checkpoint(tiny_checkpoints[model])
    for gguf_name, (hf_name, rope_heads) in SOURCES[model].items():
        source = checkpoint.read(hf_name)
        if rope_heads:
            source = permute_for_rope(source, rope_heads)
        want = source.astype(np.float16) if source.ndim == 2 else source
        assert np.array_equal(tensors[gguf_name][2], want), gguf_name


@pytest.mark.parametrize("model", MODELS)
def test_bf16_gguf_copies_the_checkpoints_bits(tmp_path, tiny_checkpoints, model):
    """weight_type BF16 (the default intermediate for bf16 checkpoints): the same tensors, each weight's bf16 bits
    exactly as stored (rope rows permuted), norms in F32, and the GGUF's file type says BF16."""
    converter = converter_for(registry.get(model), tiny_checkpoints[model], weight_type="BF16")
    write_gguf(converter, tmp_path / "m.gguf")
    kv, tensors = read_gguf(tmp_path / "m.gguf")
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    assert {t for _, t, _ in tensors.values()} == {0, 30}
    checkpoint = Checkpoint(tiny_checkpoints[model])
    for gguf_name, (hf_name, rope_heads) in SOURCES[model].items():
        bits = checkpoint.read(hf_name, dtype=BF16_BITS if len(checkpoint.shape(hf_name)) == 2 else np.float32)
        if rope_heads:
            bits = permute_for_rope(bits, rope_heads)
        assert np.array_equal(tensors[gguf_name][2], bits), gguf_name


def test_rope_permutation_pairs_each_heads_halves():
    # one head of 8 rows: HF rotates (0,4), (1,5), (2,6), (3,7); llama.cpp rotates adjacent rows (0,1), (2,3), ...
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_for_rope(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    two_heads = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_for_rope(two_heads, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("model", MODELS)
def test_llama_cpp_loads_the_f16_gguf_and_generates(f16_ggufs, model):
    path, _, _ = f16_ggufs(model)
    llm = open_llama(path)
    try:
        prompt = llm.tokenize("你好, hello".encode(), add_bos=False, special=False)
        first = [t for t, _ in zip(llm.generate(prompt, temp=0.0), range(4))]
        llm.reset()
        second = [t for t, _ in zip(llm.generate(prompt, temp=0.0), range(4))]
    finally:
        llm.close()
    assert len(first) == 4 and first == second and all(0 <= t < VOCAB[model] for t in first)


def test_progress_reports_every_tensor_in_order(f16_ggufs):
    _, info, calls = f16_ggufs("chatglm3-6b")
    assert len(calls) == info["tensor_count"]
    assert [c[2] for c in calls][:2] == ["token_embd.weight", "blk.0.attn_norm.weight"]
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1] == info["tensor_bytes"]


def test_interrupted_write_leaves_no_file(tmp_path, tiny_checkpoints):
    converter = converter_for(registry.get("chatglm3-6b"), tiny_checkpoints["chatglm3-6b"])
    real_tensors = converter.tensors

    def interrupted():
        for n, item in enumerate(real_tensors()):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    converter.tensors = interrupted
    out = tmp_path / "x-F16.gguf"
    with pytest.raises(KeyboardInterrupt):
        write_gguf(converter, out)
    assert list(tmp_path.iterdir()) == []


def test_tensors_stream_with_memory_far_below_model_size(tmp_path):
    folder = write_random_checkpoint(
        "deepseek-llm-7b-chat",
        tmp_path / "m",
        tokenizer_dir=TOKENIZERS_DIR / "deepseek-llm-7b-chat",
        config_overrides={
            "hidden_size": 1024,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "num_hidden_layers": 4,
            "intermediate_size": 2048,
            "vocab_size": 2048,
        },
    )
    converter = converter_for(registry.get("deepseek-llm-7b-chat"), folder)
    total = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in converter.tensor_infos())
    tracemalloc.start()
    try:
        for _name, array in converter.tensors():
            del array
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~88 MB of F16 tensors; the largest is 4 MB, plus ~8 MB of conversion scratch (measured peak ~13 MB)
    assert total > 80e6 and peak < total / 5, (peak, total)


# --- bad input -------------------------------------------------------------------------------------------------
def test_architecture_mismatch_names_both(tiny_checkpoints):
    expected = "config.json says ChatGLMModel, but qwen-7b-chat is QWenLMHeadModel"
    with pytest.raises(CheckpointError, match=expected) as e:
        converter_for(registry.get("qwen"), tiny_checkpoints["chatglm3-6b"])
    assert "pass the right model name" in e.value.hint and "chatglm3-6b" in e.value.hint


@pytest.mark.parametrize(
    "model, change, named",
    [
        ("deepseek-llm-7b-chat", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ("deepseek-llm-7b-chat", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("deepseek-llm-7b-chat", {"attention_bias": True}, "attention_bias=True"),
        ("qwen-7b-chat", {"activation": "gelu"}, "activation='gelu'"),
        ("qwen-7b-chat", {"no_bias": False}, "no_bias=False"),
        ("qwen-7b-chat", {"hidden_size": 512}, "conflicting values: hidden_size=512, n_embd=256"),
        ("chatglm3-6b", {"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
        ("chatglm3-6b", {"rmsnorm": False}, "rmsnorm=False"),
        ("chatglm3-6b", {"add_bias_linear": True}, "add_bias_linear=True"),
        ("chatglm3-6b", {"multi_query_attention": False}, "multi_query_attention=False"),
        ("chatglm3-6b", {"tie_word_embeddings": True}, "tie_word_embeddings=True"),
    ],
)
def test_unsupported_config_setting_is_named(tmp_path, tiny_checkpoints, model, change, named):
    folder = _edited_copy(tiny_checkpoints[model], tmp_path / "c", **change)
    with pytest.raises(UnsupportedConfigError) as e:
        converter_for(registry.get(model), folder)
    assert named in e.value.message


def test_dynamic_ntk_and_logn_are_recorded_not_refused(tiny_checkpoints):
    notes = converter_for(registry.get("qwen"), tiny_checkpoints["qwen-7b-chat"]).info()["notes"]
    assert any(n.startswith("use_dynamic_ntk: not applied") for n in notes)
    assert any(n.startswith("use_logn_attn: not applied") for n in notes)


def test_shape_mismatch_with_config_is_named(tmp_path, tiny_checkpoints):
    folder = _edited_copy(tiny_checkpoints["chatglm3-6b"], tmp_path / "c", ffn_hidden_size=768)
    with pytest.raises(
        CheckpointError,
        match=r"mlp\.dense_h_to_4h\.weight has shape \[1024, 256\], but config\.json"
        r" implies \[1536, 256\]",
    ):
        converter_for(registry.get("chatglm3-6b"), folder)


def _rewrite_weights(folder: Path, *, drop: str | None = None, add: str | None = None) -> None:
    checkpoint = Checkpoint(folder)
    specs = [(n, checkpoint.shape(n)) for n in checkpoint.names() if n != drop] + ([(add, (4,))] if add else [])
    values = {n: checkpoint.read(n) for n, _ in specs if n != add} | ({add: np.ones(4, np.float32)} if add else {})
    write_safetensors(folder / "new.safetensors", specs, lambda n, s: [values[n]])
    os.replace(folder / "new.safetensors", folder / "model.safetensors")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    folder = _small_vocab_checkpoint("chatglm3-6b", tmp_path / "a")
    _rewrite_weights(folder, drop="transformer.encoder.layers.1.mlp.dense_4h_to_h.weight")
    with pytest.raises(CheckpointError, match=r"missing tensor transformer\.encoder\.layers\.1\.mlp\.dense_4h_to_h"):
        converter_for(registry.get("chatglm3-6b"), folder)
    folder = _small_vocab_checkpoint("chatglm3-6b", tmp_path / "b")
    _rewrite_weights(folder, add="transformer.encoder.layers.0.adapter.weight")
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) .*: transformer\.encoder\.layers\.0\.adapter"):
        converter_for(registry.get("chatglm3-6b"), folder)


def test_pickle_bin_checkpoint_converts_like_safetensors(tmp_path):
    folder = _small_vocab_checkpoint("deepseek-llm-7b-chat", tmp_path / "st")
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for item in folder.iterdir():
        if item.suffix != ".safetensors":
            shutil.copyfile(item, bin_folder / item.name)
    checkpoint = Checkpoint(folder)
    tensors, storages = {}, {}
    for key, name in enumerate(checkpoint.names()):
        shape = checkpoint.shape(name)
        storages[str(key)] = ("BFloat16Storage", f32_to_bf16_bits(checkpoint.read(name)).ravel())
        strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]
        tensors[name] = (str(key), 0, shape, tuple(strides))
    write_torch_zip(bin_folder / "pytorch_model.bin", tensors, storages)
    from_st = converter_for(registry.get("deepseek"), folder)
    from_bin = converter_for(registry.get("deepseek"), bin_folder)
    assert from_bin.tensor_infos() == from_st.tensor_infos()
    for (name_a, a), (name_b, b) in zip(from_st.tensors(), from_bin.tensors()):
        assert name_a == name_b and np.array_equal(a, b), name_a


def test_both_qwen_config_schemas_give_the_same_model(tmp_path):
    later = tmp_path / "tok"
    shutil.copytree(TOKENIZERS_DIR / "qwen-7b-chat" / "related-qwen-7b-base-2023-12", later)
    shutil.copyfile(TOKENIZERS_DIR / "qwen-7b-chat" / "qwen.tiktoken", later / "qwen.tiktoken")
    overrides = {**TINY_OVERRIDES["qwen-7b-chat"], "vocab_size": 512}
    new = write_random_checkpoint("qwen", tmp_path / "new", tokenizer_dir=later, config_overrides=overrides)
    assert "hidden_size" in json.loads((new / "config.json").read_text())
    old = _small_vocab_checkpoint("qwen-7b-chat", tmp_path / "old")
    hp_new = converter_for(registry.get("qwen"), new).hparams()
    hp_old = converter_for(registry.get("qwen"), old).hparams()
    assert hp_new.pop("context_length") == 8192 and hp_old.pop("context_length") == 2048
    assert hp_new == hp_old
