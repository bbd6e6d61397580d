"""Per-architecture converters from Hugging Face checkpoints to llama.cpp's GGUF layout: the shared base.

Every converter has the same methods — hparams(), vocab(), tensor_infos(), tensors(), info() — and is built by
convert/converters.py converter_for(spec, checkpoint_dir), which first checks that config.json describes the model
asked for. A
converter reads config.json completely up front: any setting it does not implement raises UnsupportedConfigError
naming it, and every tensor the model needs must be in the checkpoint (and nothing else), before anything is
written. The per-model facts live in arch_llama.py, arch_qwen.py and arch_chatglm.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np

from qrun.convert.checkpoint import Checkpoint
from qrun.convert.safetensors_io import BF16_BITS
from qrun.errors import CheckpointError, UnsupportedConfigError
from qrun.registry import ModelSpec

# Type of the 2-D weights in the unquantized GGUF -> numpy dtype of the arrays tensors() yields.
WEIGHT_DTYPES = {"F16": np.dtype(np.float16), "BF16": BF16_BITS}

_MISSING = object()
# Keys every config.json may carry that change nothing in the weights or the forward pass.
COMMON_IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "auto_map",
        "model_type",
        "torch_dtype",
        "transformers_version",
        "use_cache",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
    }
)


def tensor_name(kind: gguf.MODEL_TENSOR, suffix: str = "weight", *, bid: int | None = None) -> str:
    """llama.cpp's name for a tensor, e.g. blk.3.attn_qkv.bias (from gguf's own name table)."""
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where it comes from, its (numpy-order) shape, and how its values are rearranged."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] | None = None  # a pure rearrangement: works on any dtype


class Converter:
    """Base of the per-architecture converters. Subclasses set the class attributes and implement
    _read_config() (returning the hparams dict) and _plan() (yielding TensorPlans)."""

    gguf_arch: str = ""
    vocab_builder: str = ""  # function name in qrun.convert.vocab
    ignored_keys: frozenset[str] = frozenset()  # config keys known not to matter for this architecture
    skip_tensors: tuple[str, ...] = ()  # regexes of checkpoint tensors that are not weights (e.g. rope buffers)

    def __init__(self, spec: ModelSpec, checkpoint: Checkpoint, weight_type: str = "F16"):
        if weight_type not in WEIGHT_DTYPES:
            raise ValueError(f"weight_type must be one of {sorted(WEIGHT_DTYPES)}, got {weight_type!r}")
        self.spec = spec
        self.checkpoint = checkpoint
        self.weight_type = weight_type
        self.config = checkpoint.config
        self.notes: list[str] = []
        self._used_keys: set[str] = set()
        try:
            self._hparams = self._read_config()
        except (TypeError, ZeroDivisionError) as err:  # e.g. "hidden_size": "4096", or 0 heads
            raise UnsupportedConfigError(
                f"config.json of {spec.name} has a size that is not a positive number ({err})",
                "re-download config.json from the model's repository",
            ) from None
        for key, value in self._hparams.items():
            # a NaN rope_theta or a context_length of 0 converts without complaint and runs as nonsense
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise UnsupportedConfigError(
                    f"config.json of {spec.name} gives {key} = {value!r}",
                    "it must be a positive finite number; re-download config.json",
                )
        ignored = set(self.config) - self._used_keys - COMMON_IGNORED_KEYS - self.ignored_keys
        if ignored:
            self.notes.append("config keys not used by the converter: " + ", ".join(sorted(ignored)))
        self.plan = list(self._plan())
        self._check_tensors()

    # --- config access: every read key counts as handled --------------------------------------------------
    def get(self, *keys: str, default=_MISSING):
        """The value of the first of `keys` present in config.json; keys that are synonyms must agree."""
        self._used_keys.update(keys)
        present = [(k, self.config[k]) for k in keys if k in self.config and self.config[k] is not None]
        if len({repr(v) for _, v in present}) > 1:
            listing = ", ".join(f"{k}={v!r}" for k, v in present)
            raise UnsupportedConfigError(
                f"config.json has conflicting values: {listing}", "fix config.json so the synonyms agree"
            )
        if present:
            return present[0][1]
        if default is _MISSING:
            raise CheckpointError(
                f"config.json lacks {' / '.join(keys)}, which {self.spec.name} needs",
                "re-download config.json from the model's repository",
            )
        return default

    def require(self, key: str, allowed: tuple, *, default, why: str = "") -> object:
        """Fail by name unless config.json's `key` (or its default when absent) is one of `allowed`."""
        value = self.get(key, default=default)
        if value not in allowed:
            raise UnsupportedConfigError(
                f"unsupported {key}={value!r} in config.json of {self.spec.name}",
                f"qrun's converter implements only {key} in {list(allowed)}" + (f" ({why})" if why else ""),
            )
        return value

    def unsupported(self, what: str, hint: str) -> UnsupportedConfigError:
        return UnsupportedConfigError(f"unsupported {what} in config.json of {self.spec.name}", hint)

    # --- subclass hooks -------------------------------------------------------------------------------------
    def _read_config(self) -> dict:
        raise NotImplementedError

    def _plan(self) -> Iterator[TensorPlan]:
        raise NotImplementedError

    # --- the shared interface -------------------------------------------------------------------------------
    def hparams(self) -> dict:
        """GGUF hyperparameters by llama.cpp key suffix: context_length, embedding_length, block_count,
        feed_forward_length, head_count, head_count_kv, rope_dimension_count, rope_freq_base,
        layer_norm_rms_epsilon, vocab_size."""
        return dict(self._hparams)

    def vocab(self):
        """The tokenizer as GGUF keys (built by qrun.convert.vocab from the checkpoint's own files)."""
        from qrun.convert import vocab as vocab_module

        builder = getattr(vocab_module, self.vocab_builder)
        return builder(self.checkpoint.directory, vocab_size=self._hparams["vocab_size"])

    def dtype(self, p: TensorPlan) -> np.dtype:
        """2-D weights in weight_type (F16 or BF16 bits), 1-D norms and biases F32 (llama.cpp adds them in F32)."""
        return WEIGHT_DTYPES[self.weight_type] if len(p.shape) >= 2 else np.dtype(np.float32)

    def tensor_infos(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        """(gguf name, numpy shape, numpy dtype) of every output tensor, in write order, without reading data."""
        return [(p.gguf_name, p.shape, self.dtype(p)) for p in self.plan]

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(gguf name, array) in tensor_infos() order, read one at a time."""
        for p in self.plan:
            # No local variable holds the array, so it is freed as soon as the consumer drops it.
            yield p.gguf_name, self._load(p)

    def _load(self, p: TensorPlan) -> np.ndarray:
        array = self.checkpoint.read(p.hf_name, dtype=self.dtype(p))
        return p.transform(array) if p.transform else array

    def info(self) -> dict:
        return {
            "gguf_arch": self.gguf_arch,
            "hf_architecture": self.spec.hf_architecture,
            "hparams": self.hparams(),
            "notes": list(self.notes),
            "tensor_count": len(self.plan),
            "checkpoint_files": [p.name for p in self.checkpoint.weight_files],
        }

    def _check_tensors(self) -> None:
        directory = self.checkpoint.directory
        planned = {p.hf_name for p in self.plan}
        for p in self.plan:
            if p.hf_name not in self.checkpoint:
                raise CheckpointError(
                    f"missing tensor {p.hf_name} in the checkpoint at {directory}",
                    "the weights are incomplete or belong to another model; re-download them",
                )
            actual = self.checkpoint.shape(p.hf_name)
            if tuple(actual) != p.shape:
                raise CheckpointError(
                    f"tensor {p.hf_name} has shape {list(actual)}, but config.json implies {list(p.shape)}",
                    "config.json and the weights do not belong together; re-download both",
                )
        skip = [re.compile(pattern) for pattern in self.skip_tensors]
        extra = [n for n in self.checkpoint.names() if n not in planned and not any(r.fullmatch(n) for r in skip)]
        if extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise CheckpointError(
                f"unexpected tensor(s) in the checkpoint at {directory}: {shown}",
                f"these are not part of {self.spec.name} as config.json describes it; "
                "is this a different or modified model?",
            )


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k projection rows from HF's rotate-half rope to llama.cpp's adjacent-pairs rope.

    Source: llama.cpp convert_hf_to_gguf.py LlamaModel.permute (rows viewed as (head, 2, head_dim/2)).
    """
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
