"""The training loop, on ``accelerate`` (so ``accelerate launch`` scales it out unchanged).

AdamW over the method's parameters only, linear warm-up and decay, gradient accumulation, length-bucketed
batches, early stopping on the dev metric with best-state restore, a tqdm bar with rate and ETA, optional
trackers (TensorBoard / W&B through accelerate), and a resumable checkpoint (safetensors + JSON, written
to a temporary name and renamed).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .schemas import TrainConfig
from .files import recover_directory, replace_directory


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
    epochs: float | None = None  # passes over the training data the optimizer steps made
    examples_per_second: float | None = None  # training examples through forward + backward per second, dev scoring excluded
    dev_examples: int | None = None  # dev rows scored at each evaluation (a sample of the dev set when it is large)
    final_dev: dict | None = None  # the kept state on the whole dev set, when evaluations scored a sample of it
    # Set when accelerate handed the model to FSDP2 or DeepSpeed: the trained parameters' full float32 values by name
    # (on the main process). The model passed in stays sharded (or cast, under DeepSpeed bf16); load these into a
    # whole copy built the same way (``load_trained``) to save or evaluate it, as ``prompttune train`` does.
    trained: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)  # what the run could not do as asked, for the log


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


def train(pm, train_rows, dev_rows, cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

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
        return own

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
        saved = _Checkpoint.read(ckpt, names)
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
            _save_checkpoint(ckpt, state, pm, names, optimizer, scheduler, best, write=main,
                             with_optimizer=engine != "deepspeed")
        if cfg.stop_after and state["step"] >= cfg.stop_after:
            break
    bar.close()
    seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()
    if best is not None and not (cfg.stop_after and state["step"] < max_steps and not stopped_early):
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
                       history=state["history"], seconds=seconds, stopped_early=stopped_early,
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


# ---- trainable state, whole or sharded ------------------------------------------------------------
# torch's distributed state-dict API gathers and scatters FSDP2 shards (and is a plain copy otherwise);
# under DeepSpeed (ZeRO-1/2/3) the values are its float32 masters, read and written through deepspeed.utils.
def distributed_engine(accelerator) -> str | None:
    """'fsdp2' or 'deepspeed' when accelerate hands the model to one of them; None for one process or DDP."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise ConfigError("FSDP version 1 is not supported (it flattens parameters into one tensor per wrapped module)",
                              where="accelerate config (fsdp_config.fsdp_version)",
                              fix="set fsdp_version: 2, as examples/accelerate/fsdp.yaml does")
        return "fsdp2"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return None


def _deepspeed_managed(params) -> bool:
    """DeepSpeed marks the parameters it keeps float32 masters of: ``ds_id`` (ZeRO-3) or ``_hp_mapping`` (ZeRO-1/2)."""
    return any(hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None for p in params)


