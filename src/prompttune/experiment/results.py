"""An experiment's results: mean ± std over seeds per task x model x method x shots, McNemar's paired test of the
``compare`` method against every other one, ``results.json``, ``results.md`` and ``accuracy_vs_shots.png``.

The paired test uses what every cell records of its test rows (``correct`` in ``cell.json``): for one seed, the
compared method's cell and the other method's cell of the same task, model, shots and seed scored the same test rows,
so item i of one is item i of the other. Zero-shot, one cell per model, is paired with every seed. A pair counts as
a win (or loss) for the compared method when McNemar's exact two-sided p < 0.05, else as a tie.

``grid.merge`` lists earlier experiments of the same suite run with other seeds (their ``results.json``): their runs
and paired tests join this run's in the table, so seeds can be run in pieces (one a day, or one per machine) and
still give one table. :func:`read_earlier` checks them against the grid before anything runs (the same task, model
and method labels, the same compared method, no trainable cell that this grid runs too, typed values and no NaN); the
table refuses a task whose runs were scored on different numbers of test rows, and a cell in both (zero-shot, which
every piece runs) that scored differently. Beyond that, labels are all it can check: run the pieces from one grid file
that differs only in ``seeds``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..errors import ConfigError
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
    by = {record_key(r): r for r in records}
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
    if grid.earlier:
        lines += ["With the runs of earlier experiments of this suite (grid.merge): "
                  + ", ".join(f"{e['source']} (seeds {', '.join(map(str, e['seeds']))})" for e in grid.earlier) + ".", ""]
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


_RUN_KEYS = ("task", "model", "method", "shots", "seed", "accuracy", "macro_f1", "n")
_PAIR_KEYS = ("task", "model", "method", "shots", "seed", "accuracy", "other_accuracy", "p", "outcome")
_OPTIONAL = ("trainable_parameters", "seconds")  # the efficiency table's: null where a cell did not record them
_TYPES = {"trainable_parameters": (int, "a whole number"), "seconds": (float, "a number"),
          "task": (str, "text"), "model": (str, "text"), "method": (str, "text"), "outcome": (str, "text"),
          "shots": (int, "a whole number"), "seed": (int, "a whole number"), "n": (int, "a whole number"),
          "accuracy": (float, "a number"), "macro_f1": (float, "a number"), "other_accuracy": (float, "a number"), "p": (float, "a number")}


def _typed(v, kind) -> bool:
    if kind is str:
        return isinstance(v, str)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if kind is int:
        return isinstance(v, int) and v >= 0
    return math.isfinite(v)


def _problem(r, keys: tuple[str, ...]) -> str | None:
    """What is wrong with one record of an earlier results.json, or None."""
    if not isinstance(r, dict):
        return "not a mapping"
    for k in keys:
        if not _typed(r.get(k), _TYPES[k][0]):
            return f"{k!r} is missing or not {_TYPES[k][1]}"
    for k in _OPTIONAL:
        if r.get(k) is not None and not _typed(r[k], _TYPES[k][0]):
            return f"{k!r} is not {_TYPES[k][1]}"
    return None


def record_key(r: dict) -> tuple:
    """Where a run (or a paired test, by its other method) sits in the grid: task, model, method, shots, seed."""
    return r.get("task", ""), r["model"], r["method"], r["shots"], r["seed"]


def _no_constant(name: str):
    raise ValueError(name)


def read_earlier(path: str | Path, grid, where: str) -> dict:
    """An earlier experiment's ``runs`` and ``paired`` (its results.json), checked against ``grid``; see the module doc."""
    p = Path(path)
    f = p / RESULTS_JSON if p.is_dir() else p
    fix = "name the directory of a finished `prompttune experiment` of this suite (it holds results.json)"
    try:
        data = json.loads(f.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except OSError as e:
        raise ConfigError(f"{f} cannot be read ({e.strerror or e})", where=where, fix=fix) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise ConfigError(f"{f} is not JSON (results.json holds no NaN or Infinity)", where=where, fix=fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not isinstance(data.get("paired"), list):
        raise ConfigError(f"{f} is not an experiment's results.json (no `runs` and `paired` lists)", where=where, fix=fix)
    runs, pairs = data["runs"], data["paired"]
    for what, items, keys in (("runs", runs, _RUN_KEYS), ("paired", pairs, _PAIR_KEYS)):
        for i, r in enumerate(items):
            if bad := _problem(r, keys):
                raise ConfigError(f"{f}: {what}[{i}] is not a record of `prompttune experiment` ({bad})", where=where, fix=fix)
    axes = {"task": grid.tasks or [""], "model": grid.models, "method": grid.methods, "shots": sorted({c.shots for c in grid.cells})}
    mine = {(c.task, c.model, c.method, c.shots, c.seed) for c in grid.cells if c.shots}
    by = {}
    for r in runs:
        for axis, labels in axes.items():
            if r[axis] not in labels:
                raise ConfigError(f"{f} has a run of {axis} {r[axis]!r}, which this grid lacks ({', '.join(map(repr, labels))})",
                                  where=where, fix="merge only earlier runs of the same suite: the same tasks, models, methods, shots")
        if record_key(r) in mine:
            raise ConfigError(f"{f} already has {r.get('cell') or record_key(r)}, which this grid runs too", where=where,
                              fix=f"drop seed {r['seed']} from grid.seeds (it is done there), or that directory from grid.merge")
        by[record_key(r)] = r
    for x in pairs:
        ref = by.get(record_key({**x, "method": grid.compare}))
        if ref is None or ref["accuracy"] != x["accuracy"]:
            raise ConfigError(f"{f}'s paired tests are not of grid.compare ({grid.compare!r}) against the other methods", where=where,
                              fix="merge only earlier runs of the same suite with the same `compare`")
    return {"source": str(f), "runs": runs, "paired": pairs, "seeds": sorted({r["seed"] for r in runs if r["shots"]})}


def _merged(records: list[dict], pairs: list[dict], earlier: list[dict]) -> tuple[list[dict], list[dict]]:
    """This run's records and pairs, then the earlier experiments' ones for cells not run here."""
    runs, tests = list(records), list(pairs)
    have, tested = {record_key(r): r for r in runs}, {record_key(p) for p in tests}
    twice = []  # (earlier run, this run's run, source): a cell in both (zero-shot: one cell per model, whatever the seeds)
    for e in earlier:
        for r in e["runs"]:
            if (k := record_key(r)) in have:
                twice.append((r, have[k], e["source"]))
            else:
                runs.append(r)
                have[k] = r
        tests += [p for p in e["paired"] if record_key(p) not in tested]
        tested |= {record_key(p) for p in e["paired"]}
    sizes: dict[tuple, set] = {}
    for r in runs:
        if r.get("n") is not None:
            sizes.setdefault((r.get("task", ""), r["model"]), set()).add(r["n"])
    kept = "the cells run here are kept, so fixing grid.merge and running again costs nothing"
    for (task, model), ns in sizes.items():
        if len(ns) > 1:
            raise ConfigError(f"the runs of {task + ' / ' if task else ''}{model} were scored on different numbers of test rows "
                              f"({', '.join(map(str, sorted(ns)))})", where="grid.merge",
                              fix=f"merge only runs of the same suite (the same test split and test_size); {kept}")
    for r, here, source in twice:
        if r["accuracy"] != here["accuracy"]:
            raise ConfigError(f"{r.get('cell') or record_key(r)} scored {here['accuracy']:.4f} here and {r['accuracy']:.4f} in {source}: "
                              "that experiment ran another config or another prompttune", where="grid.merge",
                              fix=f"run its seeds again with this grid, or drop it from grid.merge; {kept}")
    return sorted(runs, key=lambda r: r["seed"]), sorted(tests, key=lambda p: p["seed"])  # stable: p per seed in seed order


def write_results(grid, records: list[dict], earlier: list[dict] | None = None) -> dict:
    pairs = paired(records, grid.compare) if grid.compare else []
    records, pairs = _merged(records, pairs, earlier or [])
    rows = summarise(records)
    tallies = tally(pairs)
    summary = {"source": grid.source, "cells": len(records), "table": rows, "paired": pairs, "tally": tallies,
               "runs": [{k: v for k, v in r.items() if k not in ("config", "correct")} for r in records]}
    if earlier:
        summary["merged"] = [e["source"] for e in earlier]
    write_json(grid.output / RESULTS_JSON, summary)
    atomic_write_text(grid.output / RESULTS_MD, _markdown(grid, rows, tallies, records) + "\n")
    atomic_write_bytes(grid.output / PLOT_PNG, _plot(grid, rows))
    summary["files"] = [str(grid.output / n) for n in (RESULTS_JSON, RESULTS_MD, PLOT_PNG)]
    return summary
