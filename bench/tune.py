"""`qrun tune`: measure a small grid of load settings per converted model and keep the best per workload.

The grid is quant (the model's converted 4-bit types) x repack x mmap x threads x threads_batch. Every point is
measured in a fresh process (qrun.bench.tune_worker) that runs both workloads after a warm-up; repetitions are
interleaved (rep 1 of every point, then rep 2 of every point, ... each pass starting one point later) so that
drift on a shared machine hits all points alike. A point whose process crashes (e.g. SIGILL from llama.cpp's AMX
repacking) is recorded as failed and not measured again; it is never chosen.

Choice (llama.cpp's defaults are not the best settings on a CPU, and the best differs per model: docs/performance.md):
  chat   = short prompt, long answer -> the highest median gen tok/s;
  prompt = long prompt, short answer -> the highest median prompt tok/s;
points whose [min, max] over the repetitions overlaps the best one's are ties, broken by less peak RSS, then less
anonymous memory, then fewer threads, then faster load. That choice is kept only when it is shown better than
qrun's own defaults (qrun_defaults(), measured in the same passes): its repetitions must separate from theirs
(qrun.measure.compare_samples: at least 3 a side, the worst of one beating the best of the other), faster, or as
fast and lighter. With fewer repetitions, or a difference inside the noise, the profile keeps qrun's defaults and
its evidence says why ("decision"). Every measurement also records what else used the CPU (qrun.measure's noise
rule); noisy repetitions are kept and counted, never dropped.

`qrun tune` also measures llama-cpp-python's own defaults (llama_cpp_defaults()) on each file, in the same
interleaved passes, and records the chosen settings against them ("vs_llama_cpp_defaults": the ratios a user gains
by tuning, on this machine — given only where the repetitions separate).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from qrun import child, registry, settings
from qrun import measure as measure_mod  # (tune_model takes a "measure" function)
from qrun import progress as progress_mod
from qrun.bench import tune_log
from qrun.errors import BenchError, UsageError
from qrun.runner import profile as profile_mod
from qrun.runner import resolve

# (prompt tokens, generated tokens) per workload: "chat" ~ a question and a paragraph of answer; "prompt" ~ a
# document to summarize in a line. Sized so a 7B grid point takes ~30 s on 2 cores.
WORKLOADS = {"chat": (32, 64), "prompt": (512, 8)}
METRIC = {"chat": "chat.gen_tokens_per_s", "prompt": "prompt.prompt_tokens_per_s"}
FOUR_BIT = ("Q4_0", "Q4_K_S", "Q4_K_M")
# Refuse above this 1-minute load average per core: a busy neighbour moves llama.cpp's speed by 10-60x at
# threads = cores (its worker threads spin-wait for a core), which would be measured as a property of the settings.
MAX_LOAD_PER_CORE = 0.5
DEFAULT_REPEAT = 3
_WORKER_TIMEOUT_S = 1800

Progress = Callable[[str], None]


def default_threads_values(cores: int | None = None) -> list[int]:
    """The core count and one less (on 2 cores: 1 and 2) — never more threads than cores (qrun.settings.physical_cores
    says why)."""
    cores = cores or settings.physical_cores()
    return sorted({max(1, cores - 1), cores})


# The baseline's context: llama-cpp-python's own default (512) cannot hold the prompt workload; 4096 is what qrun
# loaded before it sized contexts to the work, and a usual chat setting.
BASELINE_N_CTX = 4096


def llama_cpp_defaults(cpus: int | None = None) -> dict:
    """What `Llama(path, n_ctx=4096)` does (llama-cpp-python 0.3.36): repacking on (use_extra_bufts), mmap on,
    n_threads = CPUs // 2, n_threads_batch = CPUs (its own multiprocessing.cpu_count() rule), flash attention off,
    f16 KV cache. Grid points instead get a context sized to the workload, as qrun loads models."""
    cpus = cpus or os.cpu_count() or 1
    return {
        "repack": True,
        "use_mmap": True,
        "n_threads": max(cpus // 2, 1),
        "n_threads_batch": cpus,
        "flash_attn": False,
        "kv_type": "f16",
        "n_ctx": BASELINE_N_CTX,
    }


# Compared between the chosen settings and the defaults: higher is better for the first two, lower for the rest.
COMPARED = ("chat.gen_tokens_per_s", "prompt.prompt_tokens_per_s", "peak_rss_bytes", "peak_anon_bytes", "load_s")
HIGHER_IS_BETTER = ("chat.gen_tokens_per_s", "prompt.prompt_tokens_per_s")


def separation(chosen: dict, baseline: dict, metric: str) -> dict:
    """qrun.measure.compare_samples on one metric's repetitions of two point summaries."""
    return measure_mod.compare_samples(
        (chosen.get(metric) or {}).get("values", []),
        (baseline.get(metric) or {}).get("values", []),
        higher_is_better=metric in HIGHER_IS_BETTER,
    )


