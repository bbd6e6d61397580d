"""The one table of per-model facts that convert, runner and bench read.

Special tokens are named by their text and resolved to ids through the GGUF's own vocabulary at load time, so the
same chat formats work for the real models (whose ids are listed here and checked by the tests) and for the tiny
self-made vocabularies of `qrun demo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qrun.errors import UnknownModelError


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults a model ships (its generation_config.json or chat() code)."""

    temperature: float
    top_p: float
    top_k: int = 0  # 0 = off
    max_tokens: int = 512


@dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name, also the GGUF file stem: <name>-<QUANT>.gguf
    aliases: tuple[str, ...]
    modelscope_id: str
    hf_id: str
    hf_architecture: str  # config.json "architectures"[0] of the checkpoint
    gguf_arch: str  # llama.cpp's architecture name written to general.architecture
    chat_format: str  # key into qrun.runner.formats.FORMATS
    # End-of-turn tokens, by text; generation stops on any of their ids.
    stop_tokens: tuple[str, ...]
    # The ids those tokens have in the real vocabulary (checked by tests/test_formats.py).
    stop_token_ids: tuple[int, ...]
    generation: GenerationDefaults
    default_system: str | None = None
    # Files conversion needs besides config.json and the weights.
    tokenizer_files: tuple[str, ...] = field(default_factory=tuple)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen-7b-chat",
        aliases=("qwen",),
        modelscope_id="qwen/Qwen-7B-Chat",
        hf_id="Qwen/Qwen-7B-Chat",
        hf_architecture="QWenLMHeadModel",
        gguf_arch="qwen",
        chat_format="chatml-qwen",
        # Source: qwen_generation_utils.get_stop_words_ids("chatml") + modeling_qwen chat(): im_end, im_start,
        # endoftext.
        stop_tokens=("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
        stop_token_ids=(151645, 151644, 151643),
        # Source: Qwen-7B-Chat generation_config.json, Aug-2023 revision (top_p 0.8, top_k 0 = off, max_new_tokens
        # 512; no temperature key, so transformers' 1.0). Later revisions reportedly add repetition_penalty 1.1,
        # which qrun does not apply (not verified here: no later file is among the test data).
        generation=GenerationDefaults(temperature=1.0, top_p=0.8, top_k=0, max_tokens=512),
        # Source: modeling_qwen.QWenLMHeadModel.chat(system="You are a helpful assistant.").
        default_system="You are a helpful assistant.",
        tokenizer_files=("qwen.tiktoken",),
    ),
    ModelSpec(
        name="chatglm3-6b",
        aliases=("chatglm3", "chatglm"),
        modelscope_id="ZhipuAI/chatglm3-6b",
        hf_id="THUDM/chatglm3-6b",
        hf_architecture="ChatGLMModel",
        gguf_arch="chatglm",
        chat_format="chatglm3",
        # Source: ChatGLM3 modeling_chatglm chat(): eos_token_id = [eos, <|user|>, <|observation|>].
        stop_tokens=("</s>", "<|user|>", "<|observation|>"),
        stop_token_ids=(2, 64795, 64797),
        # Source: ChatGLM3 modeling_chatglm chat() defaults: do_sample, top_p 0.8, temperature 0.8. chat() bounds
        # prompt + answer by max_length=8192 instead of capping new tokens; qrun caps the answer at 512 tokens like
        # the other two models (the context still bounds the total).
        generation=GenerationDefaults(temperature=0.8, top_p=0.8, top_k=0, max_tokens=512),
        default_system=None,
        tokenizer_files=("tokenizer.model",),
    ),
    ModelSpec(
        name="deepseek-llm-7b-chat",
        aliases=("deepseek", "deepseek-llm"),
        modelscope_id="deepseek-ai/deepseek-llm-7b-chat",
        hf_id="deepseek-ai/deepseek-llm-7b-chat",
        hf_architecture="LlamaForCausalLM",
        gguf_arch="llama",
        chat_format="deepseek",
        # Source: tokenizer_config.json eos_token; the chat template ends every assistant turn with it.
        stop_tokens=("<｜end▁of▁sentence｜>",),
        stop_token_ids=(100001,),
        # Source: generation_config.json sets only bos/eos (our copy is RECONSTRUCTED, see
        # tests/data/tokenizers/SOURCES.md), so transformers' generate() defaults apply: do_sample=False, i.e.
        # greedy decoding (temperature 0 here).
        generation=GenerationDefaults(temperature=0.0, top_p=1.0, top_k=0, max_tokens=512),
        default_system=None,
        tokenizer_files=("tokenizer.json", "tokenizer_config.json"),
    ),
)

_BY_NAME = {alias: spec for spec in MODELS for alias in (spec.name, *spec.aliases)}


def names() -> list[str]:
    return [spec.name for spec in MODELS]


def get(name: str) -> ModelSpec:
    """The spec for a canonical name or alias (case-insensitive).

    Raises:
        UnknownModelError: with the list of valid names.
    """
    spec = _BY_NAME.get(name.strip().lower())
    if spec is None:
        valid = ", ".join(f"{s.name} ({', '.join(s.aliases)})" for s in MODELS)
        raise UnknownModelError(f"unknown model {name!r}", f"use one of: {valid}")
    return spec


def find_by_arch(gguf_arch: str) -> ModelSpec | None:
    for spec in MODELS:
        if spec.gguf_arch == gguf_arch:
            return spec
    return None
