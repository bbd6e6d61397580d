"""Float32 numpy reference forward passes of the three architectures, written from the ORIGINAL modeling code.

This is the independent oracle for the converter: it reads the HF checkpoint (config.json + safetensors, by the
checkpoint's own tensor names) and computes logits exactly as the model's published PyTorch code does. It never
looks at GGUF names or at anything the converter produces, so a wrong q/k permutation, swapped FFN branches or a
missing rope key in the converter shows up as a logit mismatch against llama.cpp.

Sources read for the semantics (facts only):
- Qwen v1: modeling_qwen.py of Qwen-7B-Chat (QWenLMHeadModel): RMSNorm ln_1/ln_2/ln_f; c_attn (with bias) split
  into q,k,v of hidden_size each; rotary on the first kv_channels*rotary_pct dims with _rotate_half (two halves,
  "NeoX" style), inv_freq = 1/base^(arange(0,dim,2)/dim), base = rotary_emb_base; dynamic NTK and logn scaling are
  identity for sequences shorter than seq_length; c_proj without bias; MLP c_proj(w1(x) * silu(w2(x))); lm_head.
- ChatGLM3: modeling_chatglm.py of THUDM/chatglm3-6b (ChatGLMModel): RMSNorm input/post_attention/final layernorm;
  query_key_value (with bias) split into q (heads*kv_channels), k and v (multi_query_group_num*kv_channels each);
  RotaryEmbedding(kv_channels // 2) so rotary covers the first kv_channels/2 dims of each head, applied to
  INTERLEAVED pairs (x.reshape(..., rot_dim//2, 2)), theta over n_elem = kv_channels/2 with base 10000*rope_ratio;
  query-key layer scaling cancels out (norm_factor *= coeff, scores *= coeff), so scale is 1/sqrt(kv_channels);
  dense (no bias); MLP dense_4h_to_h(silu(a) * b) with [a, b] = chunk(dense_h_to_4h(x), 2); output_layer.
- DeepSeek-LLM: transformers' LlamaForCausalLM: RMSNorm; q/k/v/o_proj; rotate_half rope on the full head dim with
  base rope_theta; grouped-query attention (num_key_value_heads); down(silu(gate(x)) * up(x)); norm; lm_head.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# safetensors dtype tag -> numpy dtype of the raw little-endian storage (BF16 read as uint16 and widened below).
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as float32 (own reader: numpy has no bfloat16)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data_start = 8 + header_len
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = raw[data_start + begin : data_start + end]
        arr = np.frombuffer(buf, dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(np.float32).reshape(info["shape"])
    return out


def load_checkpoint(checkpoint_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, {hf tensor name: float32 array}) of a checkpoint folder, all shards."""
    checkpoint_dir = Path(checkpoint_dir)
    config = json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8"))
    weights: dict[str, np.ndarray] = {}
    for shard in sorted(checkpoint_dir.glob("*.safetensors")):
        weights.update(read_safetensors(shard))
    if not weights:
        raise FileNotFoundError(f"no .safetensors in {checkpoint_dir}")
    return config, weights


