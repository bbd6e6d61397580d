#!/usr/bin/env python
"""Feed the peers' OWN converter classes from a local HF checkpoint folder without transformers.

The stock converters (chatglm_cpp.convert / qwen_cpp.convert) call transformers' Auto* classes with
trust_remote_code=True, which needs modeling_*.py / tokenization_*.py files the checkpoint folders do
not have (and no hub is reachable).  This harness builds the minimal objects those converters read:

  model.config            -> namespace from config.json
  model.generation_config -> namespace from generation_config.json (qwen only)
  model.state_dict()      -> lazy mapping: each tensor read from the safetensors shards on access and
                             upcast to float32 (what from_pretrained's default float32 load would give),
                             so only one tensor is in float32 at a time
  tokenizer               -> chatglm: .tokenizer.sp_model = sentencepiece processor of tokenizer.model
                             qwen:    .im_start_id / .im_end_id computed like Qwen's tokenizer
                                      (len(qwen.tiktoken ranks) + 1 / + 2)

and then calls ChatGLM3Converter.convert / QwenConverter.convert unchanged.  The converter module is
loaded from its file (installed package if present, else the unpacked sdist) with a stub `transformers`
module, because the module imports transformers at top level but the classes used here never touch it.

Usage:  venv/bin/python convert_peer.py chatglm CKPT_DIR OUT.bin [--type q4_0]
        venv/bin/python convert_peer.py qwen    CKPT_DIR OUT.bin [--type q4_0]
"""

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path

# The folder the peers were built in (tools/perf/peers/README.md): its venv, binaries, shim and model files.
HERE = Path(os.environ.get("PEERS_DIR", ".")).resolve()

CONVERTER_CANDIDATES = {
    "chatglm": [
        HERE / "venv/lib/python3.11/site-packages/chatglm_cpp/convert.py",
        HERE / "sdist/chatglm_cpp-0.4.2/chatglm_cpp/convert.py",
    ],
    "qwen": [
        HERE / "venv/lib/python3.11/site-packages/qwen_cpp/convert.py",
        HERE / "sdist/qwen-cpp-0.1.3/qwen_cpp/convert.py",
    ],
}


def load_converter(peer):
    for path in CONVERTER_CANDIDATES[peer]:
        if path.is_file():
            break
    else:
        sys.exit(f"no converter file found for {peer}")
    if "transformers" not in sys.modules:
        stub = types.ModuleType("transformers")

        class _Unavailable:
            @classmethod
            def from_pretrained(cls, *a, **k):
                raise RuntimeError("transformers stub: not used by this harness")

        for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer"):
            setattr(stub, name, type(name, (_Unavailable,), {}))
        sys.modules["transformers"] = stub
    spec = importlib.util.spec_from_file_location(f"{peer}_convert_mod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"converter: {path} sha256={sha}", flush=True)
    return mod


class LazyStateDict(Mapping):
    """name -> float32 torch tensor, read from the safetensors shards on each access."""

    def __init__(self, ckpt):
        from safetensors import safe_open

        ckpt = Path(ckpt)
        index = ckpt / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            single = ckpt / "model.safetensors"
            with safe_open(str(single), "pt") as f:
                weight_map = {k: single.name for k in f.keys()}
        self._map = weight_map
        self._safe_open = safe_open
        self._ckpt = ckpt

    def __getitem__(self, name):
        # open the shard per access (cheap: header only) so mmapped shard pages do not pile up in RSS
        with self._safe_open(str(self._ckpt / self._map[name]), "pt") as f:
            t = f.get_tensor(name)
        return t.float().contiguous()

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def __setitem__(self, k, v):  # chatglm converter may add past_key_values for p-tuning (not used)
        raise RuntimeError("unexpected write to state dict")


class FakeModel:
    def __init__(self, ckpt, config, generation_config=None):
        self.config = config
        self.generation_config = generation_config
        self._sd = LazyStateDict(ckpt)

    def state_dict(self):
        return self._sd

    def eval(self):
        return self


def ns_from_json(path):
    return types.SimpleNamespace(**json.loads(Path(path).read_text()))


def chatglm_tokenizer(ckpt):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(Path(ckpt) / "tokenizer.model"))
    inner = types.SimpleNamespace(sp_model=sp)
    return types.SimpleNamespace(tokenizer=inner)


def qwen_tokenizer(ckpt):
    n_ranks = 0
    with open(Path(ckpt) / "qwen.tiktoken", "rb") as f:
        for line in f:
            if line.strip():
                n_ranks += 1
    # Qwen tokenization_qwen.py: special tokens are numbered from len(mergeable_ranks):
    # <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|> ...
    return types.SimpleNamespace(eod_id=n_ranks, im_start_id=n_ranks + 1, im_end_id=n_ranks + 2, n_ranks=n_ranks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["chatglm", "qwen"])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--type", default="q4_0")
    args = ap.parse_args()

    conv = load_converter(args.peer)
    ggml_type = conv.GGMLType[args.type.upper()]
    config = ns_from_json(Path(args.ckpt) / "config.json")
    t0 = time.time()
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".partial")
    with open(tmp, "wb") as f:
        if args.peer == "chatglm":
            assert config.model_type == "chatglm" and getattr(config, "multi_query_attention", False)
            tok = chatglm_tokenizer(args.ckpt)
            model = FakeModel(args.ckpt, config)
            # the stock convert() picks ChatGLM3Converter when the tokenizer has <|system|>: ChatGLM3's does
            conv.ChatGLM3Converter.convert(f, model, tok, ggml_type)
        else:
            gen_path = Path(args.ckpt) / "generation_config.json"
            if gen_path.is_file():
                gen = ns_from_json(gen_path)
            else:
                # Qwen-7B-Chat's generation_config.json: eos = pad = <|endoftext|> (151643)
                print("WARNING: no generation_config.json, using eos=pad=<|endoftext|>", flush=True)
                gen = None
            tok = qwen_tokenizer(args.ckpt)
            if gen is None:
                gen = types.SimpleNamespace(eos_token_id=tok.eod_id, pad_token_id=tok.eod_id)
            print(
                f"qwen ids: eos={gen.eos_token_id} pad={gen.pad_token_id} "
                f"im_start={tok.im_start_id} im_end={tok.im_end_id} (ranks={tok.n_ranks})",
                flush=True,
            )
            # This checkpoint carries Qwen-7B-Chat's original (v1.0) config.json: n_embd / n_head / n_layer /
            # ffn_hidden_size.  HF's QWenConfig of that version maps hidden_size, num_attention_heads and
            # num_hidden_layers onto them via attribute_map; qwen.cpp's converter (written against the later
            # config) also reads intermediate_size (= ffn_hidden_size = 22016, of which qwen.cpp uses /2).
            for new_name, old_name in (
                ("hidden_size", "n_embd"),
                ("num_attention_heads", "n_head"),
                ("num_hidden_layers", "n_layer"),
                ("intermediate_size", "ffn_hidden_size"),
            ):
                if not hasattr(config, new_name):
                    setattr(config, new_name, getattr(config, old_name))
                    print(f"config alias: {new_name} = {old_name} = {getattr(config, old_name)}", flush=True)
            model = FakeModel(args.ckpt, config, gen)
            conv.QwenConverter.convert(f, model, tok, ggml_type)
    tmp.rename(out)
    print(f"saved {out} ({out.stat().st_size} bytes) in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
