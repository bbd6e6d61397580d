"""Real-scale performance: full-size random-weight checkpoints -> qrun convert -> qrun bench, side by side
with llama.cpp's own llama-bench and this machine's memory bandwidth.

    python -m tools.perf.realscale [--models M,...] [--steps S,...] [--work DIR] [--out DIR]
        [--llama-bench PATH] [--threads 1,2] [--repeat 3] [--delete-as-you-go]

Steps, per model, in order (each skips what its results file or the work folder already holds; --redo forces):
checkpoint (bf16 shards with the real shapes, realscale_ckpt.py), convert (Q4_K_M, plus Q4_0 for ChatGLM3 and
Qwen; wall time and peak memory per step from the manifest), iofloor (read every shard + write a file the size of
the outputs; page cache dropped first with --drop-caches), load (Engine.load vs llama.cpp's own load, fresh processes),
bench (qrun bench's workers: a 512-token prompt for prompt tok/s, 128 generated tokens for decode tok/s),
llama-bench (same GGUF, threads, flash attention off, mmap, repack as qrun), and once: bandwidth.
Results: <out>/realscale.json (every measurement with its load average) and <out>/realscale.md.
Needs a quiet machine: every measurement records the load average; above ~1.5 on 2 cores timings are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from qrun import registry, settings
from qrun.errors import DiskSpaceError, UsageError
from qrun.fsutil import write_json_atomic
from qrun.runner import machine
from tools.perf import bandwidth, compute_peak, fresh_call
from tools.perf import realscale_ckpt as ckpt
from tools.perf import realscale_report as report
from tools.perf import realscale_tasks as tasks

MODEL_STEPS = ("checkpoint", "convert", "iofloor", "load", "bench", "llama-bench")
MACHINE_STEPS = ("bandwidth", "compute")  # measured once, before the models
STEPS = MODEL_STEPS + MACHINE_STEPS
# Q4_0 too where a peer ships q4_0 (chatglm.cpp, qwen.cpp: docs/performance.md compares them).
QUANTS = {"chatglm3-6b": ("Q4_K_M", "Q4_0"), "qwen-7b-chat": ("Q4_K_M", "Q4_0"), "deepseek-llm-7b-chat": ("Q4_K_M",)}
TOKENIZERS_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "tokenizers"
_GiB = 1 << 30


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _in_fresh_process(fn, *args):
    """Run fn(*args) in a new process (tools/perf/fresh_call.py): its peak memory is its own, and llama.cpp state
    does not leak."""
    return fresh_call.call(fn, *args)


class Run:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.out = Path(args.out)
        self.results_path = self.out / "realscale.json"
        self.doc = (
            json.loads(self.results_path.read_text())
            if self.results_path.exists()
            else {"schema": "qrun-realscale", "schema_version": 1, "models": {}, "bandwidth": None, "runs": []}
        )
        self.repack = settings.repack_weights(None)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.results_path, self.doc)
        (self.out / "realscale.md").write_text(report.render(self.doc), encoding="utf-8")

    def model_doc(self, model: str) -> dict:
        return self.doc["models"].setdefault(model, {})

    def speed_doc(self, model: str) -> dict:
        """Where load/bench/llama-bench results of --speed-quant go: the model's own entry for Q4_K_M, else an entry
        "<model> <QUANT>" (the report's tables then show both files side by side)."""
        quant = self.args.speed_quant
        return self.model_doc(model if quant == "Q4_K_M" else f"{model} {quant}")

    def say(self, text: str) -> None:
        print(f"[realscale {time.strftime('%H:%M:%S')} load {_loadavg()[0]}] {text}", file=sys.stderr, flush=True)

    def ckpt_dir(self, model: str) -> Path:
        return self.work / "checkpoints" / model

    def ggufs(self) -> Path:
        return self.work / "ggufs"

    def quants(self, model: str) -> tuple[str, ...]:
        """--quants as given (F16 = measure the converter's own step alone), else the model's defaults."""
        return tuple(self.args.quants or QUANTS[model])

    def gguf(self, model: str, quant: str) -> Path:
        return self.ggufs() / f"{model}-{quant}.gguf"

    # -- disk ----------------------------------------------------------------------------------------------------
    def check_disk(self, models: list[str]) -> None:
        """Refuse before writing anything when the checkpoints, the unquantized GGUF and the outputs cannot fit."""
        from qrun.convert import workspace as ws

        need_each, outputs = [], 0
        for model in models:
            n = tasks.param_count(model, TOKENIZERS_DIR / model, self.args.config_overrides.get(model))
            ck = 0 if ckpt.is_complete(self.ckpt_dir(model)) or "checkpoint" not in self.args.steps else 2 * n
            todo = (
                [q for q in self.quants(model) if not self.gguf(model, q).exists()]
                if "convert" in self.args.steps
                else []
            )
            f16 = ws.estimate_gguf_bytes(n, "F16") if todo else 0  # the unquantized GGUF, BF16 or F16 (same size)
            out = sum(ws.estimate_gguf_bytes(n, q) for q in todo if q not in settings.UNQUANTIZED)
            need_each.append((ck, f16, out))
            outputs += out
        if self.args.delete_as_you_go:  # one checkpoint + one unquantized GGUF at a time, outputs accumulate
            need = outputs + max((ck + f16 for ck, f16, _ in need_each), default=0)
        else:
            need = outputs + sum(ck for ck, _, _ in need_each) + max((f16 for _, f16, _ in need_each), default=0)
        need += 2 * _GiB  # the I/O-floor step's scratch file stays under the outputs' size; headroom for the rest
        self.work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.work).free
        if need > free:
            raise DiskSpaceError(
                f"the real-scale run needs about {need / _GiB:.1f} GiB in {self.work} but only {free / _GiB:.1f} "
                f"GiB are free (per 7B model: ~15 GiB checkpoint + ~15 GiB BF16/F16 GGUF + ~4.5 GiB per output)",
                "pass --delete-as-you-go, fewer --models, another --work folder, or free some disk",
            )
        self.say(f"disk: need ~{need / _GiB:.1f} GiB, {free / _GiB:.1f} GiB free")

    # -- steps ---------------------------------------------------------------------------------------------------
    def step_checkpoint(self, model: str) -> None:
        folder = self.ckpt_dir(model)
        if ckpt.is_complete(folder) and not self.args.redo:
            return
        self.say(f"{model}: writing the full-size checkpoint ({self.args.fill}) to {folder}")
        info = _in_fresh_process(
            ckpt.make_checkpoint,
            model,
            str(folder),
            str(TOKENIZERS_DIR / model),
            self.args.fill,
            self.args.config_overrides.get(model),
        )
        self.model_doc(model)["checkpoint"] = info
        self.say(f"{model}: checkpoint {info['bytes'] / 1e9:.2f} GB in {info['wall_s']:.0f} s")

    def step_convert(self, model: str) -> None:
        quants = self.quants(model)
        done = self.model_doc(model).setdefault("convert", {})
        if all(q in done and self.gguf(model, q).exists() for q in quants) and not self.args.redo:
            return
        if not ckpt.is_complete(self.ckpt_dir(model)):
            raise UsageError(
                f"no complete checkpoint of {model} in {self.ckpt_dir(model)}",
                "run the checkpoint step first (--steps checkpoint,convert)",
            )
        # qrun's own step first, alone: the unquantized GGUF (--quants F16/BF16 if given, else what `qrun convert`
        # writes from this checkpoint: BF16 from bf16). Each quantized type is then made from it, as a rerun of
        # `qrun convert --quant Q` does when the unquantized file is there.
        from qrun import settings
        from qrun.convert import workspace as ws

        unquantized = [q for q in quants if q in settings.UNQUANTIZED] or [ws.natural_weight_type(self.ckpt_dir(model))]
        plan = unquantized + [q for q in quants if q not in settings.UNQUANTIZED]
        for i, quant in enumerate(plan):
            for path in (self.gguf(model, quant), self.gguf(model, quant).with_suffix(".json")):
                path.unlink(missing_ok=True)  # measure a full conversion, never the up-to-date skip
            dropped = (
                tasks.drop_page_cache() if i == 0 and self.args.drop_caches else False
            )  # cold, as after a download
            self.say(f"{model}: qrun convert --quant {quant} (page cache dropped: {dropped})")
            done[quant] = _in_fresh_process(
                tasks.convert_one, model, str(self.ckpt_dir(model)), quant, str(self.ggufs()), self.args.convert_threads
            )
            done[quant]["page_cache_dropped"] = dropped
            self.save()
        for quant in settings.UNQUANTIZED:
            if quant not in quants:
                self.gguf(model, quant).unlink(missing_ok=True)
                self.gguf(model, quant).with_suffix(".json").unlink(missing_ok=True)

    def step_iofloor(self, model: str) -> None:
        out_bytes = sum(self.gguf(model, q).stat().st_size for q in QUANTS[model] if self.gguf(model, q).exists())
        # (every output of this model found on disk, whichever run converted it)
        folder = self.ckpt_dir(model)
        if not ckpt.is_complete(folder) or ("iofloor" in self.model_doc(model) and not self.args.redo):
            return
        self.say(
            f"{model}: I/O floor (read {ckpt.checkpoint_bytes(folder) / 1e9:.1f} GB, write {out_bytes / 1e9:.1f} GB)"
        )
        self.model_doc(model)["iofloor"] = tasks.io_floor(
            folder, out_bytes or 4 * _GiB, scratch=self.work / "scratch", drop_caches=self.args.drop_caches
        )

    def speed_gguf(self, model: str) -> Path:
        """The --speed-quant GGUF the load/bench/llama-bench steps measure; UsageError when it was not converted."""
        gguf = self.gguf(model, self.args.speed_quant)
        if not gguf.is_file():
            raise UsageError(
                f"no {gguf.name} in {self.ggufs()}",
                f"run the convert step first (--steps convert --quants {self.args.speed_quant})",
            )
        return gguf

    def step_load(self, model: str) -> None:
        gguf = self.speed_gguf(model)
        tasks.read_file(gguf)  # page cache warm for every timed load (the first would otherwise read the disk)
        result = []
        n_ctx = None  # the llama.cpp load uses the context qrun chose (4096 capped at the training context)
        for rep in range(self.args.repeat):
            for kind in ("qrun", "llama.cpp"):
                result.append(
                    {
                        "kind": kind,
                        "rep": rep + 1,
                        **_in_fresh_process(
                            tasks.load_once, kind, str(gguf), self.args.threads[-1], self.repack, n_ctx
                        ),
                    }
                )
                n_ctx = result[-1]["n_ctx"]
        self.speed_doc(model)["load"] = result

    def step_bench(self, model: str) -> None:
        self.speed_doc(model)["bench"] = tasks.qrun_bench(
            model,
            self.speed_gguf(model),
            threads=self.args.threads,
            repeat=self.args.repeat,
            out=self.out / "bench" / model,
            repack=self.repack,
        )

    def step_llama_bench(self, model: str) -> None:
        if not self.args.llama_bench:
            self.say("llama-bench: no --llama-bench PATH given, skipped")
            return
        self.speed_doc(model)["llama_bench"] = tasks.llama_bench(
            self.args.llama_bench,
            self.speed_gguf(model),
            threads=self.args.threads,
            repeat=self.args.repeat,
            repack=self.repack,
        )

    def run(self) -> None:
        models = self.args.models
        self.doc["machine"] = machine.fingerprint()
        self.doc["runs"].append(
            {"argv": sys.argv, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg": _loadavg()}
        )
        if {"checkpoint", "convert"} & set(self.args.steps):
            self.check_disk(models)
        if "bandwidth" in self.args.steps:
            self.say("memory bandwidth")
            self.doc["bandwidth"] = bandwidth.measure_all(thread_counts=self.args.threads)
            self.save()
        if "compute" in self.args.steps:
            self.say("arithmetic peak (float32 SGEMM)")
            self.doc["compute"] = compute_peak.measure_all(thread_counts=self.args.threads)
            for model in models:  # what one prompt token multiplies, for prompt tok/s -> FLOP/s
                if self.gguf(model, self.args.speed_quant).exists():
                    self.speed_doc(model)["matmul_weights"] = tasks.matmul_weights(
                        self.gguf(model, self.args.speed_quant)
                    )
            self.save()
        for model in models:
            for step in MODEL_STEPS:
                if step in self.args.steps:
                    getattr(self, "step_" + step.replace("-", "_"))(model)
                    self.save()
            if self.args.delete_as_you_go and self.ckpt_dir(model).exists():
                self.say(f"{model}: deleting the checkpoint {self.ckpt_dir(model)}")
                shutil.rmtree(self.ckpt_dir(model))
        self.save()
        print(report.render(self.doc))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.perf.realscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(QUANTS), help="comma-separated (default: all three)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--work", default=None, help="checkpoints and GGUFs (default: <qrun home>/realscale)")
    p.add_argument("--out", default=None, help="results (default: <work>/results)")
    p.add_argument("--llama-bench", default=None, help="path to a llama-bench binary (see docs/performance.md)")
    p.add_argument("--threads", default=[1, 2], type=bandwidth.thread_counts_arg, help="comma-separated (default 1,2)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--speed-quant",
        default="Q4_K_M",
        type=_quant_arg,
        help="GGUF type the load, bench and llama-bench steps measure (default Q4_K_M)",
    )
    p.add_argument(
        "--quants",
        default=None,
        help="quants to convert each model to (default: Q4_K_M, and Q4_0 "
        "for ChatGLM3 and Qwen); F16 measures qrun's own conversion step without llama.cpp's quantizer",
    )
    p.add_argument(
        "--convert-threads", type=_threads_arg, default=None, help="quantizer threads (default: physical cores)"
    )
    p.add_argument("--fill", choices=("tiled", "random"), default="tiled", help="see realscale_ckpt.py")
    p.add_argument("--config-overrides", default="{}", help="JSON {model: {config key: value}} (tests: small shapes)")
    p.add_argument("--delete-as-you-go", action="store_true", help="delete each checkpoint once measured")
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before conversion and the I/O floor (root; slows the whole machine)",
    )
    p.add_argument("--redo", action="store_true", help="re-measure steps whose results exist")
    args = p.parse_args(argv)
    args.models = [registry.get(m).name for m in args.models.split(",") if m.strip()]
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        raise UsageError(f"unknown step(s): {', '.join(sorted(unknown))}", f"steps: {', '.join(STEPS)}")
    args.quants = [q.strip().upper() for q in args.quants.split(",")] if args.quants else None
    args.work = args.work or str(settings.qrun_home() / "realscale")
    args.out = args.out or str(Path(args.work) / "results")
    args.config_overrides = {registry.get(k).name: v for k, v in json.loads(args.config_overrides).items()}
    return args


def _threads_arg(value: str) -> int:
    try:
        return settings.check_threads(value, flag="--convert-threads")
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.one_line()) from None


def _quant_arg(value: str) -> str:
    from qrun.errors import UsageError

    try:
        return settings.check_quant(value)
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.one_line()) from None


def main(argv=None) -> int:
    from qrun.errors import QrunError

    try:
        Run(parse_args(argv)).run()
    except QrunError as err:
        print(f"Error: {err.one_line()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