def _state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def trained_state(pm) -> dict[str, torch.Tensor]:
    """The trainable parameters' full float32 values by name, as CPU copies. Collective when distributed: every process
    calls it; the main one gets the values (under DDP and FSDP2 the others get an empty dict)."""
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    if _deepspeed_managed(trainable.values()):  # the optimizer's float32 masters, not the (maybe bf16) module copies
        from deepspeed.utils import safe_get_full_fp32_param

        return {n: safe_get_full_fp32_param(p).detach().cpu().clone() for n, p in trainable.items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(pm, options=_state_options(cpu_offload=True, ignore_frozen_params=True))
    # (torch keeps the second name of a tied weight even when it is frozen: only the trainable names are kept)
    return {k: v.detach().clone() for k, v in sd.items() if k in trainable}


def restore_state(pm, values: dict[str, torch.Tensor]) -> None:
    """Put values from :func:`trained_state` back (collective when distributed: the main process's values are sent)."""
    import torch.distributed as dist

    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    if _deepspeed_managed(trainable.values()):  # every process has the values here
        from deepspeed.utils import safe_set_full_fp32_param

        for n, v in values.items():
            safe_set_full_fp32_param(trainable[n], v.to(trainable[n].device))
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    for m in pm.modules():  # FSDP2 may have left modules unsharded after a forward: loading expects the shards
        if isinstance(m, FSDPModule):
            m.reshard()
    distributed = dist.is_available() and dist.is_initialized()
    set_model_state_dict(pm, values, options=_state_options(strict=False, broadcast_from_rank0=distributed))


def load_trained(pm, values: dict[str, torch.Tensor]) -> None:
    """Copy full values by name into a whole (unsharded) model, e.g. :attr:`TrainResult.trained` into a model built
    as the trained one was."""
    own = dict(pm.named_parameters())
    missing = sorted(set(values) - set(own))
    if missing:
        raise ConfigError(f"the trained state has parameters this model lacks: {missing[:5]}", where="load_trained",
                          fix="build the model from the same config as the one that was trained")
    with torch.no_grad():
        for k, v in values.items():
            own[k].copy_(v)


# ---- checkpoint: safetensors + JSON, never pickle ------------------------------------------------
_CHECKPOINT_FORMAT = 2  # 2: optimizer state keyed by parameter name (torch's distributed state-dict layout)


def _save_checkpoint(ckpt: Path, state, pm, names, optimizer, scheduler, best, *, write: bool, with_optimizer: bool = True) -> None:
    """Every process calls this (gathering a sharded state is collective); the one with ``write`` writes.

    Under DeepSpeed the optimizer state stays out (its ZeRO partitions have no name-keyed form): a resumed run keeps
    the parameters, the schedule, the data position and the best state, and restarts AdamW's moments."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    current = trained_state(pm)
    opt = get_optimizer_state_dict(pm, _inner(optimizer), options=_state_options(cpu_offload=True)) if with_optimizer else None
    if not write:
        return
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt.parent, prefix=".checkpoint-"))
    tensors = {f"param/{n}": v.contiguous() for n, v in current.items()}
    if best is not None:
        tensors.update({f"best/{n}": v.contiguous() for n, v in best.items()})
    for name, st in (opt["state"] if opt else {}).items():
        for k, v in st.items():
            tensors[f"optim/{name}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    meta = {"format": _CHECKPOINT_FORMAT, "trainer": state, "param_groups": opt["param_groups"] if opt else None,
            "scheduler": scheduler.state_dict(), "python_rng": _py_rng_to_json(random.getstate()), "names": names}
    (tmp / "trainer_state.json").write_text(json.dumps(meta, default=_json_default), encoding="utf-8")
    recover_directory(ckpt)
    replace_directory(tmp, ckpt)  # one exchange: a kill leaves the previous checkpoint or this one


@dataclass
class _Checkpoint:
    """A checkpoint read back: parameters go into the whole model before ``accelerator.prepare``; the optimizer,
    schedule and random state after it."""

    meta: dict
    tensors: dict

    @classmethod
    def read(cls, ckpt: Path, names) -> "_Checkpoint":
        meta = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if meta.get("format") != _CHECKPOINT_FORMAT:
            raise ConfigError("the checkpoint was written by an older prompttune", where=str(ckpt),
                              fix="delete the checkpoint directory and train again")
        if meta["names"] != names:
            raise ConfigError("the checkpoint was written for other trainable parameters", where=str(ckpt),
                              fix="resume with the same config, or delete the checkpoint directory")
        return cls(meta, load_file(str(ckpt / "state.safetensors")))

    def _part(self, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def best(self) -> dict | None:
        return self._part("best/") or None

    def load_parameters(self, pm) -> None:
        load_trained(pm, self._part("param/"))

    def load_training(self, pm, optimizer, scheduler, *, with_optimizer: bool) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if with_optimizer and self.meta["param_groups"] is not None:
            opt_state: dict = {}
            for k, v in self._part("optim/").items():
                name, key = k.rsplit("/", 1)
                opt_state.setdefault(name, {})[key] = v
            set_optimizer_state_dict(pm, _inner(optimizer), {"state": opt_state, "param_groups": self.meta["param_groups"]},
                                     options=_state_options())
        scheduler.load_state_dict(self.meta["scheduler"])
        torch.set_rng_state(self.tensors["rng/torch"])
        random.setstate(_py_rng_from_json(self.meta["python_rng"]))


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _py_rng_to_json(st):
    return [st[0], list(st[1]), st[2]]


def _py_rng_from_json(st):
    return (st[0], tuple(st[1]), st[2])


def _json_default(o):
    if torch.is_tensor(o):
        return o.tolist()
    return str(o)
