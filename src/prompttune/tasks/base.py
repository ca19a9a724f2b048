"""The task interface and its registry.

A task type knows, for its kind of work: which data a run reads and what makes it meaningless, how a config builds
the model, what the training loop's loss and dev metrics are, what a run writes, what its artifact records beyond
the common fields, and how an artifact is rebuilt and answers inputs. ``run_training`` is one function over it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from ..errors import ArtifactError, DataError, VerbalizerError
from ..template import Template

TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    TASKS[cls.name] = cls
    return cls


def task_type(name: str, *, where: str = "task") -> type["Task"]:
    cls = TASKS.get(name)
    if cls is None:
        raise ArtifactError(f"unknown task {name!r} (this version knows {', '.join(TASKS)})", where=where,
                            fix="upgrade prompttune if a newer version wrote it")
    return cls


def task_of(model) -> "Task":
    """The task type of a prompt model (its ``task`` class attribute), bound to it."""
    return task_type(model.task)(model)


class Task:
    """One kind of work. Class methods act on a config or an artifact's meta; an instance is bound to a model."""

    name: ClassVar[str]
    dev_metrics: ClassVar[tuple[str, ...]]  # what the trainer records of each dev evaluation (``loss`` always among them)
    artifact_metrics: ClassVar[tuple[str, ...]]  # test metrics copied into prompt.json

    def __init__(self, model):
        self.model = model

    # ---- a config: data and model ----------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """What the config alone shows to be unusable, before any data or model loads."""

    @classmethod
    def load_splits(cls, cfg) -> tuple[list[dict], list[dict], list[dict]]:
        raise NotImplementedError

    @classmethod
    def check_data(cls, cfg, splits: dict[str, list[dict]]) -> list[str]:
        """Raise for data that makes the run meaningless; return warnings for the rest."""
        raise NotImplementedError

    @classmethod
    def builder(cls, cfg, train_rows: Sequence[dict]) -> Callable[[], Any]:
        """A function that builds the configured model afresh (the run builds it again after sharded training)."""
        raise NotImplementedError

    # ---- what the training loop needs ------------------------------------------------------------
    def prepare(self, train_rows, dev_rows, cfg) -> None:
        """Check the rows against the model before the first step."""

    def targets(self, rows):
        raise NotImplementedError

    def loss(self, model, batch, y):
        """The batch's mean loss (through ``model``, which may be a distributed wrapper) and what it is a mean over."""
        raise NotImplementedError

    def evaluate_dev(self, rows, cfg) -> dict:
        raise NotImplementedError

    # ---- a run -----------------------------------------------------------------------------------
    def baseline(self, cfg, test: list[dict], *, progress: bool, log) -> dict | None:
        """The hand-written prompt untrained, on the same backbone (``zero_shot_baseline``), or None where it has no meaning."""
        return None

    def test(self, cfg, test: list[dict], *, progress: bool, log) -> dict:
        raise NotImplementedError

    def run_record(self, stage: Path, cfg, metrics: dict, zero: dict | None, test: list[dict]) -> tuple[dict, list[dict]]:
        """The task's part of metrics.json (per-example outputs taken out) and the samples for the report."""
        raise NotImplementedError

    def write_report(self, stage: Path, cfg, metrics: dict, samples: list[dict]) -> None:
        raise NotImplementedError

    def write_run(self, stage: Path, cfg, metrics: dict, zero: dict | None, result, test: list[dict], warnings: list[str],
                  t0: float) -> dict:
        """Everything a run writes, into ``stage`` (swapped in whole by the caller): artifact, metrics.json, report, config."""
        from ..artifact import artifact_bytes, write_artifact
        from ..config import dump_config
        from ..files import atomic_write_text, write_json

        write_artifact(self.model, stage, metrics=metrics or None, run=cfg)
        metrics, samples = self.run_record(stage, cfg, dict(metrics), zero, test)
        metrics["artifact_bytes"] = artifact_bytes(stage)
        metrics["trainable_parameters"] = self.model.num_trainable_parameters()
        if warnings:
            metrics["warnings"] = warnings
        if zero:
            metrics["zero_shot"] = zero
        if result:
            metrics["training"] = {"steps": result.steps, "epochs": result.epochs, "best_step": result.best_step,
                                   "best_dev": result.best_dev, "final_dev": result.final_dev, "dev_examples": result.dev_examples,
                                   "seconds": result.seconds, "examples_per_second": result.examples_per_second,
                                   "stopped_early": result.stopped_early, "refit": result.refit, "history": result.history}
        metrics["seconds_total"] = time.perf_counter() - t0
        self.finish_record(metrics, samples)
        write_json(stage / "metrics.json", metrics)
        if test:
            self.write_report(stage, cfg, metrics, samples)
        atomic_write_text(stage / "config.yaml", dump_config(cfg))
        return metrics

    def finish_record(self, metrics: dict, samples: list[dict]) -> None:
        """Last additions to metrics.json once the common fields are in."""

    # ---- artifacts -------------------------------------------------------------------------------
    def artifact_meta(self) -> dict:
        """What prompt.json records for this task beyond the common fields."""
        return {}

    @classmethod
    def check_meta(cls, meta: dict, where) -> None:
        """The task's fields of a prompt.json, checked before anything loads."""

    @classmethod
    def num_labels(cls, meta: dict) -> int | None:
        """The number of classes a backbone with a classification head needs for this artifact."""
        return None

    @classmethod
    def from_artifact(cls, meta: dict, backbone, method):
        """The model an artifact describes, on ``backbone``, with ``method`` (its tensors are loaded afterwards)."""
        raise NotImplementedError

    # ---- using a model -------------------------------------------------------------------------
    @classmethod
    def read_rows(cls, data_spec, *, columns=None, label_column: str = "label") -> list[dict]:
        """Evaluation rows of a file or built-in corpus (its test split)."""
        raise NotImplementedError

    def evaluate(self, rows: list[dict], *, batch_size: int, progress: bool) -> dict:
        """Held-out metrics of the model on ``rows``, per-example outputs left out."""
        raise NotImplementedError

    def answer(self, inputs: list, **options) -> list[dict]:
        """One JSON-ready answer per input (``prompttune predict``)."""
        raise NotImplementedError

    def show(self, x, answer: dict) -> str:
        """One answer as a line of text."""
        raise NotImplementedError

    @classmethod
    def summary(cls, metrics: dict) -> str:
        """The run's test metrics in one line (``prompttune train``)."""
        raise NotImplementedError

    @classmethod
    def eval_lines(cls, metrics: dict) -> list[str]:
        """Held-out metrics as lines of text (``prompttune eval``)."""
        raise NotImplementedError