def versus(chosen: dict, baseline: dict | None) -> dict | None:
    """The chosen point against the baseline point, metric by metric, or the baseline's failure.

    "separation" holds each metric's verdict (qrun.measure.compare_samples); "ratios" (medians, chosen / baseline)
    only the metrics whose repetitions separate: any other ratio would claim what the samples do not show.
    """
    if baseline is None:
        return None
    out = {"point": baseline["id"], "status": baseline["status"]}
    if baseline["status"] == "ok":
        out["separation"] = {k: separation(chosen, baseline, k) for k in COMPARED if k in chosen and k in baseline}
        out["ratios"] = {k: v["ratio"] for k, v in out["separation"].items() if v["ratio"] is not None}
        out["baseline"] = {k: baseline[k]["median"] for k in COMPARED if k in baseline}
    return out


# The load settings a grid point sets (with "quant"); n_ctx is sized to the workload.
GRID_KEYS = ("repack", "use_mmap", "n_threads", "n_threads_batch", "flash_attn", "kv_type")
# (flash attention, KV cache type) pairs llama.cpp runs on the CPU: a q8_0 V cache needs flash attention.
ATTENTION = ((False, "f16"), (True, "f16"), (True, "q8_0"))


def qrun_defaults(quant: str) -> dict:
    """The load settings `qrun ask` uses without a profile or flags (qrun.runner.resolve.defaults), as a grid
    point."""
    load = resolve.defaults()
    return {"quant": quant, **{k: getattr(load, k) for k in GRID_KEYS}}


def decide(chosen: dict, default: dict | None, workload: str) -> dict:
    """Keep qrun's defaults unless the chosen point is shown better: {"keep_default": bool, "reason", "speed",
    "memory"} (speed / memory: qrun.measure.compare_samples verdicts against the default point).

    The chosen point replaces the default only when its repetitions separate from the default's: faster on the
    workload's metric, or as fast within the noise and with less peak RSS. Otherwise (one repetition, a difference
    inside the noise, or slower) the profile keeps the defaults and says why.
    """
    if default is None or default["status"] != "ok":
        why = "not measured" if default is None else default["status"]
        return {
            "keep_default": False,
            "reason": f"qrun's defaults could not be compared ({why})",
            "speed": None,
            "memory": None,
        }
    if chosen["id"] == default["id"]:
        return {"keep_default": True, "reason": "qrun's defaults measured best", "speed": None, "memory": None}
    metric = METRIC[workload]
    speed = separation(chosen, default, metric)
    memory = separation(chosen, default, "peak_rss_bytes")
    out = {"speed": speed, "memory": memory}
    if speed["verdict"] == "better":
        return {
            **out,
            "keep_default": False,
            "reason": f"{metric} {speed['ratio']:.2f}x qrun's defaults, every "
            f"repetition faster (worst/best ratio {speed['ratio_bounds'][0]:.2f})",
        }
    if speed["verdict"] == measure_mod.INSIDE_THE_NOISE and memory["verdict"] == "better":
        return {
            **out,
            "keep_default": False,
            "reason": f"as fast as qrun's defaults within the noise, peak RSS "
            f"{memory['ratio']:.2f}x theirs in every repetition",
        }
    if speed["verdict"] == measure_mod.NOT_MEASURED_ENOUGH:
        reason = (
            f"{measure_mod.NOT_MEASURED_ENOUGH}: {speed['n'][0]} and {speed['n'][1]} repetition(s), a claim "
            f"needs {measure_mod.MIN_SAMPLES_FOR_CLAIM} a side (--repeat {measure_mod.MIN_SAMPLES_FOR_CLAIM})"
        )
    elif speed["verdict"] == "worse":
        reason = f"{chosen['id']} is slower than qrun's defaults in every repetition"
    else:
        reason = f"{chosen['id']} vs qrun's defaults: {metric} {measure_mod.INSIDE_THE_NOISE} (repetitions overlap)"
    return {**out, "keep_default": True, "reason": reason + "; keeping qrun's defaults"}


