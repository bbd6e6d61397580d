"""Markdown tables from realscale.json: conversion vs I/O floor, load time, qrun vs llama-bench, bandwidth fraction.

Only measured values are shown (a missing measurement is "—"); medians with min–max of the repetitions, and the
load average the measurements ran under, and how many samples qrun.measure's noise rule marked noisy.
"""

from __future__ import annotations

import statistics

from qrun import measure

_GiB = 1 << 30
NOISE_LEGEND = "noise: " + measure.NOISE_RULE + "; NOISY k/n counts the noisy samples, all of which are kept."


def _f(value, fmt="{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _spread(values) -> str:
    values = [v for v in values or [] if v is not None]
    if not values:
        return "—"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def _ratio(a, b) -> str:
    return "—" if not a or not b else f"{a / b:.3f}"


def _load(values) -> str:
    values = [v for v in values or [] if v is not None]
    return "—" if not values else f"{min(values):.2f}–{max(values):.2f}"


def bandwidth_gb_s(doc: dict, threads: int, kind: str = "copy") -> float | None:
    for row in doc.get("bandwidth") or []:
        if row["threads"] == threads:
            return row[kind]["median_gb_per_s"]
    return None


def _machine(doc: dict) -> list[str]:
    m = doc.get("machine") or {}
    return [
        f"Machine: {m.get('cpu_model', '?')}, {m.get('logical_cores', '?')} CPUs "
        f"({m.get('physical_cores', '?')} physical), RAM {_f((m.get('ram_bytes') or 0) / _GiB, '{:.1f}')} GiB, "
        f"{m.get('os', '?')}, llama-cpp-python {m.get('llama_cpp_python', '?')}; load average at start "
        f"{m.get('loadavg_at_start')}. **Shared, noisy 2-core machine.**",
        "",
    ]


def _bandwidth(doc: dict) -> list[str]:
    rows = doc.get("bandwidth") or []
    if not rows:
        return []
    out = [
        "## Memory bandwidth (tools/perf/bandwidth.py, GB/s = 1e9 B/s, median (best) of repeats)",
        "",
        "| threads | copy | triad | load avg |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['threads']} | {r['copy']['median_gb_per_s']:.1f} ({r['copy']['best_gb_per_s']:.1f}) | "
            f"{r['triad']['median_gb_per_s']:.1f} ({r['triad']['best_gb_per_s']:.1f}) | {r['loadavg']} |"
        )
    return out + [""]


def _convert(doc: dict) -> list[str]:
    out = [
        "## Conversion (qrun convert --from, through the library; one run each)",
        "",
        "convert = qrun's own step (checkpoint -> unquantized GGUF: BF16 from a bf16 checkpoint, or F16); its floor "
        "= reading the checkpoint + writing that file at the I/O floor's measured read and write rates. quantize = "
        "llama.cpp's llama_model_quantize, run on the unquantized GGUF of the row above it; a quantized row's "
        "total counts that row's convert step too. I/O floor = read the checkpoint + write the outputs (measured).",
        "",
        "| model | quant | checkpoint GB | convert s | convert floor s | convert / floor | quantize s | hash s "
        "| total s | I/O floor s | total / floor | peak RSS GiB | peak anon GiB | output GB | bits/weight "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, m in doc["models"].items():
        io = m.get("iofloor") or {}
        floor = io.get("floor_s")
        ck = (m.get("checkpoint") or {}).get("bytes") or io.get("read_bytes")
        base_convert_s = None  # the convert step a quantized row reused (the unquantized row's)
        for quant, c in (m.get("convert") or {}).items():
            steps = c["steps"]
            parts = {k: (steps.get(k) or {}) for k in ("convert", "quantize", "hash")}
            reused = parts["convert"].get("reused")
            unquantized_bytes = c.get("unquantized_size_bytes") or c.get("f16_size_bytes") or 0  # older results
            conv_floor = (io["read_s"] + unquantized_bytes / (io["write_gb_per_s"] * 1e9)) if io else None
            conv_s = parts["convert"].get("wall_s")
            if not reused and not parts["quantize"]:
                base_convert_s = conv_s
            own = sum(parts[k].get("wall_s", 0) for k in ("quantize", "hash"))
            total = own + (base_convert_s or 0 if reused else conv_s or 0)
            rss = max(p.get("peak_rss_bytes", 0) for p in parts.values())
            anon = max(p.get("peak_anon_bytes", 0) for p in parts.values())
            quantized = bool(parts["quantize"])
            out.append(
                f"| {model} | {quant} | {_f(ck and ck / 1e9, '{:.1f}')} | "
                f"{'(reused)' if reused else _f(conv_s, '{:.0f}')} | "
                f"{'' if reused else _f(conv_floor, '{:.0f}')} | "
                f"{'' if reused else _ratio(conv_s, conv_floor)} | "
                f"{_f(parts['quantize'].get('wall_s'), '{:.0f}')} | {_f(parts['hash'].get('wall_s'), '{:.1f}')} | "
                f"{total:.0f} | {_f(floor, '{:.0f}') if quantized else '—'} | "
                f"{_ratio(total, floor) if quantized else '—'} | {rss / _GiB:.2f} | "
                f"{anon / _GiB:.2f} | {c['size_bytes'] / 1e9:.2f} | {_f(c.get('bits_per_weight'))} | "
                f"{c['loadavg_before'][0]}→{c['loadavg_after'][0]} |"
            )
    floors = [(model, m["iofloor"]) for model, m in doc["models"].items() if m.get("iofloor")]
    if floors:
        out += [
            "",
            "I/O floor: read every shard once + write (fsync) a file the size of the outputs:",
            "",
            "| model | page cache dropped | read GB | read s (GB/s) | write GB | write s (GB/s) | load avg |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, f in floors:
            out.append(
                f"| {model} | {f['page_cache_dropped']} | {f['read_bytes'] / 1e9:.1f} | {f['read_s']:.1f} "
                f"({f['read_gb_per_s']:.2f}) | {f['write_bytes'] / 1e9:.1f} | {f['write_s']:.1f} "
                f"({f['write_gb_per_s']:.2f}) | {f['loadavg_before'][0]}→{f['loadavg_after'][0]} |"
            )
    return out + [""]


def _load_table(doc: dict) -> list[str]:
    out = [
        "## Load time (Q4_K_M unless the model column names another type; fresh process each; page cache warm)",
        "",
        "| model | qrun Engine.load s | llama.cpp C API s | ratio | load avg | noise |",
        "|---|---|---|---|---|---|",
    ]
    any_row = False
    for model, m in doc["models"].items():
        rows = m.get("load") or []
        if not rows:
            continue
        any_row = True
        q = [r["load_s"] for r in rows if r["kind"] == "qrun"]
        lcpp = [r["load_s"] for r in rows if r["kind"] == "llama.cpp"]
        out.append(
            f"| {model} | {_spread(q)} | {_spread(lcpp)} | {_ratio(statistics.median(q), statistics.median(lcpp))} "
            f"| {_load([r['loadavg_before'][0] for r in rows])} "
            f"| {measure.noise_mark(measure.count_noisy(rows))} |"
        )
    return out + ["", f"*{NOISE_LEGEND}*", ""] if any_row else []


def _speed(doc: dict) -> list[str]:
    out = [
        "## Prompt (pp512) and decode (tg128) speed: qrun bench vs llama-bench (Q4_K_M unless the model column "
        "names another type)",
        "",
        "tok/s, median (min–max) of the repetitions; ratio = qrun / llama-bench medians. Goals: pp >= 0.95, "
        "tg >= 0.97.",
        "",
        "| model | threads | qrun pp | llama-bench pp | pp ratio | qrun tg | llama-bench tg | tg ratio "
        "| qrun load s | peak RSS GiB | peak anon GiB | load avg (qrun reps) | load avg (llama-bench) "
        "| noise (qrun reps) | noise (llama-bench) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, m in doc["models"].items():
        b, lb = m.get("bench") or {}, m.get("llama_bench") or {}
        for t in sorted({*b.get("pp", {}), *b.get("tg", {})}, key=int):
            pp, tg = b.get("pp", {}).get(t, {}), b.get("tg", {}).get(t, {})
            lpp, ltg = lb.get("pp", {}).get(t, {}), lb.get("tg", {}).get(t, {})
            rss = max(x.get("peak_rss_bytes") or 0 for x in (pp, tg))
            anon = max(x.get("peak_anon_bytes") or 0 for x in (pp, tg))
            loads = [x for x in (pp.get("load_s"), tg.get("load_s")) if x is not None]
            lb_noise = _noise({"noise": measure.count_noisy([lb["noise"]])}) if "noise" in lb else ""
            out.append(
                f"| {model} | {t} | {_spread(pp.get('prompt_tokens_per_s'))} | {_spread(lpp.get('samples'))} | "
                f"{_ratio(pp.get('median'), lpp.get('median'))} | {_spread(tg.get('gen_tokens_per_s'))} | "
                f"{_spread(ltg.get('samples'))} | {_ratio(tg.get('median'), ltg.get('median'))} | "
                f"{_spread(loads)} | {rss / _GiB:.2f} | {anon / _GiB:.2f} | "
                f"{_load((pp.get('loadavg_1m') or []) + (tg.get('loadavg_1m') or []))} | "
                f"{_f((lb.get('loadavg_before') or [None])[0])}→{_f((lb.get('loadavg_after') or [None])[0])} | "
                f"{_noise(pp, tg)} | {lb_noise} |"
            )
    return out + ["", f"*{NOISE_LEGEND}*", ""]


def _noise(*entries: dict) -> str:
    """The qrun bench runs' noise counts (pp and tg) added up, as a table cell."""
    counts = [e["noise"] for e in entries if e.get("noise")]
    if not counts:
        return ""
    return measure.noise_mark({k: sum(c[k] for c in counts) for k in ("samples", "noisy", "unknown")})


def _fraction(doc: dict) -> list[str]:
    out = [
        "## Decode speed against the memory-bandwidth ceiling",
        "",
        "ceiling = bandwidth (copy, median) / weight bytes read per token (all tensors but the token-embedding "
        "table); fraction = measured tg / ceiling.",
        "",
        "| model | threads | bytes/token GB | bandwidth GB/s | ceiling tok/s | qrun tg | qrun fraction "
        "| llama-bench tg | llama-bench fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, m in doc["models"].items():
        b, lb = m.get("bench") or {}, m.get("llama_bench") or {}
        per_token = b.get("weights_read_per_token_bytes")
        for t in sorted(b.get("tg", {}), key=int):
            bw = bandwidth_gb_s(doc, int(t))
            ceiling = bw * 1e9 / per_token if bw and per_token else None
            q, lcpp = b["tg"][t].get("median"), lb.get("tg", {}).get(t, {}).get("median")
            out.append(
                f"| {model} | {t} | {_f(per_token and per_token / 1e9)} | {_f(bw, '{:.1f}')} | "
                f"{_f(ceiling)} | {_f(q)} | {_ratio(q, ceiling)} | {_f(lcpp)} | {_ratio(lcpp, ceiling)} |"
            )
    return out + [""]


def _compute(doc: dict) -> list[str]:
    rows = doc.get("compute") or []
    if not rows:
        return []
    out = [
        "## Arithmetic peak (tools/perf/compute_peak.py: float32 SGEMM, GFLOP/s, median (best) of repeats)",
        "",
        "| threads | SGEMM GFLOP/s | BLAS | load avg |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {r['threads']} | {r['median_gflop_per_s']:.1f} ({r['best_gflop_per_s']:.1f}) | {r['blas']} | "
        f"{r['loadavg']} |"
        for r in rows
    ]
    out += [
        "",
        "## Prompt speed against the arithmetic peak",
        "",
        "achieved = prompt tok/s (pp512, median) x 2 FLOPs x weights multiplied per token (all but the "
        "token-embedding table); fraction = achieved / SGEMM GFLOP/s at the same threads. llama.cpp multiplies "
        "Q4 weights in int8, so this compares its int8 path with the measured float32 peak.",
        "",
        "| model | threads | weights (G) | qrun pp tok/s | achieved GFLOP/s | SGEMM GFLOP/s | qrun fraction "
        "| llama-bench pp tok/s | llama-bench fraction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    peak = {r["threads"]: r["median_gflop_per_s"] for r in rows}
    for model, m in doc["models"].items():
        # "<model> Q4_0" entries (--speed-quant) multiply the same weights as the model's own entry
        n = m.get("matmul_weights") or doc["models"].get(model.split(" ")[0], {}).get("matmul_weights")
        b, lb = m.get("bench") or {}, m.get("llama_bench") or {}
        for t in sorted(b.get("pp", {}), key=int):
            q, lcpp = b["pp"][t].get("median"), lb.get("pp", {}).get(t, {}).get("median")
            achieved = q * 2 * n / 1e9 if q and n else None
            achieved_l = lcpp * 2 * n / 1e9 if lcpp and n else None
            out.append(
                f"| {model} | {t} | {_f(n and n / 1e9)} | {_f(q)} | {_f(achieved, '{:.1f}')} | "
                f"{_f(peak.get(int(t)), '{:.1f}')} | {_ratio(achieved, peak.get(int(t)))} | {_f(lcpp)} | "
                f"{_ratio(achieved_l, peak.get(int(t)))} |"
            )
    return out + [""]


def render(doc: dict) -> str:
    lines = ["# Real-scale performance (python -m tools.perf.realscale)", ""]
    lines += (
        _machine(doc)
        + _bandwidth(doc)
        + _convert(doc)
        + _load_table(doc)
        + _speed(doc)
        + _fraction(doc)
        + _compute(doc)
    )
    lines += ["Commands: " + "; ".join(" ".join(r["argv"]) for r in doc.get("runs", [])), ""]
    return "\n".join(lines)
