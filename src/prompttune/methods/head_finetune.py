"""The classic baseline: prompt text + input into a sequence-classification head, all weights trained."""

from __future__ import annotations

from .base import Method


class HeadFinetune(Method):
    name = "head-finetune"
    needs_task_head = True
    generates = False
    trains_backbone = True
    needs_mask = False
    default_lr = 5e-5
    description = "prompt text + input -> encoder -> classification head, all weights trained"
