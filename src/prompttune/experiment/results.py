"""An experiment's results: mean ± std over seeds per task x model x method x shots, McNemar's paired test of the
``compare`` method against every other one, ``results.json``, ``results.md`` and ``accuracy_vs_shots.png``.

The paired test uses what every cell records of its test rows (``correct`` in ``cell.json``): for one seed, the
compared method's cell and the other method's cell of the same task, model, shots and seed scored the same test rows,
so item i of one is item i of the other. Zero-shot, one cell per model, is paired with every seed. A pair counts as
a win (or loss) for the compared method when McNemar's exact two-sided p < 0.05, else as a tie.
"""

from __future__ import annotations

import math
import statistics

from ..files import atomic_write_bytes, atomic_write_text, write_json
from ..metrics import mcnemar
from ..report import md_table

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_PNG = "accuracy_vs_shots.png"
ALPHA = 0.05  # a paired difference counts as a win or a loss below this p


def summarise(records: list[dict]) -> list[dict]:
    """Mean and (population) standard deviation over seeds per task x model x method x shots."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("task", ""), r["model"], r["method"], r["shots"]), []).append(r)
    rows = []
    for (task, model, method, shots), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        f1 = [r["macro_f1"] for r in rs]
        rows.append({"task": task, "model": model, "method": method, "shots": shots, "seeds": [r["seed"] for r in rs],
                     "runs": len(rs), "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.pstdev(acc),
                     "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": statistics.pstdev(f1), "accuracy": acc})
    return rows


def paired(records: list[dict], compare: str) -> list[dict]:
    """McNemar's test of method ``compare`` against each other method, per task x model x shots x seed."""
    by = {(r.get("task", ""), r["model"], r["method"], r["shots"], r["seed"]): r for r in records}
    out = []
    for (task, model, method, shots, seed), ref in by.items():
        if method != compare or not ref.get("correct"):
            continue
        for other in dict.fromkeys(r["method"] for r in records if r["method"] != compare):
            o = by.get((task, model, other, shots, seed)) or by.get((task, model, other, 0, 0))
            if o is None or not o.get("correct") or len(o["correct"]) != len(ref["correct"]):
                continue
            t = mcnemar([ch == "1" for ch in ref["correct"]], [ch == "1" for ch in o["correct"]])
            outcome = "tie" if t["p"] >= ALPHA or t["b"] == t["c"] else ("win" if t["b"] > t["c"] else "loss")
            out.append({"task": task, "model": model, "method": other, "shots": shots, "seed": seed,
                        "accuracy": ref["accuracy"], "other_accuracy": o["accuracy"], **t, "outcome": outcome})
    return out


def tally(pairs: list[dict]) -> list[dict]:
    """Wins / ties / losses of the compared method and its mean accuracy difference, per task x model x other x shots."""
    groups: dict[tuple, list[dict]] = {}
    for p in pairs:
        groups.setdefault((p["task"], p["model"], p["method"], p["shots"]), []).append(p)
    return [{"task": t, "model": m, "method": o, "shots": k, "pairs": len(ps),
             "wins": sum(p["outcome"] == "win" for p in ps), "ties": sum(p["outcome"] == "tie" for p in ps),
             "losses": sum(p["outcome"] == "loss" for p in ps),
             "difference_mean": statistics.fmean(p["accuracy"] - p["other_accuracy"] for p in ps),
             "p": [p["p"] for p in ps]} for (t, m, o, k), ps in groups.items()]


def _mean_std(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"{r['accuracy_mean']:.3f}" if r["shots"] == 0 else f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} ({r['runs']})"