def round_matrices_to_f16(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as an F16 GGUF stores them: 2-D matrices rounded to float16, 1-D norms/biases kept float32.

    Comparing llama.cpp against the reference on THESE weights leaves only arithmetic differences (f16 activations
    in its matmuls, f16 KV cache, summation order), not storage rounding.
    """
    return {k: (v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v) for k, v in weights.items()}


# ---------------------------------------------------------------------------------------------------------------
# shared pieces


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.Linear: weight is [out, in]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def _rope_angles(n_tokens: int, rot_dim: int, base: float) -> np.ndarray:
    """[n_tokens, rot_dim/2] angles pos * inv_freq, inv_freq = 1 / base^(arange(0, rot_dim, 2) / rot_dim)."""
    inv_freq = 1.0 / (base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))
    return (np.arange(n_tokens, dtype=np.float64)[:, None] * inv_freq[None, :]).astype(np.float32)


def _rope_halves(x: np.ndarray, rot_dim: int, base: float) -> np.ndarray:
    """Rotate-half rope (Qwen _rotate_half / HF Llama rotate_half): dim i pairs with i + rot_dim/2.

    x: [n_tokens, n_heads, head_dim]; dims past rot_dim pass through.
    """
    ang = _rope_angles(x.shape[0], rot_dim, base)
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]  # emb = cat(freqs, freqs)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    xr, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    return np.concatenate([xr * cos + rotated * sin, x_pass], axis=-1)


def _rope_interleaved(x: np.ndarray, rot_dim: int, base: float) -> np.ndarray:
    """ChatGLM apply_rotary_pos_emb: dims (2i, 2i+1) of the first rot_dim form a pair; the rest pass through."""
    n_tokens = x.shape[0]
    ang = _rope_angles(n_tokens, rot_dim, base)[:, None, :]  # [tok, 1, rot_dim/2]
    cos, sin = np.cos(ang), np.sin(ang)
    xr, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    pairs = xr.reshape(n_tokens, x.shape[1], rot_dim // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(xr.shape)
    return np.concatenate([out, x_pass], axis=-1)


def _causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """q [tok, H, d], k/v [tok, KV, d] with H a multiple of KV (head h reads kv group h // (H/KV)) -> [tok, H*d]."""
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k.shape[1]
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(np.float32(head_dim))
    mask = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    scores = np.where(mask[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", probs, v).reshape(n_tokens, n_heads * head_dim)


def _first(config: dict, *keys: str):
    """Qwen v1 configs exist in two key schemas (Aug-2023 n_embd/n_head/... and later hidden_size/...)."""
    for key in keys:
        if key in config and config[key] is not None:
            return config[key]
    raise KeyError(f"config.json has none of {keys}")


# ---------------------------------------------------------------------------------------------------------------
# the three architectures


def qwen_forward(config: dict, w: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    hidden = _first(config, "hidden_size", "n_embd")
    n_heads = _first(config, "num_attention_heads", "n_head")
    n_layers = _first(config, "num_hidden_layers", "n_layer")
    eps = config["layer_norm_epsilon"]
    head_dim = hidden // n_heads  # QWenAttention.head_dim; q/k/v split at hidden_size (split_size)
    rot_dim = int(config.get("kv_channels", head_dim) * config.get("rotary_pct", 1.0))
    base = float(config.get("rotary_emb_base", 10000))
    seq_length = config.get("seq_length", 2048)
    assert len(token_ids) <= seq_length, "dynamic NTK / logn attention would apply; reference skips them"

    x = w["transformer.wte.weight"][token_ids]
    n = len(token_ids)
    for i in range(n_layers):
        p = f"transformer.h.{i}."
        h = _rms_norm(x, w[p + "ln_1.weight"], eps)
        qkv = _linear(h, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
        q, k, v = np.split(qkv, 3, axis=-1)
        q = _rope_halves(q.reshape(n, n_heads, head_dim), rot_dim, base)
        k = _rope_halves(k.reshape(n, n_heads, head_dim), rot_dim, base)
        attn = _causal_attention(q, k, v.reshape(n, n_heads, head_dim))
        x = x + _linear(attn, w[p + "attn.c_proj.weight"], w.get(p + "attn.c_proj.bias"))
        h = _rms_norm(x, w[p + "ln_2.weight"], eps)
        a1 = _linear(h, w[p + "mlp.w1.weight"])
        a2 = _linear(h, w[p + "mlp.w2.weight"])
        x = x + _linear(a1 * _silu(a2), w[p + "mlp.c_proj.weight"])
    x = _rms_norm(x, w["transformer.ln_f.weight"], eps)
    return _linear(x, w["lm_head.weight"])


def chatglm_forward(config: dict, w: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    n_heads = config["num_attention_heads"]
    head_dim = config.get("kv_channels") or config["hidden_size"] // n_heads
    n_kv = config["multi_query_group_num"] if config.get("multi_query_attention") else n_heads
    eps = config["layernorm_epsilon"]
    # RotaryEmbedding(rotary_dim // 2): n_elem = head_dim/2 angles-pairs -> rot_dim = head_dim/2 dims rotated.
    rot_dim = head_dim // 2
    base = 10000.0 * float(config.get("rope_ratio", 1.0))
    assert config.get("rmsnorm", True) and not config.get("apply_residual_connection_post_layernorm", False)

    x = w["transformer.embedding.word_embeddings.weight"][token_ids]
    n = len(token_ids)
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        qkv = _linear(
            h, w[p + "self_attention.query_key_value.weight"], w.get(p + "self_attention.query_key_value.bias")
        )
        q_end, k_end = n_heads * head_dim, n_heads * head_dim + n_kv * head_dim
        q = _rope_interleaved(qkv[:, :q_end].reshape(n, n_heads, head_dim), rot_dim, base)
        k = _rope_interleaved(qkv[:, q_end:k_end].reshape(n, n_kv, head_dim), rot_dim, base)
        v = qkv[:, k_end:].reshape(n, n_kv, head_dim)
        x = x + _linear(_causal_attention(q, k, v), w[p + "self_attention.dense.weight"])
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        a, b = np.split(_linear(h, w[p + "mlp.dense_h_to_4h.weight"]), 2, axis=-1)
        x = x + _linear(_silu(a) * b, w[p + "mlp.dense_4h_to_h.weight"])
    if config.get("post_layer_norm", True):
        x = _rms_norm(x, w["transformer.encoder.final_layernorm.weight"], eps)
    return _linear(x, w["transformer.output_layer.weight"])


def llama_forward(config: dict, w: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    hidden = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim") or hidden // n_heads
    eps = config["rms_norm_eps"]
    base = float(config.get("rope_theta", 10000.0))
    assert config.get("rope_scaling") is None, "reference implements plain rope only"

    x = w["model.embed_tokens.weight"][token_ids]
    n = len(token_ids)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = _rope_halves(_linear(h, w[p + "self_attn.q_proj.weight"]).reshape(n, n_heads, head_dim), head_dim, base)
        k = _rope_halves(_linear(h, w[p + "self_attn.k_proj.weight"]).reshape(n, n_kv, head_dim), head_dim, base)
        v = _linear(h, w[p + "self_attn.v_proj.weight"]).reshape(n, n_kv, head_dim)
        x = x + _linear(_causal_attention(q, k, v), w[p + "self_attn.o_proj.weight"])
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = _linear(h, w[p + "mlp.gate_proj.weight"])
        up = _linear(h, w[p + "mlp.up_proj.weight"])
        x = x + _linear(_silu(gate) * up, w[p + "mlp.down_proj.weight"])
    x = _rms_norm(x, w["model.norm.weight"], eps)
    lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])  # tie_word_embeddings
    return _linear(x, lm_head)


FORWARDS = {"QWenLMHeadModel": qwen_forward, "ChatGLMModel": chatglm_forward, "LlamaForCausalLM": llama_forward}


def reference_logits(checkpoint_dir: Path, token_ids: list[int], *, f16_weights: bool = True) -> np.ndarray:
    """[len(token_ids), vocab] float32 logits of the checkpoint at every position.

    f16_weights: round the 2-D weights to float16 first, as an F16 GGUF stores them.
    """
    config, weights = load_checkpoint(checkpoint_dir)
    if f16_weights:
        weights = round_matrices_to_f16(weights)
    return logits_from_weights(config, weights, token_ids)


def logits_from_weights(config: dict, weights: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    """Reference logits from already loaded (possibly altered) weights, dispatched on config architectures[0]."""
    forward = FORWARDS[config["architectures"][0]]
    return forward(config, weights, list(token_ids)).astype(np.float32)
