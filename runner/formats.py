"""The three chat formats, token-exact (each format below cites the model's own code it follows; tests/test_formats.py
pins the ids they produce).

A format turns a conversation into a list of segments: a special token named by its text, or a piece of plain text
that is tokenized on its own (never merged with its neighbours — where the reference code encodes "\\n" and the
content separately, so do we, because SentencePiece/BPE give different ids for the joined text). The same segments
give the token ids (through the GGUF's own vocabulary, so `qrun demo`'s tiny vocabularies work too) and the exact
prompt text for --show-prompt. User text is always tokenized with special=False: a user typing "<|im_end|>" gets
plain-text ids, never a control token. No GGUF-embedded Jinja template is ever rendered.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from qrun.errors import PromptError

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Special:
    """A control token, resolved by its text through the vocabulary."""

    text: str


@dataclass(frozen=True)
class Text:
    """Plain text, tokenized as one piece with special tokens NOT parsed."""

    text: str


Segment = Special | Text


class Vocabulary(Protocol):
    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    def token_id(self, special_text: str) -> int: ...


def _check_messages(messages: Sequence[dict]) -> None:
    """History alternates user/assistant and ends with the user's new message."""
    if not messages:
        raise PromptError("the conversation is empty", "give a prompt")
    for i, message in enumerate(messages):
        expected = ROLES[i % 2]
        if message.get("role") != expected:
            raise PromptError(
                f"message {i + 1} has role {message.get('role')!r}, expected {expected!r}",
                "a conversation alternates user and assistant messages and ends with a user message",
            )
    if messages[-1]["role"] != "user":
        raise PromptError("the conversation must end with a user message", "add the question to answer")


def chatglm3_segments(messages: Sequence[dict], system: str | None) -> list[Segment]:
    # Source: THUDM/chatglm3-6b tokenization_chatglm.py, build_chat_input -> build_single_message:
    #   [gMASK] sop, then per message get_command(f"<|{role}|>") + sp.encode(f"{metadata}\n") + sp.encode(content),
    #   finally get_command("<|assistant|>"). metadata is "" for plain chat; no BOS.
    segments: list[Segment] = [Special("[gMASK]"), Special("sop")]
    turns = ([{"role": "system", "content": system}] if system else []) + list(messages)
    for message in turns:
        segments += [Special(f"<|{message['role']}|>"), Text("\n"), Text(message["content"])]
    segments.append(Special("<|assistant|>"))
    return segments


def qwen_segments(messages: Sequence[dict], system: str | None) -> list[Segment]:
    # Source: Qwen/Qwen-7B-Chat qwen_generation_utils.make_context(chat_format="chatml"):
    #   _tokenize_str(role, content) = enc(role) + nl + enc(content), each piece encoded separately with
    #   allowed_special=set() for the content; blocks joined by nl; ends with im_start + enc("assistant") + nl.
    #   Default system from modeling_qwen chat(): "You are a helpful assistant." (passed in by the caller).
    #   QWenTokenizer.tokenize NFC-normalizes every text before tiktoken; llama.cpp does not, so we do it here.
    def block(role: str, content: str) -> list[Segment]:
        content = unicodedata.normalize("NFC", content)
        return [Special("<|im_start|>"), Text(role), Text("\n"), Text(content), Special("<|im_end|>")]

    segments = block("system", system or "")
    for message in messages:
        segments += [Text("\n"), *block(message["role"], message["content"])]
    segments += [Text("\n"), Special("<|im_start|>"), Text("assistant"), Text("\n")]
    return segments


def deepseek_segments(messages: Sequence[dict], system: str | None) -> list[Segment]:
    # Source: deepseek-ai/deepseek-llm-7b-chat tokenizer_config.json chat_template:
    #   {{bos}} [system + "\n\n"] ("User: " + u + "\n\n") ("Assistant: " + a + eos) ... "Assistant:"
    # HF tokenizes the rendered text with tokenizer.json, splitting only at the special tokens, so the text between
    # two specials is ONE piece here; BOS appears once (added by the template, not again by the tokenizer).
    segments: list[Segment] = [Special("<｜begin▁of▁sentence｜>")]
    text = system + "\n\n" if system else ""
    for message in messages:
        if message["role"] == "user":
            text += "User: " + message["content"] + "\n\n"
        else:
            segments += [Text(text + "Assistant: " + message["content"]), Special("<｜end▁of▁sentence｜>")]
            text = ""
    segments.append(Text(text + "Assistant:"))
    return segments


FORMATS: dict[str, Callable[[Sequence[dict], str | None], list[Segment]]] = {
    "chatglm3": chatglm3_segments,
    "chatml-qwen": qwen_segments,
    "deepseek": deepseek_segments,
}


def segments_for(chat_format: str, messages: Sequence[dict], *, system: str | None = None) -> list[Segment]:
    """The conversation in `chat_format` as segments (system=None: no system message; callers pass the default)."""
    try:
        build = FORMATS[chat_format]
    except KeyError:
        raise PromptError(f"unknown chat format {chat_format!r}", f"use one of: {', '.join(FORMATS)}") from None
    _check_messages(messages)
    return build(messages, system)


def token_ids(segments: Iterable[Segment], vocab: Vocabulary) -> list[int]:
    ids: list[int] = []
    for segment in segments:
        if isinstance(segment, Special):
            ids.append(vocab.token_id(segment.text))
        elif segment.text:
            ids += vocab.tokenize(segment.text, special=False)
    return ids


def prompt_text(segments: Iterable[Segment]) -> str:
    """The exact prompt as text, control tokens written as their own text (as llama.cpp --verbose-prompt shows)."""
    return "".join(segment.text for segment in segments)
