"""The report's PNG plots: accuracy against generation speed (bubble = peak memory), speed against threads, and KL
divergence per quant.

Each plot function takes plain row dicts and returns the exact series it handed to matplotlib, so tests check the
numbers drawn rather than pixels. Figures are drawn with matplotlib's Agg canvas directly (no pyplot: no global
figure state, no GUI backend, nothing picked from the environment) and written atomically (qrun.fsutil).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qrun.fsutil import atomic_open
from qrun.runner import machine as machine_mod

_MIB = 1024 * 1024
# Marker area of the largest memory bubble, in points^2; the others scale by area (area ~ peak RSS).
MAX_BUBBLE_AREA_PT2 = 2000.0
_DPI = 100
# PNG metadata without matplotlib's version in it: the same results draw the same bytes after an upgrade too
_PNG_METADATA = {"Software": None}


def plot_rows(docs: list[dict]) -> list[dict]:
    """One plain row per finished run of the results documents: machine, model, quant, threads, gen tok/s,
    accuracy, peak memory. Runs that did not finish are left out: their medians cover only part of the suite."""
    labels = [machine_mod.label(doc.get("machine", {})) for doc in docs]
    many = len(set(labels)) > 1
    rows = []
    for label, doc in zip(labels, docs):
        for run in doc.get("runs", []):
            if run.get("status") != "ok":
                continue
            summary = run.get("summary") or {}
            rows.append(
                {
                    "machine": label if many else None,
                    "model": run["model"],
                    "quant": run["quant"],
                    "threads": (run.get("settings") or {}).get("n_threads"),
                    "gen_tokens_per_s": summary.get("gen_tokens_per_s"),
                    "accuracy": summary.get("accuracy"),
                    "peak_rss_bytes": run.get("peak_rss_bytes"),
                }
            )
    return rows


def _name(row: dict) -> str:
    return f"{row['model']} {row['quant']}" + (f" @ {row['machine']}" if row.get("machine") else "")


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI, metadata=_PNG_METADATA)


def plot_accuracy_speed(rows: list[dict], path: str | Path) -> dict | None:
    """Bubble chart: accuracy (y) against median generation tok/s (x), bubble area proportional to peak RSS.

    One bubble per model and quant (and machine): of several thread counts, the fastest run's. Rows lacking
    any of the three numbers are left out; None (nothing drawn, no file) when no row has them all.

    Returns:
        {"x": tok/s, "y": accuracy, "peak_rss_bytes": [...], "sizes": marker areas in pt^2, "labels": [...]}.
    """
    best: dict[str, dict] = {}
    for row in rows:
        if None in (row.get("gen_tokens_per_s"), row.get("accuracy"), row.get("peak_rss_bytes")):
            continue
        name = _name(row)
        if name not in best or row["gen_tokens_per_s"] > best[name]["gen_tokens_per_s"]:
            best[name] = row
    if not best:
        return None
    chosen = list(best.values())
    largest = max(r["peak_rss_bytes"] for r in chosen) or 1
    series = {
        "x": [r["gen_tokens_per_s"] for r in chosen],
        "y": [r["accuracy"] for r in chosen],
        "peak_rss_bytes": [r["peak_rss_bytes"] for r in chosen],
        "sizes": [MAX_BUBBLE_AREA_PT2 * r["peak_rss_bytes"] / largest for r in chosen],
        "labels": [f"{name} ({r['peak_rss_bytes'] / _MIB:.0f} MiB)" for name, r in best.items()],
    }
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    for x, y, size, label in zip(series["x"], series["y"], series["sizes"], series["labels"]):
        # one call per bubble: its own colour, named in the legend (labels beside bubbles collide when they are close)
        ax.scatter([x], [y], s=[size], alpha=0.5, edgecolors="black", linewidths=0.8, label=label)
    legend = ax.legend(fontsize=8, loc="upper left", title="model quant (peak RSS)", title_fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([60])  # type: ignore[union-attr]  # PathCollection handles: one size for the key
    ax.set_xlabel("generation speed, tokens/s (median)")
    ax.set_ylabel("accuracy (mean score 0..1)")
    ax.set_ylim(-0.12, 1.25)  # room for the largest bubbles at 0 and 1, and for the legend above them
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlim(0, max(series["x"]) * 1.35 or 1)
    ax.set_title("Accuracy against speed; bubble area = peak RSS")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))
    return series


def plot_threads(rows: list[dict], path: str | Path) -> dict | None:
    """Median generation tok/s against thread count, one line per model and quant (and machine).

    None (nothing drawn) unless some model and quant was measured at two thread counts or more.

    Returns:
        {"series": [{"label", "x": threads ascending, "y": tok/s}]}.
    """
    lines: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get("threads") is None or row.get("gen_tokens_per_s") is None:
            continue
        lines.setdefault(_name(row), {})[row["threads"]] = row["gen_tokens_per_s"]
    if not any(len(points) > 1 for points in lines.values()):
        return None
    series = [
        {"label": label, "x": sorted(points), "y": [points[t] for t in sorted(points)]}
        for label, points in lines.items()
    ]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for label, points in lines.items():
        threads = sorted(points)
        ax.plot(threads, [points[t] for t in threads], marker="o", label=label)
    ax.set_xticks(sorted({t for points in lines.values() for t in points}))
    ax.set_xlabel("threads (n_threads)")
    ax.set_ylabel("generation speed, tokens/s (median)")
    ax.set_ylim(bottom=0)
    ax.set_title("Generation speed against threads")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    return {"series": series}


def plot_kl(rows: list[dict], path: str | Path) -> dict | None:
    """KL divergence from the unquantized model per quant: one bar group per quant, one bar per model (height =
    mean KL), with each row's p99 KL as a dot above its bar when rows carry `kl_p99`.

    Args:
        rows: plain dicts with model, quant, kl_mean and optionally kl_p99 (one per model and quant; a later
            row for the same pair replaces an earlier one).

    Returns:
        {"quants": x order, "series": [{"label": model, "quants", "kl_mean", "kl_p99"}]}; None when no row has
        a kl_mean.
    """
    by_model: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row.get("kl_mean") is None:
            continue
        by_model.setdefault(row["model"], {})[row["quant"]] = row
    if not by_model:
        return None
    quants = list(dict.fromkeys(q for rows_of in by_model.values() for q in rows_of))
    series = [
        {
            "label": model,
            "quants": list(rows_of),
            "kl_mean": [r["kl_mean"] for r in rows_of.values()],
            "kl_p99": [r.get("kl_p99") for r in rows_of.values()],
        }
        for model, rows_of in by_model.items()
    ]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    width = 0.8 / len(by_model)
    for i, (model, rows_of) in enumerate(by_model.items()):
        xs = [quants.index(q) + (i - (len(by_model) - 1) / 2) * width for q in rows_of]
        bars = ax.bar(xs, [r["kl_mean"] for r in rows_of.values()], width=width, label=f"{model} mean")
        p99 = [(x, r["kl_p99"]) for x, r in zip(xs, rows_of.values()) if r.get("kl_p99") is not None]
        if p99:
            ax.scatter(
                [x for x, _ in p99], [v for _, v in p99], marker="_", s=200, color=bars.patches[0].get_facecolor()
            )
    values = [
        r[key]
        for rows_of in by_model.values()
        for r in rows_of.values()
        for key in ("kl_mean", "kl_p99")
        if r.get(key) is not None
    ]
    if all(v > 0 for v in values):  # quants differ by orders of magnitude; a zero (the reference) needs linear
        ax.set_yscale("log")
    ax.set_xticks(range(len(quants)), quants)
    ax.set_xlabel("quant")
    ax.set_ylabel("KL divergence from the unquantized model (nats/token)")
    ax.set_title("KL per quant: bars = mean, dashes = p99")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    return {"quants": quants, "series": series}


ACCURACY_SPEED_PNG = "accuracy-vs-speed.png"
THREADS_PNG = "speed-vs-threads.png"
KL_PNG = "kl-per-quant.png"
PLOT_NAMES = (ACCURACY_SPEED_PNG, THREADS_PNG, KL_PNG)


def write_plots(docs: list[dict], out_dir: str | Path, *, quality_rows: list[dict] | None = None) -> list[dict]:
    """Draw every plot the results support into out_dir, and delete a plot of an earlier report there that these
    results no longer support (report.md embeds only what was drawn; a leftover would show other results).

    Args:
        quality_rows: KL results (model, quant, kl_mean, kl_p99) to draw per quant, when there are any.

    Returns:
        [{"title", "file": Path, "series"}] of the plots written, in the order the report shows them.
    """
    out_dir = Path(out_dir)
    rows = plot_rows(docs)
    drawn = []
    for title, name, draw, data in (
        ("Accuracy against generation speed (bubble area = peak RSS)", ACCURACY_SPEED_PNG, plot_accuracy_speed, rows),
        ("Generation speed against threads", THREADS_PNG, plot_threads, rows),
        ("KL divergence per quant", KL_PNG, plot_kl, quality_rows or []),
    ):
        series = draw(data, out_dir / name)
        if series is not None:
            drawn.append({"title": title, "file": out_dir / name, "series": series})
        else:
            (out_dir / name).unlink(missing_ok=True)
    return drawn
