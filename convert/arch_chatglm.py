"""ChatGLM3-6B (ChatGLMModel) -> llama.cpp arch "chatglm".

Facts (ChatGLM3's modeling_chatglm.py; llama.cpp src/models/chatglm.cpp, conversion/chatglm.py):
- query_key_value is one Linear with bias: q (heads*head_dim) | k | v (multi_query_group_num*head_dim each),
  contiguous when multi_query_attention is on — the layout llama.cpp's fused attn_qkv views. (Without
  multi-query attention ChatGLM interleaves q/k/v per head, which llama.cpp cannot read: refused.)
- dense_h_to_4h is gate‖up fused (silu(first half) * second half), exactly ggml_swiglu on llama.cpp's ffn_up
  of width 2*ffn_hidden_size; feed_forward_length = ffn_hidden_size.
- Rope covers only the first kv_channels/2 dims of each head, in adjacent pairs (llama.cpp rope type NORM),
  so rope.dimension_count = kv_channels/2 — without it llama.cpp rotates whole heads and every logit changes.
- Rope base 10000 * rope_ratio (ChatGLM3-6B has no rope_ratio; the 32k variant has 50).
"""

from __future__ import annotations

from collections.abc import Iterator

from gguf import MODEL_TENSOR as T

from qrun.convert.archs import Converter, TensorPlan, tensor_name


class ChatGLMConverter(Converter):
    gguf_arch = "chatglm"
    vocab_builder = "chatglm3_vocab"
    ignored_keys = frozenset(
        {
            # dropout, fused-kernel and precision switches: no effect on the math converted here
            "attention_dropout",
            "hidden_dropout",
            "classifier_dropout",
            "bias_dropout_fusion",
            "attention_softmax_in_fp32",
            "fp32_residual_connection",
            # query scaling by 1/layer_number is undone inside the softmax: the same attention
            "apply_query_key_layer_scaling",
        }
    )
    skip_tensors = (r"transformer\.rotary_pos_emb\.inv_freq",)  # recomputed by llama.cpp from the rope keys

    def _read_config(self) -> dict:
        g = self.get
        self.n_embd = g("hidden_size")
        self.n_head = g("num_attention_heads")
        self.n_layer = g("num_layers")
        self.n_ff = g("ffn_hidden_size")
        self.n_vocab = g("padded_vocab_size")
        self.head_dim = g("kv_channels", default=self.n_embd // self.n_head)
        if self.head_dim * self.n_head != self.n_embd or self.head_dim % 4:
            raise self.unsupported(
                f"kv_channels={self.head_dim} with {self.n_head} heads and hidden {self.n_embd}",
                "llama.cpp's chatglm graph needs kv_channels * heads == hidden size",
            )
        self.require(
            "multi_query_attention", (True,), default=False, why="without it query_key_value is interleaved per head"
        )
        self.n_head_kv = g("multi_query_group_num")
        if self.n_head % self.n_head_kv:
            raise self.unsupported(f"multi_query_group_num={self.n_head_kv}", "it must divide the head count")
        self.require("add_bias_linear", (False,), default=False)
        self.require("add_qkv_bias", (True,), default=False)
        self.require("apply_residual_connection_post_layernorm", (False,), default=False)
        self.require("rmsnorm", (True,), default=True)
        self.require("post_layer_norm", (True,), default=True)
        self.require("original_rope", (True,), default=True)
        self.require("rope_scaling", (None,), default=None)
        self.require("pre_seq_len", (None,), default=None, why="P-tuning prefixes are not converted")
        self.require("prefix_projection", (False,), default=False)
        self.require("quantization_bit", (0,), default=0, why="convert the original float checkpoint")
        self.require("tie_word_embeddings", (False,), default=False)
        rope_ratio = float(g("rope_ratio", default=1.0))
        return {
            "context_length": g("seq_length"),
            "embedding_length": self.n_embd,
            "block_count": self.n_layer,
            "feed_forward_length": self.n_ff,
            "head_count": self.n_head,
            "head_count_kv": self.n_head_kv,
            "rope_dimension_count": self.head_dim // 2,
            "rope_freq_base": 10000.0 * rope_ratio,
            "layer_norm_rms_epsilon": float(g("layernorm_epsilon", default=1e-5)),
            "vocab_size": self.n_vocab,
        }

    def _plan(self) -> Iterator[TensorPlan]:
        e = self.n_embd
        qkv_rows = (self.n_head + 2 * self.n_head_kv) * self.head_dim
        yield TensorPlan(tensor_name(T.TOKEN_EMBD), "transformer.embedding.word_embeddings.weight", (self.n_vocab, e))
        for i in range(self.n_layer):
            hf = f"transformer.encoder.layers.{i}."
            yield TensorPlan(tensor_name(T.ATTN_NORM, bid=i), hf + "input_layernorm.weight", (e,))
            yield TensorPlan(
                tensor_name(T.ATTN_QKV, bid=i), hf + "self_attention.query_key_value.weight", (qkv_rows, e)
            )
            yield TensorPlan(
                tensor_name(T.ATTN_QKV, "bias", bid=i), hf + "self_attention.query_key_value.bias", (qkv_rows,)
            )
            yield TensorPlan(tensor_name(T.ATTN_OUT, bid=i), hf + "self_attention.dense.weight", (e, e))
            yield TensorPlan(tensor_name(T.FFN_NORM, bid=i), hf + "post_attention_layernorm.weight", (e,))
            yield TensorPlan(tensor_name(T.FFN_UP, bid=i), hf + "mlp.dense_h_to_4h.weight", (2 * self.n_ff, e))
            yield TensorPlan(tensor_name(T.FFN_DOWN, bid=i), hf + "mlp.dense_4h_to_h.weight", (e, self.n_ff))
        yield TensorPlan(tensor_name(T.OUTPUT_NORM), "transformer.encoder.final_layernorm.weight", (e,))
        yield TensorPlan(tensor_name(T.OUTPUT), "transformer.output_layer.weight", (self.n_vocab, e))
