"""Soft prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021): the backbone stays frozen,
only the soft-token rows train (through a prompt encoder when ``encoder`` is mlp or lstm)."""

from __future__ import annotations

from pydantic import Field

from .base import Method, MethodOptions


class SoftPromptOptions(MethodOptions):
    num_tokens: int = Field(8, ge=1, le=4096, description="soft tokens put in front of the template when it has no {soft}")


class SoftPrompt(Method):
    name = "soft-prompt"
    Options = SoftPromptOptions
    default_lr = 3e-3
    description = "frozen backbone; trains soft tokens (optionally through a P-tuning MLP/LSTM encoder)"

    def prepare_template(self, template):
        return template if template.has_soft else template.with_soft_prefix(self.options.num_tokens)
