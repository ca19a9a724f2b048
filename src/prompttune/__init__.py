"""prompttune: prompt tuning for pretrained language models.

A prompt (a template + a verbalizer) is attached to a backbone by a method, trained by the trainer,
judged by metrics, and saved as a small artifact that any copy of the backbone can load.

The public names load on first use, so ``import prompttune.config`` (and ``prompttune --help``) needs no torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Backbone": "backbone", "GenerationModel": "generation", "PromptModel": "model", "PromptTuneError": "errors",
    "Template": "template", "Verbalizer": "verbalizer", "load": "artifact", "RunConfig": "config", "load_config": "config",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'prompttune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
