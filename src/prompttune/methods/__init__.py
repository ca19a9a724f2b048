"""Ways of adding trainable prompt parameters. One file per method; register it here."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, MethodOptions, SoftTable
from .head_finetune import HeadFinetune
from .lora import Lora
from .prefix import Prefix
from .prompt_finetune import PromptFinetune
from .rl_prompt import RLPrompt
from .soft_prompt import SoftPrompt
from .zero_shot import ZeroShot

METHODS: dict[str, type[Method]] = {m.name: m for m in (ZeroShot, SoftPrompt, Prefix, Lora, PromptFinetune, HeadFinetune, RLPrompt)}


def make_method(name: str, **options) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}", where="method.name", fix=f"use one of: {', '.join(METHODS)}") from None
    return cls(**options)


__all__ = ["METHODS", "Method", "MethodOptions", "SoftTable", "make_method"]
