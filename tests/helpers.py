"""Helpers shared by several test modules (test modules never import each other): a torch.save() zip written by
hand, saved `qrun bench` results built without an engine, and the reference token ids of one prompt per model.

The tiny models themselves are built by tiny_models.py (through conftest.py's fixtures).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from qrun.bench import results
from qrun.bench import suite as suites
from qrun.runner import machine


# --- torch.save() zips (test_checkpoint.py, test_archs.py) ------------------------------------------------------
def pickle_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def pickle_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def pickle_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


ORDERED_DICT = b"ccollections\nOrderedDict\n)R"


def write_torch_zip(path: Path, tensors: dict[str, tuple], storages: dict[str, tuple[str, np.ndarray]]) -> None:
    """A torch.save()-layout zip written by hand: tensors = {name: (storage_key, offset, shape, stride)},
    storages = {key: ("FloatStorage"|"HalfStorage"|"BFloat16Storage", raw little-endian array)}."""
    pkl = b"\x80\x02" + ORDERED_DICT + b"("
    for name, (key, offset, shape, stride) in tensors.items():
        storage_type, raw = storages[key]
        persistent_id = (
            pickle_tuple(
                [
                    pickle_str("storage"),
                    f"ctorch\n{storage_type}\n".encode(),
                    pickle_str(key),
                    pickle_str("cpu"),
                    pickle_int(raw.size),
                ]
            )
            + b"Q"
        )
        args = pickle_tuple(
            [
                persistent_id,
                pickle_int(offset),
                pickle_tuple([pickle_int(d) for d in shape]),
                pickle_tuple([pickle_int(s) for s in stride]),
                b"\x89",
                ORDERED_DICT,
            ]
        )
        pkl += pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"
    pkl += b"u."
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, (_, raw) in storages.items():
            zf.writestr(f"archive/data/{key}", raw.tobytes())
        zf.writestr("archive/version", "3\n")


# --- saved bench results (test_report.py, test_bad_input_regressions.py) ----------------------------------------
ANSWERS = {
    "seed-1": "冬天多穿，夏天少穿。",
    "seed-2": "眼光太高。",
    "seed-3": "他不知道。",
    "seed-4": "明明喜欢白白。",
    "seed-5": "不知道。",
}


def bench_lines(run_id, model, *, gen_tps, answers=ANSWERS, done=True, reps=2):
    lines = [
        {
            "run_id": run_id,
            "event": "start",
            "model": model,
            "quant": "Q4_K_M",
            "gguf": f"/g/{model}-Q4_K_M.gguf",
            "gguf_size_bytes": 4 * 2**30,
            "settings": {"n_threads": 2, "n_threads_batch": 2, "n_ctx": 4096, "use_mmap": True},
            "rss_before_load_bytes": 50 * 2**20,
        },
        {
            "run_id": run_id,
            "event": "load",
            "load_s": 4.3,
            "peak_rss_bytes": 6000 * 2**20,
            "peak_anon_bytes": 2900 * 2**20,
        },
    ]
    for qid, answer in answers.items():
        for rep in range(1, reps + 1):
            lines.append(
                {
                    "run_id": run_id,
                    "event": "rep",
                    "question_id": qid,
                    "rep": rep,
                    "answer": answer,
                    "prompt_tokens": 30,
                    "ttft_s": 1.5,
                    "prompt_tokens_per_s": 20.0,
                    "gen_tokens": 11,
                    "gen_tokens_per_s": gen_tps + rep,
                    "total_s": 2.5,
                    "decode_s": 1.0,
                    "zh_chars": 5,
                    "zh_chars_per_s": 5.0,
                    "stop_reason": "eos",
                    "loadavg": [0.5, 0.4, 0.3],
                    "loadavg_1m": 0.5,
                    "peak_rss_bytes": 6981 * 2**20,
                    "peak_anon_bytes": 2953 * 2**20,
                }
            )
    if done:
        lines.append(
            {
                "run_id": run_id,
                "event": "done",
                "peak_rss_bytes": 6981 * 2**20,
                "peak_anon_bytes": 2953 * 2**20,
                "memory_note": "rss vs anon",
            }
        )
    return lines


def bench_doc(hostname="box-a", *, partial=False, failure=None):
    seed = suites.load("seed")
    fp = dict(machine.fingerprint(), hostname=hostname)
    doc = results.new_document(
        command="qrun bench --threads 2",
        machine=fp,
        suite=seed,
        verdicts_path=None,
        config={"max_tokens": 64, "repeat": 2, "warmup_tokens": 16, "temperature": 0.0, "seed": 42},
    )
    lines = bench_lines("qwen-7b-chat/Q4_K_M/t2", "qwen-7b-chat", gen_tps=6.0) + bench_lines(
        "chatglm3-6b/Q4_K_M/t2", "chatglm3-6b", gen_tps=8.0, answers={"seed-3": "我不知道"}, done=False
    )
    doc["runs"] = [
        results.build_run("qwen-7b-chat/Q4_K_M/t2", lines, failure=None, suite=seed, verdicts={}),
        results.build_run(
            "chatglm3-6b/Q4_K_M/t2",
            lines,
            suite=seed,
            verdicts={},
            failure=failure
            or {
                "exit_code": -9,
                "signal": 9,
                "reason": "worker died of SIGKILL",
                "last_stderr": "Killed",
                "interrupted": False,
            },
        ),
    ]
    doc["partial"] = partial
    return doc


# --- one prompt per model (test_numerics.py, test_quantized_generate.py) ----------------------------------------
# Real token ids of "你好，世界！Hello, world. 今天天气怎么样？" from each model's reference tokenizer (tiktoken with
# qwen.tiktoken and Qwen's split pattern; sentencepiece with tokenizer.model; tokenizers with tokenizer.json), wrapped
# in each model's own special tokens as its chat prompt would be.
PROMPT_IDS = {
    # <|im_start|> ... <|im_end|> "\n"
    "qwen-7b-chat": [
        151644,
        108386,
        3837,
        99489,
        6313,
        9707,
        11,
        1879,
        13,
        220,
        100644,
        104307,
        104472,
        11319,
        151645,
        198,
    ],
    # [gMASK] sop <|user|> ...
    "chatglm3-6b": [
        64790,
        64792,
        64795,
        36474,
        54591,
        31123,
        31661,
        31404,
        24218,
        30932,
        993,
        30930,
        53456,
        33071,
        35367,
        31514,
    ],
    # <｜begin▁of▁sentence｜> ... <｜end▁of▁sentence｜> <｜begin▁of▁sentence｜>
    "deepseek-llm-7b-chat": [
        100000,
        84313,
        19304,
        4997,
        2160,
        17464,
        11,
        1843,
        13,
        207,
        7029,
        17770,
        32865,
        2224,
        100001,
        100000,
    ],
}
