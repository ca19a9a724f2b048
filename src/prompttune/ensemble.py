"""Ensembles: several artifacts for the same labels (other templates, label words, seeds, methods) whose class
probabilities are averaged at prediction time (as PET and LM-BFF average their prompts' models).

Artifacts trained on the same backbone share one copy of it in memory; one that carries its own fine-tuned backbone
loads it. Each member renders the input with its own template, so members may use different wordings and fields::

    from prompttune.ensemble import Ensemble
    ens = Ensemble.load(["runs/a", "runs/b", "runs/c"])
    ens.predict(["A triumph."])
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .errors import ArtifactError, ConfigError
from .verbalizer import prediction


def is_artifact(path) -> bool:
    from .artifact import PROMPT_JSON

    try:
        return Path(os.fspath(path)).joinpath(PROMPT_JSON).is_file()
    except (TypeError, OSError, ValueError):
        return False


class Ensemble:
    """PromptModels with the same labels; probabilities averaged (optionally weighted)."""

    task = "classification"  # it answers as a classification model does (prompttune.tasks)

    def __init__(self, models: Sequence, weights: Sequence[float] | None = None):
        models = list(models)
        if not models:
            raise ConfigError("an ensemble needs at least one model", where="ensemble", fix="give one or more artifact directories")
        other = [i for i, m in enumerate(models, 1) if m.task != self.task]
        if other:
            raise ConfigError(f"member {other[0]} is a {models[other[0] - 1].task} model; an ensemble averages class probabilities",
                              where="ensemble", fix="ensemble classification models only")
        labels = models[0].labels
        for i, m in enumerate(models[1:], 2):
            if list(m.labels) != list(labels):
                raise ArtifactError(f"member {i} predicts labels {m.labels}, member 1 predicts {labels}", where="ensemble",
                                    fix="ensemble artifacts trained for the same labels (in the same order)")
        if weights is None:
            weights = [1.0] * len(models)
        if len(weights) != len(models) or any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"weights {list(weights)} for {len(models)} models", where="ensemble",
                              fix="give one non-negative weight per model, not all zero")
        self.models = models
        self.weights = torch.tensor([float(w) for w in weights]) / sum(weights)

    @classmethod
    def load(cls, directories: Iterable, weights: Sequence[float] | None = None) -> "Ensemble":
        """Load artifacts, sharing one backbone between those trained on the same frozen model."""
        from .artifact import load, read_meta

        models, shared = [], {}
        for i, d in enumerate(directories, 1):
            meta = read_meta(d)
            if meta.get("task", "classification") != cls.task:
                raise ArtifactError(f"member {i} ({d}) is a {meta['task']} artifact; an ensemble averages class probabilities, so "
                                    "every member must be a classification artifact", where="ensemble",
                                    fix="ensemble classification artifacts only; run a generation artifact on its own")
            b = meta["backbone"]
            key = None if meta.get("trained_backbone") else (b.get("name"), b.get("family"), b.get("dtype", "float32"), b.get("fingerprint"))
            pm = load(d, backbone=shared.get(key)) if key in shared else load(d)
            if key is not None:
                shared.setdefault(key, pm.backbone)
            models.append(pm)
        return cls(models, weights)

    @property
    def labels(self) -> list[str]:
        return self.models[0].labels

    def predict_log_probs(self, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """(N, C) log of the weighted mean of the members' class probabilities."""
        probs = sum(w * m.predict_log_probs(rows, batch_size=batch_size, progress=progress).exp()
                    for w, m in zip(self.weights.tolist(), self.models))
        return probs.clamp_min(1e-30).log()

    def predict(self, inputs: Iterable, *, batch_size: int = 16) -> list[dict]:
        rows = []
        for i, x in enumerate(inputs):  # a bare string fills each member's one field, whatever its name
            row: dict = {}
            for m in self.models:
                row.update(m._as_row(x, i))
            rows.append(row)
        probs = self.predict_log_probs(rows, batch_size=batch_size).exp()
        return [prediction(self.labels, p) for p in probs]

    def evaluate(self, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16, progress: bool = False) -> dict:
        from .metrics import classification_metrics

        self.models[0].verbalizer.check_labels([r["label"] for r in rows], where="evaluation data")
        start = time.perf_counter()
        logp = self.predict_log_probs(rows, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - start
        y_true = self.models[0].labels_tensor(rows).tolist()
        m = classification_metrics(y_true, logp.argmax(-1).tolist(), self.labels)
        m["examples_per_second"] = len(rows) / seconds if seconds > 0 else None
        m["seconds"] = seconds
        m["members"] = len(self.models)
        return m


def evaluate_ensemble(directories, data_spec: str, *, columns=None, label_column="label", limit: int | None = None,
                      batch_size: int = 16, progress: bool = True) -> dict:
    """``pipeline.evaluate_artifact`` for an ensemble of artifact directories."""
    from .artifact import artifact_bytes
    from .data import load_rows

    ens = Ensemble.load(directories)
    rows = load_rows(data_spec, split="test", columns=columns, label_column=label_column)
    if limit:
        rows = rows[:limit]
    m = ens.evaluate(rows, batch_size=batch_size, progress=progress)
    m["artifact_bytes"] = sum(artifact_bytes(d) for d in directories)
    return {k: v for k, v in m.items() if k not in ("predictions", "probabilities")}