def _markdown(grid, rows: list[dict], tallies: list[dict], records: list[dict]) -> str:
    shots = sorted({r["shots"] for r in rows if r["shots"]})
    by = {(r["task"], r["model"], r["method"], r["shots"]): r for r in rows}
    lines = [f"# Experiment: {grid.source}", "",
             "Test accuracy, mean ± std over seeds (population std; number of seeds in brackets). "
             "Zero-shot trains nothing and is the same for every sample, so it is one run per model.", ""]
    tasks = grid.tasks or [""]
    if grid.tasks:  # a suite: one table, a row per task x model, a column per method
        others = [m for m in grid.methods if m != grid.compare]
        for k in shots:
            head = ["task", "model", *grid.methods]
            if grid.compare:
                head += [f"{grid.compare} vs {m} (W/T/L)" for m in others]
            table = []
            for t in tasks:
                for model in grid.models:
                    row = [t, model, *[_mean_std(by.get((t, model, m, k)) or by.get((t, model, m, 0))) for m in grid.methods]]
                    if grid.compare:
                        tl = {x["method"]: x for x in tallies if (x["task"], x["model"], x["shots"]) == (t, model, k)}
                        row += [f"{x['wins']}/{x['ties']}/{x['losses']}" if (x := tl.get(m)) else "—" for m in others]
                    table.append(row)
            lines += [f"## {k} per class", "", md_table(head, table, ["l", "l"] + ["r"] * (len(head) - 2)), ""]
        if grid.compare:
            lines += [f"W/T/L: seeds where {grid.compare} is significantly more accurate / not significantly different / "
                      f"significantly less accurate on the same test rows (McNemar's exact test, p < {ALPHA}).", ""]
        lines += _efficiency(grid, records)
    for t in tasks:
        for model in grid.models:
            lines += [f"## {t + ' / ' if t else ''}{model}", ""]
            table = [[m, *[_mean_std(by.get((t, model, m, k)) or by.get((t, model, m, 0))) for k in shots]] for m in grid.methods]
            lines += [md_table(["method", *[f"{k} per class" for k in shots]], table, ["l"] + ["r"] * len(shots)), ""]
            mine = [x for x in tallies if (x["task"], x["model"]) == (t, model)]
            if mine:
                lines += [f"Paired against {grid.compare} (McNemar's exact test on the same test rows, per seed):", "",
                          md_table(["method", "shots", f"{grid.compare} − method", "W/T/L", "p per seed"],
                                   [[x["method"], str(x["shots"]), f"{x['difference_mean']:+.3f}",
                                     f"{x['wins']}/{x['ties']}/{x['losses']}", ", ".join(f"{p:.3g}" for p in x["p"])] for x in mine],
                                   ["l", "r", "r", "r", "l"]), ""]
    return "\n".join(lines)


def _efficiency(grid, records: list[dict]) -> list[str]:
    """Trainable parameters and wall seconds per cell (training and testing), per method over every task and seed."""
    table = []
    for m in grid.methods:
        rs = [r for r in records if r["method"] == m]
        params = sorted({r.get("trainable_parameters") or 0 for r in rs})
        secs = [r["seconds"] for r in rs if r.get("seconds") is not None]
        table.append([m, " / ".join(f"{p:,}" for p in params) or "—",
                      f"{statistics.median(secs):.0f}" if secs else "—", str(len(rs))])
    return ["Efficiency (every task and seed; seconds on the machine that ran the cells, train + test, side by side):", "",
            md_table(["method", "trainable parameters", "seconds per cell (median)", "cells"], table, ["l", "r", "r", "r"]), ""]


def _plot(grid, rows: list[dict]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(t, m) for t in (grid.tasks or [""]) for m in grid.models]
    cols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.5 * cols, 4 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    shots = sorted({r["shots"] for r in rows if r["shots"]})
    for j, (task, model) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, j + 1)
        for i, method in enumerate(grid.methods):
            rs = sorted((r for r in rows if (r["task"], r["model"], r["method"]) == (task, model, method)), key=lambda r: r["shots"])
            if not rs:
                continue
            color = f"C{i}"
            if rs[0]["shots"] == 0:
                ax.axhline(rs[0]["accuracy_mean"], color=color, linestyle="--", label=method)
            else:
                ax.errorbar([r["shots"] for r in rs], [r["accuracy_mean"] for r in rs], yerr=[r["accuracy_std"] for r in rs],
                            marker="o", capsize=4, color=color, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots or [1])
        ax.set_xticklabels([str(k) for k in shots] or ["1"])
        ax.set_xlabel("training examples per class")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.set_title(f"{task} / {model}" if task else model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_results(grid, records: list[dict]) -> dict:
    rows = summarise(records)
    pairs = paired(records, grid.compare) if grid.compare else []
    tallies = tally(pairs)
    summary = {"source": grid.source, "cells": len(records), "table": rows, "paired": pairs, "tally": tallies,
               "runs": [{k: v for k, v in r.items() if k not in ("config", "correct")} for r in records]}
    write_json(grid.output / RESULTS_JSON, summary)
    atomic_write_text(grid.output / RESULTS_MD, _markdown(grid, rows, tallies, records) + "\n")
    atomic_write_bytes(grid.output / PLOT_PNG, _plot(grid, rows))
    summary["files"] = [str(grid.output / n) for n in (RESULTS_JSON, RESULTS_MD, PLOT_PNG)]
    return summary