def make_grid(
    *, quants, repack=(False, True), use_mmap=(True, False), threads=(1,), threads_batch=None, attention=ATTENTION
) -> list[dict]:
    """Every combination, as LoadSettings-style dicts (quant first, so one quant's points stay together)."""
    batch = threads_batch or threads
    return [
        {"quant": q, "repack": r, "use_mmap": m, "n_threads": t, "n_threads_batch": b, "flash_attn": fa, "kv_type": kv}
        for q, r, m, t, b, (fa, kv) in itertools.product(quants, repack, use_mmap, threads, batch, attention)
    ]


def point_id(point: dict) -> str:
    repack = "repack" if point["repack"] else "norepack"
    mmap = "mmap" if point["use_mmap"] else "nommap"
    attention = f"/{'fa' if point.get('flash_attn') else 'nofa'}/kv-{point.get('kv_type', 'f16')}"
    ctx = f"/ctx{point['n_ctx']}" if point.get("n_ctx") else ""
    return f"{point['quant']}/{repack}/{mmap}/t{point['n_threads']}/tb{point['n_threads_batch']}{attention}{ctx}"


def schedule(points: list, repeat: int) -> list[tuple[int, int]]:
    """(rep, point index) in run order: every point once per pass, each pass rotated by one."""
    n = len(points)
    return [(rep, (rep + i) % n) for rep in range(repeat) for i in range(n)]


def flatten(result: dict) -> dict:
    """A worker's output -> {"load_s", "peak_rss_bytes", ..., "chat.gen_tokens_per_s", ...}."""
    flat = {k: v for k, v in result.items() if k != "workloads"}
    for name, numbers in result.get("workloads", {}).items():
        flat.update({f"{name}.{k}": v for k, v in numbers.items()})
    return flat


def summarize(point: dict, runs: list[dict], failure: str | None) -> dict:
    """Median, min and max of every numeric metric over a point's successful repetitions."""
    out = {
        "id": point_id(point),
        "settings": point,
        "status": f"failed: {failure}" if failure else "ok",
        "n": len(runs),
        "loadavg_1m": [r.get("loadavg_1m") for r in runs],
    }
    if failure or not runs:
        if not failure:
            out["status"] = "failed: no measurement"
        return out
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in ("loadavg_1m", "noisy")]
    for key in keys:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "spread": max(values) - min(values),
            "values": values,
        }
    # every repetition stays in the figures above, noisy or not; these say how many were disturbed
    out["noise"] = measure_mod.count_noisy(runs)
    out["noise_samples"] = [
        {
            window: {k: w.get(k) for k in ("noisy", "other_cpu_fraction", "steal_fraction", "window_s")}
            for window, w in (r.get("noise") or {}).items()
        }
        for r in runs
    ]
    return out


def choose(summaries: list[dict], workload: str) -> dict | None:
    """The chosen point's summary for a workload (see the module docstring), with "ties": the ids it beat on memory."""
    metric = METRIC[workload]
    ok = [s for s in summaries if s["status"] == "ok" and metric in s]
    if not ok:
        return None
    best = max(ok, key=lambda s: s[metric]["median"])
    tied = [s for s in ok if s[metric]["max"] >= best[metric]["min"]]

    def cost(s):
        st = s["settings"]
        return (
            s["peak_rss_bytes"]["median"],
            s["peak_anon_bytes"]["median"],
            st["n_threads"] + st["n_threads_batch"],
            bool(st.get("flash_attn")),
            s["load_s"]["median"],
        )

    chosen = min(tied, key=cost)
    return dict(chosen, ties=[s["id"] for s in tied if s is not chosen], fastest=best["id"])


