"""Soft prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021): the backbone stays frozen,
only the soft-token rows train (through a prompt encoder when ``encoder`` is mlp or lstm).

Where the template has no ``{soft}`` placeholder, ``placement`` decides where soft tokens go:
``template`` turns the prompt's own words into soft tokens initialised from those words, so training starts
exactly at the hand-written prompt's zero-shot behaviour; ``prefix`` puts ``num_tokens`` new tokens in front
(PEFT's prompt tuning)."""

from __future__ import annotations



from ..schemas import SoftPromptOptions
from .base import Method


class SoftPrompt(Method):
    name = "soft-prompt"
    Options = SoftPromptOptions
    default_lr = 3e-3
    servable = True
    shares_batch = True
    peft_type = "PROMPT_TUNING"
    description = "frozen backbone; trains soft tokens (optionally through a P-tuning MLP/LSTM encoder)"

    def prepare_template(self, template):
        if template.has_soft:
            return template
        if self.options.placement == "template":
            softened = template.soften()
            if softened.has_soft:
                return softened
        return template.with_soft_prefix(self.options.num_tokens)
