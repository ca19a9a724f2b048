"""The trainer's state, whole or sharded: the trainable parameters' full values (gathered from FSDP2 shards or
DeepSpeed's float32 masters and put back), and the resumable checkpoint (safetensors + JSON, never pickle, written
beside its place and swapped in)."""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError
from .files import recover_directory, replace_directory


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


def save_checkpoint(ckpt: Path, state, pm, names, optimizer, scheduler, best, *, write: bool, with_optimizer: bool = True) -> None:
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
class Checkpoint:
    """A checkpoint read back: parameters go into the whole model before ``accelerator.prepare``; the optimizer,
    schedule and random state after it."""

    meta: dict
    tensors: dict

    @classmethod
    def read(cls, ckpt: Path, names) -> "Checkpoint":
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
