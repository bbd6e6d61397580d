"""Qwen-7B-Chat, Qwen v1 (QWenLMHeadModel) -> llama.cpp arch "qwen".

Facts (Qwen's modeling_qwen.py; llama.cpp src/models/qwen.cpp and gguf tensor_mapping.py):
- c_attn is one Linear(hidden, 3*hidden) with bias, q|k|v contiguous: kept fused as attn_qkv (+ bias).
- The MLP computes c_proj(w1(x) * silu(w2(x))), so w2 is llama.cpp's gate and w1 its up (names swapped).
- Each MLP branch is intermediate_size/2 wide; llama.cpp reads n_ff = intermediate_size and uses n_ff/2.
- Rope rotates halves (NEOX), which llama.cpp's qwen graph also does: no permutation.
- llama.cpp's qwen loader requires qwen.attention.layer_norm_rms_epsilon (llama.cpp's own converter omits it).
Two config schemas exist: Aug-2023 (n_embd, n_head, n_layer, ffn_hidden_size) and later (hidden_size,
num_attention_heads, num_hidden_layers, intermediate_size); both are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator

from gguf import MODEL_TENSOR as T

from qrun.convert.archs import Converter, TensorPlan, tensor_name


class QwenConverter(Converter):
    gguf_arch = "qwen"
    vocab_builder = "qwen_vocab"
    ignored_keys = frozenset(
        {
            # dropout and dtype/kernel switches: no effect on inference math
            "attn_pdrop",
            "embd_pdrop",
            "resid_pdrop",
            "attn_dropout_prob",
            "emb_dropout_prob",
            "bf16",
            "fp16",
            "fp32",
            "params_dtype",
            "bias_dropout_fusion",
            "onnx_safe",
            "use_flash_attn",
            "softmax_in_fp32",
            "use_cache_quantization",
            "use_cache_kernel",
            "tokenizer_type",
            "tokenizer_class",
            # Qwen's code uses seq_length, not these, for its rope and context logic
            "n_positions",
            "max_position_embeddings",
        }
    )
    skip_tensors: tuple[str, ...] = (
        r"transformer\.rotary_emb\.inv_freq",
        r"transformer\.h\.\d+\.attn\.rotary_emb\.inv_freq",
        r"transformer\.h\.\d+\.attn\.(masked_)?bias",
    )  # non-weight buffers some revisions saved

    def _read_config(self) -> dict:
        g = self.get
        self.n_embd = g("hidden_size", "n_embd")
        self.n_head = g("num_attention_heads", "n_head")
        self.n_layer = g("num_hidden_layers", "n_layer")
        self.n_ff = g("intermediate_size", "ffn_hidden_size")
        self.n_vocab = g("vocab_size", "padded_vocab_size")
        if self.n_embd % self.n_head or self.n_ff % 2:
            raise self.unsupported(
                f"shape (hidden {self.n_embd}, heads {self.n_head}, ffn {self.n_ff})",
                "heads must divide hidden_size and the FFN width must be even",
            )
        self.head_dim = g("kv_channels", default=self.n_embd // self.n_head)
        if self.head_dim * self.n_head != self.n_embd:
            raise self.unsupported(
                f"kv_channels={self.head_dim} with {self.n_head} heads and hidden {self.n_embd}",
                "llama.cpp's qwen graph needs kv_channels * heads == hidden size",
            )
        rotary_pct = float(g("rotary_pct", default=1.0))
        n_rot = int(self.head_dim * rotary_pct)
        if not 0 < n_rot <= self.head_dim or n_rot % 2:
            raise self.unsupported(f"rotary_pct={rotary_pct}", "the rotary part of a head must be even and > 0")
        self.require("no_bias", (True,), default=True, why="only c_attn has a bias")
        self.require("scale_attn_weights", (True,), default=True)
        self.require("activation", ("swiglu",), default="swiglu")
        self.require("pos_emb", ("rotary",), default="rotary")
        self.require("apply_residual_connection_post_layernorm", (False,), default=False)
        self.require("rope_scaling", (None,), default=None)
        self.tied = self.require("tie_word_embeddings", (False, True), default=False)
        if self.tied:
            self.notes.append("tie_word_embeddings: output = transformer.wte (as transformers ties them)")
            self.skip_tensors = (*self.skip_tensors, r"lm_head\.weight")
        seq_length = g("seq_length")
        for key in ("use_dynamic_ntk", "use_logn_attn"):
            if g(key, default=False):
                self.notes.append(f"{key}: not applied (it only changes attention past seq_length={seq_length})")
        return {
            "context_length": seq_length,
            "embedding_length": self.n_embd,
            "block_count": self.n_layer,
            "feed_forward_length": self.n_ff,
            "head_count": self.n_head,
            "head_count_kv": self.n_head,
            "rope_dimension_count": n_rot,
            "rope_freq_base": float(g("rotary_emb_base", default=10000.0)),
            "layer_norm_rms_epsilon": float(g("layer_norm_epsilon", default=1e-6)),
            "vocab_size": self.n_vocab,
        }

    def _plan(self) -> Iterator[TensorPlan]:
        e, half = self.n_embd, self.n_ff // 2
        yield TensorPlan(tensor_name(T.TOKEN_EMBD), "transformer.wte.weight", (self.n_vocab, e))
        for i in range(self.n_layer):
            hf = f"transformer.h.{i}."
            yield TensorPlan(tensor_name(T.ATTN_NORM, bid=i), hf + "ln_1.weight", (e,))
            yield TensorPlan(tensor_name(T.ATTN_QKV, bid=i), hf + "attn.c_attn.weight", (3 * e, e))
            yield TensorPlan(tensor_name(T.ATTN_QKV, "bias", bid=i), hf + "attn.c_attn.bias", (3 * e,))
            yield TensorPlan(tensor_name(T.ATTN_OUT, bid=i), hf + "attn.c_proj.weight", (e, e))
            yield TensorPlan(tensor_name(T.FFN_NORM, bid=i), hf + "ln_2.weight", (e,))
            yield TensorPlan(tensor_name(T.FFN_UP, bid=i), hf + "mlp.w1.weight", (half, e))
            yield TensorPlan(tensor_name(T.FFN_GATE, bid=i), hf + "mlp.w2.weight", (half, e))
            yield TensorPlan(tensor_name(T.FFN_DOWN, bid=i), hf + "mlp.c_proj.weight", (e, half))
        yield TensorPlan(tensor_name(T.OUTPUT_NORM), "transformer.ln_f.weight", (e,))
        output_source = "transformer.wte.weight" if self.tied else "lm_head.weight"
        yield TensorPlan(tensor_name(T.OUTPUT), output_source, (self.n_vocab, e))
