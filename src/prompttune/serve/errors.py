"""The serving engine's errors (each maps to one HTTP status in ``serve.app``)."""

from __future__ import annotations

from ..errors import PromptTuneError


class UnknownTaskError(PromptTuneError):
    """A request names a task the engine has not loaded."""


class TaskConflictError(PromptTuneError):
    """An artifact that cannot be served next to the others (another backbone, a trained backbone, a name in use)."""


class OverloadedError(PromptTuneError):
    """The queue is full; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, what: str, *, retry_after: float = 1.0, **kw):
        super().__init__(what, **kw)
        self.retry_after = retry_after


class UnsupportedError(PromptTuneError):
    """An operation a task (or this server) does not support, e.g. generate on a classification task."""

    def __init__(self, what: str, *, implemented: bool = True, **kw):
        super().__init__(what, **kw)
        self.implemented = implemented  # False: no loaded task kind can do it at all (HTTP 501)
