"""DeepSeek-LLM-7B-Chat (LlamaForCausalLM) -> llama.cpp arch "llama".

Facts from llama.cpp (convert_hf_to_gguf.py LlamaModel, src/models/llama.cpp): separate q/k/v, SwiGLU FFN
(gate, up, down), RMS norms; llama.cpp's "llama" rope rotates adjacent pairs while HF rotates halves, so q_proj and
k_proj rows are permuted (permute_for_rope; k with the kv-head count).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from gguf import MODEL_TENSOR as T

from qrun.convert.archs import Converter, TensorPlan, permute_for_rope, tensor_name


class LlamaConverter(Converter):
    gguf_arch = "llama"
    vocab_builder = "deepseek_vocab"
    ignored_keys = frozenset({"attention_dropout", "pretraining_tp"})  # tp only splits the matmuls, same math
    skip_tensors: tuple[str, ...] = (
        r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
    )  # buffer older transformers saved

    def _read_config(self) -> dict:
        g = self.get
        self.n_embd = g("hidden_size")
        self.n_head = g("num_attention_heads")
        self.n_head_kv = g("num_key_value_heads", default=self.n_head)
        self.n_layer = g("num_hidden_layers")
        self.n_ff = g("intermediate_size")
        self.n_vocab = g("vocab_size")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise self.unsupported(
                f"head layout (hidden_size={self.n_embd}, num_attention_heads={self.n_head}, "
                f"num_key_value_heads={self.n_head_kv})",
                "heads must divide hidden_size",
            )
        self.head_dim = self.n_embd // self.n_head
        self.require(
            "head_dim",
            (self.head_dim,),
            default=self.head_dim,
            why="llama.cpp's llama graph assumes head_dim = hidden_size / num_attention_heads",
        )
        self.require("hidden_act", ("silu",), default="silu")
        self.require("rope_scaling", (None,), default=None, why="no rope scaling is converted")
        self.require("attention_bias", (False,), default=False)
        self.require("mlp_bias", (False,), default=False)
        self.tied = self.require("tie_word_embeddings", (False, True), default=False)
        if self.tied:
            self.notes.append("tie_word_embeddings: output = model.embed_tokens (as transformers ties them)")
            self.skip_tensors = (*self.skip_tensors, r"lm_head\.weight")  # a saved copy of the same values
        return {
            "context_length": g("max_position_embeddings"),
            "embedding_length": self.n_embd,
            "block_count": self.n_layer,
            "feed_forward_length": self.n_ff,
            "head_count": self.n_head,
            "head_count_kv": self.n_head_kv,
            "rope_dimension_count": self.head_dim,
            "rope_freq_base": float(g("rope_theta", default=10000.0)),
            "layer_norm_rms_epsilon": float(g("rms_norm_eps")),
            "vocab_size": self.n_vocab,
        }

    def _plan(self) -> Iterator[TensorPlan]:
        e, kv_rows = self.n_embd, self.n_head_kv * self.head_dim
        yield TensorPlan(tensor_name(T.TOKEN_EMBD), "model.embed_tokens.weight", (self.n_vocab, e))
        for i in range(self.n_layer):
            hf = f"model.layers.{i}."
            yield TensorPlan(tensor_name(T.ATTN_NORM, bid=i), hf + "input_layernorm.weight", (e,))
            yield TensorPlan(
                tensor_name(T.ATTN_Q, bid=i),
                hf + "self_attn.q_proj.weight",
                (e, e),
                partial(permute_for_rope, n_heads=self.n_head),
            )
            yield TensorPlan(
                tensor_name(T.ATTN_K, bid=i),
                hf + "self_attn.k_proj.weight",
                (kv_rows, e),
                partial(permute_for_rope, n_heads=self.n_head_kv),
            )
            yield TensorPlan(tensor_name(T.ATTN_V, bid=i), hf + "self_attn.v_proj.weight", (kv_rows, e))
            yield TensorPlan(tensor_name(T.ATTN_OUT, bid=i), hf + "self_attn.o_proj.weight", (e, e))
            yield TensorPlan(tensor_name(T.FFN_NORM, bid=i), hf + "post_attention_layernorm.weight", (e,))
            yield TensorPlan(tensor_name(T.FFN_GATE, bid=i), hf + "mlp.gate_proj.weight", (self.n_ff, e))
            yield TensorPlan(tensor_name(T.FFN_UP, bid=i), hf + "mlp.up_proj.weight", (self.n_ff, e))
            yield TensorPlan(tensor_name(T.FFN_DOWN, bid=i), hf + "mlp.down_proj.weight", (e, self.n_ff))
        yield TensorPlan(tensor_name(T.OUTPUT_NORM), "model.norm.weight", (e,))
        if self.tied:
            yield TensorPlan(tensor_name(T.OUTPUT), "model.embed_tokens.weight", (self.n_vocab, e))
        else:
            yield TensorPlan(tensor_name(T.OUTPUT), "lm_head.weight", (self.n_vocab, e))
