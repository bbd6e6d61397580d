"""Golden files of the tiny models: what qrun's converter writes and what llama.cpp then generates, per model.

One JSON per model under tests/data/golden/ (in the style of ollama/ollama's convert/testdata/*.json: one file per
model with a sha256 per tensor) holds, for the F16 and the Q4_K_M GGUF that tests/tiny_models.py builds from its
fixed-seed random checkpoint: every GGUF metadata key with its type and value (long arrays such as the vocabulary as
their length and a sha256), every tensor (name, ggml type, shape, sha256 of its bytes), and the greedy token ids
llama.cpp generates after one fixed prompt, with the top-2 logit margin of every step.

test_golden.py compares freshly built files with these. After an intended change, regenerate and review the diff:

    python tests/golden.py --update        # rebuild the tiny models in a temporary folder, rewrite the JSON files
    python tests/golden.py                 # rebuild and print what differs from the committed files (exit 1 if so)
    git diff tests/data/golden/

See tests/data/golden/README.md for what is (and is not) pinned and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import mmap
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import llama_cpp
import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
)

from qrun.runner.engine import Engine
from tiny_models import MODELS, TinyModels

TESTS_DIR = Path(__file__).resolve().parent
GOLDEN_DIR = TESTS_DIR / "data" / "golden"
QUANTS = ("F16", "Q4_K_M")

# The fixed prompt: the chat prompt of one user turn, through qrun's own chat formats (Engine.prompt_ids).
PROMPT_MESSAGES = [{"role": "user", "content": "你好"}]
GREEDY_TOKENS = 16
# One thread for prompt and generation. The tiny models' logits came out bit-identical at 1 and 2 threads on this
# build, but nothing in llama.cpp promises that a matmul split over threads sums in the same order, and on a tiny
# random model the top logits can be close; pinning the count keeps the thread count out of the comparison.
GREEDY_THREADS = 1
GREEDY_CTX_TOKENS = 256  # a multiple of settings.CTX_ALIGN_TOKENS

# How the greedy ids are compared. On the llama.cpp build that wrote the golden file (same llama-cpp-python version
# and the same llama_print_system_info(), i.e. the same CPU kernels compiled in) they must match exactly: on that
# build, generation is bit-for-bit repeatable (logits identical at 1 and 2 threads, and between fresh builds of the
# models). On another build (the other kind of x86 machine, a rebuilt wheel) float rounding may differ, so a step's
# id is compared only while every golden step so far had its best logit ahead of the runner-up by CLEAR_MARGIN:
# a closer call is a coin toss, and every later token depends on it. The margins are a few times the largest logit
# drift measured between two llama.cpp kernel paths for the same tokens on an Intel Xeon (AVX-512) VM
# (README.md next to the data: F16 2.2e-3, Q4_K_M 7.6e-2). The golden F16 run must keep MIN_CLEAR_STEPS clear
# steps, or the fallback would check too little (test_golden.py enforces it).
CLEAR_MARGIN = {"F16": 0.005, "Q4_K_M": 0.2}
MIN_CLEAR_STEPS = 8

# Arrays longer than this (vocabulary tokens, scores, merges, token types) are pinned by length and sha256.
MAX_INLINE_ARRAY = 64


# --- describing a GGUF -------------------------------------------------------------------------------------------
# A reader of the GGUF layout (github.com/ggml-org/ggml docs/gguf.md; the layout gguf-py's GGUFReader reads) that
# hashes long arrays and tensor data as stored instead of building Python objects per vocabulary string: gguf-py's
# reader takes 7-18 s per tiny GGUF here, almost all of it in Qwen's and DeepSeek's 100k-token vocabularies.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        self.pos += n
        return bytes(self.data[self.pos - n : self.pos]).decode("utf-8")

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        return self.unpack(_SCALARS[vtype])

    def skip(self, vtype: int) -> None:
        if vtype == _STRING:
            self.pos += 8 + struct.unpack_from("<Q", self.data, self.pos)[0]
        else:
            self.pos += struct.calcsize(_SCALARS[vtype])


def _type_name(vtype: int) -> str:
    return GGUFValueType(vtype).name


def describe_gguf(path: Path) -> dict:
    """{"metadata": {key: {"type", "value"} or {"type", "count", "sha256"}}, "tensors": [{name, type, shape,
    sha256}]}: every key-value pair (arrays longer than MAX_INLINE_ARRAY by length and the sha256 of their bytes
    as stored), every tensor in file order with its shape in ggml order (ne0 first) and the sha256 of its bytes."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        data = memoryview(mm)
        try:
            r = _Reader(data)
            if bytes(data[:4]) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file")
            r.pos = 4
            r.unpack("I")  # version
            n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
            metadata = {}
            for _ in range(n_kv):
                key, vtype = r.string(), r.unpack("I")
                if vtype != _ARRAY:
                    metadata[key] = {"type": _type_name(vtype), "value": r.value(vtype)}
                    continue
                itype, count = r.unpack("I"), r.unpack("Q")
                type_name = f"ARRAY[{_type_name(itype)}]"
                if count <= MAX_INLINE_ARRAY:
                    metadata[key] = {"type": type_name, "value": [r.value(itype) for _ in range(count)]}
                    continue
                start = r.pos
                if itype == _STRING:
                    for _ in range(count):
                        r.skip(itype)
                else:
                    r.pos += count * struct.calcsize(_SCALARS[itype])
                metadata[key] = {
                    "type": type_name,
                    "count": count,
                    "sha256": hashlib.sha256(data[start : r.pos]).hexdigest(),
                }
            infos = []
            for _ in range(n_tensors):
                name = r.string()
                shape = [r.unpack("Q") for _ in range(r.unpack("I"))]
                infos.append((name, r.unpack("I"), shape, r.unpack("Q")))
            align = metadata.get("general.alignment", {}).get("value", GGUF_DEFAULT_ALIGNMENT)
            data_start = -(-r.pos // align) * align
            tensors = []
            for name, ttype, shape, offset in infos:
                block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                n_bytes = math.prod(shape) // block * type_bytes
                start = data_start + offset
                if start + n_bytes > len(data):
                    raise ValueError(f"{path}: tensor {name} runs past the end of the file")
                tensors.append(
                    {
                        "name": name,
                        "type": GGMLQuantizationType(ttype).name,
                        "shape": shape,
                        "sha256": hashlib.sha256(data[start : start + n_bytes]).hexdigest(),
                    }
                )
        finally:
            data.release()
    return {"metadata": metadata, "tensors": tensors}


# --- greedy generation ---------------------------------------------------------------------------------------------
def greedy(path: Path, *, n_threads: int = GREEDY_THREADS, n_tokens: int = GREEDY_TOKENS) -> dict:
    """The prompt ids, the greedy ids qrun's engine generates (temperature 0, weight repacking off: llama.cpp's
    plain CPU kernels), and each step's top-2 logit margin, recomputed along the same ids with the same decode
    calls (the prompt as one batch, then one token at a time)."""
    with Engine.load(
        path, n_ctx=GREEDY_CTX_TOKENS, n_threads=n_threads, n_threads_batch=n_threads, repack=False
    ) as engine:
        prompt_ids = engine.prompt_ids(PROMPT_MESSAGES)
        generation = engine.generate(prompt_ids, max_tokens=n_tokens, temperature=0.0).run()
        ids = list(generation.token_ids)
        margins = []
        ctx = engine._llama.ctx  # the engine's own context: the same kernels as the generation above
        n_vocab = llama_cpp.llama_vocab_n_tokens(engine._vocab)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        engine._decode(prompt_ids)
        for token in ids:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            top2 = np.sort(np.partition(logits, -2)[-2:])
            if int(np.argmax(logits)) != token:
                raise AssertionError(
                    f"{path.name}: replaying the greedy ids gave argmax {int(np.argmax(logits))} "
                    f"where generation chose {token}: llama.cpp is not deterministic here"
                )
            margins.append(round(float(top2[1] - top2[0]), 4))
            engine._decode([token])
        return {"prompt_ids": prompt_ids, "ids": ids, "stop_reason": generation.stats.stop_reason, "margins": margins}


def clear_steps(margins: list[float], quant: str) -> int:
    """How many leading steps have a margin of at least CLEAR_MARGIN[quant]."""
    for i, margin in enumerate(margins):
        if margin < CLEAR_MARGIN[quant]:
            return i
    return len(margins)


def build_id() -> dict:
    """What decides the kernels llama.cpp runs: the binding's version and the CPU features its build uses."""
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
    }


