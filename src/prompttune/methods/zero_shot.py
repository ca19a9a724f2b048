"""Zero-shot: the hand-written prompt as it is, nothing trained."""

from __future__ import annotations

from ..errors import TemplateError
from .base import Method


class ZeroShot(Method):
    name = "zero-shot"
    trainable = False
    servable = True
    shares_batch = True
    description = "no training: score the hand-written template and verbalizer"

    def attach(self, backbone, template, verbalizer, *, init=True, seed=0):
        if template.has_soft and init:
            raise TemplateError("zero-shot cannot use untrained {soft} tokens", where="template",
                                fix="remove the {soft} placeholders, or use method soft-prompt to train them")
        super().attach(backbone, template, verbalizer, init=init, seed=seed)