def check_load(*, force: bool, progress: Progress) -> float:
    """The 1-minute load average per core; refuses (BenchError) above MAX_LOAD_PER_CORE unless force."""
    cores = os.cpu_count() or 1
    per_core = os.getloadavg()[0] / cores
    if per_core > MAX_LOAD_PER_CORE:
        message = (
            f"the machine is busy: 1-minute load average {os.getloadavg()[0]:.2f} on {cores} CPUs "
            f"({per_core:.2f} per CPU, above {MAX_LOAD_PER_CORE})"
        )
        if not force:
            raise BenchError(
                message + "; tuning now would record the neighbour's noise",
                "wait until the machine is quiet, or pass --force to measure anyway",
            )
        progress(f"warning: {message}; measuring anyway (--force); every measurement records its load average")
    return per_core


def find_grid_targets(models, *, quants, ggufs_dir) -> dict[str, list[tuple[str, Path]]]:
    """{model: [(quant, gguf)]}: named (or all) converted models; their 4-bit GGUFs unless --quant says otherwise."""
    from qrun.convert.pipeline import find_converted

    wanted = {registry.get(m).name for m in models}
    quants = [settings.check_quant(q) for q in quants or []]
    found: dict[str, list[tuple[str, Path]]] = {}
    for spec, quant, path, _manifest in find_converted(ggufs_dir):
        if (not wanted or spec.name in wanted) and (not quants or quant in quants):
            found.setdefault(spec.name, []).append((quant, path))
    for name in sorted(wanted - set(found)):
        raise BenchError(
            f"{name} has no{' ' + '/'.join(quants) if quants else ''} GGUF in {settings.gguf_dir(ggufs_dir)}",
            f"convert it first: `qrun convert {name}`",
        )
    if not found:
        raise BenchError(f"no converted models in {settings.gguf_dir(ggufs_dir)}", "run `qrun convert MODEL` first")
    if not quants:  # by default only the 4-bit types compete (when the model has any)
        found = {m: [t for t in ts if t[0] in FOUR_BIT] or ts for m, ts in found.items()}
    return found


def run_point(gguf: Path, point: dict, *, n_ctx: int | None = None) -> tuple[dict | None, str | None]:
    """Measure one point in a fresh process -> (flat result, None) or (None, failure reason)."""
    job = {
        "gguf": str(gguf),
        "settings": {k: point[k] for k in GRID_KEYS if k in point},
        "n_ctx": point.get("n_ctx") or n_ctx,
        "workloads": WORKLOADS,
        "seed": settings.DEFAULT_SEED,
    }
    proc = child.run("qrun.bench.tune_worker", [json.dumps(job)], timeout_s=_WORKER_TIMEOUT_S)
    if proc.timed_out:
        return None, f"timeout after {_WORKER_TIMEOUT_S} s"
    if proc.signal_name:
        return None, proc.signal_name
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f"exit code {proc.returncode}"]
        return None, last[0].strip()
    return flatten(json.loads(lines[-1])), None


