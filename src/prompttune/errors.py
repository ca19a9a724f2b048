"""User-facing errors: each says what was wrong, where, and how to fix it."""

from __future__ import annotations


class PromptTuneError(Exception):
    """An error caused by user input (config, template, data, artifact).

    The CLI prints it as one paragraph without a traceback and exits non-zero.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class TemplateError(PromptTuneError):
    """A malformed template, or one that does not fit the task."""


class VerbalizerError(PromptTuneError):
    """A verbalizer that cannot score the labels of the task."""


class DataError(PromptTuneError):
    """A data file or built-in corpus that cannot be read as asked."""


class ConfigError(PromptTuneError):
    """A config file or option that is invalid."""


class ArtifactError(PromptTuneError):
    """An artifact that is missing, corrupt, or made for another backbone."""


class BackboneError(PromptTuneError):
    """A model that cannot be loaded or used as asked."""


def validation_summary(e) -> str:
    """A pydantic ValidationError as one line: ``loc: message; loc: message`` (no URLs, no input dumps)."""
    try:
        errs = e.errors()
    except Exception:  # not a pydantic error
        return " ".join(str(e).split())
    parts = []
    for err in errs:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = " ".join(str(err.get("msg", "")).split())
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or " ".join(str(e).split())