def load_test(cfg, **kw) -> list[dict]:
    """The test rows a config names (its data.test's test split), the first data.test_size of them."""
    from .. import data as D

    if not cfg.data.test:
        return []
    test = D.open_rows(cfg.data.test, split="test", **kw)  # a large dataset: only the first test_size rows are read
    return list(test[: cfg.data.test_size] if cfg.data.test_size else test)


def check_splits(cfg, template: Template, splits: dict[str, list[dict]], *, labels: list[str] | None,
                 target: str | None = None, trains: bool = True) -> list[str]:
    """Everything about the data that would otherwise fail only after training, or pass with a meaningless result.
    Raises for what makes the run meaningless; returns warnings (logged, and kept in metrics.json) for the rest."""
    warnings: list[str] = []
    for name, rows in splits.items():
        where = f"data.{name}"
        for i, r in enumerate(rows):
            missing = [f for f in (*template.fields, *([target] if target else [])) if f not in r]
            if missing:
                raise DataError(f"row {i + 1} of the {name} data has no column {missing[0]!r} (it has {', '.join(sorted(r)) or 'none'})",
                                where=f"{where} ({getattr(cfg.data, name) or 'sampled'})",
                                fix=f"add the column, or map it with data.columns: {{{missing[0]}: YOUR_COLUMN}}")
        if labels is not None:
            unknown = sorted({str(r["label"]) for r in rows} - set(labels))
            if unknown:
                raise VerbalizerError(f"labels {unknown[:5]} occur in the {name} data but not in the verbalizer (which has {labels})",
                                      where=f"{where} ({getattr(cfg.data, name) or 'sampled'})",
                                      fix="add them to prompt.verbalizer, or fix the label column (data.label_column)")
    train = splits.get("train") or []
    if labels is not None and trains and train:
        seen = {str(r["label"]) for r in train}
        if len(seen) < 2:
            raise DataError(f"every training example has the label {next(iter(seen))!r}: a prompt trained on one class learns "
                            "to answer it always", where=f"data.train ({cfg.data.train})",
                            fix="train on examples of at least two labels (check data.label_column and the file)")
        absent = [lb for lb in labels if lb not in seen]
        if absent:
            warnings.append(f"the labels {absent} have no training example; the prompt is trained without them "
                            "(data.train, or data.shots_per_class sampling from it)")
    key = (lambda r: tuple(str(r.get(f)) for f in template.fields))
    train_keys = {key(r) for r in train}
    for name in ("dev", "test"):
        rows = splits.get(name) or []
        copies = sum(key(r) in train_keys for r in rows)
        if copies:
            warnings.append(f"{copies} of {len(rows)} {name} examples are copies of training examples (same input); "
                            f"{name} scores on them are optimistic: deduplicate the files")
    return warnings
