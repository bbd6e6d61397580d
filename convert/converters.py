"""Which converter a model gets: converter_for(spec, checkpoint_dir), after checking that config.json describes
the model asked for. The converters themselves: convert/arch_llama.py, arch_qwen.py, arch_chatglm.py, on the shared
base in convert/archs.py (which they import, so the choice among them lives here, not there)."""

from __future__ import annotations

from pathlib import Path

from qrun.convert.arch_chatglm import ChatGLMConverter
from qrun.convert.arch_llama import LlamaConverter
from qrun.convert.arch_qwen import QwenConverter
from qrun.convert.archs import Converter
from qrun.convert.checkpoint import Checkpoint, read_json
from qrun.errors import CheckpointError
from qrun.registry import MODELS, ModelSpec

_CONVERTERS: dict[str, type[Converter]] = {c.gguf_arch: c for c in (LlamaConverter, QwenConverter, ChatGLMConverter)}


def converter_for(spec: ModelSpec, checkpoint_dir: str | Path, weight_type: str = "F16") -> Converter:
    """The converter for `spec` over the checkpoint folder, with config and tensors already checked.

    weight_type: "F16" or "BF16", the type of the 2-D weights it yields (BF16 from a bf16 checkpoint is a copy).

    Raises:
        CheckpointError: missing config/tokenizer/shard, wrong architecture, missing or unexpected tensors.
        UnsupportedConfigError: a config.json setting the converter does not implement.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = read_json(checkpoint_dir / "config.json", what="config.json")
    archs = config.get("architectures")
    found = archs[0] if isinstance(archs, list) and archs else None
    if found != spec.hf_architecture:
        match = next((s.name for s in MODELS if s.hf_architecture == found), None)
        raise CheckpointError(
            f"config.json says {found or 'no architecture'}, but {spec.name} is {spec.hf_architecture}",
            f"pass the right model name (this looks like {match})" if match else "pass the right model name",
        )
    checkpoint = Checkpoint(checkpoint_dir, tokenizer_files=spec.tokenizer_files)
    return _CONVERTERS[spec.gguf_arch](spec, checkpoint, weight_type)
