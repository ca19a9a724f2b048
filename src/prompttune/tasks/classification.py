"""Classification (single sentence and sentence pair): a template with a mask slot, a verbalizer, class losses and
accuracy / macro-F1 (or an encoder + head's logits, for a method that trains a classification head)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data as D
from ..template import Template
from .base import Task, check_splits, load_test, register_task


@register_task
class ClassificationTask(Task):
    name = "classification"
    dev_metrics = ("accuracy", "macro_f1", "loss")
    artifact_metrics = ("accuracy", "macro_f1", "n")

    # ---- a config ------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        from ..verbalizer import Verbalizer

        Verbalizer.from_spec(cfg.prompt.verbalizer).check_classes(where="prompt.verbalizer")

    @classmethod
    def load_splits(cls, cfg):
        """Train, dev and test rows as the config asks (few-shot sampled, with a seeded dev split)."""
        dc = cfg.data
        kw = dict(columns=dc.columns or None, label_column=dc.label_column)
        pool = D.open_rows(dc.train, split="train", **kw)  # a large dataset stays in Arrow: only the drawn rows are read
        if dc.dev:
            dev = D.load_rows(dc.dev, split="dev", **kw)
        if dc.shots_per_class:
            labels = D.row_labels(pool)
            taken = D.few_shot_indices(labels, dc.shots_per_class, dc.seed)
            train = [dict(pool[i]) for i in taken]
            if not dc.dev:  # drawn from the rows the training sample left (what a small pool has), else carved from train
                dev = [dict(pool[i]) for i in D.few_shot_indices(labels, dc.dev_shots_per_class or dc.shots_per_class,
                                                                 dc.seed + 1, exclude=frozenset(taken), strict=False)]
                if not dev:
                    train, dev = D.split_dev(train, seed=dc.seed)
        else:
            train = list(pool)
            if not dc.dev:
                train, dev = D.split_dev(train, seed=dc.seed)
        return train, dev, load_test(cfg, **kw)

    @classmethod
    def check_data(cls, cfg, splits):
        from ..methods import METHODS
        from ..verbalizer import Verbalizer

        template = Template(cfg.prompt.template)
        if splits["train"]:
            template.check(needs_mask=False, columns=splits["train"][0].keys())
        return check_splits(cfg, template, splits, labels=Verbalizer.from_spec(cfg.prompt.verbalizer).labels,
                            trains=METHODS[cfg.method.name].trainable)

    @classmethod
    def build(cls, cfg, backbone=None, *, method: str | None = None):
        """The configured PromptModel (on ``backbone`` if given; ``method`` replaces the configured one, with its defaults)."""
        from ..backbone import Backbone
        from ..methods import METHODS
        from ..model import PromptModel
        from ..verbalizer import Verbalizer

        name = method or cfg.method.name
        verbalizer = Verbalizer.from_spec(cfg.prompt.verbalizer)
        if backbone is None:
            mc = cfg.model
            backbone = Backbone.load(mc.name, family=mc.family, num_labels=len(verbalizer.labels), task_head=METHODS[name].needs_task_head,
                                     dtype=mc.dtype, gguf_file=mc.gguf_file, revision=mc.revision, trust_remote_code=mc.trust_remote_code)
        return PromptModel(backbone, cfg.prompt.template, verbalizer, name, method_options=cfg.method.options() if method is None else None,
                           max_length=cfg.prompt.max_length, padding_side=cfg.prompt.padding_side, seed=cfg.train.seed)

    @classmethod
    def builder(cls, cfg, train_rows):
        demos = None
        if cfg.prompt.demonstrations is not None:
            from ..demonstrations import Demonstrations

            demos = Demonstrations.from_config(cfg.prompt.demonstrations, train_rows)

        def make():
            pm = cls.build(cfg)
            if demos is not None:
                pm.set_demonstrations(demos)
            return pm

        return make

    # ---- the training loop ---------------------------------------------------------------------
    def prepare(self, train_rows, dev_rows, cfg) -> None:
        self.model.verbalizer.check_labels([r["label"] for r in train_rows], where="training data")
        if dev_rows:
            self.model.verbalizer.check_labels([r["label"] for r in dev_rows], where="dev data")
        self.model.verbalizer.calibration = None  # calibration is recomputed for the tuned prompt, never trained through

    def targets(self, rows) -> torch.Tensor:
        return self.model.labels_tensor(rows)

    def loss(self, model, batch, y):
        """The batch's mean class loss and what it is a mean over (here rows)."""
        logp = model(batch, calibrate=False)
        return F.nll_loss(logp.float(), y.to(logp.device)), len(y)

    @torch.no_grad()
    def evaluate_dev(self, rows, cfg) -> dict:
        from ..metrics import classification_metrics

        pm = self.model
        logp = pm.predict_log_probs(rows, batch_size=cfg.eval_batch_size, calibrate=False)
        y = pm.labels_tensor(rows)
        m = classification_metrics(y.tolist(), logp.argmax(-1).tolist(), pm.labels)
        m["loss"] = float(F.nll_loss(logp, y))
        return m

    # ---- a run ---------------------------------------------------------------------------------
    def baseline(self, cfg, test, *, progress, log):
        from ..model import PromptModel

        pm = self.model
        if not pm.backbone.family.uses_verbalizer or Template(cfg.prompt.template).has_soft:
            return None
        demos = None
        if pm.demonstrations is not None:
            from ..demonstrations import Demonstrations

            demos = Demonstrations.from_dict(pm.demonstrations.to_dict())
        base = PromptModel(pm.backbone, cfg.prompt.template, cfg.prompt.verbalizer, "zero-shot", max_length=cfg.prompt.max_length,
                           padding_side=cfg.prompt.padding_side, demonstrations=demos)
        if cfg.prompt.calibrate:
            base.calibrate()
        zero = base.evaluate(test, batch_size=cfg.train.eval_batch_size, progress=progress)
        log(f"zero-shot accuracy: {zero['accuracy']:.4f} on {len(test)}")
        return {k: v for k, v in zero.items() if k not in ("predictions", "probabilities")}

    def test(self, cfg, test, *, progress, log):
        if cfg.prompt.calibrate:
            self.model.calibrate()
        if not test:
            return {}
        m = self.model.evaluate(test, batch_size=cfg.train.eval_batch_size, progress=progress)
        log(f"test accuracy: {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {len(test)}")
        return m

    def run_record(self, stage, cfg, metrics, zero, test):
        pm = self.model
        samples = []
        if test and "predictions" in metrics:
            write_predictions(stage, pm.labels, test, metrics)
            fields = pm.template.fields
            samples = [{"text": " | ".join(test[i][f] for f in fields), "gold": test[i]["label"],
                        "predicted": pm.labels[metrics["predictions"][i]], "probability": round(metrics["probabilities"][i], 4)}
                       for i in range(min(10, len(test)))]
        return {k: v for k, v in metrics.items() if k not in ("predictions", "probabilities")}, samples

    def write_report(self, stage, cfg, metrics, samples):
        from ..report import write_report

        write_report(stage, metrics, title=f"prompttune: {self.model.method.name} on {cfg.model.name}",
                     details={"config": cfg.model_dump(mode="json")}, samples=samples)

    # ---- artifacts -----------------------------------------------------------------------------
    def artifact_meta(self) -> dict:
        pm = self.model
        meta = {"verbalizer": pm.verbalizer.to_dict()}
        if pm.demonstrations is not None:
            meta["demonstrations"] = pm.demonstrations.to_dict()
        return meta

    @classmethod
    def check_meta(cls, meta, where) -> None:
        from ..artifact import check_verbalizer_meta

        check_verbalizer_meta(meta["verbalizer"], where)

    @classmethod
    def num_labels(cls, meta):
        return len(meta["verbalizer"]["words"])

    @classmethod
    def from_artifact(cls, meta, backbone, method):
        from ..model import PromptModel
        from ..verbalizer import Verbalizer

        pm = PromptModel(backbone, meta["template"], Verbalizer.from_dict(meta["verbalizer"]), method,
                         max_length=meta.get("max_length", 256), padding_side=meta.get("padding_side", "right"), init=False)
        if meta.get("demonstrations"):
            from ..demonstrations import Demonstrations

            pm.set_demonstrations(Demonstrations.from_dict(meta["demonstrations"]))
        return pm

    # ---- using a model -------------------------------------------------------------------------
    @classmethod
    def read_rows(cls, data_spec, *, columns=None, label_column="label"):
        return D.load_rows(data_spec, split="test", columns=columns, label_column=label_column)

    def evaluate(self, rows, *, batch_size, progress):
        m = self.model.evaluate(rows, batch_size=batch_size, progress=progress)
        return {k: v for k, v in m.items() if k not in ("predictions", "probabilities")}

    def answer(self, inputs, **options):
        if options:
            from ..errors import ConfigError

            raise ConfigError(f"decoding options {sorted(options)} apply to generation artifacts; this one classifies",
                              where="predict", fix="drop --max-new-tokens / --num-beams / --sample / --stop")
        return self.model.predict(inputs)

    @classmethod
    def summary(cls, m):
        return f"accuracy {m.get('accuracy', float('nan')):.4f}  macro-F1 {m.get('macro_f1', float('nan')):.4f}"

    @classmethod
    def eval_lines(cls, m):
        return [f"n={m['n']}  accuracy={m['accuracy']:.4f}  macro-F1={m['macro_f1']:.4f}  {m['examples_per_second']:.1f} examples/s",
                *(f"  {label:>16}: precision {pc['precision']:.3f}  recall {pc['recall']:.3f}  f1 {pc['f1']:.3f}  support {pc['support']}"
                  for label, pc in m["per_class"].items())]

    def show(self, x, answer):
        probs = "  ".join(f"{k}={v:.3f}" for k, v in answer["probabilities"].items())
        shown = x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
        return f"{answer['label']:>12}  ({probs})  {shown[:100]}"


def write_predictions(directory, labels, test, metrics) -> None:
    """``predictions.jsonl``: one line per test row, in order (gold, predicted, its probability): what a paired test
    between two runs on the same test rows (``prompttune experiment``) or an error analysis reads."""
    from ..files import atomic_write_text

    lines = [json.dumps({"index": i, "gold": row["label"], "predicted": labels[p], "probability": round(float(q), 6)},
                        ensure_ascii=False) for i, (row, p, q) in enumerate(zip(test, metrics["predictions"], metrics["probabilities"]))]
    atomic_write_text(Path(directory) / "predictions.jsonl", "\n".join(lines) + "\n")