def _warm_page_cache(path: Path) -> None:
    """Read the file once so the first point's load time is not the only cold one."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def tune_model(
    model: str,
    files: list[tuple[str, Path]],
    *,
    grid: dict,
    repeat: int,
    n_ctx=None,
    baseline: dict | None = None,
    progress: Progress | None = None,
    measure=run_point,
    log: tune_log.PointLog | None = None,
    meter: progress_mod.Meter | None = None,
) -> dict:
    """Measure one model's grid -> its profile entry {workload: {settings, gguf, evidence}, "grid": summaries}.

    baseline: load settings (e.g. llama_cpp_defaults()) measured on every file along with the grid, never chosen
    unless they are also a grid point; each workload's evidence compares the choice with it (same file).
    progress: receives a line per measurement (default: stderr, above the bar).
    log: where each measurement goes as it is taken, and where an interrupted tune's measurements come from.
    meter: makes the bar of grid points measured (points x repetitions, a point excluded after a failure counts as
        done); default: a qrun.progress.Bar on stderr when progress is the default, else none.
    """
    meter = meter or (progress_mod.Bar if progress is None else progress_mod.NoBar)
    progress = progress or progress_mod.say
    paths = dict(files)
    points = make_grid(quants=list(paths), **grid)
    grid_size = len(points)
    baselines = [{"quant": q, **baseline} for q in paths] if baseline else []
    points += [b for b in baselines if b not in points]
    # what the profile keeps unless a grid point is shown better (decide()): qrun's own defaults, on its default quant
    default_point = qrun_defaults(settings.DEFAULT_QUANT if settings.DEFAULT_QUANT in paths else next(iter(paths)))
    points += [default_point] if default_point not in points else []
    for path in paths.values():
        _warm_page_cache(path)
    runs: dict[int, list[dict]] = {i: [] for i in range(len(points))}
    failures: dict[int, str] = {}
    order = schedule(points, repeat)
    with meter(len(order), f"tune {model}", unit="points") as bar:  # a point once per repetition
        for step, (rep, i) in enumerate(order, start=1):
            if i in failures:  # excluded after its failure: nothing to measure, but the bar moves on
                bar.update()
                continue
            point = points[i]
            gguf = paths[point["quant"]]
            label = f"[{step}/{len(order)}] {model} {point_id(point)} rep {rep + 1}/{repeat}"
            earlier = log.earlier(model, gguf, point, rep) if log else None
            if earlier is not None:
                result, failure = earlier
                label += " (measured by the interrupted tune)"
            else:
                result, failure = measure(gguf, point, n_ctx=n_ctx)
            if log:
                log.point(model, gguf, point, rep, result, failure)
            if failure:
                failures[i] = failure
                progress(f"{label}: failed: {failure} (excluded)")
                bar.update()
                continue
            assert result is not None  # measure() returns a result or a failure
            runs[i].append(result)
            progress(
                f"{label}: chat gen {result['chat.gen_tokens_per_s']:.1f} tok/s, prompt pp "
                f"{result['prompt.prompt_tokens_per_s']:.1f} tok/s, load {result['load_s']:.2f} s, "
                f"RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB, load avg {result.get('loadavg_1m')}"
                + (" (NOISY)" if result.get("noisy") else "")
            )
            bar.update()
    summaries = [summarize(p, runs[i], failures.get(i)) for i, p in enumerate(points)]
    candidates = [s for s in summaries if s["settings"] in points[:grid_size]]
    by_settings = {json.dumps(s["settings"], sort_keys=True): s for s in summaries}
    entry: dict = {"grid": summaries}
    if baselines:
        entry["llama_cpp_defaults"] = baseline
    for workload in WORKLOADS:
        chosen = choose(candidates, workload)
        if chosen is None:
            progress(f"{model}: every grid point failed; no {workload} settings recorded")
            continue
        default = by_settings.get(json.dumps(default_point, sort_keys=True))
        decision = decide(chosen, default, workload)
        if decision["keep_default"] and default is not None:
            chosen = dict(default, ties=[], fastest=chosen["fastest"], grid_choice=chosen["id"])
        progress(f"{model} {workload}: {chosen['id']}: {decision['reason']}")
        gguf = paths[chosen["settings"]["quant"]]
        entry[workload] = {
            "settings": chosen["settings"],
            "gguf": {"name": gguf.name, "size_bytes": gguf.stat().st_size},
            "evidence": {
                "metric": METRIC[workload],
                "point": chosen["id"],
                "repeat": repeat,
                "workload_tokens": {"prompt": WORKLOADS[workload][0], "gen": WORKLOADS[workload][1]},
                **{k: chosen[k] for k in (METRIC[workload], "load_s", "peak_rss_bytes", "peak_anon_bytes")},
                "loadavg_1m": chosen["loadavg_1m"],
                "ties_broken_on_memory": chosen["ties"],
                "fastest": chosen["fastest"],
                "noise": chosen["noise"],
                "noise_rule": measure_mod.NOISE_RULE,
                "decision": {
                    **decision,
                    "grid_choice": chosen.get("grid_choice", chosen["id"]),
                    "default_point": point_id(default_point),
                },
            },
        }
        if baselines and baseline is not None:
            same_file = {**baseline, "quant": chosen["settings"]["quant"]}
            entry[workload]["evidence"]["vs_llama_cpp_defaults"] = versus(
                chosen, by_settings.get(json.dumps(same_file, sort_keys=True))
            )
    return entry


def run_tune(
    models=(),
    *,
    quants=None,
    threads=None,
    threads_batch=None,
    repack=None,
    use_mmap=None,
    flash_attn=None,
    kv_types=None,
    repeat: int = DEFAULT_REPEAT,
    force: bool = False,
    ggufs_dir=None,
    n_ctx=None,
    command: str = "qrun tune",
    progress: Progress | None = None,
    meter: progress_mod.Meter | None = None,
) -> tuple[dict, Path]:
    """Tune every named (or converted) model; merge into and write the profile. Returns (profile, its path).

    progress / meter: as tune_model's (default: lines and a bar of grid points on stderr).
    """
    meter = meter or (progress_mod.Bar if progress is None else progress_mod.NoBar)
    progress = progress or progress_mod.say
    if repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {repeat}")
    grid = _grid(
        repack=repack,
        use_mmap=use_mmap,
        threads=threads,
        threads_batch=threads_batch,
        flash_attn=flash_attn,
        kv_types=kv_types,
    )  # flags first: a bad combination is refused at once
    targets = find_grid_targets(list(models), quants=quants, ggufs_dir=ggufs_dir)
    log = tune_log.PointLog(workloads=WORKLOADS, n_ctx=n_ctx)  # refuses an unwritable qrun home before measuring
    try:
        return _tune_targets(
            targets,
            log,
            grid=grid,
            repeat=repeat,
            force=force,
            n_ctx=n_ctx,
            command=command,
            progress=progress,
            meter=meter,
        )
    finally:
        log.close()


def _grid(*, repack, use_mmap, threads, threads_batch, flash_attn, kv_types) -> dict:
    """make_grid's axes from the flags (None: every value of that axis)."""
    attention = tuple(
        (fa, kv)
        for fa, kv in ATTENTION
        if (flash_attn is None or fa == flash_attn) and (not kv_types or kv in kv_types)
    )
    if not attention:
        raise UsageError(
            "--no-flash-attn with only --kv-type q8_0 leaves nothing to measure",
            "a q8_0 KV cache needs flash attention: add --flash-attn or --kv-type f16",
        )
    return {
        "repack": (False, True) if repack is None else (repack,),
        "use_mmap": (True, False) if use_mmap is None else (use_mmap,),
        "threads": tuple(threads or default_threads_values()),
        "threads_batch": tuple(threads_batch) if threads_batch else None,
        "attention": attention,
    }


