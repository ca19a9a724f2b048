"""Generation (summarization, translation): a source template and a target field; teacher-forced training on the
target tokens, selection on dev loss, ROUGE / BLEU / chrF on generated text."""

from __future__ import annotations

import random

from .. import data as D
from ..errors import ArtifactError, ConfigError, validation_summary
from ..template import Template
from .base import Task, check_splits, load_test, register_task


@register_task
class GenerationTask(Task):
    name = "generation"
    dev_metrics = ("loss",)
    artifact_metrics = ("n", "rouge1", "rouge2", "rougeL", "bleu", "chrf")

    # ---- a config ------------------------------------------------------------------------------
    @classmethod
    def load_splits(cls, cfg):
        """Train, dev and test rows. Train is shuffled with data.seed; dev is data.dev or the first data.dev_size shuffled
        rows (never trained on); train is data.train_size of the rest (or all of it)."""
        dc = cfg.data
        kw = dict(columns=dc.columns or None, label_column=dc.label_column, require_label=False)
        pool = D.open_rows(dc.train, split="train", **kw)  # a large dataset stays in Arrow: only the rows taken are read
        order = list(range(len(pool)))
        random.Random(dc.seed).shuffle(order)  # the permutation shuffling the rows themselves would make
        if dc.dev:
            dev = D.load_rows(dc.dev, split="dev", **kw)
        else:
            take = min(dc.dev_size, max(len(order) - 1, 0))
            dev, order = [pool[i] for i in order[:take]], order[take:]
        train = [pool[i] for i in (order[: dc.train_size] if dc.train_size else order)]
        return train, dev, load_test(cfg, **kw)

    @classmethod
    def check_data(cls, cfg, splits):
        template = Template(cfg.prompt.template)
        for name in ("train", "test"):
            if splits[name]:
                template.check_generation(cfg.prompt.target, columns=splits[name][0].keys(), where=f"prompt.template (data.{name})")
        return check_splits(cfg, template, splits, labels=None, target=cfg.prompt.target)

    @classmethod
    def build(cls, cfg, backbone=None, *, method: str | None = None):
        """The configured GenerationModel (on ``backbone`` if given; ``method`` replaces the configured one)."""
        from ..backbone import Backbone
        from ..generation import GenerationModel

        if backbone is None:
            mc = cfg.model
            backbone = Backbone.load(mc.name, family=mc.family, dtype=mc.dtype, gguf_file=mc.gguf_file, revision=mc.revision,
                                     trust_remote_code=mc.trust_remote_code)
        gm = GenerationModel(backbone, cfg.prompt.template, cfg.prompt.target, method or cfg.method.name,
                             method_options=cfg.method.options() if method is None else None, max_length=cfg.prompt.max_length,
                             max_target_length=cfg.prompt.max_target_length, seed=cfg.train.seed)
        gm.generation = cfg.generation.model_copy()
        return gm

    @classmethod
    def builder(cls, cfg, train_rows):
        return lambda: cls.build(cfg)

    # ---- the training loop ---------------------------------------------------------------------
    def prepare(self, train_rows, dev_rows, cfg) -> None:
        if cfg.metric != "loss":
            raise ConfigError(f"train.metric {cfg.metric!r} is a classification metric; generation selects on dev loss",
                              where="train.metric", fix="set train.metric: loss")
        self.model.check_targets(train_rows, "training data")
        if dev_rows:
            self.model.check_targets(dev_rows, "dev data")

    def targets(self, rows):
        import torch

        return torch.zeros(len(rows))  # the targets travel inside the batch

    def loss(self, model, batch, y):
        """Mean cross-entropy per target token, and the number of target tokens."""
        return model(batch), batch.n_targets

    def evaluate_dev(self, rows, cfg) -> dict:
        return {"loss": self.model.loss_on(rows, batch_size=cfg.eval_batch_size)}

    # ---- a run ---------------------------------------------------------------------------------
    def baseline(self, cfg, test, *, progress, log):
        if Template(cfg.prompt.template).has_soft:
            return None
        zero = self.build(cfg, self.model.backbone, method="zero-shot").evaluate(test, progress=progress)
        log(f"zero-shot: {_error_rates(zero)}ROUGE-L {zero['rougeL']:.2f}  BLEU {zero['bleu']:.2f}  chrF {zero['chrf']:.2f} on {len(test)}")
        return zero

    def test(self, cfg, test, *, progress, log):
        if not test:
            return {}
        m = self.model.evaluate(test, progress=progress)
        log(f"test: {_error_rates(m)}ROUGE-1 {m['rouge1']:.2f}  ROUGE-2 {m['rouge2']:.2f}  ROUGE-L {m['rougeL']:.2f}  "
            f"BLEU {m['bleu']:.2f}  chrF {m['chrf']:.2f}  {m['tokens_per_second']:.1f} tokens/s on {len(test)}")
        return m

    def run_record(self, stage, cfg, metrics, zero, test):
        outputs = metrics.pop("outputs", None)
        zero_outputs = zero.pop("outputs") if zero else None
        fields = self.model.template.fields
        samples = [{"source": " | ".join(str(test[i].get(f, "")) for f in fields), "reference": test[i][cfg.prompt.target],
                    "output": outputs[i], **({"zero_shot": zero_outputs[i]} if zero_outputs else {})}
                   for i in range(min(10, len(test)))] if outputs else []
        return metrics, samples

    def finish_record(self, metrics, samples):
        metrics["samples"] = samples

    def write_report(self, stage, cfg, metrics, samples):
        from ..report import write_generation_report

        write_generation_report(stage, metrics, title=f"prompttune: {self.model.method.name} generation on {cfg.model.name}",
                                details={"config": cfg.model_dump(mode="json")}, samples=samples)

    # ---- artifacts -----------------------------------------------------------------------------
    def artifact_meta(self) -> dict:
        gm = self.model
        return {"verbalizer": None, "target": gm.target, "max_target_length": gm.max_target_length,
                "space_into_target": gm.space_into_target, "generation": gm.generation.model_dump()}

    @classmethod
    def check_meta(cls, meta, where) -> None:
        from pydantic import ValidationError

        from ..artifact import REWRITE, field_error
        from ..schemas import GenerateConfig

        if not isinstance(meta.get("target"), str) or not meta["target"].strip():
            raise field_error(meta, "target", "the name of the field a generation artifact generates (e.g. \"headline\")", where)
        if meta.get("generation") is not None:
            if not isinstance(meta["generation"], dict):
                raise field_error(meta, "generation", "an object of decoding settings (max_new_tokens, num_beams, ...)", where)
            try:
                GenerateConfig.model_validate(meta["generation"])
            except ValidationError as e:
                raise ArtifactError(f"prompt.json field 'generation' is invalid: {validation_summary(e)}", where=str(where),
                                    fix=REWRITE) from None

    @classmethod
    def from_artifact(cls, meta, backbone, method):
        from ..generation import GenerationModel
        from ..schemas import GenerateConfig

        gm = GenerationModel(backbone, meta["template"], meta["target"], method, max_length=meta.get("max_length", 256),
                             max_target_length=meta.get("max_target_length", 64), init=False)
        if gm.template.text != meta["template"]:
            raise ArtifactError("the saved template does not rebuild as saved", where=str(meta.get("template")),
                                fix="re-run training to rewrite the artifact")
        gm.space_into_target = bool(meta.get("space_into_target", gm.space_into_target))
        gm.generation = GenerateConfig.model_validate(meta.get("generation") or {})
        return gm

    # ---- using a model -------------------------------------------------------------------------
    @classmethod
    def read_rows(cls, data_spec, *, columns=None, label_column="label"):
        return D.load_rows(data_spec, split="test", columns=columns, label_column=label_column, require_label=False)

    def evaluate(self, rows, *, batch_size, progress):
        self.model.template.check(needs_mask=False, columns=rows[0].keys(), where="template (of the artifact)")
        m = self.model.evaluate(rows, progress=progress, batch_size=batch_size)
        return {k: v for k, v in m.items() if k != "outputs"}

    def answer(self, inputs, **options):
        from pydantic import ValidationError

        from ..schemas import GenerateConfig

        if options:
            try:
                GenerateConfig.model_validate({**self.model.generation.model_dump(), **options})
            except ValidationError as e:
                raise ConfigError(f"bad decoding option: {validation_summary(e)}", where="predict",
                                  fix="see `prompttune predict --help` for --max-new-tokens, --num-beams, --stop") from None
        return [{"output": out} for out in self.model.generate(inputs, **options)]

    def show(self, x, answer):
        return answer["output"]

    @classmethod
    def summary(cls, m):
        return (f"{_error_rates(m)}ROUGE-1 {m['rouge1']:.2f}  ROUGE-2 {m['rouge2']:.2f}  ROUGE-L {m['rougeL']:.2f}  BLEU {m['bleu']:.2f}  "
                f"chrF {m['chrf']:.2f}  {m['tokens_per_second'] or 0:.1f} tokens/s")

    @classmethod
    def eval_lines(cls, m):
        return [f"n={m['n']}  {cls.summary(m)}"]


def _error_rates(m: dict) -> str:
    """"WER 0.312  CER 0.180  " for a speech recognition run's metrics, else nothing."""
    return f"WER {m['wer']:.3f}  CER {m['cer']:.3f}  " if m.get("wer") is not None else ""
