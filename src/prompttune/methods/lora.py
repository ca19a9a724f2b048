"""LoRA (Hu et al. 2021) through ``peft``, as a baseline next to the prompt methods: the same template, verbalizer,
trainer, metrics and artifact layout, so methods are compared by changing one line of the config.

The low-rank matrices are injected into the backbone's linear layers with ``peft.inject_adapter_in_model`` (the model
keeps its class, so every family works unchanged); only they train, and only they are saved (``lora/<name>`` in
``prompt.safetensors``). ``B`` starts at zero, so before training the model scores exactly as without LoRA.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..schemas import LoraOptions
from .base import Method

ADAPTER = "prompttune"


class Lora(Method):
    name = "lora"
    Options = LoraOptions
    default_lr = 1e-3
    description = "frozen backbone + trainable low-rank updates of its attention weights (via peft)"

    def attach(self, backbone, template, verbalizer, *, init: bool = True, seed: int = 0) -> None:
        import torch
        from peft import LoraConfig, inject_adapter_in_model

        if any(n.endswith(".lora_A") for n, _ in backbone.model.named_modules()):
            raise ConfigError("this backbone already carries a LoRA adapter from another model", where="method.name",
                              fix="load a fresh backbone for each LoRA model")
        o = self.options
        cfg = LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.target_modules, bias="none")
        if cfg.target_modules is None:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

            mtype = backbone.model.config.model_type
            targets = defaults.get(mtype) or backbone.family.lora_targets
            if not targets:
                raise ConfigError(f"peft has no default LoRA target modules for model type {mtype!r}", where="method.target_modules",
                                  fix="name them, e.g. target_modules: [query, value]")
            cfg.target_modules = set(targets)
        torch.manual_seed(seed)
        try:
            inject_adapter_in_model(cfg, backbone.model, adapter_name=ADAPTER)
        except ValueError as e:
            raise ConfigError(f"cannot inject LoRA: {e}", where="method.target_modules", fix="name linear layers of this model") from None
        self._lora = {n: p for n, p in backbone.model.named_parameters() if ".lora_" in n}
        super().attach(backbone, template, verbalizer, init=init, seed=seed)

    def set_trainable(self, backbone) -> None:
        super().set_trainable(backbone)
        for p in self._lora.values():
            p.requires_grad_(True)

    def trainable_parameters(self, backbone) -> list[nn.Parameter]:
        return super().trainable_parameters(backbone) + list(self._lora.values())

    def prompt_tensors(self):
        out = super().prompt_tensors()
        out.update({f"lora/{k}": v.detach().cpu().contiguous() for k, v in self._lora.items()})
        return out

    def load_prompt_tensors(self, tensors) -> None:
        import torch

        from .base import check_tensors

        lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora/")}
        check_tensors(lora, {k: p.detach() for k, p in self._lora.items()}, "the LoRA adapters of this backbone")
        super().load_prompt_tensors({k: v for k, v in tensors.items() if not k.startswith("lora/")})
        with torch.no_grad():
            for k, v in lora.items():
                self._lora[k].copy_(v)
