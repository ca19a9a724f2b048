"""The training loop, on ``accelerate`` (so ``accelerate launch`` scales it out unchanged).

AdamW over the method's parameters only, linear warm-up and decay, gradient accumulation, length-bucketed
batches, early stopping on the dev metric with best-state restore (and, with ``refit``, a second pass on train + dev
for the epochs dev chose), a tqdm bar with rate and ETA, optional trackers (TensorBoard / W&B through accelerate), and
a resumable checkpoint (:mod:`prompttune.checkpoint`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError
from .schemas import TrainConfig
from .checkpoint import Checkpoint, distributed_engine, restore_state, save_checkpoint, trained_state
from .files import recover_directory


MIN_EPOCHS = 3  # the default budget never stops a large training set short of this many passes


def steps_for(n_train: int, batch_size: int) -> int:
    """Default optimizer steps: about 30 epochs within 60-400 steps (few-shot sets), and never fewer than
    ``MIN_EPOCHS`` epochs (a full training set: 8,814 rows at batch 8 train 3 epochs, 3,306 steps, not a third of one)."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return int(max(min(400, max(60, 30 * per_epoch)), MIN_EPOCHS * per_epoch))


def schedule(cfg: TrainConfig, n_train: int, world: int = 1) -> tuple[int, int, int]:
    """(optimizer steps, steps per epoch, steps between dev evaluations) a run of ``n_train`` rows takes:
    ``max_steps`` if set, else ``epochs`` passes, else :func:`steps_for`."""
    per_step = cfg.batch_size * world * cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    if cfg.max_steps:
        max_steps = cfg.max_steps
    elif cfg.epochs:
        max_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    else:
        max_steps = steps_for(n_train, per_step)
    return max_steps, steps_per_epoch, cfg.eval_every or max(10, steps_per_epoch)


def dev_sample(dev_rows, cfg: TrainConfig):
    """The dev rows scored during training: all of them, or a fixed random sample of ``cfg.dev_max_examples`` (drawn with
    the run's seed, in their original order), so that an evaluation costs the same however large the dev set."""
    n = len(dev_rows)
    if not cfg.dev_max_examples or n <= cfg.dev_max_examples:
        return dev_rows
    import random

    keep = sorted(random.Random(cfg.seed * 7_919 + n).sample(range(n), cfg.dev_max_examples))
    return [dev_rows[i] for i in keep]


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_dev: dict | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    interrupted: bool = False  # halted by stop_after before max_steps (as a killed run would be): the state is not restored
    epochs: float | None = None  # passes over the training data the optimizer steps made
    examples_per_second: float | None = None  # training examples through forward + backward per second, dev scoring excluded
    dev_examples: int | None = None  # dev rows scored at each evaluation (a sample of the dev set when it is large)
    final_dev: dict | None = None  # the kept state on the whole dev set, when evaluations scored a sample of it
    # Set when accelerate handed the model to FSDP2 or DeepSpeed: the trained parameters' full float32 values by name
    # (on the main process). The model passed in stays sharded (or cast, under DeepSpeed bf16); load these into a
    # whole copy built the same way (``load_trained``) to save or evaluate it, as ``prompttune train`` does.
    trained: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)  # what the run could not do as asked, for the log
    # train.refit: the kept state was trained again on train + dev for the epochs dev chose ({steps, examples, epochs,
    # seconds}); steps, best_step, best_dev and history above describe the selection pass
    refit: dict | None = None


def batches_for_epoch(lengths, batch_size, seed, epoch):
    from .data import length_batches

    return length_batches(lengths, batch_size, shuffle=True, seed=seed * 100_003 + epoch)


def fold_small(batches: list[list[int]], world: int) -> list[list[int]]:
    """Under several processes every one needs a row of each batch: a batch shorter than ``world`` joins the one before it."""
    out: list[list[int]] = []
    for b in batches:
        if len(b) < world and out:
            out[-1] = out[-1] + b
        elif out and len(out[-1]) < world:
            out[-1] = out[-1] + b
        else:
            out.append(list(b))
    return out


