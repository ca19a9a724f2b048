"""User-facing errors: each says what was wrong, where, and how to fix it."""

from __future__ import annotations

from typing import Mapping


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


def check_text(value: str, where: str, *, error: type = TemplateError) -> None:
    """Refuse text a tokenizer cannot encode: a lone surrogate (``\\ud800``..``\\udfff``, e.g. from an unpaired JSON
    escape or a command-line byte that is not UTF-8) is not valid Unicode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(f"a lone surrogate ({value[e.start]!r} at character {e.start}) is not valid Unicode text", where=where,
                    fix="send valid UTF-8 text: drop or replace that character (a JSON \\ud800-\\udfff escape must be "
                        "one half of a high + low pair)") from None


def check_input_texts(x, where: str, *, error: type = TemplateError) -> None:
    """:func:`check_text` on an input: a string, or every value and key of an object of fields."""
    if isinstance(x, str):
        check_text(x, where, error=error)
    elif isinstance(x, Mapping):
        for k, v in x.items():
            if isinstance(k, str):
                check_text(k, f"{where}, a field name", error=error)
            if isinstance(v, str):
                check_text(v, f"{where}, field {k!r}", error=error)