# --- the golden document -------------------------------------------------------------------------------------------
def build(paths: Mapping[str, Path], model: str) -> dict:
    """The golden document of `model` from its built GGUFs {quant: path}."""
    return {
        "model": model,
        "files": {quant: describe_gguf(paths[quant]) for quant in QUANTS},
        "greedy": {
            "messages": PROMPT_MESSAGES,
            "max_tokens": GREEDY_TOKENS,
            "temperature": 0.0,
            "n_threads": GREEDY_THREADS,
            "repack": False,
            "build": build_id(),
            **{quant: greedy(paths[quant]) for quant in QUANTS},
        },
    }


def golden_path(model: str) -> Path:
    return GOLDEN_DIR / f"{model}.json"


def load(model: str) -> dict:
    return json.loads(golden_path(model).read_text(encoding="utf-8"))


def write(model: str, doc: dict) -> Path:
    path = golden_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --- comparing -----------------------------------------------------------------------------------------------------
def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else text[:97] + "..."


def diff_files(expected: dict, actual: dict) -> list[str]:
    """Readable lines for every metadata key and tensor that was added, removed or changed."""
    lines = []
    for quant in QUANTS:
        exp, act = expected["files"][quant], actual["files"][quant]
        for key in sorted(set(exp["metadata"]) | set(act["metadata"])):
            e, a = exp["metadata"].get(key), act["metadata"].get(key)
            if e is None:
                lines.append(f"{quant} metadata + {key} = {_short(a)}")
            elif a is None:
                lines.append(f"{quant} metadata - {key} (was {_short(e)})")
            elif e != a:
                lines.append(f"{quant} metadata ~ {key}: {_short(e)} -> {_short(a)}")
        exp_t = {t["name"]: t for t in exp["tensors"]}
        act_t = {t["name"]: t for t in act["tensors"]}
        for name in [*exp_t, *(n for n in act_t if n not in exp_t)]:
            e, a = exp_t.get(name), act_t.get(name)
            if e is None:
                lines.append(f"{quant} tensor + {name} {a['type']} {a['shape']}")
            elif a is None:
                lines.append(f"{quant} tensor - {name} (was {e['type']} {e['shape']})")
            elif e != a:
                what = [f"{k} {e[k]} -> {a[k]}" for k in ("type", "shape") if e[k] != a[k]]
                if e["sha256"] != a["sha256"]:
                    what.append(f"sha256 {e['sha256'][:12]}... -> {a['sha256'][:12]}...")
                lines.append(f"{quant} tensor ~ {name}: {'; '.join(what)}")
        common = [n for n in exp_t if n in act_t]
        if common != [n for n in act_t if n in exp_t]:
            lines.append(f"{quant} tensor order changed")
    return lines