def _tune_targets(
    targets,
    log: tune_log.PointLog,
    *,
    grid: dict,
    repeat: int,
    force: bool,
    n_ctx,
    command: str,
    progress: Progress,
    meter: progress_mod.Meter,
) -> tuple[dict, Path]:
    check_load(force=force, progress=progress)
    doc = profile_mod.read(notice=progress) or profile_mod.new_document(command=command)
    doc.update(command=command, created_utc=profile_mod.new_document(command=command)["created_utc"])
    if log.reusable:
        progress(
            f"qrun tune: {log.reusable} measurement(s) of an interrupted tune in {log.path} are reused where "
            "they still apply"
        )
    for model, files in targets.items():
        n_points = len(make_grid(quants=[q for q, _ in files], **grid))
        progress(
            f"qrun tune: {model}: {n_points} grid point(s) (+ llama.cpp's defaults where not among them) x "
            f"{repeat} repetition(s), one process each; every measurement goes to {log.path}"
        )
        doc["models"][model] = tune_model(
            model,
            files,
            grid=grid,
            repeat=repeat,
            n_ctx=n_ctx,
            baseline=llama_cpp_defaults(),
            progress=progress,
            log=log,
            meter=meter,
        )
    path = _write_profile(doc)
    log.finished()
    return doc, path


def _write_profile(doc: dict) -> Path:
    try:
        return profile_mod.write(doc)
    except OSError as err:  # every measurement is in the point log already
        raise BenchError(
            f"cannot write the tuning profile {profile_mod.profile_path()}: {err.strerror or err}",
            f"make its folder writable and rerun `qrun tune`: it reuses the measurements in {tune_log.log_path()}",
        ) from None
