"""Prompt-based fine-tuning (PET, Schick & Schütze 2021; LM-BFF, Gao et al. 2021): template + verbalizer,
every backbone weight trained with the verbalizer's class loss (plus any soft tokens in the template)."""

from __future__ import annotations

from .base import Method


class PromptFinetune(Method):
    name = "prompt-finetune"
    trains_backbone = True
    default_lr = 1e-5
    description = "PET / LM-BFF: template + verbalizer, all backbone weights trained"
