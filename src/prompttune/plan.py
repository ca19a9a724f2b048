"""``prompttune train --dry-run``: every check a run makes before it trains, and the plan it would follow.

The steps are the run's own (:func:`prompttune.pipeline.run_training`): the task's config check, its splits, its data
checks (fields, labels, test rows included), the model built as the run builds it (so the verbalizer meets the
tokenizer and the method its options), and the trainer's schedule. Nothing is trained and nothing is written.
"""

from __future__ import annotations

from .artifact import is_output
from .config import RunConfig
from .files import check_output_directory
from .methods.base import Method
from .tasks import task_type
from .train import dev_sample, refit_applies, schedule


def plan_run(cfg: RunConfig) -> dict:
    """Check everything a ``train`` run would check first and return what it would do (JSON-able)."""
    kind = task_type(cfg.task)
    check_output_directory(cfg.output, ours=is_output, overwrite=cfg.overwrite)
    kind.check_config(cfg)
    train, dev, test = kind.load_splits(cfg)
    warnings = kind.check_data(cfg, {"train": train, "dev": dev, "test": test})
    model = kind.builder(cfg, train)()
    steps, per_epoch, eval_every = schedule(cfg.train, len(train))
    plan = {
        "task": cfg.task,
        "model": model.backbone.name,
        "family": model.backbone.family.name,
        "method": model.method.name,
        "trainable_parameters": model.num_trainable_parameters(),
        "rows": {"train": len(train), "dev": len(dev), "test": len(test)},
        "steps": steps if model.method.trainable else 0,
        "batch_size": cfg.train.batch_size * cfg.train.grad_accum,
        "epochs": round(steps * cfg.train.batch_size * cfg.train.grad_accum / max(1, len(train)), 2) if model.method.trainable else 0,
        "steps_per_epoch": per_epoch,
        "eval_every": eval_every,
        "dev_examples_per_evaluation": len(dev_sample(dev, cfg.train)) if dev else 0,
        "lr": cfg.train.lr or model.method.default_lr,
        "refit": bool(model.method.trainable and type(model.method).fit is Method.fit  # own-search methods keep their best
                       and refit_applies(cfg.train.refit, len(train), len(dev))),
        "output": cfg.output,
        "warnings": warnings,
    }
    if cfg.task == "classification":
        plan["labels"] = {label: sum(r.get("label") == label for r in train) for label in model.labels}
        plan["label_words"] = model.label_word_tokens()
    else:
        plan["target"] = cfg.prompt.target
    return plan


def plan_lines(plan: dict) -> list[str]:
    """The plan as a person reads it."""
    rows = plan["rows"]
    lines = [f"dry run: every check passed; nothing trained, nothing written to {plan['output']}",
             f"model     {plan['model']} ({plan['family']}), method {plan['method']}, "
             f"{plan['trainable_parameters']:,} trainable parameters",
             f"data      {rows['train']} train, {rows['dev']} dev, {rows['test']} test rows"]
    if "labels" in plan:
        words = plan.get("label_words") or {}
        for label, n in plan["labels"].items():
            shown = "  ".join("+".join(tokens) + f" ({len(tokens)} token{'s' if len(tokens) != 1 else ''})"
                              for tokens in words.get(label, []))
            lines.append(f"label     {label}: {n} train rows" + (f"; words {shown}" if shown else ""))
    else:
        lines.append(f"target    {plan['target']}")
    lines.append(f"training  {plan['steps']} steps of {plan['batch_size']} (about {plan['epochs']} epochs, "
                 f"{plan['steps_per_epoch']} steps each), dev every {plan['eval_every']} steps "
                 f"on {plan['dev_examples_per_evaluation']} rows, lr {plan['lr']:g}")
    if plan.get("refit"):
        lines.append(f"refit     then again from the initial prompt on train + dev ({rows['train'] + rows['dev']} rows) "
                     "for the epochs dev chose; the final state is kept")
    lines += [f"warning   {w}" for w in plan["warnings"]]
    return lines