class EpochBatches:
    """A batch sampler that yields length-bucketed batches, reshuffled per epoch, forever; ``start_batch`` for resume.

    ``batch_size`` is the global batch: under ``world`` processes each yields its own contiguous share of every
    global batch (``rank``), so a run on N processes sees the same global batches as one process would.
    """

    def __init__(self, lengths, batch_size, seed, start_batch: int = 0, rank: int = 0, world: int = 1):
        self.lengths, self.batch_size, self.seed, self.start = lengths, batch_size, seed, start_batch
        self.rank, self.world = rank, world

    def __iter__(self):
        k, epoch = 0, 0
        while True:
            batches = batches_for_epoch(self.lengths, self.batch_size, self.seed, epoch)
            if self.world > 1:
                batches = fold_small(batches, self.world)
            for b in batches:
                if k >= self.start:
                    yield b if self.world == 1 else b[self.rank * len(b) // self.world:(self.rank + 1) * len(b) // self.world]
                k += 1
            epoch += 1

    def __len__(self):  # the loop is bounded by max_steps
        return 10**9


REFIT_MAX_TRAIN_ROWS = 1000  # refit "auto": the few-shot regime it was measured in (README, "Refit on train + dev")


def _sharded() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true") for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def refit_applies(refit, n_train: int, n_dev: int) -> bool:
    """Whether ``train.refit`` (True, False or "auto") trains a second pass on train + dev for these row counts."""
    if refit is False or not n_dev:
        return False
    if refit == "auto":
        return n_train <= REFIT_MAX_TRAIN_ROWS and not _sharded()
    if _sharded():
        raise ConfigError("train.refit is not supported under FSDP or DeepSpeed (the second pass would shard the model again)",
                          where="train.refit", fix="set refit: false (or auto), or train with DDP / on one process")
    return True


def train(pm, train_rows, dev_rows, cfg: TrainConfig) -> TrainResult:
    """Train the method's parameters of ``pm`` (in place) on ``train_rows``, choosing the state on ``dev_rows``; where
    ``cfg.refit`` applies (``refit_applies``), then again from the initial state on train + dev for the epochs dev
    chose, keeping the final state."""
    if not pm.method.trainable:
        raise ConfigError(f"method {pm.method.name!r} has nothing to train", where="method.name",
                          fix="use soft-prompt, prompt-finetune or head-finetune, or run eval instead of train")
    if not train_rows:
        raise ConfigError("no training examples", where="data.train", fix="give a train file or built-in corpus")
    from .tasks import task_of

    task = task_of(pm)  # the loss, dev metrics and data checks of the model's task
    task.prepare(train_rows, dev_rows, cfg)
    pm.method.set_trainable(pm.backbone)
    own = pm.method.fit(pm, train_rows, dev_rows, cfg)  # methods with their own optimisation (no backpropagation)
    if own is not None:
        pm.eval()
        if cfg.refit is True:
            own.notes.append(f"no refit: method {pm.method.name!r} runs its own search, which keeps its best candidate")
        return own
    if not refit_applies(cfg.refit, len(train_rows), len(dev_rows or [])):
        res = _optimise(pm, task, train_rows, dev_rows, cfg)
        if cfg.refit == "auto" and dev_rows and len(train_rows) <= REFIT_MAX_TRAIN_ROWS:  # few-shot, but sharded
            res.notes.append("no refit: refit auto stays off under FSDP / DeepSpeed (one process or DDP would refit)")
        return res
    initial = trained_state(pm)
    chosen = _optimise(pm, task, train_rows, dev_rows, cfg)
    if chosen.interrupted:
        return chosen  # interrupted (stop_after): a resumed run finishes the selection, then refits
    if chosen.best_step == 0:
        chosen.notes.append("no refit: dev preferred the untrained prompt to every trained state")
        return chosen
    rows = list(train_rows) + list(dev_rows)
    # as many passes over train + dev as dev chose over train: a larger set takes proportionally more steps
    steps = max(1, round(chosen.best_step * len(rows) / len(train_rows)))
    restore_state(pm, initial)
    ckpt = str(Path(cfg.checkpoint_dir) / "refit") if cfg.checkpoint_dir else None
    final = _optimise(pm, task, rows, [], cfg.model_copy(update={"max_steps": steps, "epochs": None, "refit": False,
                                                                 "stop_after": None, "checkpoint_dir": ckpt}))
    chosen.refit = {"steps": final.steps, "examples": len(rows), "epochs": final.epochs, "seconds": final.seconds}
    chosen.examples_per_second, chosen.trained = final.examples_per_second, final.trained
    chosen.notes += final.notes
    return chosen


def _optimise(pm, task, train_rows, dev_rows, cfg: TrainConfig) -> TrainResult:
    """One training pass: AdamW on the method's parameters, dev evaluations with early stopping and best-state restore."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    if cfg.gradient_checkpointing:
        pm.backbone.gradient_checkpointing(True)
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if AcceleratorState._shared_state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        AcceleratorState._reset_state()  # accelerate keeps one state per process; a later run may ask another precision

    # split_batches: each process takes a share of one global batch (see EpochBatches), so the schedule steps once per step
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              log_with=cfg.log_with or None, project_dir=cfg.logging_dir,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    launched = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if launched > 1 and accelerator.num_processes == 1:  # each process would train alone on the whole data
        raise ConfigError(f"launched as {launched} processes, but accelerate set up a single-process run",
                          where="accelerate launch", fix="on a machine without GPUs run ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                                                          "--num_processes N ... (see README, 'Scaling out')")
    set_seed(cfg.seed)
    main = accelerator.is_main_process
    world = accelerator.num_processes
    lr = cfg.lr or pm.method.default_lr
    max_steps, steps_per_epoch, eval_every = schedule(cfg, len(train_rows), world)
    ckpt_every = cfg.checkpoint_every or eval_every

    params = pm.method.trainable_parameters(pm.backbone)
    names = _param_names(pm, params)
    decay = [p for p in params if p.ndim >= 2 and cfg.weight_decay > 0]
    no_decay = [p for p in params if not (p.ndim >= 2 and cfg.weight_decay > 0)]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * max_steps), num_training_steps=max_steps)

    state = {"step": 0, "best_score": None, "best_step": 0, "bad_evals": 0, "history": [], "best_dev": None}
    best: dict[str, torch.Tensor] | None = None  # the best trainable state, full values by name (on the main process)
    ckpt = Path(cfg.checkpoint_dir) / "checkpoint" if cfg.checkpoint_dir else None

    saved, notes = None, []
    if ckpt is not None and main:
        recover_directory(ckpt)  # a run killed while replacing its checkpoint left the previous one beside it
    if cfg.resume and ckpt is not None and (ckpt / "trainer_state.json").exists():
        saved = Checkpoint.read(ckpt, names)
        saved.load_parameters(pm)  # while the model is whole: FSDP2 and DeepSpeed take the values from it
        state, best = saved.meta["trainer"], saved.best

    engine = distributed_engine(accelerator)
    if engine == "deepspeed":  # DeepSpeed steps, accumulates and clips by its own config: this run's settings go there
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            train_batch_size=cfg.batch_size * cfg.grad_accum * world, gradient_clipping=cfg.max_grad_norm)
    model, optimizer, scheduler = accelerator.prepare(pm, optimizer, scheduler)
    if engine == "fsdp2":  # fully_shard replaces each parameter by a sharded one under the same name
        current = dict(pm.named_parameters())
        params = [current.get(n, p) for n, p in zip(names, params)]
    if saved is not None:
        saved.load_training(pm, optimizer, scheduler, with_optimizer=engine != "deepspeed")
        if engine == "deepspeed":
            notes.append("resumed under DeepSpeed: parameters, schedule, data position and best state are restored; AdamW's "
                         "moments start again (the checkpoint does not hold DeepSpeed's partitioned optimizer state)")
    lengths = [pm.length(r) for r in train_rows]
    labels = task.targets(train_rows)

    def collate(idx_rows):
        return pm.collate([r for _, r in idx_rows]), labels[[i for i, _ in idx_rows]]

    indexed = list(enumerate(train_rows))
    # The loader is sharded here, not by accelerate: every process takes its share of the same global batch.
    sampler = EpochBatches(lengths, cfg.batch_size * world, cfg.seed, start_batch=state["step"] * cfg.grad_accum,
                            rank=accelerator.process_index, world=world)
    loader = DataLoader(indexed, batch_sampler=sampler, collate_fn=collate)
    if cfg.log_with:
        accelerator.init_trackers("prompttune", config={"lr": lr, "max_steps": max_steps, "batch_size": cfg.batch_size,
                                                       "method": pm.method.name})
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=state["step"], desc=f"train {pm.method.name}", unit="step",
               disable=not (cfg.progress and main), dynamic_ncols=True)
    scored = dev_sample(dev_rows, cfg) if dev_rows else dev_rows
    timing = {"dev": 0.0}

    def check_dev():
        """Evaluate on dev; on a new best, return the trainable state (every process calls this: gathering is collective)."""
        t = time.perf_counter()
        dev = task.evaluate_dev(scored, cfg)
        timing["dev"] += time.perf_counter() - t
        score = dev_score(dev, cfg.metric)
        state["history"].append({"step": state["step"], **{k: dev[k] for k in task.dev_metrics}})
        if cfg.log_with:
            accelerator.log({f"dev/{k}": dev[k] for k in task.dev_metrics}, step=state["step"])
        if state["best_score"] is None or score > tuple(state["best_score"]):
            state.update(best_score=list(score), best_step=state["step"], bad_evals=0,
                         best_dev={k: dev[k] for k in task.dev_metrics})
            return trained_state(pm)
        state["bad_evals"] += 1
        return None

    start, start_step = time.perf_counter(), state["step"]
    per_step = cfg.batch_size * world * cfg.grad_accum  # training examples per optimizer step, over all processes
    if dev_rows and state["step"] == 0:  # the untrained prompt is a candidate too: training must beat it on dev
        best = check_dev()
    model.train()
    stopped_early = False
    running = None
    it = iter(loader)
    while state["step"] < max_steps:
        for _ in range(cfg.grad_accum):
            batch, y = next(it)
            with accelerator.accumulate(model):
                loss, weight = task.loss(model, batch, y)
                if world > 1:  # DDP averages gradients over processes: weight each share so the mean is the global batch's
                    total = accelerator.reduce(torch.tensor(float(weight), device=loss.device), "sum")
                    loss = loss * weight * world / total
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        state["step"] += 1
        lv = loss.item()
        running = lv if running is None else 0.9 * running + 0.1 * lv
        bar.update(1)
        bar.set_postfix(epoch=f"{state['step'] / steps_per_epoch:.2f}", loss=f"{running:.3f}", best=_fmt(state["best_score"]))
        if cfg.log_with:
            accelerator.log({"train/loss": lv, "train/lr": scheduler.get_last_lr()[0]}, step=state["step"])

        if dev_rows and (state["step"] % eval_every == 0 or state["step"] == max_steps):
            new = check_dev()
            best = best if new is None else new
            model.train()
            if state["bad_evals"] >= cfg.patience and state["step"] < max_steps:
                stopped_early = True
                break
        if ckpt is not None and state["step"] % ckpt_every == 0:
            save_checkpoint(ckpt, state, pm, names, optimizer, scheduler, best, write=main,
                             with_optimizer=engine != "deepspeed")
        if cfg.stop_after and state["step"] >= cfg.stop_after:
            break
    bar.close()
    seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()
    interrupted = bool(cfg.stop_after and state["step"] < max_steps and not stopped_early)
    if best is not None and not interrupted:
        restore_state(pm, best)
    if cfg.log_with:
        accelerator.end_training()
    pm.eval()
    final_dev = None
    if dev_rows and len(scored) < len(dev_rows):
        full = task.evaluate_dev(dev_rows, cfg)
        final_dev = {k: full[k] for k in task.dev_metrics}
    done = state["step"] - start_step
    train_seconds = seconds - timing["dev"]
    return TrainResult(steps=state["step"], best_step=state["best_step"] if state["best_dev"] else state["step"], best_dev=state["best_dev"],
                       history=state["history"], seconds=seconds, stopped_early=stopped_early, interrupted=interrupted,
                       epochs=round(state["step"] * per_step / len(train_rows), 4),
                       examples_per_second=done * per_step / train_seconds if done and train_seconds > 0 else None,
                       dev_examples=len(scored) if dev_rows else None, final_dev=final_dev,
                       trained=trained_state(pm) if engine else None, notes=notes)


def dev_score(dev: dict, metric: str) -> tuple[float, float]:
    """What early stopping and best-state restore maximise: the metric, ties broken by lower dev loss."""
    return (-dev["loss"], 0.0) if metric == "loss" else (dev[metric], -dev["loss"])


def _fmt(score):
    return "-" if score is None else f"{score[0]:.3f}"


def _param_names(pm, params) -> list[str]:
    by_id = {id(p): n for n, p in pm.named_parameters()}
    return [by_id.get(id(p), f"param{i}") for i, p in enumerate(params)]