def same_build(expected: dict, actual: dict) -> bool:
    return expected["greedy"]["build"] == actual["greedy"]["build"]


def diff_greedy(expected: dict, actual: dict, quants: tuple[str, ...] = QUANTS) -> list[str]:
    """Readable lines where the greedy run differs. Prompt ids: exactly. Generated ids: exactly on the build that
    wrote the golden file; on another build over the leading steps with a clear golden margin (CLEAR_MARGIN)."""
    exp_g, act_g = expected["greedy"], actual["greedy"]
    lines = []
    for quant in quants:
        exp, act = exp_g[quant], act_g[quant]
        if exp["prompt_ids"] != act["prompt_ids"]:
            lines.append(f"{quant} prompt ids changed:\n  golden {exp['prompt_ids']}\n  now    {act['prompt_ids']}")
            continue
        exact = same_build(expected, actual)
        n = len(exp["ids"]) if exact else clear_steps(exp["margins"], quant)
        if exp["ids"][:n] == act["ids"][:n] and (not exact or exp["ids"] == act["ids"]):
            continue
        first = next(
            (i for i, (e, a) in enumerate(zip(exp["ids"], act["ids"])) if e != a), min(len(exp["ids"]), len(act["ids"]))
        )
        rule = (
            "same llama.cpp build: every id must match"
            if exact
            else f"another llama.cpp build: ids 0-{n - 1} must match (golden margins >= {CLEAR_MARGIN[quant]})"
        )
        lines.append(
            f"{quant} greedy ids differ from step {first} ({rule}):\n  golden {exp['ids']}\n  now    {act['ids']}"
        )
    return lines


# --- command line --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the tiny models' golden files, or regenerate them.")
    parser.add_argument("--update", action="store_true", help="rewrite tests/data/golden/<model>.json")
    parser.add_argument("--model", action="append", choices=MODELS, help="only this model (repeatable)")
    args = parser.parse_args(argv)
    differs = False
    with tempfile.TemporaryDirectory(prefix="qrun-golden-") as tmp:
        tiny = TinyModels(Path(tmp))
        for model in args.model or MODELS:
            doc = build({quant: tiny.gguf(model, quant) for quant in QUANTS}, model)
            if golden_path(model).is_file():
                old = load(model)
                lines = diff_files(old, doc) + diff_greedy(old, doc)
                if not lines and old != doc:
                    lines = ["only the build or margins changed (ids within the comparison rule)"]
            else:
                lines = ["no golden file yet"]
            differs |= bool(lines)
            print(f"{model}: " + ("same as the golden file" if not lines else f"{len(lines)} difference(s)"))
            for line in lines:
                print(f"  {line}")
            if args.update:
                n_clear = clear_steps(doc["greedy"]["F16"]["margins"], "F16")
                if n_clear < MIN_CLEAR_STEPS:
                    print(f"  warning: only {n_clear} clear F16 greedy steps (< {MIN_CLEAR_STEPS}): test_golden fails")
                print(f"  wrote {write(model, doc)}")
    return 0 if args.update or not differs else 1


if __name__ == "__main__":
    sys.exit(main())
